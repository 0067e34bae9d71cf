//! What every handler of the web edge can reach, API and dashboard alike.
//!
//! The server listens before the coordinator has a database (start-up waits for Postgres while
//! `/healthz` and `/readyz` answer), so what needs Postgres is [`Running`], set once start-up is
//! done. Until then a handler that needs it answers 503 with what start-up is doing.

use std::sync::{Mutex, OnceLock};

use tokio::sync::watch;

use crate::amqp::dead_letters::DeadLetterBrowser;
use crate::metrics::Metrics;
use crate::runtime::changes::Changes;
use crate::runtime::ownership::Ownership;
use crate::runtime::Registry;
use crate::store::Store;
use crate::submission::CheckBackHosts;
use crate::web::error::ApiError;
use crate::web::forward::Forwarder;

/// What every handler can reach.
pub struct AppState {
    /// Set once start-up is done (database migrated, unfinished sagas resumed, broker started).
    running: OnceLock<Running>,
    /// What start-up is doing while `running` is unset, for `/readyz` and 503 answers.
    starting: Mutex<Starting>,
    /// Committed saga changes, for live views.
    pub changes: Changes,
    pub metrics: std::sync::Arc<Metrics>,
    pub api_token: Option<String>,
    pub max_body_bytes: usize,
    /// Where HTTP check-backs may go (`SAGA_CHECK_BACK_HOSTS`); a submission naming another host
    /// is refused. Admits every host unless set.
    pub check_back_hosts: CheckBackHosts,
    /// `SAGA_TRACE_URL_TEMPLATE`: the dashboard's link to a saga's trace.
    pub trace_url_template: Option<String>,
    /// Browses `{ns}.dead-letters` for the dashboard.
    pub dead_letters: DeadLetterBrowser,
    /// Sends requests about other instances' sagas to them.
    pub forwarder: Forwarder,
}

/// What start-up is doing, and whether it reached Postgres (migrated) yet.
#[derive(Debug, Clone)]
pub struct Starting {
    pub doing: String,
    pub postgres: bool,
}

/// The parts of the coordinator that exist once start-up is done.
pub struct Running {
    /// The running sagas: submissions and operators' requests go here.
    pub registry: Registry,
    /// Reads (sagas, events, aggregates).
    pub store: Store,
    pub amqp_connected: watch::Receiver<bool>,
    /// Depth of `{ns}.dead-letters`, for the metrics.
    pub dead_letter_depth: watch::Receiver<Option<u32>>,
    /// Which partitions this instance owns, and who owns the others (requests about their sagas
    /// are forwarded there).
    pub ownership: Ownership,
}

impl AppState {
    /// A coordinator that is starting: only health, readiness and metrics answer.
    pub fn starting(
        changes: Changes,
        metrics: std::sync::Arc<Metrics>,
        api_token: Option<String>,
        max_body_bytes: usize,
        dead_letters: DeadLetterBrowser,
    ) -> AppState {
        AppState {
            running: OnceLock::new(),
            starting: Mutex::new(Starting {
                doing: "starting".to_owned(),
                postgres: false,
            }),
            changes,
            metrics,
            api_token,
            max_body_bytes,
            check_back_hosts: CheckBackHosts::default(),
            trace_url_template: None,
            dead_letters,
            forwarder: Forwarder::default(),
        }
    }

    /// Says what start-up is doing now, and whether Postgres was reached and migrated (shown by
    /// `/readyz` until [`AppState::started`]).
    pub fn set_starting(&self, doing: impl Into<String>, postgres: bool) {
        *self.starting.lock().unwrap_or_else(|e| e.into_inner()) = Starting {
            doing: doing.into(),
            postgres,
        };
    }

    /// Start-up is done: every handler answers from now on.
    pub fn started(&self, running: Running) {
        if self.running.set(running).is_err() {
            log::error!("the coordinator was marked started twice; keeping the first");
        }
    }

    /// The running coordinator, or `None` while it starts.
    pub fn running(&self) -> Option<&Running> {
        self.running.get()
    }

    /// What start-up is doing, while it is not done.
    pub fn still_starting(&self) -> Option<Starting> {
        match self.running.get() {
            Some(_) => None,
            None => Some(
                self.starting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            ),
        }
    }

    /// The running sagas, or 503 while the coordinator starts.
    pub fn registry(&self) -> Result<&Registry, ApiError> {
        self.running_or_unavailable().map(|r| &r.registry)
    }

    /// The store, or 503 while the coordinator starts (the schema may not be migrated yet).
    pub fn store(&self) -> Result<&Store, ApiError> {
        self.running_or_unavailable().map(|r| &r.store)
    }

    pub fn running_or_unavailable(&self) -> Result<&Running, ApiError> {
        self.running.get().ok_or_else(|| {
            ApiError::Unavailable(format!(
                "the coordinator is starting: {}",
                self.still_starting().map(|s| s.doing).unwrap_or_default()
            ))
        })
    }
}
