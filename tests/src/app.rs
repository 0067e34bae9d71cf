//! A coordinator started in-process on its own database and namespace.

use std::ops::Deref;

use anyhow::Context;
use coordinator::app::Coordinator;
use coordinator::config::Settings;

use crate::{Api, TcpProxy, TestDb, TestNamespace};

/// Options for [`TestApp`].
#[derive(Debug, Default)]
pub struct TestAppBuilder {
    api_token: Option<String>,
    max_body_bytes: Option<usize>,
    check_back_hosts: Vec<String>,
    via_proxy: bool,
    /// `SAGA_ALERT_URL`, `SAGA_ALERT_SECRET`, `SAGA_STUCK_AFTER`.
    alerts: Option<(String, String, std::time::Duration)>,
    /// `SAGA_BULK_ACTION_RATE`.
    bulk_action_rate: Option<u32>,
    /// `SAGA_RETAIN_COMMITTED`, `..._COMPENSATED`, `..._ABORTED`.
    retain: Option<[String; 3]>,
    /// `SAGA_TRACE_URL_TEMPLATE`.
    trace_url_template: Option<String>,
}

impl TestAppBuilder {
    /// Sets `SAGA_API_TOKEN`; the app's [`Api`] sends it.
    pub fn api_token(mut self, token: &str) -> Self {
        self.api_token = Some(token.to_string());
        self
    }

    /// Sets `SAGA_MAX_BODY_BYTES`.
    /// Sets `SAGA_TRACE_URL_TEMPLATE` (the dashboard's link to a saga's trace).
    pub fn trace_url_template(mut self, template: &str) -> Self {
        self.trace_url_template = Some(template.to_string());
        self
    }

    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = Some(bytes);
        self
    }

    /// Sets `SAGA_CHECK_BACK_HOSTS`.
    pub fn check_back_hosts(mut self, hosts: &[&str]) -> Self {
        self.check_back_hosts = hosts.iter().map(|h| h.to_string()).collect();
        self
    }

    /// Sends alerts to `url`, signed with `secret`; sagas in flight longer than `stuck_after` are
    /// stuck.
    pub fn alerts(mut self, url: &str, secret: &str, stuck_after: std::time::Duration) -> Self {
        self.alerts = Some((url.to_string(), secret.to_string(), stuck_after));
        self
    }

    /// Sets `SAGA_BULK_ACTION_RATE` (sagas per second a bulk action goes at).
    pub fn bulk_action_rate(mut self, rate: u32) -> Self {
        self.bulk_action_rate = Some(rate);
        self
    }

    /// Sets the retention of committed, compensated and aborted sagas (`30d`, `forever`), looked
    /// at every second.
    pub fn retain(mut self, committed: &str, compensated: &str, aborted: &str) -> Self {
        self.retain = Some([committed, compensated, aborted].map(String::from));
        self
    }

    /// Connects the coordinator to RabbitMQ through a [`TcpProxy`] (`app.proxy()`).
    pub fn via_proxy(mut self) -> Self {
        self.via_proxy = true;
        self
    }

    pub async fn start(self) -> TestApp {
        let db = tokio::task::spawn_blocking(crate::test_db)
            .await
            .expect("creating the test database");
        let ns = TestNamespace::new();
        let proxy = self.via_proxy.then(TcpProxy::to_rabbitmq);

        let mut settings = Settings::from_env()
            .map_err(anyhow::Error::msg)
            .expect("default settings");
        settings.database_url = db.url().to_string();
        settings.amqp_url = match &proxy {
            Some(p) => p.amqp_url(),
            None => crate::amqp_url(),
        };
        settings.http_addr = "127.0.0.1:0".to_string();
        settings.namespace = ns.name().to_string();
        settings.api_token = self.api_token.clone();
        if let Some(bytes) = self.max_body_bytes {
            settings.max_body_bytes = bytes;
        }
        settings.check_back_hosts = self.check_back_hosts.clone();
        settings.trace_url_template = self.trace_url_template.clone();
        if let Some(rate) = self.bulk_action_rate {
            settings.bulk_action_rate = rate;
        }
        if let Some([committed, compensated, aborted]) = &self.retain {
            let parse =
                |text: &str| coordinator::config::parse_retention(text).expect("a retention");
            settings.retain_committed = parse(committed);
            settings.retain_compensated = parse(compensated);
            settings.retain_aborted = parse(aborted);
            settings.retention_interval = std::time::Duration::from_secs(1);
        }
        if let Some((url, secret, stuck_after)) = &self.alerts {
            settings.alert_url = Some(url.parse().expect("an alert URL"));
            settings.alert_secret = Some(secret.clone());
            settings.stuck_after = *stuck_after;
        }
        // Tests run in parallel against one Postgres (max_connections 100).
        settings.db_pool_size = 8;
        let reply_queue = ns.instance_replies_queue(&settings.instance());

        let coordinator = start_coordinator(settings)
            .await
            .expect("starting the coordinator");
        let api = Api::new(
            &format!("http://{}", coordinator.http_addr()),
            self.api_token,
        );
        // The topology (and so `{ns}.replies`) exists once the coordinator is ready: a test that
        // publishes before that would lose its messages to an unrouted default-exchange publish.
        wait_until_ready(&format!("http://{}/readyz", coordinator.http_addr())).await;
        TestApp {
            coordinator: Some(coordinator),
            api,
            proxy,
            ns,
            db,
            reply_queue,
        }
    }
}

async fn wait_until_ready(url: &str) {
    let client = reqwest::Client::new();
    let start = std::time::Instant::now();
    loop {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the coordinator did not become ready within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Runs the blocking `Coordinator::start` on a plain thread (no runtime context) and awaits it.
async fn start_coordinator(settings: Settings) -> anyhow::Result<Coordinator> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("e2e-start-coordinator".into())
        .spawn(move || {
            let _ = tx.send(Coordinator::start(settings));
        })
        .context("spawning a thread")?;
    rx.await.context("Coordinator::start panicked")?
}

/// A coordinator running in this process, with a fresh database and namespace. Dropping it stops the
/// coordinator, then drops the database; the namespace is deleted once the participants using it are
/// gone too.
pub struct TestApp {
    coordinator: Option<Coordinator>,
    pub api: Api,
    proxy: Option<TcpProxy>,
    pub ns: TestNamespace,
    pub db: TestDb,
    /// This coordinator's own reply queue: the `reply_to` of every command it publishes.
    pub reply_queue: String,
}

impl TestApp {
    /// A coordinator with default test settings.
    pub async fn start() -> TestApp {
        TestApp::builder().start().await
    }

    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::default()
    }

    /// The proxy between the coordinator and RabbitMQ (only with [`TestAppBuilder::via_proxy`]).
    pub fn proxy(&self) -> &TcpProxy {
        self.proxy
            .as_ref()
            .expect("this TestApp was started without via_proxy()")
    }

    /// Stops the coordinator gracefully (blocking, on a thread of its own) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(coordinator) = self.coordinator.take() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                coordinator.stop();
                let _ = tx.send(());
            });
            let _ = rx.await;
        }
    }
}

impl Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(coordinator) = self.coordinator.take() {
            let stopped = std::thread::spawn(move || coordinator.stop()).join();
            if stopped.is_err() {
                eprintln!("e2e: Coordinator::stop panicked");
            }
        }
    }
}
