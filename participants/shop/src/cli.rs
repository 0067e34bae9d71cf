//! The `shop` command line: `serve` the services, run the `demo`, print a `report`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::demo::{self, Demo};
use crate::order::OrderPolicy;
use crate::{report, Faults, Service, ShopSettings};
use participants::client::Client;
use participants::{QueueType, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "shop",
    about = "An example shop of saga participants, and a demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// How the participants reach RabbitMQ.
#[derive(Debug, Clone, clap::Args)]
struct Broker {
    #[arg(
        long,
        env = "SAGA_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// The coordinator's namespace.
    #[arg(long, env = "SAGA_NAMESPACE", default_value = "saga")]
    namespace: String,
    /// The coordinator's queue type, `classic` or `quorum`.
    #[arg(long, env = "SAGA_QUEUE_TYPE", default_value = "classic", value_parser = QueueType::parse)]
    queue_type: QueueType,
    #[arg(long, env = "PARTICIPANT_PREFETCH", default_value_t = 32)]
    prefetch: u16,
    #[arg(long, env = "PARTICIPANT_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,
}

impl Broker {
    fn settings(&self) -> Settings {
        Settings::default()
            .amqp_url(&self.amqp_url)
            .namespace(&self.namespace)
            .queue_type(self.queue_type)
            .prefetch(self.prefetch)
            .concurrency(self.concurrency)
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run services (all three unless `--service` is given) until SIGTERM or Ctrl-C.
    Serve {
        #[arg(long = "service", value_enum)]
        services: Vec<Service>,
        #[command(flatten)]
        shop: ShopSettings,
        #[command(flatten)]
        broker: Broker,
        #[command(flatten)]
        faults: Faults,
    },
    /// Start the services, place a steady stream of orders with the order service (its outbox relay
    /// submits their sagas to a running coordinator), wait for every saga to settle, and print the consistency report (exit 1 if it finds a violation). Unless a
    /// fault rate is given, it injects a mix of refusals, transient errors, slow replies and
    /// duplicate deliveries.
    Demo {
        /// The coordinator.
        #[arg(long, env = "SAGA_URL", default_value = "http://127.0.0.1:8080")]
        coordinator: String,
        #[arg(long, env = "SAGA_API_TOKEN")]
        token: Option<String>,
        #[arg(long, default_value_t = 200)]
        orders: usize,
        /// Orders per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Do not start the services (they run elsewhere, e.g. `shop serve`).
        #[arg(long)]
        no_services: bool,
        /// Step timeout in milliseconds.
        #[arg(long, default_value_t = 3000)]
        step_timeout_ms: u64,
        #[command(flatten)]
        shop: ShopSettings,
        #[command(flatten)]
        broker: Broker,
        #[command(flatten)]
        faults: Faults,
    },
    /// Print the stock and money totals and whether they are conserved.
    Report {
        #[command(flatten)]
        shop: ShopSettings,
    },
}

/// The `shop` binary's `main`.
pub fn main() -> ExitCode {
    // The SDK's logger: `SAGA_LOG_FORMAT` as the coordinator reads it, so one pipeline reads both.
    if let Err(e) = participants::init_logging("info") {
        eprintln!("shop: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    // Spans, when the OTEL_* variables ask; before the runtime (its HTTP client blocks).
    let tracing = match participants::telemetry::install("shop") {
        Ok(tracing) => tracing,
        Err(e) => {
            eprintln!("shop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shop: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shop: {e:#}");
            ExitCode::FAILURE
        }
    };
    // The last handlers' spans.
    if let Some(provider) = tracing {
        if let Err(e) = provider.shutdown() {
            eprintln!("shop: spans not sent at exit: {e}");
        }
    }
    code
}

async fn run(command: Cmd) -> anyhow::Result<ExitCode> {
    match command {
        Cmd::Serve {
            services,
            shop,
            broker,
            faults,
        } => {
            let services = if services.is_empty() {
                Service::ALL.to_vec()
            } else {
                services
            };
            let settings = broker.settings();
            let handles = tokio::task::spawn_blocking(move || {
                crate::spawn(&services, &shop, &settings, &faults)
            })
            .await??;
            println!("shop serving");
            shutdown_signal().await;
            for handle in handles {
                handle.shutdown().await;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo {
            coordinator,
            token,
            orders,
            rate,
            no_services,
            step_timeout_ms,
            shop,
            broker,
            faults,
        } => {
            let mut client = Client::new(&coordinator)?;
            if let Some(token) = token {
                client = client.with_token(token);
            }
            let policy = OrderPolicy {
                step_timeout: Duration::from_millis(step_timeout_ms),
                ..OrderPolicy::default()
            };
            let faults = if faults.is_none() {
                Faults::demo_mix()
            } else {
                faults
            };
            let report = demo::run(Demo {
                client,
                shop,
                participant: broker.settings(),
                faults,
                start_services: !no_services,
                orders,
                rate,
                policy,
                saga_timeout: Duration::from_secs(300),
            })
            .await?;
            println!("{report}");
            Ok(if report.is_consistent() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Report { shop } => {
            let report =
                tokio::task::spawn_blocking(move || report::check(&shop, &[], false)).await??;
            println!("{report}");
            Ok(if report.is_consistent() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
