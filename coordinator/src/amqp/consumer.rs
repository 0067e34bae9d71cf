//! The consumers: replies (the shared `{ns}.replies` and the reply queue of each partition this
//! instance owns), and the coordinator's copy of the dead-letter fanout.
//!
//! Each runs as its own task with manual acknowledgements. A delivery is settled only when the caller
//! answers its oneshot; the consumer task watches those answers beside the stream, so slow
//! settlements never hold up consumption beyond the prefetch window, and acknowledges settled
//! deliveries in batches (see [`Acks`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use contract::{CommandBody, CommandKind, ReplyBody};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, SelectAll};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, Consumer};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{short, BrokerError, Context, Inbound, InboundDelivery, Settlement};

/// Which queue a consumer reads, which decides how its deliveries are understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Replies,
    /// This instance's own reply queue, named in the commands it publishes.
    InstanceReplies,
    /// The reply queues of the partitions owned, all on one channel: replies, and what other
    /// instances forwarded to their owner.
    PartitionReplies,
    DeadCommands,
}

impl Source {
    pub(super) fn label(self) -> &'static str {
        match self {
            Source::Replies => "replies",
            Source::InstanceReplies => "instance replies",
            Source::PartitionReplies => "partition replies",
            Source::DeadCommands => "dead-commands",
        }
    }
}

/// Marks a dead-lettered command forwarded to a partition's reply queue, so its owner reads it as
/// one and not as a malformed reply.
const FORWARDED_DEAD_LETTER: &str = "x-saga-forwarded-dead-letter";

/// Why a consumer task ended.
#[derive(Debug)]
pub(super) enum ConsumerEnd {
    /// The stream ended or failed (connection or channel gone, consumer cancelled).
    Lost(String),
    /// Nobody receives `inbound` any more: consuming stopped on purpose and must not be restarted.
    InboundClosed,
}

/// A running consumer and what it takes to stop it.
pub(super) struct ConsumerHandle {
    pub(super) source: Source,
    pub(super) channel: Channel,
    /// The consumer tag of each queue consumed, by partition (the one queue of the other sources is
    /// under 0).
    tags: BTreeMap<u32, ShortString>,
    /// `None` once the task's end has been observed.
    pub(super) task: Option<JoinHandle<ConsumerEnd>>,
    /// Hands the task more consumers of its channel (partition queues only); dropped when
    /// stopping, so the task ends once its consumers are cancelled.
    more: Option<mpsc::UnboundedSender<Consumer>>,
    namespace: String,
}

impl ConsumerHandle {
    /// Consumes the reply queues of the `owned` partitions on one channel: settled replies are
    /// acknowledged together (`multiple`) across queues, which costs RabbitMQ and the coordinator
    /// far less than a channel per queue. The prefetch window is per queue: quorum queues refuse a
    /// window shared by the channel (global QoS). [`ConsumerHandle::follow`] changes the set.
    pub(super) async fn start_partitions(
        connection: &Connection,
        ns: &str,
        prefetch: u16,
        inbound: mpsc::Sender<InboundDelivery>,
        owned: &BTreeSet<u32>,
    ) -> Result<Self, BrokerError> {
        let source = Source::PartitionReplies;
        let channel = open_channel(connection, source, prefetch).await?;
        let (more, added) = mpsc::unbounded_channel();
        let forward = Forwarder {
            channel: channel.clone(),
            namespace: ns.to_owned(),
            source,
        };
        let task = tokio::spawn(run(
            source,
            SelectAll::new(),
            Some(added),
            channel.clone(),
            inbound,
            forward,
        ));
        let mut handle = ConsumerHandle {
            source,
            channel,
            tags: BTreeMap::new(),
            task: Some(task),
            more: Some(more),
            namespace: ns.to_owned(),
        };
        handle.follow(owned).await?;
        Ok(handle)
    }

    /// Consumes the reply queues of `owned`, and stops consuming the others. Deliveries of a
    /// queue given up that are under way are settled as usual (forwarded to the new owner).
    pub(super) async fn follow(&mut self, owned: &BTreeSet<u32>) -> Result<(), BrokerError> {
        let Some(more) = &self.more else {
            return Ok(());
        };
        let given_up: Vec<u32> = self
            .tags
            .keys()
            .filter(|p| !owned.contains(p))
            .copied()
            .collect();
        for partition in given_up {
            if let Some(tag) = self.tags.remove(&partition) {
                self.channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await
                    .context(format!(
                        "cancelling the replies consumer of partition {partition}"
                    ))?;
            }
        }
        for &partition in owned {
            if self.tags.contains_key(&partition) {
                continue;
            }
            let queue = contract::names::partition_replies_queue(&self.namespace, partition);
            let tag = short(&format!(
                "saga-coordinator.replies.{partition}.{}",
                Uuid::new_v4()
            ))?;
            let consumer = self
                .channel
                .basic_consume(
                    short(&queue)?,
                    tag.clone(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .context(format!("consuming {queue}"))?;
            if more.send(consumer).is_err() {
                return Err(BrokerError::Invalid(
                    "the replies consumer has ended".into(),
                ));
            }
            self.tags.insert(partition, tag);
        }
        Ok(())
    }

    /// Stops consuming (a graceful shutdown): the task ends once what is under way is settled.
    pub(super) async fn cancel(&mut self) -> Result<(), BrokerError> {
        self.more = None;
        for (_, tag) in std::mem::take(&mut self.tags) {
            self.channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await
                .context(format!("cancelling the {} consumer", self.source.label()))?;
        }
        Ok(())
    }

    /// Opens a channel with its own prefetch window and starts consuming `queue`.
    /// Deliveries settled with [`Settlement::Forward`] are republished to the partition's reply
    /// queue of namespace `ns`.
    pub(super) async fn start(
        connection: &Connection,
        source: Source,
        queue: &str,
        ns: &str,
        prefetch: u16,
        inbound: mpsc::Sender<InboundDelivery>,
    ) -> Result<Self, BrokerError> {
        let channel = open_channel(connection, source, prefetch).await?;
        let tag = short(&format!(
            "saga-coordinator.{}.{}",
            source.label(),
            Uuid::new_v4()
        ))?;
        let consumer = channel
            .basic_consume(
                short(queue)?,
                tag.clone(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context(format!("consuming {queue}"))?;
        let forward = Forwarder {
            channel: channel.clone(),
            namespace: ns.to_owned(),
            source,
        };
        let mut consumers = SelectAll::new();
        consumers.push(consumer);
        let task = tokio::spawn(run(
            source,
            consumers,
            None,
            channel.clone(),
            inbound,
            forward,
        ));
        Ok(ConsumerHandle {
            source,
            channel,
            tags: BTreeMap::from([(0, tag)]),
            task: Some(task),
            more: None,
            namespace: ns.to_owned(),
        })
    }
}

/// A channel in confirm mode (a forwarded delivery is removed only once the broker confirmed its
/// copy) with a prefetch window per consumer.
async fn open_channel(
    connection: &Connection,
    source: Source,
    prefetch: u16,
) -> Result<Channel, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .context(format!("opening the {} channel", source.label()))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context(format!(
            "enabling confirms on the {} channel",
            source.label()
        ))?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .context(format!("setting the {} prefetch", source.label()))?;
    Ok(channel)
}

impl Drop for ConsumerHandle {
    /// A consumer never outlives its session, even when setting up the session fails half-way.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the consumer loop does after one delivery.
enum Flow {
    Continue,
    InboundClosed,
}

/// A delivery handed to the caller, resolving when the caller settles it.
type Settling = FuturesUnordered<BoxFuture<'static, (Acker, u64, Settlement, Original)>>;

/// What a delivery carried, kept until it is settled in case it has to be forwarded.
struct Original {
    data: Vec<u8>,
    properties: BasicProperties,
}

/// Republishes deliveries meant for another instance to their partition's reply queue.
struct Forwarder {
    channel: Channel,
    namespace: String,
    source: Source,
}

impl Forwarder {
    /// `true` once the broker confirmed the copy.
    async fn forward(&self, partition: u32, original: Original) -> bool {
        let queue = contract::names::partition_replies_queue(&self.namespace, partition);
        let Ok(routing_key) = short(&queue) else {
            return false;
        };
        let mut properties = original.properties;
        if self.source == Source::DeadCommands {
            let mut headers = properties.headers().clone().unwrap_or_default();
            headers.insert(FORWARDED_DEAD_LETTER.into(), AMQPValue::Boolean(true));
            properties = properties.with_headers(headers);
        }
        let published = self
            .channel
            .basic_publish(
                ShortString::from(""),
                routing_key,
                BasicPublishOptions::default(),
                &original.data,
                properties,
            )
            .await;
        match published {
            Ok(confirm) => match confirm.await {
                Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => true,
                Ok(other) => {
                    log::warn!("forwarding to {queue} was not confirmed: {other:?}");
                    false
                }
                Err(e) => {
                    log::warn!("forwarding to {queue} failed: {e}");
                    false
                }
            },
            Err(e) => {
                log::warn!("forwarding to {queue} failed: {e}");
                false
            }
        }
    }
}

/// How long an acknowledgement may be held back to be folded into a `multiple` one.
const ACK_HOLD: Duration = Duration::from_millis(20);

/// Acknowledgements in batches. A delivery is acknowledged only after its caller settled it with
/// [`Settlement::Ack`] (that is, after its effect was committed). Settled deliveries below the oldest
/// unsettled one are acknowledged together with one `multiple` ack on the highest of them; one that
/// waits behind an unsettled delivery for longer than [`ACK_HOLD`] is acknowledged alone. A
/// `multiple` ack never covers an unsettled delivery, whose tag is always above it.
#[derive(Default)]
struct Acks {
    /// Delivery tags handed to the caller and not settled yet.
    unsettled: BTreeSet<u64>,
    /// Settled with `Ack` and not acknowledged yet, with when they were settled.
    ready: BTreeMap<u64, (Acker, Instant)>,
}

impl Acks {
    fn delivered(&mut self, tag: u64) {
        self.unsettled.insert(tag);
    }

    async fn settled(
        &mut self,
        acker: Acker,
        tag: u64,
        how: Settlement,
        original: Original,
        forwarder: &Forwarder,
    ) {
        self.unsettled.remove(&tag);
        match how {
            Settlement::Ack => {
                self.ready.insert(tag, (acker, Instant::now()));
            }
            Settlement::Requeue => requeue(&acker).await,
            Settlement::Forward(partition) => {
                if forwarder.forward(partition, original).await {
                    self.ready.insert(tag, (acker, Instant::now()));
                } else {
                    requeue(&acker).await;
                }
            }
        }
    }

    /// Sends what can be acknowledged now; `all` also sends those held behind unsettled deliveries.
    async fn flush(&mut self, all: bool) {
        if self.ready.is_empty() {
            return;
        }
        let oldest_unsettled = self.unsettled.first().copied().unwrap_or(u64::MAX);
        let held = self.ready.split_off(&oldest_unsettled);
        let below = std::mem::replace(&mut self.ready, held);
        let count = below.len();
        if let Some((_, (acker, _))) = below.into_iter().next_back() {
            let options = BasicAckOptions {
                multiple: count > 1,
            };
            if let Err(e) = acker.ack(options).await {
                // The broker redelivers them; handling is idempotent.
                log::warn!("acknowledging {count} deliveries failed: {e}");
            }
        }
        let now = Instant::now();
        let due: Vec<u64> = self
            .ready
            .iter()
            .filter(|(_, (_, at))| all || now.duration_since(*at) >= ACK_HOLD)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in due {
            if let Some((acker, _)) = self.ready.remove(&tag) {
                if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                    log::warn!("acknowledging a delivery failed: {e}");
                }
            }
        }
    }
}

async fn run(
    source: Source,
    mut consumers: SelectAll<Consumer>,
    mut more: Option<mpsc::UnboundedReceiver<Consumer>>,
    channel: Channel,
    inbound: mpsc::Sender<InboundDelivery>,
    forwarder: Forwarder,
) -> ConsumerEnd {
    let mut settling: Settling = FuturesUnordered::new();
    let mut acks = Acks::default();
    let mut hold = tokio::time::interval(ACK_HOLD);
    hold.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            Some((acker, tag, how, original)) = settling.next(), if !settling.is_empty() => {
                acks.settled(acker, tag, how, original, &forwarder).await;
                // Take every settlement that is already there, then acknowledge them together.
                while let Some(Some((acker, tag, how, original))) = settling.next().now_or_never() {
                    acks.settled(acker, tag, how, original, &forwarder).await;
                }
                acks.flush(false).await;
            }
            _ = hold.tick(), if !acks.ready.is_empty() => acks.flush(false).await,
            added = recv_more(&mut more), if more.is_some() => match added {
                Some(consumer) => consumers.push(consumer),
                // Stopping: the task ends once the consumers it has are cancelled.
                None => more = None,
            },
            // With none left while more may come, there is nothing to wait for here.
            next = consumers.next(), if !consumers.is_empty() || more.is_none() => match next {
                None => break ConsumerEnd::Lost("the consumer was cancelled".to_owned()),
                Some(Err(e)) => break ConsumerEnd::Lost(e.to_string()),
                Some(Ok(delivery)) => {
                    if let Flow::InboundClosed =
                        handle(source, delivery, &inbound, &mut settling, &mut acks).await
                    {
                        break ConsumerEnd::InboundClosed;
                    }
                }
            },
        }
    };
    match end {
        ConsumerEnd::InboundClosed => {
            log::info!(
                "nobody receives inbound messages any more: stop consuming {}",
                source.label()
            );
            // Closing the channel hands every unsettled delivery back to the queue at once.
            if let Err(e) = channel.close(200, "stop consuming".into()).await {
                log::debug!("closing the {} channel: {e}", source.label());
            }
        }
        ConsumerEnd::Lost(_) => {
            // Let settlements already under way finish (a graceful shutdown waits for this; a lost
            // connection aborts the task, and the broker redelivers whatever was not settled).
            acks.flush(true).await;
            while let Some((acker, tag, how, original)) = settling.next().await {
                acks.settled(acker, tag, how, original, &forwarder).await;
                acks.flush(true).await;
            }
        }
    }
    end
}

async fn handle(
    source: Source,
    delivery: Delivery,
    inbound: &mpsc::Sender<InboundDelivery>,
    settling: &mut Settling,
    acks: &mut Acks,
) -> Flow {
    let forwarded_dead_letter = delivery
        .properties
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key(FORWARDED_DEAD_LETTER));
    let source = match source {
        Source::PartitionReplies if forwarded_dead_letter => Source::DeadCommands,
        other => other,
    };
    let understood = match source {
        Source::Replies | Source::InstanceReplies | Source::PartitionReplies => {
            ReplyBody::parse(&delivery.data).map(Inbound::Reply)
        }
        Source::DeadCommands => dead_lettered(&delivery.properties, &delivery.data),
    };
    match (source, understood) {
        (_, Ok(message)) => {
            let original = Original {
                data: delivery.data,
                properties: delivery.properties,
            };
            deliver(
                message,
                delivery.delivery_tag,
                delivery.acker,
                original,
                inbound,
                settling,
                acks,
            )
            .await
        }
        (Source::Replies | Source::InstanceReplies | Source::PartitionReplies, Err(reason)) => {
            log::warn!(
                "rejecting a malformed reply (message_id {}): {reason}",
                describe_id(&delivery.properties)
            );
            // Without requeue it is dead-lettered, so operators find it in dead-letters.
            let rejected = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            if let Err(e) = rejected {
                log::warn!("rejecting a malformed reply failed: {e}");
            }
            Flow::Continue
        }
        (Source::DeadCommands, Err(reason)) => {
            log::debug!(
                "ignoring a dead-lettered message that is not a command (message_id {}): {reason}",
                describe_id(&delivery.properties)
            );
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                log::warn!("acknowledging an ignored dead letter failed: {e}");
            }
            Flow::Continue
        }
    }
}

/// Hands a message to the caller and arranges its settlement.
async fn deliver(
    message: Inbound,
    tag: u64,
    acker: Acker,
    original: Original,
    inbound: &mpsc::Sender<InboundDelivery>,
    settling: &mut Settling,
    acks: &mut Acks,
) -> Flow {
    let (settle, settled) = oneshot::channel();
    match inbound.send(InboundDelivery { message, settle }).await {
        Ok(()) => {
            acks.delivered(tag);
            settling.push(Box::pin(async move {
                // A dropped sender counts as a requeue.
                let how = settled.await.unwrap_or(Settlement::Requeue);
                (acker, tag, how, original)
            }));
            Flow::Continue
        }
        Err(_) => {
            requeue(&acker).await;
            Flow::InboundClosed
        }
    }
}

async fn recv_more(more: &mut Option<mpsc::UnboundedReceiver<Consumer>>) -> Option<Consumer> {
    match more {
        Some(more) => more.recv().await,
        None => std::future::pending().await,
    }
}

async fn requeue(acker: &Acker) {
    let nacked = acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await;
    if let Err(e) = nacked {
        log::debug!("requeueing a delivery failed (the broker requeues it anyway): {e}");
    }
}

/// Understands a message from the dead-letter fanout: only commands (by `type` and body) count.
fn dead_lettered(properties: &BasicProperties, body: &[u8]) -> Result<Inbound, String> {
    let kind: CommandKind = properties
        .kind()
        .as_ref()
        .ok_or_else(|| "no type property".to_owned())?
        .as_str()
        .parse()?;
    let command: CommandBody =
        serde_json::from_slice(body).map_err(|e| format!("the body is not a command: {e}"))?;
    if command.kind != kind {
        return Err(format!(
            "the type property says {kind} but the body says {}",
            command.kind
        ));
    }
    Ok(Inbound::DeadLettered {
        saga_id: command.saga_id,
        step: command.step,
        kind,
        attempt: command.attempt,
    })
}

fn describe_id(properties: &BasicProperties) -> String {
    properties
        .message_id()
        .as_ref()
        .or(properties.correlation_id().as_ref())
        .map_or_else(|| "none".to_owned(), |id| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::{Map, Value};

    fn command(kind: CommandKind) -> CommandBody {
        CommandBody {
            saga_id: Uuid::now_v7(),
            saga_name: "s".into(),
            step: Some("a".into()),
            kind,
            command: "do".into(),
            attempt: 3,
            idempotency_key: "k".into(),
            deadline: Utc::now(),
            payload: Value::Null,
            saga_payload: Value::Null,
            outputs: Map::new(),
            action_output: None,
        }
    }

    fn typed(kind: &str) -> BasicProperties {
        BasicProperties::default().with_type(kind.into())
    }

    #[test]
    fn a_dead_lettered_command_is_understood() {
        let cmd = command(CommandKind::Compensation);
        let body = serde_json::to_vec(&cmd).expect("serializes");
        assert_eq!(
            dead_lettered(&typed("compensation"), &body),
            Ok(Inbound::DeadLettered {
                saga_id: cmd.saga_id,
                step: Some("a".into()),
                kind: CommandKind::Compensation,
                attempt: 3,
            })
        );
    }

    #[test]
    fn anything_else_in_the_fanout_is_not_a_command() {
        let body = serde_json::to_vec(&command(CommandKind::Action)).expect("serializes");
        assert!(dead_lettered(&BasicProperties::default(), &body).is_err());
        assert!(dead_lettered(&typed("reply"), &body).is_err());
        assert!(dead_lettered(&typed("check"), &body).is_err());
        assert!(dead_lettered(&typed("action"), b"not json").is_err());
        let reply = br#"{"saga_id": "0193a0a0-0000-7000-8000-000000000000", "step": "a", "kind": "action", "attempt": 1, "outcome": "success"}"#;
        assert!(dead_lettered(&typed("action"), reply).is_err());
    }
}
