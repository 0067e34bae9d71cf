//! Waiting for Postgres at start-up: `serve` tries to prepare the database (create, check, migrate)
//! until it can, with capped exponential backoff and jitter, so that a database that is late or
//! briefly away does not turn into a crash loop. The wait logs why once per interval, not per try.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::store::{self, PrepareError};

/// First pause between tries; it doubles up to [`MAX_DELAY`], plus jitter of up to as much again.
const MIN_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(4);
/// A failed try is logged at most this often (the first one at once).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The pauses between tries: capped exponential with jitter, never ending.
fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The pause before the next try, shortened so that the last try falls on the limit; `None` once the
/// limit is reached (give up).
fn next_pause(delay: Duration, waited: Duration, limit: Option<Duration>) -> Option<Duration> {
    match limit {
        None => Some(delay),
        Some(limit) if waited >= limit => None,
        Some(limit) => Some(delay.min(limit - waited)),
    }
}

/// Decides which failed tries are logged: the first, then one per interval, each saying how many
/// tries it stands for.
#[derive(Debug)]
struct LogThrottle {
    every: Duration,
    last_logged: Option<Instant>,
    unlogged: u32,
}

impl LogThrottle {
    fn new(every: Duration) -> Self {
        LogThrottle {
            every,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// A try failed at `now`: `Some(tries)` if it is to be logged, with the failed tries it stands
    /// for (itself and those left unlogged since the last line).
    fn failed(&mut self, now: Instant) -> Option<u32> {
        self.unlogged += 1;
        let due = self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= self.every);
        if !due {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Prepares the database (see [`store::prepare`]), trying again while Postgres is unreachable, for
/// at most `limit` (`None`: as long as it takes). `waiting` learns each reason, for `/readyz`. Any
/// other failure (a schema from a newer build, a failing migration) ends the wait at once.
pub async fn prepare_database(
    database_url: &str,
    limit: Option<Duration>,
    waiting: impl Fn(&str),
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut pauses = backoff();
    let mut throttle = LogThrottle::new(LOG_EVERY);
    let mut tries = 0u32;
    loop {
        tries += 1;
        let url = database_url.to_owned();
        let prepared = tokio::task::spawn_blocking(move || store::prepare(&url))
            .await
            .map_err(|e| anyhow::anyhow!("the database preparation did not finish: {e}"))?;
        let reason = match prepared {
            Ok(_) => {
                if tries > 1 {
                    log::info!(
                        "Postgres is ready after {tries} tries ({:.1} s)",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(());
            }
            Err(PrepareError::Unreachable(reason)) => reason,
            Err(other) => return Err(anyhow::anyhow!("cannot prepare the database: {other}")),
        };
        waiting(&reason);
        let waited = started.elapsed();
        let pause = pauses.next().unwrap_or(MAX_DELAY);
        let Some(pause) = next_pause(pause, waited, limit) else {
            anyhow::bail!(
                "cannot prepare the database: Postgres still unreachable after {:.1} s and {tries} \
                 tries (SAGA_DB_WAIT): {reason}",
                waited.as_secs_f64()
            );
        };
        if let Some(failed) = throttle.failed(Instant::now()) {
            log::warn!(
                "waiting for Postgres ({failed} failed tr{} since the last line, {:.0} s so far; \
                 trying again with backoff): {reason}",
                if failed == 1 { "y" } else { "ies" },
                waited.as_secs_f64()
            );
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_and_stay_under_the_cap_with_jitter() {
        let pauses: Vec<Duration> = backoff().take(40).collect();
        assert_eq!(pauses.len(), 40, "the backoff never ends");
        for pause in &pauses {
            assert!(*pause >= MIN_DELAY, "{pause:?}");
            // Jitter adds up to as much again as the capped delay.
            assert!(*pause <= MAX_DELAY * 2, "{pause:?}");
        }
        let late = &pauses[20..];
        assert!(
            late.iter().all(|p| *p >= MAX_DELAY),
            "late pauses reach the cap: {late:?}"
        );
        assert!(
            late.windows(2).any(|w| w[0] != w[1]),
            "jitter spreads the tries: {late:?}"
        );
    }

    #[test]
    fn the_last_pause_ends_on_the_limit_and_then_the_wait_gives_up() {
        let s = Duration::from_secs;
        assert_eq!(next_pause(s(4), s(100), None), Some(s(4)));
        assert_eq!(next_pause(s(4), s(1), Some(s(10))), Some(s(4)));
        assert_eq!(next_pause(s(4), s(8), Some(s(10))), Some(s(2)));
        assert_eq!(next_pause(s(4), s(10), Some(s(10))), None);
        assert_eq!(next_pause(s(4), s(0), Some(s(0))), None, "0 tries once");
    }

    #[test]
    fn a_failed_try_is_logged_once_per_interval_with_the_tries_it_stands_for() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut throttle = LogThrottle::new(ms(10_000));
        assert_eq!(
            throttle.failed(t0),
            Some(1),
            "the first failure is logged at once"
        );
        assert_eq!(throttle.failed(t0 + ms(250)), None);
        assert_eq!(throttle.failed(t0 + ms(750)), None);
        assert_eq!(throttle.failed(t0 + ms(9_999)), None);
        assert_eq!(throttle.failed(t0 + ms(10_000)), Some(4));
        assert_eq!(throttle.failed(t0 + ms(12_000)), None);
        assert_eq!(throttle.failed(t0 + ms(20_000)), Some(2));
    }
}
