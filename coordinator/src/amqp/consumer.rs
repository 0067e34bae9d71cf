//! The two consumers: replies, and the coordinator's copy of the dead-letter fanout.
//!
//! Each runs as its own task with manual acknowledgements. A delivery is settled only when the caller
//! answers its oneshot, by a small task per delivery, so slow settlements never hold up consumption
//! beyond the prefetch window.

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Channel, Connection, Consumer};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

use super::{short, BrokerError, Context, Inbound, InboundDelivery, Settlement};
use crate::messages::{CommandMessage, ReplyMessage};
use crate::saga::CommandKind;

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

async fn run(
    source: Source,
    mut consumer: Consumer,
    channel: Channel,
    inbound: mpsc::Sender<InboundDelivery>,
) -> ConsumerEnd {
    let mut settling = JoinSet::new();
    let end = loop {
        tokio::select! {
            Some(_) = settling.join_next(), if !settling.is_empty() => {}
            next = consumer.next() => match next {
                None => break ConsumerEnd::Lost("the consumer was cancelled".to_owned()),
                Some(Err(e)) => break ConsumerEnd::Lost(e.to_string()),
                Some(Ok(delivery)) => {
                    if let Flow::InboundClosed =
                        handle(source, delivery, &inbound, &mut settling).await
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
            while settling.join_next().await.is_some() {}
        }
    }
    end
}

async fn handle(
    source: Source,
    delivery: Delivery,
    inbound: &mpsc::Sender<InboundDelivery>,
    settling: &mut JoinSet<()>,
) -> Flow {
    let understood = match source {
        Source::Replies => ReplyMessage::parse(&delivery.data).map(Inbound::Reply),
        Source::DeadCommands => dead_lettered(&delivery.properties, &delivery.data),
    };
    match (source, understood) {
        (_, Ok(message)) => deliver(message, delivery.acker, inbound, settling).await,
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
    acker: Acker,
    inbound: &mpsc::Sender<InboundDelivery>,
    settling: &mut JoinSet<()>,
) -> Flow {
    let (settle, settled) = oneshot::channel();
    match inbound.send(InboundDelivery { message, settle }).await {
        Ok(()) => {
            settling.spawn(settle_when_told(acker, settled));
            Flow::Continue
        }
        Err(_) => {
            requeue(&acker).await;
            Flow::InboundClosed
        }
    }
}

async fn settle_when_told(acker: Acker, settled: oneshot::Receiver<Settlement>) {
    match settled.await {
        Ok(Settlement::Ack) => {
            if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                // The broker redelivers it; handling is idempotent.
                log::warn!("acknowledging a delivery failed: {e}");
            }
        }
        Ok(Settlement::Requeue) | Err(_) => requeue(&acker).await,
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
    let command: CommandMessage =
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

    fn command(kind: CommandKind) -> CommandMessage {
        CommandMessage {
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
