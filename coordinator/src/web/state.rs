//! What every handler of the web edge can reach, API and dashboard alike.

use tokio::sync::watch;

use crate::amqp::dead_letters::DeadLetterBrowser;
use crate::runtime::Registry;

/// What every handler can reach.
pub struct AppState {
    pub registry: Registry,
    pub amqp_connected: watch::Receiver<bool>,
    /// Depth of `{ns}.dead-letters`, for the metrics.
    pub dead_letter_depth: watch::Receiver<Option<u32>>,
    pub api_token: Option<String>,
    pub max_body_bytes: usize,
    /// Browses `{ns}.dead-letters` for the dashboard.
    pub dead_letters: DeadLetterBrowser,
}
