//! The example shop (`shop`) under test: its databases, and its services as child
//! processes that a test can kill and restart.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use diesel::{sql_query, Connection, PgConnection, RunQueryDsl};
use participants::client::RetryPolicy;
use shop::order::OrderPolicy;
use shop::{Faults, Service, ShopSettings};

use crate::{pg_server_url, TestNamespace};

/// The shop's databases (three participants and the order service), with a prefix of their own;
/// dropped with this value.
#[derive(Debug)]
pub struct ShopDbs {
    pub settings: ShopSettings,
}

impl ShopDbs {
    /// Settings for a fresh shop (the databases are created when a service installs them).
    pub fn new() -> ShopDbs {
        ShopDbs {
            settings: ShopSettings {
                database_server: pg_server_url(),
                database_prefix: format!("test_shop_{}", uuid::Uuid::new_v4().simple()),
                ..ShopSettings::default()
            },
        }
    }

    /// Installs the order service's database (its orders and its outbox) and opens a pool on it.
    pub async fn install_orders(&self) -> shop::DbPool {
        let shop = self.settings.clone();
        tokio::task::spawn_blocking(move || {
            shop::orders::install(&shop)?;
            shop.orders_pool(4)
        })
        .await
        .expect("join")
        .expect("installing the order service")
    }

    /// A connection to one service's database.
    pub fn connect(&self, service: Service) -> anyhow::Result<PgConnection> {
        let url = self.settings.database_url(service);
        PgConnection::establish(&url).with_context(|| format!("connecting to {url}"))
    }
}

impl Default for ShopDbs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ShopDbs {
    fn drop(&mut self) {
        let admin_url = format!("{}/postgres", pg_server_url());
        let Ok(mut admin) = PgConnection::establish(&admin_url) else {
            eprintln!("e2e: cannot connect to drop the shop databases");
            return;
        };
        let names = Service::ALL
            .into_iter()
            .map(|service| self.settings.database_name(service))
            .chain([self.settings.orders_database_name()]);
        for name in names {
            if let Err(e) = sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut admin)
            {
                eprintln!("e2e: dropping {name}: {e}");
            }
        }
    }
}

/// The faults of a shop under steady load: some business failures, transient errors and duplicate
/// deliveries, nothing slow and no crashes (the tests that want those inject them themselves).
pub fn steady_faults() -> Faults {
    Faults {
        failure_rate: 0.05,
        transient_rate: 0.05,
        slow_rate: 0.0,
        slow_ms: 0,
        duplicate_rate: 0.05,
        crash_rate: 0.0,
    }
}

/// Retry policies for orders under faults: quick backoffs (the test waits for them), a few
/// attempts per action, and compensations that practically never give up (`compensation_attempts`).
pub fn order_policy(step_timeout: Duration, compensation_attempts: u32) -> OrderPolicy {
    let quick = |max_attempts| RetryPolicy {
        max_attempts,
        initial_backoff_ms: 50,
        max_backoff_ms: 500,
        multiplier: 2.0,
    };
    OrderPolicy {
        step_timeout,
        retry: quick(4),
        compensation_retry: quick(compensation_attempts),
    }
}

/// The environment of a shop child process for `faults`.
pub fn fault_env(faults: &Faults) -> Vec<(&'static str, String)> {
    vec![
        ("SHOP_FAILURE_RATE", faults.failure_rate.to_string()),
        ("SHOP_TRANSIENT_RATE", faults.transient_rate.to_string()),
        ("SHOP_SLOW_RATE", faults.slow_rate.to_string()),
        ("SHOP_SLOW_MS", faults.slow_ms.to_string()),
        ("SHOP_DUPLICATE_RATE", faults.duplicate_rate.to_string()),
        ("SHOP_CRASH_RATE", faults.crash_rate.to_string()),
    ]
}

/// One shop service as a child process (`shop serve --service ...`). Dropping it kills it.
pub struct ShopProcess {
    child: Option<Child>,
    service: Service,
}

impl ShopProcess {
    /// Starts `bin serve --service {service}` (pass `env!("CARGO_BIN_EXE_shop-under-test")`) and
    /// waits until it says it serves.
    pub fn start(
        bin: &str,
        service: Service,
        shop: &ShopSettings,
        ns: &TestNamespace,
        faults: &Faults,
    ) -> anyhow::Result<ShopProcess> {
        ns.register_participant(service.name());
        let mut command = Command::new(bin);
        command
            .args(["serve", "--service", service.name()])
            .env("SAGA_AMQP_URL", crate::amqp_url())
            .env("SAGA_NAMESPACE", ns.name())
            .env("SHOP_DATABASE_SERVER", &shop.database_server)
            .env("SHOP_DATABASE_PREFIX", &shop.database_prefix)
            .env("SHOP_SKUS", shop.skus.to_string())
            .env("SHOP_STOCK", shop.stock.to_string())
            .env("SHOP_ACCOUNTS", shop.accounts.to_string())
            .env("SHOP_BALANCE_CENTS", shop.balance_cents.to_string())
            .env("PARTICIPANT_CONCURRENCY", "4")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in fault_env(faults) {
            command.env(key, value);
        }
        let mut child = command.spawn().with_context(|| format!("running {bin}"))?;
        let pid = child.id();
        let name = service.name();
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("shop serving") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{name} {pid}] {line}");
            }
        });
        let mut process = ShopProcess {
            child: Some(child),
            service,
        };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let status = process.try_exit_status();
            process.kill();
            anyhow::bail!("{name} did not start serving (exit: {status:?})");
        }
        Ok(process)
    }

    pub fn service(&self) -> Service {
        self.service
    }

    /// The exit status if the process has ended.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to end by itself, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then reap ([`try_exit_status`](Self::try_exit_status) reports the kill afterwards).
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ShopProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
