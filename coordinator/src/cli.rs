//! The `coordinator` command line: `serve` and `migrate`.

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
    /// Apply pending migrations, declare the AMQP topology, resume unfinished sagas and serve HTTP.
    Serve(Settings),
    /// Apply pending migrations (creating the database if missing) and exit.
    Migrate(Settings),
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Migrate(settings) => crate::store::migrate(&settings.database_url),
        Command::Serve(settings) => {
            actix_rt::System::new().block_on(crate::app::run(settings, true, |addr, _| {
                // Printed (not logged) so that scripts and tests can wait for it whatever RUST_LOG says.
                println!("coordinator listening on http://{addr}");
            }))
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
