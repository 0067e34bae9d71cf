//! Declaring the contract's topology (section 3).
//!
//! Declarations are idempotent, so they run on every (re)connection: a broker that lost its
//! definitions, or an operator who deleted a queue, is repaired by the next connection.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::{names, short, BrokerError, Context};

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// The arguments of every queue that dead-letters (`names::dead_lettering_arguments`), as long
/// strings, because participants redeclare with the same and RabbitMQ refuses any difference.
pub(super) fn dead_lettering_arguments(ns: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    for (name, value) in names::dead_lettering_arguments(ns) {
        arguments.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    arguments
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
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    channel
        .queue_declare(short(name)?, QueueDeclareOptions::durable(), arguments)
        .await
        .context(format!("declaring queue {name}"))
        .map(|_| ())
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

/// Declares everything the coordinator needs before it publishes or consumes anything.
pub(super) async fn declare(channel: &Channel, ns: &str) -> Result<(), BrokerError> {
    let dead = names::dead_exchange(ns);
    declare_exchange(channel, &names::commands_exchange(ns), ExchangeKind::Direct).await?;
    declare_exchange(channel, &dead, ExchangeKind::Fanout).await?;

    let dead_letters = names::dead_letters_queue(ns);
    declare_queue(channel, &dead_letters, FieldTable::default()).await?;
    bind_queue(channel, &dead_letters, &dead, "").await?;

    let dead_commands = names::dead_commands_queue(ns);
    declare_queue(channel, &dead_commands, FieldTable::default()).await?;
    bind_queue(channel, &dead_commands, &dead, "").await?;

    declare_queue(
        channel,
        &names::replies_queue(ns),
        dead_lettering_arguments(ns),
    )
    .await
}

/// Declares a participant's queue and binds it, so commands wait there while the participant is down.
pub(super) async fn declare_participant(
    channel: &Channel,
    ns: &str,
    participant: &str,
) -> Result<(), BrokerError> {
    let queue = names::participant_queue(ns, participant);
    declare_queue(channel, &queue, dead_lettering_arguments(ns)).await?;
    bind_queue(channel, &queue, &names::commands_exchange(ns), participant).await
}
