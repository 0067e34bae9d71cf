//! Pacing for background work over many sagas (bulk actions, retention): a batch is a fifth of a
//! second's worth at the configured rate, and the next batch waits until the last one had its
//! share of a second, so live traffic keeps the writer and Postgres however large the backlog.

use std::time::Duration;

use tokio::time::Instant;

/// Batches per second at full rate.
const BATCHES_PER_SECOND: u32 = 5;

/// A rate in sagas per second and the batch size that follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    rate: u32,
    batch: u32,
}

impl Pace {
    /// At most `rate` sagas a second (at least one), in batches of at most `max_batch`.
    pub fn new(rate: u32, max_batch: u32) -> Self {
        let rate = rate.max(1);
        let batch = (rate / BATCHES_PER_SECOND).clamp(1, max_batch.max(1));
        Self { rate, batch }
    }

    /// Sagas per batch.
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// How long to wait after a batch begun at `started` that handled `done` sagas, while more
    /// is waiting.
    pub fn after(&self, done: u32, started: Instant) -> Duration {
        let share = Duration::from_secs_f64(f64::from(done) / f64::from(self.rate));
        share.saturating_sub(started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_a_fifth_of_a_second_within_bounds() {
        assert_eq!(Pace::new(500, 500).batch(), 100);
        assert_eq!(Pace::new(10_000, 500).batch(), 500);
        assert_eq!(Pace::new(3, 500).batch(), 1);
        assert_eq!(Pace::new(0, 500).batch(), 1);
    }

    #[test]
    fn a_batch_waits_for_what_is_left_of_its_share_of_a_second() {
        let pace = Pace::new(200, 500);
        let ago = |ms| {
            Instant::now()
                .checked_sub(Duration::from_millis(ms))
                .expect("uptime")
        };
        let fresh = pace.after(40, Instant::now());
        assert!(fresh <= Duration::from_millis(200) && fresh > Duration::from_millis(100));
        assert!(pace.after(40, ago(150)) <= Duration::from_millis(50));
        assert_eq!(pace.after(40, ago(300)), Duration::ZERO);
    }
}
