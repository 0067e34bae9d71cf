//! Declaring the contract's topology (section 3).
//!
//! Declarations are idempotent, so they run on every (re)connection: a broker that lost its
//! definitions, or an operator who deleted a queue, is repaired by the next connection.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ErrorKind, ExchangeKind};

use super::names::QueueType;
use super::{names, short, BrokerError, Context};
use crate::partition::Partitions;

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Contract arguments as RabbitMQ gets them: long strings, because participants redeclare with the
/// same and RabbitMQ refuses any difference (a short string is a difference).
fn field_table(arguments: Vec<(&'static str, String)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in arguments {
        table.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    table
}

/// The arguments of a queue of namespace `ns` that dead-letters (the replies queues, participant
/// queues): `names::queue_arguments`, the dead-letter exchange and the queue type.
pub(super) fn queue_arguments(ns: &str, queue_type: QueueType) -> FieldTable {
    field_table(names::queue_arguments(ns, queue_type))
}

/// The arguments of a queue that does not dead-letter (dead-letters, dead-commands): the type.
fn plain_queue_arguments(queue_type: QueueType) -> FieldTable {
    field_table(names::plain_queue_arguments(queue_type))
}

/// How long a reply waits in an instance's reply queue before it moves on to `{ns}.replies`: only
/// replies whose instance is gone (or cut off from the broker) wait that long; a live instance takes
/// them within milliseconds.
pub(super) const INSTANCE_REPLIES_TTL: Duration = Duration::from_secs(5);
/// How long an instance's reply queue outlives its last consumer: an instance that does not come
/// back (a new pod name after a deploy) leaves no queue behind for good. Far longer than
/// [`INSTANCE_REPLIES_TTL`], so the queue is empty by then.
pub(super) const INSTANCE_REPLIES_EXPIRY: Duration = Duration::from_secs(3600);

/// The arguments of an instance's reply queue: expired replies are dead-lettered through the
/// default exchange to `{ns}.replies`, which every instance consumes and forwards from; a rejected
/// (malformed) reply takes the same way and is dead-lettered from there as usual.
pub(super) fn instance_replies_arguments(ns: &str, queue_type: QueueType) -> FieldTable {
    let mut table = field_table(names::plain_queue_arguments(queue_type));
    let millis = |d: Duration| AMQPValue::LongInt(i32::try_from(d.as_millis()).unwrap_or(i32::MAX));
    table.insert("x-message-ttl".into(), millis(INSTANCE_REPLIES_TTL));
    table.insert("x-expires".into(), millis(INSTANCE_REPLIES_EXPIRY));
    table.insert(
        names::DEAD_LETTER_EXCHANGE_ARGUMENT.into(),
        AMQPValue::LongString("".into()),
    );
    table.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(names::replies_queue(ns).into()),
    );
    table
}

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), BrokerError> {
    channel
        .exchange_declare(
            short(name)?,
            kind,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .context(format!("declaring exchange {name}"))
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    queue_type: QueueType,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    match channel
        .queue_declare(short(name)?, QueueDeclareOptions::durable(), arguments)
        .await
    {
        Ok(_) => Ok(()),
        Err(error) => match error.kind() {
            // The queue exists with other arguments: retrying cannot help, an operator must act.
            ErrorKind::ProtocolError(refusal)
                if matches!(
                    refusal.kind(),
                    AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                ) =>
            {
                Err(BrokerError::Inequivalent {
                    queue: name.to_owned(),
                    queue_type,
                    refusal: refusal.get_message().to_string(),
                })
            }
            _ => Err(error).context(format!("declaring queue {name}")),
        },
    }
}

async fn bind_queue(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            short(queue)?,
            short(exchange)?,
            short(routing_key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context(format!("binding queue {queue} to {exchange}"))
}

/// Declares everything the coordinator needs before it publishes or consumes anything, every
/// queue of type `queue_type`, including every partition's reply queue, owned or not (a reply sent
/// to a queue that does not exist would be dropped by the broker), and the reply queue of
/// `instance`.
pub(super) async fn declare(
    channel: &Channel,
    ns: &str,
    queue_type: QueueType,
    partitions: Partitions,
    instance: &str,
) -> Result<(), BrokerError> {
    let dead = names::dead_exchange(ns);
    declare_exchange(channel, &names::commands_exchange(ns), ExchangeKind::Direct).await?;
    declare_exchange(channel, &dead, ExchangeKind::Fanout).await?;

    for queue in [
        names::dead_letters_queue(ns),
        names::dead_commands_queue(ns),
    ] {
        let arguments = plain_queue_arguments(queue_type);
        declare_queue(channel, &queue, queue_type, arguments).await?;
        bind_queue(channel, &queue, &dead, "").await?;
    }

    let arguments = queue_arguments(ns, queue_type);
    declare_queue(channel, &names::replies_queue(ns), queue_type, arguments).await?;
    for partition in 0..partitions.count() {
        let queue = names::partition_replies_queue(ns, partition);
        let arguments = queue_arguments(ns, queue_type);
        declare_queue(channel, &queue, queue_type, arguments).await?;
    }
    let queue = names::instance_replies_queue(ns, instance);
    let arguments = instance_replies_arguments(ns, queue_type);
    declare_queue(channel, &queue, queue_type, arguments).await?;
    Ok(())
}

/// Declares a participant's queue and binds it, so commands wait there while the participant is down.
pub(super) async fn declare_participant(
    channel: &Channel,
    ns: &str,
    queue_type: QueueType,
    participant: &str,
) -> Result<(), BrokerError> {
    let queue = names::participant_queue(ns, participant);
    let arguments = queue_arguments(ns, queue_type);
    declare_queue(channel, &queue, queue_type, arguments).await?;
    bind_queue(channel, &queue, &names::commands_exchange(ns), participant).await
}
