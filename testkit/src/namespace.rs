//! A random AMQP namespace per test, deleted at the end, plus raw access to its queues.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use contract::names;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::amqp_url;

/// Opens a connection to the test broker.
pub async fn amqp_connect() -> anyhow::Result<Connection> {
    connect_to(&amqp_url()).await
}

/// Opens a connection to the first node of `urls` (one URL or a comma-separated list) that answers.
pub async fn connect_to(urls: &str) -> anyhow::Result<Connection> {
    let mut failures = Vec::new();
    for url in contract::broker::amqp_urls(urls) {
        match Connection::connect(&url, ConnectionProperties::default()).await {
            Ok(connection) => return Ok(connection),
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    anyhow::bail!("connecting to RabbitMQ failed: {}", failures.join("; "))
}

/// An AMQP namespace `t<uuid>` of its own for one test. Cloning shares it; when the last clone is
/// dropped, its exchanges and queues (including every participant queue registered with it) are deleted.
#[derive(Clone, Debug)]
pub struct TestNamespace {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    /// Where the namespace lives: the test broker unless [`TestNamespace::on_broker`] says otherwise.
    broker: String,
    participants: Mutex<BTreeSet<String>>,
    /// Coordinator instance ids whose reply queues are deleted with the namespace.
    instances: Mutex<BTreeSet<String>>,
    /// How many `{ns}.replies.{partition}` queues the coordinators may have declared.
    partitions: AtomicU32,
}

/// The coordinator's default `SAGA_PARTITIONS`: a namespace deletes this many per-partition replies
/// queues unless told otherwise ([`TestNamespace::set_partitions`]).
pub const DEFAULT_PARTITIONS: u32 = 64;

/// A message read from `{ns}.dead-letters`.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub routing_key: String,
}

impl DeadLetter {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Default for TestNamespace {
    fn default() -> Self {
        Self::new()
    }
}

impl TestNamespace {
    pub fn new() -> TestNamespace {
        TestNamespace::on_broker(&amqp_url())
    }

    /// A namespace on another broker than the test broker (e.g. a cluster: a comma-separated list
    /// of its nodes' URLs, the first that answers used), deleted there.
    pub fn on_broker(urls: &str) -> TestNamespace {
        TestNamespace {
            inner: Arc::new(Inner {
                name: format!("t{}", uuid::Uuid::new_v4().simple()),
                broker: urls.to_string(),
                participants: Mutex::new(BTreeSet::new()),
                instances: Mutex::new(BTreeSet::new()),
                partitions: AtomicU32::new(DEFAULT_PARTITIONS),
            }),
        }
    }

    async fn connect(&self) -> anyhow::Result<Connection> {
        connect_to(&self.inner.broker).await
    }

    /// The namespace, for `SAGA_NAMESPACE`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Remembers a participant so its queue is deleted with the namespace.
    pub fn register_participant(&self, participant: &str) {
        self.inner
            .participants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(participant.to_string());
    }

    /// `{ns}.replies.at.{instance}`: the reply queue of one coordinator instance, the `reply_to` of
    /// the commands it publishes; remembered, so it is deleted with the namespace (a queue left
    /// behind expires an hour after its last consumer anyway).
    pub fn instance_replies_queue(&self, instance: &str) -> String {
        self.inner
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(instance.to_string());
        names::instance_replies_queue(self.name(), instance)
    }

    /// Remembers that the coordinators on this namespace run with `SAGA_PARTITIONS=partitions`, so
    /// that every per-partition replies queue is deleted with the namespace.
    pub fn set_partitions(&self, partitions: u32) {
        self.inner.partitions.store(partitions, Ordering::SeqCst);
    }

    /// `{ns}.replies.{partition}`: the replies queue of one partition, the `reply_to` of the
    /// commands of that partition's sagas.
    pub fn partition_replies_queue(&self, partition: u32) -> String {
        names::partition_replies_queue(self.name(), partition)
    }

    pub fn commands_exchange(&self) -> String {
        names::commands_exchange(self.name())
    }

    pub fn replies_queue(&self) -> String {
        names::replies_queue(self.name())
    }

    pub fn dead_exchange(&self) -> String {
        names::dead_exchange(self.name())
    }

    pub fn dead_letters_queue(&self) -> String {
        names::dead_letters_queue(self.name())
    }

    pub fn participant_queue(&self, participant: &str) -> String {
        names::participant_queue(self.name(), participant)
    }

    /// Publishes raw bytes to `{ns}.replies` (persistent, confirmed), as a broken or stale participant
    /// would. Published as mandatory and repeated until routed: right after start-up the coordinator
    /// may not have declared the queue yet, and the default exchange drops what it cannot route.
    pub async fn publish_to_replies(
        &self,
        body: &[u8],
        correlation_id: Option<&str>,
    ) -> anyhow::Result<()> {
        let conn = self.connect().await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(id) = correlation_id {
            props = props.with_correlation_id(id.into());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    self.replies_queue().as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    props.clone(),
                )
                .await?
                .await?;
            anyhow::ensure!(
                confirm.is_ack(),
                "the broker did not confirm the reply: {confirm:?}"
            );
            if confirm.take_message().is_none() {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{} does not exist: is the coordinator connected?",
                self.replies_queue()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    }

    /// Takes every message currently in `{ns}.dead-letters` off the queue.
    pub async fn take_dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        let conn = self.connect().await?;
        let channel = conn.create_channel().await?;
        let mut out = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.dead_letters_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await?
        {
            let delivery = message.delivery;
            out.push(DeadLetter {
                body: delivery.data,
                properties: delivery.properties,
                routing_key: delivery.routing_key.as_str().to_string(),
            });
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(out)
    }

    /// Waits until at least `count` messages have reached `{ns}.dead-letters`, and returns them all.
    pub async fn wait_for_dead_letters(&self, count: usize, timeout: Duration) -> Vec<DeadLetter> {
        let mut seen = Vec::new();
        let start = std::time::Instant::now();
        loop {
            seen.extend(
                self.take_dead_letters()
                    .await
                    .expect("reading the dead-letters queue"),
            );
            if seen.len() >= count {
                return seen;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {count} dead letters; got {}: {:?}",
                seen.len(),
                seen.iter().map(DeadLetter::body_text).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Messages ready in a queue, or `None` if the queue does not exist.
    pub async fn queue_len(&self, queue: &str) -> anyhow::Result<Option<u32>> {
        let conn = self.connect().await?;
        let channel = conn.create_channel().await?;
        let result = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = conn.close(200, "done".into()).await;
        Ok(result.ok().map(|q| q.message_count()))
    }

    /// Declares the topology of section 3 the way the coordinator would (commands and dead
    /// exchanges, replies and dead-letters queues), for tests that play the coordinator's side.
    pub async fn declare_coordinator_topology(&self, channel: &Channel) -> anyhow::Result<()> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (exchange, kind) in [
            (self.commands_exchange(), ExchangeKind::Direct),
            (self.dead_exchange(), ExchangeKind::Fanout),
        ] {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    kind,
                    durable_exchange,
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("declaring {exchange}"))?;
        }
        channel
            .queue_declare(
                self.replies_queue().as_str().into(),
                durable_queue,
                self.participant_queue_arguments(),
            )
            .await
            .context("declaring the replies queue")?;
        channel
            .queue_declare(
                self.dead_letters_queue().as_str().into(),
                durable_queue,
                FieldTable::default(),
            )
            .await
            .context("declaring the dead-letters queue")?;
        channel
            .queue_bind(
                self.dead_letters_queue().as_str().into(),
                self.dead_exchange().as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding the dead-letters queue")?;
        Ok(())
    }

    /// The arguments a participant queue must be declared with (contract, section 3).
    pub fn participant_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        for (key, value) in names::dead_lettering_arguments(self.name()) {
            args.insert(key.into(), AMQPValue::LongString(value.into()));
        }
        args
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let ns = self.name.clone();
        let partitions = self.partitions.load(Ordering::SeqCst);
        let broker = self.broker.clone();
        let participants: Vec<String> = self
            .participants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let instances: Vec<String> = self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        // Drop may run inside an async test: do the AMQP work on a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("testkit: no runtime to delete namespace {ns}: {e}");
                    return;
                }
            };
            let result = runtime.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(30),
                    delete_namespace(&broker, &ns, &participants, &instances, partitions),
                )
                .await
            });
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("testkit: deleting namespace {ns}: {e:#}"),
                Err(_) => eprintln!("testkit: deleting namespace {ns} timed out"),
            }
        });
        let _ = cleanup.join();
    }
}

async fn delete_namespace(
    broker: &str,
    ns: &str,
    participants: &[String],
    instances: &[String],
    partitions: u32,
) -> anyhow::Result<()> {
    let conn = connect_to(broker).await?;
    let mut queues = vec![
        names::replies_queue(ns),
        names::dead_letters_queue(ns),
        names::dead_commands_queue(ns),
    ];
    queues.extend(participants.iter().map(|p| names::participant_queue(ns, p)));
    queues.extend(
        instances
            .iter()
            .map(|i| names::instance_replies_queue(ns, i)),
    );
    // Deleting a queue that was never declared is no error in RabbitMQ: a namespace whose
    // coordinator never declared them costs only the round trips.
    queues.extend((0..partitions).map(|p| names::partition_replies_queue(ns, p)));
    let mut channel: Option<Channel> = None;
    for queue in &queues {
        let ch = reuse_or_open(&conn, channel.take()).await?;
        let deleted = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        channel = survivor(ch, deleted.map(drop), "queue", queue);
    }
    for exchange in [names::commands_exchange(ns), names::dead_exchange(ns)] {
        let ch = reuse_or_open(&conn, channel.take()).await?;
        let deleted = ch
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
        channel = survivor(ch, deleted, "exchange", &exchange);
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// The channel of the previous deletion if it is still open, else a new one.
async fn reuse_or_open(conn: &Connection, channel: Option<Channel>) -> anyhow::Result<Channel> {
    match channel {
        Some(ch) if ch.status().connected() => Ok(ch),
        _ => Ok(conn.create_channel().await?),
    }
}

/// The channel to go on with after a deletion: none after a failure, which closes it (as every AMQP
/// channel error does). The failure is only reported: cleanup does what it can.
fn survivor(ch: Channel, deleted: lapin::Result<()>, kind: &str, name: &str) -> Option<Channel> {
    match deleted {
        Ok(()) => Some(ch),
        Err(e) => {
            eprintln!("testkit: deleting {kind} {name}: {e}");
            None
        }
    }
}
