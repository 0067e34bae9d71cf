//! Bulk actions: one operator's action (abort, retry, resolve, pause, resume, retry-now) over every
//! saga a filter matched. The web edge stores the job with its sagas (`store/bulk_actions.rs`);
//! every coordinator works through the sagas of the partitions it owns, one batch per bulk action
//! at a time, a few sagas at once, so live traffic keeps the writer. Each saga's action is an
//! ordinary operator's event sent to its actor, tagged with the bulk action: the write of the
//! transition marks the saga `applied`, so a crash anywhere leaves it either done and marked or
//! not done and still to do, never done twice. What changes no saga (already as asked, or the
//! action does not apply to it: the 409 of the single action) is recorded here afterwards.
//!
//! It looks every [`EVERY`], and at once when a bulk action is created at this coordinator; a
//! partition handed over mid-batch is finished by its next owner.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

use super::ownership::Ownership;
use super::pace::Pace;
use super::{EngineError, Registry};
use crate::saga::machine::Event;
use crate::saga::PausedBy;
use crate::store::bulk_actions::OpenBulkAction;
use crate::store::{Store, StoreError};

/// How often each coordinator looks for bulk actions to work on.
pub const EVERY: Duration = Duration::from_secs(1);
/// The most sagas of one bulk action taken per look.
const MAX_BATCH: u32 = 200;
/// Sagas whose action is under way at once: a few, so the actions share the writer with live
/// traffic instead of filling its batches.
const AT_ONCE: usize = 8;

/// What a bulk action applies to each saga: the operator's single actions of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkOperation {
    Abort,
    Retry,
    Resolve,
    Pause,
    Resume,
    RetryNow,
}

impl BulkOperation {
    pub const ALL: [BulkOperation; 6] = [
        BulkOperation::Abort,
        BulkOperation::Retry,
        BulkOperation::Resolve,
        BulkOperation::Pause,
        BulkOperation::Resume,
        BulkOperation::RetryNow,
    ];

    /// The name in the API, the same as the single action's path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            BulkOperation::Abort => "abort",
            BulkOperation::Retry => "retry",
            BulkOperation::Resolve => "resolve",
            BulkOperation::Pause => "pause",
            BulkOperation::Resume => "resume",
            BulkOperation::RetryNow => "retry-now",
        }
    }

    pub fn parse(name: &str) -> Option<BulkOperation> {
        Self::ALL.into_iter().find(|o| o.as_str() == name)
    }

    /// The saga's event; `note` is resolve's (required there, refused by the API elsewhere).
    fn event(self, note: Option<&str>) -> Event {
        match self {
            BulkOperation::Abort => Event::Abort,
            BulkOperation::Retry => Event::Retry,
            BulkOperation::Resolve => Event::Resolve {
                note: note.unwrap_or_default().to_owned(),
            },
            BulkOperation::Pause => Event::Pause {
                by: PausedBy::Operator,
            },
            BulkOperation::Resume => Event::Resume {
                by: PausedBy::Operator,
            },
            BulkOperation::RetryNow => Event::RetryNow,
        }
    }
}

/// Wakes this coordinator's worker when a bulk action was created here; cheap to clone.
#[derive(Clone, Default)]
pub struct BulkWake {
    notify: Arc<Notify>,
}

impl BulkWake {
    pub fn created(&self) {
        self.notify.notify_one();
    }
}

/// Works until `stop` fires, applying at most `rate` sagas per second.
pub async fn run(
    registry: Registry,
    store: Store,
    ownership: Ownership,
    wake: BulkWake,
    rate: u32,
    mut stop: oneshot::Receiver<()>,
) {
    let pace = Pace::new(rate, MAX_BATCH);
    loop {
        let started = tokio::time::Instant::now();
        let wait = match work(&registry, &store, &ownership, i64::from(pace.batch())).await {
            // More may be waiting: go on once this batch had its share of a second.
            Ok(done) if done > 0 => pace.after(done, started),
            Ok(_) => EVERY,
            Err(e) => {
                log::warn!("bulk actions: cannot work on them ({e}); trying again in {EVERY:?}");
                EVERY
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notify.notified() => {}
        }
    }
}

/// One batch of each open bulk action in the owned partitions; answers how many sagas it took
/// (none: nothing is waiting here now).
async fn work(
    registry: &Registry,
    store: &Store,
    ownership: &Ownership,
    batch: i64,
) -> Result<u32, StoreError> {
    let open = store.interact(|db| db.open_bulk_actions()).await?;
    let partitions = ownership.owned_partition_columns();
    let mut taken = 0;
    if !partitions.is_empty() {
        for action in open {
            let Some(operation) = BulkOperation::parse(&action.action) else {
                log::error!(
                    "bulk action {}: unknown action {:?}; left as it is",
                    action.id,
                    action.action
                );
                continue;
            };
            let (id, owned) = (action.id, partitions.clone());
            let sagas = store
                .interact(move |db| db.bulk_sagas_to_do(id, &owned, batch))
                .await?;
            taken += u32::try_from(sagas.len()).unwrap_or(u32::MAX);
            let settled = apply(registry, store, &action, operation, sagas).await;
            store
                .interact(move |db| db.settle_bulk_sagas(id, &settled))
                .await?;
        }
    }
    for id in store.interact(|db| db.finish_bulk_actions()).await? {
        log::info!("bulk action {id}: every saga is done");
    }
    Ok(taken)
}

/// Applies the action to `sagas`; answers the outcomes that changed no saga. A saga left out is
/// done later: its partition moved, or Postgres or its actor could not take it now.
async fn apply(
    registry: &Registry,
    store: &Store,
    action: &OpenBulkAction,
    operation: BulkOperation,
    sagas: Vec<Uuid>,
) -> Vec<(Uuid, &'static str, Option<String>)> {
    let event = operation.event(action.note.as_deref());
    stream::iter(sagas)
        .map(|saga| {
            let event = event.clone();
            async move {
                if operation == BulkOperation::Resume {
                    // As the single resume: its name's pause would hold it again.
                    match store.interact(move |db| db.name_paused_for(saga)).await {
                        Ok(false) => {}
                        Ok(true) => {
                            return Some((
                                saga,
                                "skipped",
                                Some("every saga of its name is paused: resume the name".into()),
                            ))
                        }
                        Err(_) => return None,
                    }
                }
                match registry.operate_for(saga, event, Some(action.id)).await {
                    // If it changed the saga, its write marked it `applied` already.
                    Ok(_) => Some((saga, "unchanged", None)),
                    Err(EngineError::Conflict(reason)) => Some((saga, "skipped", Some(reason))),
                    Err(EngineError::NotFound(_)) => {
                        Some((saga, "skipped", Some("no such saga".into())))
                    }
                    Err(e) => {
                        log::debug!(
                            saga_id:% = saga,
                            bulk_action:% = action.id;
                            "bulk action {}: saga {saga} later: {e}",
                            action.id
                        );
                        None
                    }
                }
            }
        })
        .buffer_unordered(AT_ONCE)
        .filter_map(|settled| async move { settled })
        .collect()
        .await
}
