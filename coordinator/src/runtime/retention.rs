//! History retention: each coordinator deletes the finished sagas of the partitions it owns once
//! they are older than their final state's retention (`SAGA_RETAIN_COMMITTED`, `..._COMPENSATED`,
//! `..._ABORTED`). `failed` and unfinished sagas are never deleted: they still need a person or the
//! coordinator. Deletion goes in batches with a pause between them, so that a year's backlog on the
//! first run takes Postgres' spare time and not the writer's (`store/retention.rs` is the SQL).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::oneshot;

use super::pace::Pace;
use crate::config::Retention;
use crate::metrics::Metrics;
use crate::saga::SagaState;
use crate::store::{Store, StoreError};

/// The most sagas deleted per statement: small enough that its locks and WAL are a blip.
pub const MAX_BATCH: u32 = 500;

/// How long each final state is kept, how fast a backlog goes, and how often to look once
/// nothing was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub committed: Retention,
    pub compensated: Retention,
    pub aborted: Retention,
    /// Sagas deleted per second at most, per coordinator.
    pub rate: u32,
    pub every: Duration,
}

impl RetentionPolicy {
    /// The final states with a retention, and how long each is kept. `failed` is never among them.
    pub fn rules(&self) -> Vec<(SagaState, Duration)> {
        [
            (SagaState::Committed, self.committed),
            (SagaState::Compensated, self.compensated),
            (SagaState::Aborted, self.aborted),
        ]
        .into_iter()
        .filter_map(|(state, Retention(keep))| keep.map(|keep| (state, keep)))
        .collect()
    }

    /// Whether anything is ever deleted.
    pub fn keeps_everything(&self) -> bool {
        self.rules().is_empty()
    }
}

/// Deletes what the policy says until `stop` fires.
pub async fn run(
    policy: RetentionPolicy,
    store: Store,
    instance: String,
    metrics: Arc<Metrics>,
    mut stop: oneshot::Receiver<()>,
) {
    let every = policy.every;
    let pace = Pace::new(policy.rate, MAX_BATCH);
    // Sagas deleted since their leftover commands were last swept.
    let mut unswept = 0u64;
    loop {
        let started = tokio::time::Instant::now();
        let wait = match purge_batch(&policy, &store, &instance, &metrics, pace.batch()).await {
            Ok(round) => {
                unswept += u64::from(round.deleted);
                if round.more_waiting {
                    // Go on once what was deleted had its share of a second.
                    pace.after(round.deleted, started)
                } else {
                    if unswept > 0 && sweep_commands(&store).await {
                        unswept = 0;
                    }
                    every
                }
            }
            Err(e) => {
                log::warn!(
                    "retention: cannot delete old sagas now ({e}); trying again in {every:?}"
                );
                every
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Deletes the commands that purged sagas left in the outbox, once a backlog is done: one scan
/// of the outbox, not one per batch (`store/retention.rs`). Answers whether it could.
async fn sweep_commands(store: &Store) -> bool {
    match store.interact(|db| db.purge_orphaned_commands()).await {
        Ok(swept) => {
            if swept > 0 {
                log::info!("retention: deleted {swept} commands of purged sagas from the outbox");
            }
            true
        }
        Err(e) => {
            log::warn!("retention: cannot delete the commands of purged sagas now ({e})");
            false
        }
    }
}

/// What one round of deletions did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Round {
    /// Sagas deleted, of every state: what the pace counts.
    deleted: u32,
    /// Some state filled its share of the batch: more of it is waiting.
    more_waiting: bool,
}

/// Each state's share of a batch: a round deletes at most one batch however many final states
/// have a retention, so that `SAGA_RETENTION_RATE` holds for all of them together.
fn share_of_batch(batch: u32, states: usize) -> u32 {
    let states = u32::try_from(states.max(1)).unwrap_or(u32::MAX);
    (batch / states).max(1)
}

/// One round: each final state with a retention deletes up to its share of `batch`.
async fn purge_batch(
    policy: &RetentionPolicy,
    store: &Store,
    instance: &str,
    metrics: &Metrics,
    batch: u32,
) -> Result<Round, StoreError> {
    let rules = policy.rules();
    let share = share_of_batch(batch, rules.len());
    let mut round = Round::default();
    for (state, keep) in rules {
        let Ok(keep) = chrono::Duration::from_std(keep) else {
            continue;
        };
        let finished_before = Utc::now() - keep;
        let owner = instance.to_owned();
        let purged = store
            .interact(move |db| {
                db.purge_finished(&owner, state.as_str(), finished_before, i64::from(share))
            })
            .await?;
        if purged > 0 {
            log::debug!("retention: deleted {purged} {} sagas", state.as_str());
            metrics.observe_purged(state.as_str(), purged);
        }
        let purged = u32::try_from(purged).unwrap_or(u32::MAX);
        round.deleted = round.deleted.saturating_add(purged);
        round.more_waiting |= purged >= share;
    }
    Ok(round)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_and_unset_states_are_kept() {
        let day = Duration::from_secs(86_400);
        let policy = RetentionPolicy {
            committed: Retention(Some(day)),
            compensated: Retention(None),
            aborted: Retention(Some(day * 7)),
            rate: 500,
            every: Duration::from_secs(30),
        };
        assert_eq!(
            policy.rules(),
            vec![(SagaState::Committed, day), (SagaState::Aborted, day * 7)]
        );
        let forever = RetentionPolicy {
            committed: Retention(None),
            compensated: Retention(None),
            aborted: Retention(None),
            rate: 500,
            every: Duration::from_secs(30),
        };
        assert!(forever.keeps_everything());
        assert!(!policy.keeps_everything());
    }

    #[test]
    fn the_final_states_share_one_batch_so_the_rate_holds_for_all_of_them() {
        assert_eq!(share_of_batch(100, 3), 33);
        assert_eq!(share_of_batch(100, 1), 100);
        assert_eq!(share_of_batch(2, 3), 1, "each state still deletes");
        assert_eq!(share_of_batch(100, 0), 100);
        // A round of three full shares is paced as the sagas it deleted, not as one state's.
        let pace = Pace::new(500, MAX_BATCH);
        let share = share_of_batch(pace.batch(), 3);
        let started = tokio::time::Instant::now();
        let wait = pace.after(3 * share, started);
        assert!(wait > Duration::from_millis(150), "{wait:?}");
    }
}
