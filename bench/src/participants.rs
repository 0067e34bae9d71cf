//! In-process participants that answer every command at once with `success`, written directly
//! against lapin from the contract (sections 3 and 4): a persistent reply to the command's
//! `reply_to` with its `correlation_id`, confirmed by the broker before the command is acknowledged.
//! They can start paused (commands wait in their queues) and be resumed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::Context;
use contract::properties::{CONTENT_TYPE, PERSISTENT};
use contract::{names, CommandBody, Outcome, ReplyBody};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// Counters of the participants' work.
#[derive(Default)]
pub struct Activity {
    pub commands: AtomicU64,
    /// First command of a later step (or a repeated attempt) after resuming: proof that the
    /// coordinator processed a reply.
    pub first_followup: OnceLock<Instant>,
}

/// The bench's participants, one queue each.
pub struct Participants {
    connection: Connection,
    namespace: String,
    names: Vec<String>,
    prefetch: u16,
    first_step: String,
    pub activity: Arc<Activity>,
    consumers: Vec<tokio::task::JoinHandle<()>>,
}

impl Participants {
    /// Declares every participant's queue (exactly as the coordinator does) without consuming yet.
    pub async fn declare(
        amqp_url: &str,
        namespace: &str,
        names: Vec<String>,
        first_step: String,
        prefetch: u16,
    ) -> anyhow::Result<Participants> {
        let connection = Connection::connect(
            amqp_url,
            ConnectionProperties::default().with_connection_name("saga-bench-participants".into()),
        )
        .await
        .context("connecting the participants to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        // The coordinator answers HTTP before it has necessarily declared its topology: declare the
        // commands exchange too (same arguments, so either may go first), as the SDK's participants do.
        let commands = names::commands_exchange(namespace);
        channel
            .exchange_declare(
                commands.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring {commands}"))?;
        for name in &names {
            let queue = names::participant_queue(namespace, name);
            let mut args = FieldTable::default();
            for (argument, value) in names::dead_lettering_arguments(namespace) {
                args.insert(argument.into(), AMQPValue::LongString(value.into()));
            }
            channel
                .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
                .await
                .with_context(|| format!("declaring {queue}"))?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    commands.as_str().into(),
                    name.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("binding {queue}"))?;
        }
        Ok(Participants {
            connection,
            namespace: namespace.to_string(),
            names,
            prefetch,
            first_step,
            activity: Arc::new(Activity::default()),
            consumers: Vec::new(),
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Starts answering (again after a pause).
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let replies = self.connection.create_channel().await?;
        replies
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        for name in &self.names {
            let channel = self.connection.create_channel().await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            let queue = names::participant_queue(&self.namespace, name);
            let mut consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("bench-{name}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let replies = replies.clone();
            let activity = Arc::clone(&self.activity);
            let first_step = self.first_step.clone();
            self.consumers.push(tokio::spawn(async move {
                while let Some(Ok(delivery)) = consumer.next().await {
                    activity.commands.fetch_add(1, Ordering::Relaxed);
                    let replies = replies.clone();
                    let activity = Arc::clone(&activity);
                    let first_step = first_step.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(&replies, delivery, &activity, &first_step).await {
                            eprintln!("bench: a participant could not answer: {e:#}");
                        }
                    });
                }
            }));
        }
        Ok(())
    }

    /// Stops consuming (unacknowledged commands go back to their queues when the connection closes).
    pub async fn close(self) {
        for consumer in &self.consumers {
            consumer.abort();
        }
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}

async fn answer(
    replies: &Channel,
    delivery: Delivery,
    activity: &Activity,
    first_step: &str,
) -> anyhow::Result<()> {
    let command: CommandBody = serde_json::from_slice(&delivery.data).context("command body")?;
    if command.attempt > 1 || command.step.as_deref() != Some(first_step) {
        let _ = activity.first_followup.set(Instant::now());
    }
    let reply = serde_json::to_vec(&ReplyBody {
        saga_id: command.saga_id,
        step: command.step,
        kind: command.kind,
        attempt: command.attempt,
        outcome: Outcome::Success,
        output: None,
        error: None,
    })?;
    let props = &delivery.properties;
    let reply_to = props
        .reply_to()
        .as_ref()
        .context("a command without reply_to")?
        .clone();
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(CONTENT_TYPE.into());
    if let Some(correlation) = props.correlation_id() {
        properties = properties.with_correlation_id(correlation.clone());
    }
    replies
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            &reply,
            properties,
        )
        .await?
        .await?;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}
