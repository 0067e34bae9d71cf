//! The two consumers: replies, and the coordinator's copy of the dead-letter fanout.
//!
//! Each runs as its own task with manual acknowledgements. A delivery is settled only when the caller
//! answers its oneshot; the consumer task watches those answers beside the stream, so slow
//! settlements never hold up consumption beyond the prefetch window, and acknowledges settled
//! deliveries in batches (see [`Acks`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use contract::{CommandBody, CommandKind, ReplyBody};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Channel, Connection, Consumer};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{short, BrokerError, Context, Inbound, InboundDelivery, Settlement};

/// Which queue a consumer reads, which decides how its deliveries are understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Replies,
    DeadCommands,
}

impl Source {
    pub(super) fn label(self) -> &'static str {
        match self {
            Source::Replies => "replies",
            Source::DeadCommands => "dead-commands",
        }
    }
}

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
    pub(super) tag: ShortString,
    /// `None` once the task's end has been observed.
    pub(super) task: Option<JoinHandle<ConsumerEnd>>,
}

impl ConsumerHandle {
    /// Opens a channel with its own prefetch window and starts consuming `queue`.
    pub(super) async fn start(
        connection: &Connection,
        source: Source,
        queue: &str,
        prefetch: u16,
        inbound: mpsc::Sender<InboundDelivery>,
    ) -> Result<Self, BrokerError> {
        let channel = connection
            .create_channel()
            .await
            .context(format!("opening the {} channel", source.label()))?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .context(format!("setting the {} prefetch", source.label()))?;
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
        let task = tokio::spawn(run(source, consumer, channel.clone(), inbound));
        Ok(ConsumerHandle {
            source,
            channel,
            tag,
            task: Some(task),
        })
    }
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
type Settling = FuturesUnordered<BoxFuture<'static, (Acker, u64, Settlement)>>;

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

    async fn settled(&mut self, acker: Acker, tag: u64, how: Settlement) {
        self.unsettled.remove(&tag);
        match how {
            Settlement::Ack => {
                self.ready.insert(tag, (acker, Instant::now()));
            }
            Settlement::Requeue => requeue(&acker).await,
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
    mut consumer: Consumer,
    channel: Channel,
    inbound: mpsc::Sender<InboundDelivery>,
) -> ConsumerEnd {
    let mut settling: Settling = FuturesUnordered::new();
    let mut acks = Acks::default();
    let mut hold = tokio::time::interval(ACK_HOLD);
    hold.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            Some((acker, tag, how)) = settling.next(), if !settling.is_empty() => {
                acks.settled(acker, tag, how).await;
                // Take every settlement that is already there, then acknowledge them together.
                while let Some(Some((acker, tag, how))) = settling.next().now_or_never() {
                    acks.settled(acker, tag, how).await;
                }
                acks.flush(false).await;
            }
            _ = hold.tick(), if !acks.ready.is_empty() => acks.flush(false).await,
            next = consumer.next() => match next {
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
            while let Some((acker, tag, how)) = settling.next().await {
                acks.settled(acker, tag, how).await;
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
    let understood = match source {
        Source::Replies => ReplyBody::parse(&delivery.data).map(Inbound::Reply),
        Source::DeadCommands => dead_lettered(&delivery.properties, &delivery.data),
    };
    match (source, understood) {
        (_, Ok(message)) => {
            deliver(
                message,
                delivery.delivery_tag,
                delivery.acker,
                inbound,
                settling,
                acks,
            )
            .await
        }
        (Source::Replies, Err(reason)) => {
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
                (acker, tag, how)
            }));
            Flow::Continue
        }
        Err(_) => {
            requeue(&acker).await;
            Flow::InboundClosed
        }
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
