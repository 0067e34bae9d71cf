//! A participant written directly against lapin, from the contract alone (sections 3 and 4).
//!
//! It declares `{ns}.participant.{name}` with exactly `x-dead-letter-exchange = {ns}.dead`, binds it to
//! `{ns}.commands` when that exchange exists (the coordinator binds it too), consumes with manual ack,
//! records every command in arrival order and answers as its script says. A reply goes to the default
//! exchange with routing key = the command's `reply_to` and its `correlation_id`, persistent, confirmed
//! by the broker before the command is acknowledged.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use contract::properties::{CONTENT_TYPE, PERSISTENT};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde_json::{json, Value};

use crate::namespace::{amqp_connect, TestNamespace};

/// One command as the participant received it.
#[derive(Clone, Debug)]
pub struct ReceivedCommand {
    /// Position in this participant's log, from 0.
    pub seq: usize,
    /// The body parsed as JSON (`Value::Null` if it was not JSON).
    pub body: Value,
    pub raw: Vec<u8>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    /// The AMQP `type` property.
    pub type_property: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub timestamp: Option<u64>,
    /// String-valued headers (e.g. `traceparent`).
    pub headers: BTreeMap<String, String>,
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub received_at: Instant,
}

impl ReceivedCommand {
    fn str_field(&self, field: &str) -> &str {
        self.body.get(field).and_then(Value::as_str).unwrap_or("")
    }

    pub fn saga_id(&self) -> &str {
        self.str_field("saga_id")
    }

    pub fn step(&self) -> &str {
        self.str_field("step")
    }

    /// `action`, `compensation` or `check`.
    pub fn kind(&self) -> &str {
        self.str_field("kind")
    }

    pub fn is_action(&self) -> bool {
        self.kind() == "action"
    }

    pub fn is_compensation(&self) -> bool {
        self.kind() == "compensation"
    }

    /// The command name (the step's `action` or `compensation`).
    pub fn command(&self) -> &str {
        self.str_field("command")
    }

    pub fn attempt(&self) -> u64 {
        self.body
            .get("attempt")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    pub fn idempotency_key(&self) -> &str {
        self.str_field("idempotency_key")
    }

    /// `(saga_id, step, kind)`, handy for matching.
    pub fn key(&self) -> (String, String, String) {
        (
            self.saga_id().to_string(),
            self.step().to_string(),
            self.kind().to_string(),
        )
    }
}

/// What a reply says.
#[derive(Clone, Debug)]
pub struct Reply {
    pub outcome: String,
    pub output: Option<Value>,
    pub error: Option<String>,
}

impl Reply {
    pub fn outcome(outcome: &str) -> Reply {
        Reply {
            outcome: outcome.to_string(),
            output: None,
            error: None,
        }
    }

    pub fn success() -> Reply {
        Reply::outcome("success")
    }

    pub fn success_with(output: Value) -> Reply {
        Reply {
            output: Some(output),
            ..Reply::success()
        }
    }

    pub fn failure(error: &str) -> Reply {
        Reply {
            error: Some(error.to_string()),
            ..Reply::outcome("failure")
        }
    }

    pub fn retry(error: &str) -> Reply {
        Reply {
            error: Some(error.to_string()),
            ..Reply::outcome("retry")
        }
    }

    /// The reply body for `command`, as the contract spells it.
    pub fn body_for(&self, command: &ReceivedCommand) -> Value {
        let mut body = json!({
            "saga_id": command.body.get("saga_id").cloned().unwrap_or(Value::Null),
            "kind": command.body.get("kind").cloned().unwrap_or(Value::Null),
            "attempt": command.body.get("attempt").cloned().unwrap_or(Value::Null),
            "outcome": self.outcome,
            "output": self.output.clone().unwrap_or(Value::Null),
            "error": self.error,
        });
        if let Some(step) = command.body.get("step") {
            body["step"] = step.clone();
        }
        body
    }
}

/// A future a behaviour waits on.
pub type Gate = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What the participant does with one command.
pub enum Behaviour {
    /// Reply, then ack.
    Reply(Reply),
    /// Reply twice (a duplicate), then ack.
    ReplyTwice(Reply),
    /// Publish these bytes as the reply (correct routing and correlation id), then ack.
    ReplyRaw(Vec<u8>),
    /// Reply to this queue instead of the command's `reply_to` (as a participant written before
    /// replies went to a queue per partition, which sends every reply to `{ns}.replies`), then ack.
    ReplyVia(String, Reply),
    /// Ack and never answer.
    NoReply,
    /// `basic.reject` without requeue: the broker dead-letters the command.
    Reject,
    /// Wait, then reply, then ack.
    DelayThenReply(Duration, Reply),
    /// Wait for the future, then behave.
    After(Gate, Box<Behaviour>),
}

impl Behaviour {
    pub fn success() -> Behaviour {
        Behaviour::Reply(Reply::success())
    }

    pub fn success_with(output: Value) -> Behaviour {
        Behaviour::Reply(Reply::success_with(output))
    }

    pub fn failure(error: &str) -> Behaviour {
        Behaviour::Reply(Reply::failure(error))
    }

    pub fn retry(error: &str) -> Behaviour {
        Behaviour::Reply(Reply::retry(error))
    }

    /// Waits for `gate` before doing `then`.
    pub fn after(gate: impl Future<Output = ()> + Send + 'static, then: Behaviour) -> Behaviour {
        Behaviour::After(Box::pin(gate), Box::new(then))
    }
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Behaviour::Reply(r) => f.debug_tuple("Reply").field(r).finish(),
            Behaviour::ReplyTwice(r) => f.debug_tuple("ReplyTwice").field(r).finish(),
            Behaviour::ReplyRaw(b) => f
                .debug_tuple("ReplyRaw")
                .field(&String::from_utf8_lossy(b))
                .finish(),
            Behaviour::ReplyVia(q, r) => f.debug_tuple("ReplyVia").field(q).field(r).finish(),
            Behaviour::NoReply => f.write_str("NoReply"),
            Behaviour::Reject => f.write_str("Reject"),
            Behaviour::DelayThenReply(d, r) => {
                f.debug_tuple("DelayThenReply").field(d).field(r).finish()
            }
            Behaviour::After(_, b) => f.debug_tuple("After").field(b).finish(),
        }
    }
}

/// A reply the participant sent.
#[derive(Clone, Debug)]
pub struct SentReply {
    /// `seq` of the command answered.
    pub command_seq: usize,
    pub body: Value,
    /// Just before it was handed to the broker: nothing that follows from this reply can happen
    /// earlier. (It is logged then too, before the broker's confirm, which may come after the
    /// coordinator already acted on it.)
    pub published_at: Instant,
}

type Script = Arc<dyn Fn(&ReceivedCommand) -> Behaviour + Send + Sync + 'static>;

#[derive(Default)]
struct Log {
    commands: Vec<ReceivedCommand>,
    replies: Vec<SentReply>,
    errors: Vec<String>,
}

/// A fake participant. Dropping it stops consuming and closes its connection.
pub struct FakeParticipant {
    name: String,
    queue: String,
    log: Arc<Mutex<Log>>,
    connection: Option<Connection>,
    consumer_task: tokio::task::JoinHandle<()>,
    _ns: TestNamespace,
}

impl FakeParticipant {
    /// Starts a participant called `name` in `ns` that answers every command with `script(command)`.
    /// Must be called inside a tokio runtime.
    pub async fn start(
        ns: &TestNamespace,
        name: &str,
        script: impl Fn(&ReceivedCommand) -> Behaviour + Send + Sync + 'static,
    ) -> FakeParticipant {
        Self::try_start(ns, name, script)
            .await
            .unwrap_or_else(|e| panic!("starting participant {name}: {e:#}"))
    }

    /// A participant that answers `success` with output `{"by": name, "key": idempotency_key}`.
    pub async fn always_succeed(ns: &TestNamespace, name: &str) -> FakeParticipant {
        let me = name.to_string();
        Self::start(ns, name, move |cmd| {
            Behaviour::success_with(Self::default_output(&me, cmd))
        })
        .await
    }

    /// [`FakeParticipant::always_succeed`] for each participant of `steps` (step, participant), in
    /// their order.
    pub async fn always_succeed_each(
        ns: &TestNamespace,
        steps: &[(&str, &str)],
    ) -> Vec<FakeParticipant> {
        let mut all = Vec::new();
        for (_, p) in steps {
            all.push(Self::always_succeed(ns, p).await);
        }
        all
    }

    /// The output [`FakeParticipant::always_succeed`] replies with.
    pub fn default_output(participant: &str, cmd: &ReceivedCommand) -> Value {
        json!({"by": participant, "key": cmd.idempotency_key()})
    }

    pub async fn try_start(
        ns: &TestNamespace,
        name: &str,
        script: impl Fn(&ReceivedCommand) -> Behaviour + Send + Sync + 'static,
    ) -> anyhow::Result<FakeParticipant> {
        ns.register_participant(name);
        let queue = ns.participant_queue(name);
        let connection = amqp_connect().await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel.basic_qos(500, BasicQosOptions::default()).await?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                ns.participant_queue_arguments(),
            )
            .await
            .with_context(|| format!("declaring {queue}"))?;
        bind_if_possible(&connection, ns, name, &queue).await;

        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("fake-{name}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;

        let log = Arc::new(Mutex::new(Log::default()));
        let script: Script = Arc::new(script);
        let task_log = log.clone();
        let task_channel = channel.clone();
        let participant = name.to_string();
        let consumer_task = tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(e) => {
                        lock(&task_log).errors.push(format!("consumer: {e}"));
                        break;
                    }
                };
                let command = {
                    let mut log = lock(&task_log);
                    let command = record(log.commands.len(), &delivery);
                    log.commands.push(command.clone());
                    command
                };
                let behaviour = script(&command);
                let channel = task_channel.clone();
                let log = task_log.clone();
                let participant = participant.clone();
                tokio::spawn(async move {
                    if let Err(e) = perform(behaviour, &command, delivery, &channel, &log).await {
                        eprintln!(
                            "e2e: participant {participant} failed to handle command {}: {e:#}",
                            command.seq
                        );
                        lock(&log).errors.push(format!("{e:#}"));
                    }
                });
            }
        });

        Ok(FakeParticipant {
            name: name.to_string(),
            queue,
            log,
            connection: Some(connection),
            consumer_task,
            _ns: ns.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Every command received so far, in arrival order.
    pub fn commands(&self) -> Vec<ReceivedCommand> {
        lock(&self.log).commands.clone()
    }

    /// The commands of one saga.
    pub fn commands_for(&self, saga_id: &str) -> Vec<ReceivedCommand> {
        self.commands()
            .into_iter()
            .filter(|c| c.saga_id() == saga_id)
            .collect()
    }

    /// Every reply sent so far, in the order they were published.
    pub fn replies(&self) -> Vec<SentReply> {
        lock(&self.log).replies.clone()
    }

    /// The replies to the command with this `seq`.
    pub fn replies_to(&self, seq: usize) -> Vec<SentReply> {
        self.replies()
            .into_iter()
            .filter(|r| r.command_seq == seq)
            .collect()
    }

    /// Errors met while handling commands (none expected).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.log).errors.clone()
    }

    /// Waits until `pred` holds for the commands received so far and returns them.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[ReceivedCommand]) -> bool,
    ) -> Vec<ReceivedCommand> {
        let start = Instant::now();
        loop {
            let commands = self.commands();
            if pred(&commands) {
                return commands;
            }
            if start.elapsed() > timeout {
                panic!(
                    "participant {}: timed out after {timeout:?} waiting for {what}; received: {:#?}",
                    self.name,
                    commands.iter().map(|c| &c.body).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(crate::wait::POLL).await;
        }
    }

    /// Waits until at least `n` commands have arrived.
    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> Vec<ReceivedCommand> {
        self.wait_for(&format!("{n} commands"), timeout, |c| c.len() >= n)
            .await
    }

    /// Stops consuming and closes the connection (unacknowledged commands go back to the queue).
    pub async fn stop(mut self) {
        self.consumer_task.abort();
        if let Some(conn) = self.connection.take() {
            let _ = conn.close(200, "participant stopping".into()).await;
        }
    }
}

impl Drop for FakeParticipant {
    fn drop(&mut self) {
        self.consumer_task.abort();
        if let Some(conn) = self.connection.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = conn.close(200, "participant dropped".into()).await;
                });
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn bind_if_possible(connection: &Connection, ns: &TestNamespace, name: &str, queue: &str) {
    // On a channel of its own: a failed passive declare closes the channel.
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let exchange = ns.commands_exchange();
    let exists = channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    if exists {
        if let Err(e) = channel
            .queue_bind(
                queue.into(),
                exchange.as_str().into(),
                name.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            eprintln!("e2e: binding {queue} to {exchange}: {e}");
        }
    }
    let _ = channel.close(200, "bound".into()).await;
}

fn short(s: &Option<lapin::types::ShortString>) -> Option<String> {
    s.as_ref().map(|s| s.as_str().to_string())
}

fn record(seq: usize, delivery: &Delivery) -> ReceivedCommand {
    let p = &delivery.properties;
    let mut headers = BTreeMap::new();
    if let Some(table) = p.headers() {
        for (k, v) in table.inner() {
            let text = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_string(),
                other => format!("{other:?}"),
            };
            headers.insert(k.as_str().to_string(), text);
        }
    }
    ReceivedCommand {
        seq,
        body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
        raw: delivery.data.clone(),
        message_id: short(p.message_id()),
        correlation_id: short(p.correlation_id()),
        reply_to: short(p.reply_to()),
        type_property: short(p.kind()),
        content_type: short(p.content_type()),
        delivery_mode: *p.delivery_mode(),
        timestamp: *p.timestamp(),
        headers,
        exchange: delivery.exchange.as_str().to_string(),
        routing_key: delivery.routing_key.as_str().to_string(),
        redelivered: delivery.redelivered,
        received_at: Instant::now(),
    }
}

fn perform<'a>(
    behaviour: Behaviour,
    command: &'a ReceivedCommand,
    delivery: Delivery,
    channel: &'a Channel,
    log: &'a Arc<Mutex<Log>>,
) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
    Box::pin(async move {
        match behaviour {
            Behaviour::Reply(reply) => {
                send_reply(channel, command, &reply_bytes(&reply, command), log).await?;
                ack(&delivery).await
            }
            Behaviour::ReplyTwice(reply) => {
                let bytes = reply_bytes(&reply, command);
                send_reply(channel, command, &bytes, log).await?;
                send_reply(channel, command, &bytes, log).await?;
                ack(&delivery).await
            }
            Behaviour::ReplyRaw(bytes) => {
                send_reply(channel, command, &bytes, log).await?;
                ack(&delivery).await
            }
            Behaviour::ReplyVia(queue, reply) => {
                let bytes = reply_bytes(&reply, command);
                publish_reply(channel, command, &queue, &bytes, log).await?;
                ack(&delivery).await
            }
            Behaviour::NoReply => ack(&delivery).await,
            Behaviour::Reject => {
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .context("basic.reject")?;
                Ok(())
            }
            Behaviour::DelayThenReply(delay, reply) => {
                tokio::time::sleep(delay).await;
                send_reply(channel, command, &reply_bytes(&reply, command), log).await?;
                ack(&delivery).await
            }
            Behaviour::After(gate, then) => {
                gate.await;
                perform(*then, command, delivery, channel, log).await
            }
        }
    })
}

fn reply_bytes(reply: &Reply, command: &ReceivedCommand) -> Vec<u8> {
    serde_json::to_vec(&reply.body_for(command)).unwrap_or_default()
}

async fn ack(delivery: &Delivery) -> anyhow::Result<()> {
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .context("basic.ack")?;
    Ok(())
}

async fn send_reply(
    channel: &Channel,
    command: &ReceivedCommand,
    bytes: &[u8],
    log: &Arc<Mutex<Log>>,
) -> anyhow::Result<()> {
    let reply_to = command
        .reply_to
        .clone()
        .context("the command has no reply_to")?;
    publish_reply(channel, command, &reply_to, bytes, log).await
}

/// Publishes `bytes` as the reply to `command` on queue `reply_to` (through the default exchange).
async fn publish_reply(
    channel: &Channel,
    command: &ReceivedCommand,
    reply_to: &str,
    bytes: &[u8],
    log: &Arc<Mutex<Log>>,
) -> anyhow::Result<()> {
    let mut props = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(CONTENT_TYPE.into());
    if let Some(id) = &command.correlation_id {
        props = props.with_correlation_id(id.as_str().into());
    }
    let published_at = Instant::now();
    lock(log).replies.push(SentReply {
        command_seq: command.seq,
        body: serde_json::from_slice(bytes).unwrap_or(Value::Null),
        published_at,
    });
    let confirm = channel
        .basic_publish(
            "".into(),
            reply_to.into(),
            BasicPublishOptions::default(),
            bytes,
            props,
        )
        .await
        .context("publishing a reply")?
        .await
        .context("waiting for the reply's confirm")?;
    anyhow::ensure!(
        confirm.is_ack(),
        "the broker refused the reply: {confirm:?}"
    );
    Ok(())
}
