//! Waiting on conditions instead of sleeping.

use std::time::{Duration, Instant};

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(25);

/// Polls `probe` until it returns `Some`, and returns that; panics after `timeout` naming `what`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Like [`eventually`] for a blocking probe, from synchronous code.
pub fn eventually_blocking<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until a coordinator has connected through `proxy`: a fault injected before that would
/// stop the connection from opening at all instead of cutting it.
pub async fn connected_through(proxy: &crate::TcpProxy) {
    eventually(
        "the coordinator to connect through the proxy",
        crate::SAGA_TIMEOUT,
        async || (proxy.active() >= 1).then_some(()),
    )
    .await;
}
