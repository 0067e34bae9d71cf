//! The benchmark in a tiny configuration: it must start a coordinator, run sagas to their final state
//! and report them. Correctness only: no figure is asserted.

use bench::options::{Mode, Options};

fn tiny(mode: Mode) -> Options {
    let mut opts = Options::tiny();
    opts.mode = mode;
    // This test binary is not a coordinator: run the package's `bench` binary as one.
    opts.coordinator_bin = Some(env!("CARGO_BIN_EXE_bench").into());
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_reports_completed_sagas() {
    let report = bench::run(tiny(Mode::Closed))
        .await
        .expect("the bench runs");
    assert!(!report.timed_out, "{}", report.table());
    assert_eq!(report.completed, 22, "{}", report.table());
    assert_eq!(report.measured, 20, "{}", report.table());
    assert!(report.json_line().contains("\"sagas_per_s\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_with_a_restart_drains_every_saga() {
    let mut opts = tiny(Mode::Backlog);
    opts.restart = Some(bench::options::Restart::Kill);
    let report = bench::run(opts).await.expect("the bench runs");
    assert!(!report.timed_out, "{}", report.table());
    assert_eq!(report.completed, 20, "{}", report.table());
    let backlog = report.backlog.expect("backlog figures");
    assert!(backlog.restart_start_secs.is_some());
    assert!(backlog.first_reply_processed_secs.is_some());
}
