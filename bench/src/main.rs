//! `bench`: measures the saga coordinator (see `docs/benchmark.md`).

use std::process::ExitCode;

use clap::Parser;

use bench::options::Options;
use bench::target::RUN_AS_COORDINATOR;

fn main() -> ExitCode {
    // Without a separate `coordinator` binary at hand, the bench starts itself as the coordinator.
    if std::env::var_os(RUN_AS_COORDINATOR).is_some() {
        return coordinator::cli::main();
    }
    // `bench seed ...` fills a database with history; anything else is a run.
    if std::env::args().nth(1).as_deref() == Some("seed") {
        let seed = bench::seed::SeedOptions::parse_from(std::env::args().skip(1));
        return match bench::seed::run(&seed) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench seed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = Options::parse();
    // One thread: the load generator shares the machine with what it measures, and on a small VM
    // every hand-over between threads costs more CPU than the participants' own work.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(bench::run(opts.clone()));
    // A blocking task left behind (a query past its run's end) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    match outcome {
        Ok(report) => {
            if !opts.json_only {
                print!("{}", report.table());
            }
            println!("RESULT {}", report.json_line());
            // With one coordinator stopped mid-run, the run's point is that every saga finished.
            if report.completed == 0 || (opts.stop_one().is_some() && !report.every_saga_finished())
            {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
