//! The RabbitMQ edge of the coordinator, and the only module that knows lapin.
//!
//! It turns the AMQP side of the contract (sections 3 and 4) into plain tokio channels, so the rest of
//! the coordinator can be written and tested without a broker:
//!
//! - `outbound`: outbox messages to publish. Each one is answered by exactly one [`PublishResult`] on
//!   `published`, `Ok` only once RabbitMQ confirmed it (publisher confirms, `mandatory`), so the caller
//!   deletes an outbox row only when the command is safely in a participant queue.
//! - `inbound`: replies and dead-lettered commands as [`InboundDelivery`]s. The caller settles each one
//!   through its oneshot after it committed the effect, so a crash in between redelivers the message
//!   instead of losing it.
//!
//! One supervisor task owns the connection: it connects with backoff, declares the topology, runs the
//! publisher and two consumers, and starts over whenever the connection fails. Nothing is buffered
//! while disconnected: the outbox in Postgres already is the buffer, so publishes are refused at once
//! and the caller re-sends them later.

mod consumer;
pub mod dead_letters;
mod publisher;
mod supervisor;
mod topology;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;

use lapin::types::ShortString;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::outbox::OutboxMessage;
use crate::partition::Partitions;

/// How to reach RabbitMQ and which names to use there.
#[derive(Clone)]
pub struct AmqpSettings {
    /// `amqp://user:pass@host:port/vhost`, or the nodes of a cluster as a comma-separated list of
    /// such URLs: each (re)connection tries the next in turn.
    pub url: String,
    /// Prefix of every AMQP name (`SAGA_NAMESPACE`).
    pub namespace: String,
    /// Type of every queue declared (`SAGA_QUEUE_TYPE`).
    pub queue_type: names::QueueType,
    /// Unsettled deliveries per consumer: bounds how much the coordinator holds in memory at once
    /// (0 means no limit, as in RabbitMQ).
    pub prefetch: u16,
    /// The database's partitions: each has a reply queue, where replies for its sagas that reached
    /// another instance are forwarded.
    pub partitions: Partitions,
    /// This instance's id (`SAGA_INSTANCE_ID`): its commands name its own reply queue.
    pub instance: String,
}

impl fmt::Debug for AmqpSettings {
    /// Hides the password, so settings can be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &redact_url(&self.url))
            .field("namespace", &self.namespace)
            .field("queue_type", &self.queue_type)
            .field("prefetch", &self.prefetch)
            .field("instance", &self.instance)
            .finish()
    }
}

impl AmqpSettings {
    /// The URLs of `url`, in the order connections try them; never empty.
    fn urls(&self) -> Vec<String> {
        contract::broker::amqp_urls(&self.url)
    }
}

/// Names of the contract's topology (section 3), spelled once in the `contract` crate.
pub use contract::names;

/// How the caller settles an [`InboundDelivery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The effect is committed: remove the message from the queue.
    Ack,
    /// Not handled (e.g. the database was unavailable): put it back to be delivered again.
    Requeue,
    /// For a saga of this partition, which another coordinator owns: republish it to the
    /// partition's reply queue (with a confirm), then remove it from this queue.
    Forward(u32),
}

/// What arrives from the broker.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A reply that passed [`contract::ReplyBody::parse`].
    Reply(contract::ReplyBody),
    /// A command a participant rejected without requeue (seen through the dead-letter fanout).
    DeadLettered {
        saga_id: Uuid,
        step: Option<String>,
        kind: contract::CommandKind,
        attempt: u32,
    },
}

/// One inbound message and the way to settle it.
///
/// Dropping `settle` without sending counts as [`Settlement::Requeue`], so nothing is lost when the
/// caller fails half-way. If the connection is lost first, sending on `settle` may fail: the broker
/// redelivers the message anyway, so that error can be ignored.
#[derive(Debug)]
pub struct InboundDelivery {
    pub message: Inbound,
    pub settle: oneshot::Sender<Settlement>,
}

/// The fate of one outbox message handed to `outbound`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishResult {
    pub outbox_id: i64,
    /// `Ok` once the broker confirmed the message into a queue; `Err` with the reason otherwise
    /// (the caller keeps the outbox row and sends it again later).
    pub result: Result<(), String>,
}

/// Control of the broker task started by [`start`].
///
/// Dropping the handle without [`BrokerHandle::shutdown`] leaves the task running until nobody is
/// left to talk to it (the `outbound` sender and the `inbound` receiver are both gone), like a
/// detached tokio task.
#[derive(Debug)]
pub struct BrokerHandle {
    connected: watch::Receiver<bool>,
    dead_letters: watch::Receiver<Option<u32>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl BrokerHandle {
    /// `true` while connected with the topology declared and the consumers running (for `/readyz`).
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Messages waiting in `{ns}.dead-letters`, read every few seconds while connected (for the
    /// metrics); `None` until first read.
    pub fn dead_letters(&self) -> watch::Receiver<Option<u32>> {
        self.dead_letters.clone()
    }

    /// Stops consuming, lets in-flight settlements and confirms finish for a short grace period, and
    /// closes the connection.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        if let Err(e) = self.task.await {
            log::error!("the RabbitMQ task ended abnormally: {e}");
        }
    }
}

/// Spawns the broker task on the current tokio runtime and returns at once.
///
/// Must be called from within a tokio runtime. `connected` starts `false`; publishes are answered with
/// `Err("not connected")` until the first connection is up.
///
/// The reply queues of the partitions in `owned` are consumed, and follow it as it changes.
pub fn start(
    settings: AmqpSettings,
    outbound: mpsc::UnboundedReceiver<OutboxMessage>,
    published: mpsc::UnboundedSender<PublishResult>,
    inbound: mpsc::Sender<InboundDelivery>,
    owned: watch::Receiver<BTreeSet<u32>>,
) -> BrokerHandle {
    let (connected_tx, connected) = watch::channel(false);
    let (dead_letters_tx, dead_letters) = watch::channel(None);
    let (stop, stop_rx) = watch::channel(false);
    let supervisor = supervisor::Supervisor::new(
        settings,
        outbound,
        published,
        inbound,
        connected_tx,
        dead_letters_tx,
        stop_rx,
        owned,
    );
    let task = tokio::spawn(supervisor.run());
    BrokerHandle {
        connected,
        dead_letters,
        stop,
        task,
    }
}

/// Why an AMQP operation failed, with what the coordinator was doing at the time.
#[derive(Debug, thiserror::Error)]
enum BrokerError {
    #[error("{context}: {source}")]
    Amqp {
        context: String,
        #[source]
        source: lapin::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// A queue exists with other arguments than ours, typically another queue type.
    #[error(
        "RabbitMQ refuses to declare queue {queue} with SAGA_QUEUE_TYPE={queue_type}: {refusal}. \
         The queue exists with other arguments, most likely as another queue type: SAGA_QUEUE_TYPE \
         must be the type the namespace's queues were declared with (participants included). To \
         switch the namespace's type, stop its coordinators and participants, drain and delete its \
         queues, or use a new SAGA_NAMESPACE (docs/contract-notes.md, \"Queue type\")"
    )]
    Inequivalent {
        queue: String,
        queue_type: names::QueueType,
        refusal: String,
    },
    #[error("{0} timed out")]
    Timeout(String),
}

/// Attaches what was being done to a lapin error.
trait Context<T> {
    fn context(self, context: impl Into<String>) -> Result<T, BrokerError>;
}

impl<T> Context<T> for Result<T, lapin::Error> {
    fn context(self, context: impl Into<String>) -> Result<T, BrokerError> {
        self.map_err(|source| BrokerError::Amqp {
            context: context.into(),
            source,
        })
    }
}

/// An AMQP short string; lapin's `From<String>` panics past 255 bytes, so names go through here.
fn short(s: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(s)
        .map_err(|_| BrokerError::Invalid(format!("AMQP name longer than 255 bytes: {s:?}")))
}

/// The URL, or each URL of a list, with its password replaced, for logs.
fn redact_url(url: &str) -> String {
    contract::broker::redact_urls(url)
}
