//! What every handler of the web edge can reach, API and dashboard alike.

use tokio::sync::watch;

use crate::amqp::dead_letters::DeadLetterBrowser;
use crate::metrics::Metrics;
use crate::runtime::changes::Changes;
use crate::runtime::Registry;
use crate::store::Store;

/// What every handler can reach.
pub struct AppState {
    /// The running sagas: submissions and operators' requests go here.
    pub registry: Registry,
    /// Reads (sagas, events, aggregates).
    pub store: Store,
    /// Committed saga changes, for live views.
    pub changes: Changes,
    pub metrics: std::sync::Arc<Metrics>,
    pub amqp_connected: watch::Receiver<bool>,
    /// Depth of `{ns}.dead-letters`, for the metrics.
    pub dead_letter_depth: watch::Receiver<Option<u32>>,
    pub api_token: Option<String>,
    pub max_body_bytes: usize,
    /// Browses `{ns}.dead-letters` for the dashboard.
    pub dead_letters: DeadLetterBrowser,
}
