//! The `coordinator` command line: `serve`, `migrate`, and the operator's `sagas` (the `operator`
//! crate, a client of the HTTP API).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "Saga coordinator: distributed transactions over Postgres and RabbitMQ"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP at once, wait for Postgres (see --db-wait), apply pending migrations, resume
    /// unfinished sagas, connect to RabbitMQ.
    Serve(Settings),
    /// Apply pending migrations (creating the database if missing) and exit; fails at once if
    /// Postgres is unreachable.
    Migrate(Settings),
    /// Operate sagas through a running coordinator's HTTP API (list, show, abort, retry...).
    Sagas(operator::SagasArgs),
}

/// Printed once the HTTP server listens, before start-up reaches Postgres.
pub const STARTING_PREFIX: &str = "coordinator starting, health checks on http://";
/// Printed once start-up is done: every request is served.
pub const LISTENING_PREFIX: &str = "coordinator listening on http://";

/// The binary's entry point.
pub fn main() -> ExitCode {
    // Before anything can log: the format (`SAGA_LOG_FORMAT`) holds for every subcommand, and a
    // wrong one stops here, before a line is written in a format nobody asked for.
    if let Err(e) = logfmt::init("info") {
        eprintln!("coordinator: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        // A client of the API, with exit codes of its own (`coordinator sagas --help`).
        Command::Sagas(args) => return operator::run(args),
        Command::Migrate(settings) => crate::store::migrate(&settings.database_url),
        Command::Serve(settings) => {
            // Spans, if the OTEL_* variables ask for them; built before the runtime starts.
            match crate::telemetry::install() {
                Ok(true) => log::info!("exporting spans over OTLP"),
                Ok(false) => {}
                Err(e) => {
                    eprintln!("coordinator: cannot export spans: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
            let served = actix_rt::System::new().block_on(crate::app::run(
                settings,
                true,
                |addr, _| {
                    // Printed (not logged) so that scripts and tests can wait for them whatever
                    // RUST_LOG says: the first once /healthz and /readyz answer, the second once
                    // start-up is done (Postgres reached, sagas resumed) and every request is served.
                    println!("{STARTING_PREFIX}{addr}");
                },
                |addr| println!("{LISTENING_PREFIX}{addr}"),
            ));
            // The last transitions' spans, once every actor has stopped.
            crate::telemetry::shutdown();
            served
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
