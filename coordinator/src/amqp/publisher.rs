//! Publishing outbox messages as contract commands (section 4), with publisher confirms.
//!
//! [`Publisher::publish`] hands back a future that sends the message and then waits for its confirm,
//! so the caller can pipeline many messages and track them concurrently: lapin answers a publish only
//! once its I/O thread has written the frames, and a publisher that waited for that before the next
//! one would pay a round trip between threads per command.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use contract::properties::{CONTENT_TYPE, PERSISTENT, TRACEPARENT, TRACESTATE};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::names::QueueType;
use super::{names, short, topology, BrokerError, Context};
use crate::outbox::OutboxMessage;

/// How long declaring a participant's queue may take before the connection is presumed dead.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handing one message's frames to the socket; past this the connection is presumed stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Waiting for the broker's confirm of one message; past this the channel is presumed stuck and
/// the session starts over, republishing what was unconfirmed (an unconfirmed command never times
/// out, so without this its saga would wait forever).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// One message on its way: resolves with what the broker said about it.
pub(super) type Sending = Pin<Box<dyn Future<Output = Confirmed> + Send>>;

/// Why one message could not be sent.
#[derive(Debug)]
pub(super) enum PublishError {
    /// Only this message is affected (e.g. its participant's queue cannot be declared).
    Message(String),
    /// The channel or connection is broken: the session has to start over.
    Session(String),
}

/// The publishing side of one connection.
pub(super) struct Publisher {
    namespace: String,
    queue_type: QueueType,
    exchange: ShortString,
    /// This instance's reply queue: whatever the partition, replies come back to the instance that
    /// sent the command, which is almost always its owner still (see `names::instance_replies_queue`).
    reply_to: ShortString,
    /// Separate from `channel` because a failed declaration closes its channel, which must not take
    /// the confirms outstanding on the publishing channel with it.
    topology: Channel,
    channel: Channel,
    /// Participants whose queue was declared on this connection.
    declared: HashSet<String>,
}

impl Publisher {
    /// Opens the publishing channel in confirm mode; `topology` is used for participant queues.
    pub(super) async fn open(
        connection: &Connection,
        topology: Channel,
        namespace: &str,
        queue_type: QueueType,
        instance: &str,
    ) -> Result<Self, BrokerError> {
        let channel = connection
            .create_channel()
            .await
            .context("opening the publishing channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        Ok(Publisher {
            namespace: namespace.to_owned(),
            queue_type,
            exchange: short(&names::commands_exchange(namespace))?,
            reply_to: short(&names::instance_replies_queue(namespace, instance))?,
            topology,
            channel,
            declared: HashSet::new(),
        })
    }

    /// Starts sending one message (declaring its participant's queue first if needed). The answer
    /// sends the frames when first polled, then resolves with the broker's confirm; messages are
    /// written in the order their futures are first polled.
    pub(super) async fn publish(
        &mut self,
        connection: &Connection,
        message: &OutboxMessage,
    ) -> Result<Sending, PublishError> {
        self.ensure_participant(connection, &message.participant)
            .await?;
        let properties = properties(message, &self.reply_to)
            .map_err(|e| PublishError::Message(e.to_string()))?;
        let routing_key =
            short(&message.participant).map_err(|e| PublishError::Message(e.to_string()))?;
        let (channel, exchange, body) = (
            self.channel.clone(),
            self.exchange.clone(),
            message.body.clone(),
        );
        Ok(Box::pin(async move {
            let publish = channel.basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                properties,
            );
            match tokio::time::timeout(SEND_TIMEOUT, publish).await {
                Ok(Ok(confirm)) => match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                    Ok(confirm) => confirmed(confirm),
                    Err(_) => Confirmed::Unsent(format!(
                        "no confirm within {CONFIRM_TIMEOUT:?}: the channel is presumed stuck"
                    )),
                },
                Ok(Err(e)) => Confirmed::Unsent(format!("publishing: {e}")),
                Err(_) => Confirmed::Unsent("publishing timed out".to_owned()),
            }
        }))
    }

    /// Makes the next publish to `participant` declare its queue again: a returned message means
    /// someone deleted it, and redeclaring heals that without waiting for a reconnection.
    pub(super) fn forget_participant(&mut self, participant: &str) {
        self.declared.remove(participant);
    }

    async fn ensure_participant(
        &mut self,
        connection: &Connection,
        participant: &str,
    ) -> Result<(), PublishError> {
        if self.declared.contains(participant) {
            return Ok(());
        }
        let declared = tokio::time::timeout(
            DECLARE_TIMEOUT,
            topology::declare_participant(
                &self.topology,
                &self.namespace,
                self.queue_type,
                participant,
            ),
        )
        .await;
        match declared {
            Ok(Ok(())) => {
                self.declared.insert(participant.to_owned());
                Ok(())
            }
            Err(_) => Err(PublishError::Session(
                BrokerError::Timeout(format!("declaring the queue of participant {participant}"))
                    .to_string(),
            )),
            Ok(Err(error @ BrokerError::Invalid(_))) => {
                Err(PublishError::Message(error.to_string()))
            }
            Ok(Err(error)) if connection.status().connected() => {
                // A channel-level refusal (e.g. the queue exists with other arguments) closed only
                // the declaring channel: open a fresh one and fail just this message.
                log::warn!("cannot declare the queue of participant {participant}: {error}");
                self.topology = connection
                    .create_channel()
                    .await
                    .context("reopening the topology channel")
                    .map_err(|e| PublishError::Session(e.to_string()))?;
                Err(PublishError::Message(error.to_string()))
            }
            Ok(Err(error)) => Err(PublishError::Session(error.to_string())),
        }
    }
}

/// The contract's command properties (section 4).
fn properties(
    message: &OutboxMessage,
    reply_to: &ShortString,
) -> Result<BasicProperties, BrokerError> {
    let id = short(&message.message_id.to_string())?;
    let timestamp = u64::try_from(message.created_at.timestamp()).unwrap_or(0);
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(id.clone())
        .with_correlation_id(id)
        .with_reply_to(reply_to.clone())
        .with_type(short(message.kind.as_str())?)
        .with_content_type(short(CONTENT_TYPE)?)
        .with_timestamp(timestamp);
    if let Some(traceparent) = &message.traceparent {
        let mut headers = FieldTable::default();
        headers.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(traceparent.as_str().into()),
        );
        // A tracestate belongs to a trace context: never sent without one.
        if let Some(tracestate) = &message.tracestate {
            headers.insert(
                TRACESTATE.into(),
                AMQPValue::LongString(tracestate.as_str().into()),
            );
        }
        properties = properties.with_headers(headers);
    }
    Ok(properties)
}

/// What the broker said about one published message.
#[derive(Debug, PartialEq)]
pub(super) enum Confirmed {
    /// Acknowledged and routed: it is in the participant's queue.
    Stored,
    /// Acknowledged but returned as unroutable: the participant's queue is gone.
    Returned(String),
    /// The channel died before the broker answered.
    Failed(String),
    /// Nacked. Ends the session: a channel whose quorum queue client lost track of a queue's leader
    /// (seen with RabbitMQ 3.10 when a node is killed) nacks every later publish to that queue while
    /// fresh channels work, so the only cure is a new channel.
    Nacked(String),
    /// It could not even be sent, or its confirm never came: the channel or connection is broken,
    /// the session must start over.
    Unsent(String),
}

impl Confirmed {
    /// What it means for the outbox row.
    pub(super) fn into_result(self) -> Result<(), String> {
        match self {
            Confirmed::Stored => Ok(()),
            Confirmed::Returned(reason)
            | Confirmed::Failed(reason)
            | Confirmed::Nacked(reason)
            | Confirmed::Unsent(reason) => Err(reason),
        }
    }
}

/// Reads a resolved confirm.
pub(super) fn confirmed(confirm: lapin::Result<Confirmation>) -> Confirmed {
    match confirm {
        Ok(Confirmation::Ack(None)) => Confirmed::Stored,
        Ok(Confirmation::Ack(Some(returned))) | Ok(Confirmation::Nack(Some(returned))) => {
            Confirmed::Returned(format!(
                "returned by the broker: {} {} (no queue bound for routing key {})",
                returned.reply_code, returned.reply_text, returned.delivery.routing_key
            ))
        }
        Ok(Confirmation::Nack(None)) => Confirmed::Nacked("nacked by the broker".to_owned()),
        Ok(Confirmation::NotRequested) => {
            Confirmed::Failed("the broker was not asked to confirm".to_owned())
        }
        Err(e) => Confirmed::Failed(format!("no confirm from the broker: {e}")),
    }
}
