//! Failure injection, by setting.

use std::time::Duration;

/// Probabilities (0 to 1) of injected faults. All zero by default.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct Faults {
    /// An action refuses with a business `failure` (no effect).
    #[arg(long, env = "SHOP_FAILURE_RATE", default_value_t = 0.0)]
    pub failure_rate: f64,
    /// A command answers `retry` without doing anything.
    #[arg(long, env = "SHOP_TRANSIENT_RATE", default_value_t = 0.0)]
    pub transient_rate: f64,
    /// A command waits `slow_ms` before it is handled.
    #[arg(long, env = "SHOP_SLOW_RATE", default_value_t = 0.0)]
    pub slow_rate: f64,
    #[arg(long, env = "SHOP_SLOW_MS", default_value_t = 1500)]
    pub slow_ms: u64,
    /// A command goes back to the queue after its reply, so it is delivered again.
    #[arg(long, env = "SHOP_DUPLICATE_RATE", default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// The process aborts after the barrier commits a command's effect, before the reply.
    #[arg(long, env = "SHOP_CRASH_RATE", default_value_t = 0.0)]
    pub crash_rate: f64,
}

impl Faults {
    /// The demo's mix when no rate is set: some refusals, transient errors, slow replies and
    /// duplicate deliveries (no crashes: the demo runs the services in its own process).
    pub fn demo_mix() -> Faults {
        Faults {
            failure_rate: 0.08,
            transient_rate: 0.05,
            slow_rate: 0.03,
            slow_ms: 1500,
            duplicate_rate: 0.05,
            crash_rate: 0.0,
        }
    }

    /// Whether every rate is zero.
    pub fn is_none(&self) -> bool {
        [
            self.failure_rate,
            self.transient_rate,
            self.slow_rate,
            self.duplicate_rate,
            self.crash_rate,
        ]
        .iter()
        .all(|r| *r == 0.0)
    }
}

fn roll(p: f64) -> bool {
    p > 0.0 && fastrand::f64() < p
}

impl Faults {
    /// Whether this action refuses.
    pub fn refuse(&self) -> bool {
        roll(self.failure_rate)
    }

    /// Whether this command fails transiently.
    pub fn transient(&self) -> bool {
        roll(self.transient_rate)
    }

    /// How long to stall this command, if at all.
    pub fn slow(&self) -> Option<Duration> {
        roll(self.slow_rate).then(|| Duration::from_millis(self.slow_ms))
    }

    /// Whether to crash now.
    pub fn crash(&self) -> bool {
        roll(self.crash_rate)
    }
}
