//! The outbox relay: gets committed commands to RabbitMQ, and forgets them once confirmed.
//!
//! Fresh rows come straight from the actors after their transaction commits (the fast path). A sweep
//! re-reads the outbox table every second for rows that are not on their way: those left by a crash,
//! or whose publish failed while the broker was away. A row is deleted only after RabbitMQ confirmed
//! it, so every command goes out at least once. Confirmed rows are deleted by the writer together
//! with its next batch of transitions, so under load deleting them costs no commit of its own.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::amqp::PublishResult;
use crate::metrics::Metrics;
use crate::outbox::OutboxMessage;
use crate::runtime::ownership::Ownership;
use crate::runtime::sending::Sendings;
use crate::store::{Store, Writer};

/// How often the outbox table is swept, and how old a row must be to be picked up by the sweep.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_BATCH: i64 = 5_000;
/// Confirmed rows are deleted in batches, at least this often.
const DELETE_EVERY: Duration = Duration::from_millis(20);

/// Only rows of partitions `ownership` holds are swept: the others are their owners' to send.
// Each argument is a channel end or a handle the relay serves; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    store: Store,
    ownership: Ownership,
    writer: Writer,
    mut fresh: mpsc::UnboundedReceiver<Vec<OutboxMessage>>,
    outbound: mpsc::UnboundedSender<OutboxMessage>,
    mut results: mpsc::UnboundedReceiver<PublishResult>,
    metrics: Arc<Metrics>,
    sendings: Sendings,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Rows handed to the publisher and not yet deleted or failed: never sent twice at once.
        // The value is when the row was committed, for the publish latency, and which attempt it
        // is, whose reply timeout runs from the confirm.
        let mut on_the_way: HashMap<i64, OnTheWay> = HashMap::new();
        let mut confirmed: Vec<i64> = Vec::new();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut flush = tokio::time::interval(DELETE_EVERY);
        // At most one deletion under way; confirms arriving meanwhile wait for the next one.
        let mut deleting = FuturesUnordered::new();
        loop {
            tokio::select! {
                batch = fresh.recv() => {
                    let Some(batch) = batch else { break };
                    for message in batch {
                        if !hand_over(&mut on_the_way, &outbound, message) {
                            return;
                        }
                    }
                }
                result = results.recv() => {
                    let Some(result) = result else { break };
                    match result.result {
                        Ok(()) => {
                            let row = on_the_way.get(&result.outbox_id);
                            metrics.observe_published(row.map(|r| r.created_at));
                            if let Some(row) = row {
                                sendings.confirmed(row.saga_id, row.attempt.clone(), Utc::now());
                            }
                            confirmed.push(result.outbox_id);
                        }
                        Err(reason) => {
                            metrics.observe_publish_failure();
                            match on_the_way.remove(&result.outbox_id) {
                                Some(row) => log::debug!(
                                    saga_id:% = row.saga_id,
                                    saga = row.saga_name.as_str(),
                                    step = row.attempt.as_ref().map(|a| a.0.as_str()),
                                    attempt = row.attempt.as_ref().map(|a| a.2),
                                    trace_id = logfmt::trace_id(row.traceparent.as_deref());
                                    "outbox row {} not published: {reason}",
                                    result.outbox_id
                                ),
                                None => log::debug!(
                                    "outbox row {} not published: {reason}",
                                    result.outbox_id
                                ),
                            }
                        }
                    }
                }
                _ = flush.tick(), if !confirmed.is_empty() && deleting.is_empty() => {
                    let ids = std::mem::take(&mut confirmed);
                    let writer = writer.clone();
                    deleting.push(async move {
                        let done = writer.forget_outbox(ids.clone()).await;
                        (ids, done)
                    });
                }
                Some((ids, done)) = deleting.next(), if !deleting.is_empty() => match done {
                    Ok(()) => {
                        for id in ids {
                            on_the_way.remove(&id);
                        }
                    }
                    Err(e) => {
                        log::warn!("cannot delete confirmed outbox rows ({e}); will try again");
                        confirmed.extend(ids);
                    }
                },
                _ = sweep.tick() => {
                    let before = Utc::now() - chrono::Duration::from_std(SWEEP_EVERY).unwrap_or_default();
                    let partitions = ownership.partitions();
                    let owned: Vec<u32> = ownership.leases().iter().map(|l| l.partition).collect();
                    if owned.is_empty() {
                        continue;
                    }
                    let found = store
                        .interact(move |db| db.pending_outbox(before, SWEEP_BATCH, partitions, owned))
                        .await;
                    match found {
                        Ok(rows) => {
                            // Rows left by a crash are unconfirmed: their attempts cannot time out.
                            sendings.unconfirmed(&rows);
                            for message in rows {
                                if !hand_over(&mut on_the_way, &outbound, message) {
                                    return;
                                }
                            }
                        }
                        Err(e) => log::warn!("outbox sweep failed: {e}"),
                    }
                }
            }
        }
    })
}

/// Sends a row to the publisher unless it is already on its way; `false` once the publisher is gone.
/// A row handed to the publisher.
struct OnTheWay {
    created_at: DateTime<Utc>,
    saga_id: uuid::Uuid,
    attempt: Option<(String, crate::saga::CommandKind, u32)>,
    /// For the line saying it was not published, which names its saga as every such line does.
    saga_name: String,
    traceparent: Option<String>,
}

fn hand_over(
    on_the_way: &mut HashMap<i64, OnTheWay>,
    outbound: &mpsc::UnboundedSender<OutboxMessage>,
    message: OutboxMessage,
) -> bool {
    match on_the_way.entry(message.id) {
        Entry::Occupied(_) => true,
        Entry::Vacant(slot) => {
            slot.insert(OnTheWay {
                created_at: message.created_at,
                saga_id: message.saga_id,
                attempt: Sendings::key(&message),
                saga_name: message.saga_name.clone(),
                traceparent: message.traceparent.clone(),
            });
            outbound.send(message).is_ok()
        }
    }
}
