//! The benchmark in a tiny configuration: it must start a coordinator, run sagas to their final state
//! and report them. Correctness only: no figure is asserted.

use std::sync::mpsc;
use std::time::Duration;

use bench::options::{Mode, Options};
use bench::report::Report;

/// Far above a tiny run's ten seconds, far below CI's limit: a hang anywhere (the run, its cleanup,
/// the runtime's shutdown) ends the test binary with the test's name instead of stalling CI.
const HANG_LIMIT: Duration = Duration::from_secs(300);

/// Runs the bench on a runtime of its own, watched: past `HANG_LIMIT` the process exits failing.
fn run_watched(test: &'static str, opts: Options) -> Report {
    let (finished, watch) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(HANG_LIMIT) {
            eprintln!("{test}: still running after {HANG_LIMIT:?}, so it hangs; exiting");
            std::process::exit(1);
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let report = runtime.block_on(bench::run(opts)).expect("the bench runs");
    runtime.shutdown_timeout(Duration::from_secs(10));
    drop(finished);
    report
}

fn tiny(mode: Mode) -> Options {
    let mut opts = Options::tiny();
    opts.mode = mode;
    // This test binary is not a coordinator: run the package's `bench` binary as one.
    opts.coordinator_bin = Some(env!("CARGO_BIN_EXE_bench").into());
    opts
}

#[test]
fn closed_loop_reports_completed_sagas_and_the_reads_beside_them() {
    let mut opts = tiny(Mode::Closed);
    opts.probe_reads = true;
    opts.probe_every_ms = 5;
    let report = run_watched(
        "closed_loop_reports_completed_sagas_and_the_reads_beside_them",
        opts,
    );
    let table = report.table();
    assert!(!report.timed_out, "{table}");
    assert_eq!(report.completed, 22, "{table}");
    assert_eq!(report.measured, 20, "{table}");
    assert!(report.json_line().contains("\"sagas_per_s\""));
    assert_eq!(report.reads.len(), 5, "{table}");
    for read in &report.reads {
        assert!(read.reads > 0, "every kind was read: {table}");
        assert_eq!(read.failed, 0, "every read was answered: {table}");
    }
}

#[test]
fn backlog_with_a_restart_drains_every_saga() {
    let mut opts = tiny(Mode::Backlog);
    opts.restart = Some(bench::options::Restart::Kill);
    let report = run_watched("backlog_with_a_restart_drains_every_saga", opts);
    assert!(!report.timed_out, "{}", report.table());
    assert_eq!(report.completed, 20, "{}", report.table());
    let backlog = report.backlog.expect("backlog figures");
    assert!(backlog.restart_start_secs.is_some());
    assert!(backlog.first_reply_processed_secs.is_some());
}

#[test]
fn three_instances_with_one_killed_mid_run_finish_every_saga() {
    let mut opts = tiny(Mode::Open);
    opts.instances = 3;
    opts.rate = 50.0;
    opts.sagas = 250;
    opts.kill_one_after = Some(2.0);
    // Short leases: the killed coordinator's partitions move within seconds.
    opts.coordinator_env = vec!["SAGA_LEASE_TTL_MS=2000".into()];
    let report = run_watched(
        "three_instances_with_one_killed_mid_run_finish_every_saga",
        opts,
    );
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
