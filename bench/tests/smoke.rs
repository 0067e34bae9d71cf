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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_one_killed_mid_run_finish_every_saga() {
    let mut opts = tiny(Mode::Open);
    opts.instances = 3;
    opts.rate = 50.0;
    opts.sagas = 250;
    opts.kill_one_after = Some(2.0);
    // Short leases: the killed coordinator's partitions move within seconds.
    opts.coordinator_env = vec!["SAGA_LEASE_TTL_MS=2000".into()];
    let report = bench::run(opts).await.expect("the bench runs");
    let table = report.table();
    assert!(report.every_saga_finished(), "{table}");
    assert_eq!(report.completed, 252, "{table}");
    let stopped = report
        .stop_one
        .as_ref()
        .expect("one coordinator was stopped");
    assert_eq!(stopped.instance, "bench-3", "{table}");
    assert!(stopped.partitions > 0, "it held partitions: {table}");
    assert!(stopped.handover_secs.is_some(), "they moved: {table}");
    assert!(report.json_line().contains("\"handover_secs\""));
}
