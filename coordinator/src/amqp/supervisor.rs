//! The connection's life cycle: connect with backoff, declare the topology, publish and consume until
//! the connection fails, then start over.
//!
//! lapin's own automatic recovery is not used: after a reconnection the coordinator must redeclare
//! participant queues and learn which confirms were lost, which a fresh session per connection makes
//! explicit.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use futures_util::FutureExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, timeout_at, Instant, MissedTickBehavior};

use super::consumer::{ConsumerEnd, ConsumerHandle, Source};
use super::publisher::{Confirmed, PublishError, Publisher};
use super::{
    names, redact_url, short, topology, AmqpSettings, BrokerError, Context, InboundDelivery,
    PublishResult,
};
use crate::outbox::OutboxMessage;

/// First reconnection delay; doubles per consecutive failure.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Connecting and declaring the topology; past this the broker is treated as unreachable.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the connection's state is looked at, in case a failure raised no event.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// How often (in health checks) the dead-letter queue's depth is read, for the metrics.
const DEAD_LETTERS_EVERY: u32 = 5;
/// How long a shutdown waits for in-flight settlements and confirms.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Closing a connection that may already be dead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

const NOT_CONNECTED: &str = "not connected";

/// Why a session ended.
enum SessionEnd {
    /// The connection failed: reconnect.
    Lost(String),
    /// Shutdown was asked for (or nobody is left to talk to): the task ends.
    Stop,
}

/// A published message waiting for its confirm.
struct Unconfirmed {
    outbox_id: i64,
    participant: String,
    /// The command's saga and attempt, for the line saying it was not routed.
    saga_id: uuid::Uuid,
    saga_name: String,
    step: Option<String>,
    attempt: u32,
    traceparent: Option<String>,
}

/// Everything that lives exactly as long as one connection.
struct Session {
    connection: Connection,
    events: Pin<Box<dyn Stream<Item = Event> + Send>>,
    publisher: Publisher,
    consumers: Vec<ConsumerHandle>,
    /// Reads queue depths (a passive declare of a missing queue closes its channel: kept apart).
    inspector: Option<Channel>,
}

/// The broker task's state across connections.
pub(super) struct Supervisor {
    settings: AmqpSettings,
    outbound: mpsc::UnboundedReceiver<OutboxMessage>,
    /// `false` once every `outbound` sender is gone.
    outbound_open: bool,
    published: mpsc::UnboundedSender<PublishResult>,
    inbound: mpsc::Sender<InboundDelivery>,
    connected: watch::Sender<bool>,
    dead_letters: watch::Sender<Option<u32>>,
    stop: watch::Receiver<bool>,
    /// The partitions this instance owns: their reply queues are consumed.
    owned: watch::Receiver<BTreeSet<u32>>,
    /// `false` once nobody updates `owned` any more.
    owned_open: bool,
}

impl Supervisor {
    // Each argument is one end of a channel the task serves; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        settings: AmqpSettings,
        outbound: mpsc::UnboundedReceiver<OutboxMessage>,
        published: mpsc::UnboundedSender<PublishResult>,
        inbound: mpsc::Sender<InboundDelivery>,
        connected: watch::Sender<bool>,
        dead_letters: watch::Sender<Option<u32>>,
        stop: watch::Receiver<bool>,
        owned: watch::Receiver<BTreeSet<u32>>,
    ) -> Self {
        Supervisor {
            settings,
            outbound,
            outbound_open: true,
            published,
            inbound,
            connected,
            dead_letters,
            stop,
            owned,
            owned_open: true,
        }
    }

    /// Runs until shutdown, reconnecting forever; each (re)connection tries the next URL of the
    /// list, so a cluster node that went away is left for the next one.
    pub(super) async fn run(mut self) {
        let mut nodes = Nodes::new(self.settings.urls());
        let mut failures: u32 = 0;
        loop {
            let node = nodes.next_url();
            let url = redact_url(&node);
            let settings = self.settings.clone();
            let inbound = self.inbound.clone();
            let owned = self.owned.borrow_and_update().clone();
            let attempt = timeout(ESTABLISH_TIMEOUT, establish(node, settings, inbound, owned));
            let outcome = match self.while_disconnected(attempt).await {
                None => break,
                Some(Err(_)) => Err(BrokerError::Timeout("connecting".to_owned())),
                Some(Ok(result)) => result,
            };
            match outcome {
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(failures);
                    // A queue of another type needs an operator; everything else heals itself.
                    let level = match e {
                        BrokerError::Inequivalent { .. } => log::Level::Error,
                        _ => log::Level::Warn,
                    };
                    log::log!(
                        level,
                        "connecting to RabbitMQ at {url} failed (attempt {failures}): {e}; \
                         retrying in {delay:?}"
                    );
                    if self
                        .while_disconnected(tokio::time::sleep(delay))
                        .await
                        .is_none()
                    {
                        break;
                    }
                }
                Ok(session) => {
                    log::info!("connected to RabbitMQ at {url}");
                    self.connected.send_replace(true);
                    let started = Instant::now();
                    let end = self.run_session(session).await;
                    self.connected.send_replace(false);
                    let reason = match end {
                        SessionEnd::Stop => break,
                        SessionEnd::Lost(reason) => reason,
                    };
                    failures = if started.elapsed() >= STABLE_SESSION {
                        0
                    } else {
                        failures.saturating_add(1)
                    };
                    let delay = backoff(failures);
                    log::warn!(
                        "lost the connection to RabbitMQ at {url}: {reason}; reconnecting in \
                         {delay:?}"
                    );
                    if self
                        .while_disconnected(tokio::time::sleep(delay))
                        .await
                        .is_none()
                    {
                        break;
                    }
                }
            }
        }
        self.connected.send_replace(false);
        self.refuse_queued("shutting down");
        log::info!("RabbitMQ connection stopped");
    }

    /// Runs `work` while refusing every outbound message at once, since nothing can be published
    /// now and the caller's outbox keeps it anyway. `None` when the task has to stop instead.
    async fn while_disconnected<F: Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return Some(output),
                () = stop_requested(&mut self.stop) => return None,
                () = self.inbound.closed(), if !self.outbound_open => return None,
                message = self.outbound.recv(), if self.outbound_open => match message {
                    Some(message) => self.answer(message.id, Err(NOT_CONNECTED.to_owned())),
                    None => self.outbound_open = false,
                },
            }
        }
    }

    /// Publishes and watches the connection until it fails or the task has to stop.
    async fn run_session(&mut self, mut session: Session) -> SessionEnd {
        // Confirms are tracked concurrently so publishing never waits for one: `outstanding` maps
        // each publish's sequence number to its message, to answer whatever the connection takes
        // down with it.
        let mut confirms = FuturesUnordered::new();
        let mut outstanding: HashMap<u64, Unconfirmed> = HashMap::new();
        let mut next_seq: u64 = 0;
        let mut health = tokio::time::interval(HEALTH_CHECK_INTERVAL);
        health.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Health checks until the dead-letter queue is read again (now, at first).
        let mut ticks: u32 = 0;

        let end = 'session: loop {
            tokio::select! {
                () = stop_requested(&mut self.stop) => break SessionEnd::Stop,
                () = self.inbound.closed(), if !self.outbound_open => break SessionEnd::Stop,
                message = self.outbound.recv(), if self.outbound_open => {
                    let Some(message) = message else {
                        self.outbound_open = false;
                        continue;
                    };
                    match session.publisher.publish(&session.connection, &message).await {
                        Ok(sending) => {
                            let seq = next_seq;
                            next_seq = next_seq.wrapping_add(1);
                            outstanding.insert(
                                seq,
                                // Moved, not copied: the message is done with once published.
                                Unconfirmed {
                                    outbox_id: message.id,
                                    participant: message.participant,
                                    saga_id: message.saga_id,
                                    saga_name: message.saga_name,
                                    step: message.step,
                                    attempt: message.attempt,
                                    traceparent: message.traceparent,
                                },
                            );
                            confirms.push(sending.map(move |c| (seq, c)));
                            // Poll now: the first poll hands the frames to lapin, so a message
                            // goes out at once and in order, whatever the other branches do.
                            while let Poll::Ready(Some((seq, outcome))) =
                                futures_util::poll!(confirms.next())
                            {
                                let publisher = &mut session.publisher;
                                if let Some(reason) =
                                    self.confirmed(publisher, &mut outstanding, seq, outcome)
                                {
                                    break 'session SessionEnd::Lost(reason);
                                }
                            }
                        }
                        Err(PublishError::Message(reason)) => {
                            log::warn!(
                                saga_id:% = message.saga_id,
                                saga = message.saga_name.as_str(),
                                step = message.step.as_deref(),
                                attempt = message.attempt,
                                trace_id = logfmt::trace_id(message.traceparent.as_deref());
                                "cannot publish outbox message {}: {reason}",
                                message.id
                            );
                            self.answer(message.id, Err(reason));
                        }
                        Err(PublishError::Session(reason)) => {
                            self.answer(message.id, Err(reason.clone()));
                            break SessionEnd::Lost(reason);
                        }
                    }
                }
                Some((seq, outcome)) = confirms.next(), if !confirms.is_empty() => {
                    if let Some(reason) =
                        self.confirmed(&mut session.publisher, &mut outstanding, seq, outcome)
                    {
                        break SessionEnd::Lost(reason);
                    }
                }
                event = session.events.next() => match event {
                    Some(Event::Error(e)) if !session.connection.status().connected() => {
                        break SessionEnd::Lost(e.to_string());
                    }
                    Some(Event::Error(e)) => log::warn!("RabbitMQ channel error: {e}"),
                    Some(Event::ConnectionBlocked(reason)) => {
                        log::warn!("RabbitMQ blocks publishing: {reason}");
                    }
                    Some(Event::ConnectionUnblocked) => log::info!("RabbitMQ unblocked publishing"),
                    Some(_) => {}
                    None => break SessionEnd::Lost("the connection's event stream ended".into()),
                },
                (source, end) = consumer_end(&mut session.consumers) => match end {
                    // Logged by the consumer; the session goes on publishing.
                    ConsumerEnd::InboundClosed => {}
                    ConsumerEnd::Lost(reason) => {
                        let consumer = source.label();
                        break SessionEnd::Lost(format!("the {consumer} consumer ended: {reason}"));
                    }
                },
                changed = self.owned.changed(), if self.owned_open => {
                    if changed.is_err() {
                        self.owned_open = false;
                        continue;
                    }
                    let owned = self.owned.borrow_and_update().clone();
                    if let Err(e) = self.follow_partitions(&mut session, &owned).await {
                        break SessionEnd::Lost(e.to_string());
                    }
                }
                _ = health.tick() => {
                    if !session.connection.status().connected() {
                        break SessionEnd::Lost("the connection is closed".into());
                    }
                    if ticks == 0 {
                        self.count_dead_letters(&mut session.inspector).await;
                        ticks = DEAD_LETTERS_EVERY;
                    }
                    ticks -= 1;
                }
            }
        };

        // Confirms that arrived but were not looked at yet still count.
        while let Some(Some((seq, outcome))) = confirms.next().now_or_never() {
            self.confirmed(&mut session.publisher, &mut outstanding, seq, outcome);
        }

        match end {
            SessionEnd::Lost(reason) => {
                for consumer in &mut session.consumers {
                    if let Some(task) = consumer.task.take() {
                        task.abort();
                    }
                }
                let unconfirmed = format!("connection lost before the broker confirmed: {reason}");
                for (_, message) in outstanding.drain() {
                    self.answer(message.outbox_id, Err(unconfirmed.clone()));
                }
                close_quietly(&session.connection, "connection lost").await;
                SessionEnd::Lost(reason)
            }
            SessionEnd::Stop => {
                let deadline = Instant::now() + SHUTDOWN_GRACE;
                // Stop consuming first, so nothing new arrives while in-flight work is settled.
                for consumer in &mut session.consumers {
                    if consumer.task.is_some() {
                        let source = consumer.source.label();
                        if let Ok(Err(e)) = timeout_at(deadline, consumer.cancel()).await {
                            log::debug!("cancelling the {source} consumer: {e}");
                        }
                    }
                }
                self.refuse_queued("shutting down");
                for consumer in &mut session.consumers {
                    if let Some(mut task) = consumer.task.take() {
                        if timeout_at(deadline, &mut task).await.is_err() {
                            task.abort();
                        }
                    }
                }
                while !confirms.is_empty() {
                    match timeout_at(deadline, confirms.next()).await {
                        Ok(Some((seq, outcome))) => {
                            self.confirmed(&mut session.publisher, &mut outstanding, seq, outcome);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                for (_, message) in outstanding.drain() {
                    let reason = "shut down before the broker confirmed".to_owned();
                    self.answer(message.outbox_id, Err(reason));
                }
                close_quietly(&session.connection, "coordinator shutting down").await;
                SessionEnd::Stop
            }
        }
    }

    /// Consumes the reply queues of the partitions in `owned`, and only those.
    async fn follow_partitions(
        &mut self,
        session: &mut Session,
        owned: &BTreeSet<u32>,
    ) -> Result<(), BrokerError> {
        for consumer in &mut session.consumers {
            if consumer.source == Source::PartitionReplies && consumer.task.is_some() {
                consumer.follow(owned).await?;
            }
        }
        Ok(())
    }

    /// Reads how many messages wait in `{ns}.dead-letters` (for the metrics). On failure the
    /// inspector channel is given up for this session; nothing else depends on it.
    async fn count_dead_letters(&self, inspector: &mut Option<Channel>) {
        let Some(channel) = inspector.as_ref() else {
            return;
        };
        let queue = names::dead_letters_queue(&self.settings.namespace);
        let Ok(name) = short(&queue) else { return };
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = timeout(
            CLOSE_TIMEOUT,
            channel.queue_declare(name, passive, FieldTable::default()),
        )
        .await;
        match declared {
            Ok(Ok(q)) => {
                self.dead_letters.send_replace(Some(q.message_count()));
            }
            Ok(Err(e)) => {
                log::debug!("cannot read the depth of {queue}: {e}");
                *inspector = None;
            }
            Err(_) => log::debug!("reading the depth of {queue} timed out"),
        }
    }

    /// Stops accepting outbound messages and refuses those already queued.
    fn refuse_queued(&mut self, reason: &str) {
        self.outbound.close();
        self.outbound_open = false;
        while let Ok(message) = self.outbound.try_recv() {
            self.answer(message.id, Err(reason.to_owned()));
        }
    }

    /// Answers a resolved confirm; `Some(reason)` if the message could not even be sent, or was
    /// nacked (see `Confirmed::Nacked`), which ends the session.
    fn confirmed(
        &self,
        publisher: &mut Publisher,
        outstanding: &mut HashMap<u64, Unconfirmed>,
        seq: u64,
        outcome: Confirmed,
    ) -> Option<String> {
        let message = outstanding.remove(&seq)?;
        let lost = match &outcome {
            Confirmed::Returned(reason) => {
                log::warn!(
                    saga_id:% = message.saga_id,
                    saga = message.saga_name.as_str(),
                    step = message.step.as_deref(),
                    attempt = message.attempt,
                    trace_id = logfmt::trace_id(message.traceparent.as_deref());
                    "outbox message {} was not routed: {reason}",
                    message.outbox_id
                );
                publisher.forget_participant(&message.participant);
                None
            }
            Confirmed::Unsent(reason) | Confirmed::Nacked(reason) => Some(reason.clone()),
            Confirmed::Stored | Confirmed::Failed(_) => None,
        };
        self.answer(message.outbox_id, outcome.into_result());
        lost
    }

    fn answer(&self, outbox_id: i64, result: Result<(), String>) {
        if self
            .published
            .send(PublishResult { outbox_id, result })
            .is_err()
        {
            log::debug!("nobody receives publish results any more (outbox message {outbox_id})");
        }
    }
}

/// The broker's URLs, taken in turn.
struct Nodes {
    urls: Vec<String>,
    next: usize,
}

impl Nodes {
    fn new(urls: Vec<String>) -> Self {
        Nodes { urls, next: 0 }
    }

    fn next_url(&mut self) -> String {
        let url = self
            .urls
            .get(self.next % self.urls.len().max(1))
            .cloned()
            .unwrap_or_default();
        self.next = self.next.wrapping_add(1);
        url
    }
}

/// Connects to `url` and sets up everything a session needs; the connection is closed again on
/// failure.
async fn establish(
    url: String,
    settings: AmqpSettings,
    inbound: mpsc::Sender<InboundDelivery>,
    owned: BTreeSet<u32>,
) -> Result<Session, BrokerError> {
    let properties =
        ConnectionProperties::default().with_connection_name("saga-coordinator".into());
    let connection = Connection::connect(&url, properties)
        .await
        .context("connecting")?;
    // Listen before anything else can fail, so no error event is missed.
    let events: Pin<Box<dyn Stream<Item = Event> + Send>> = Box::pin(connection.events_listener());
    let mut consumers = Vec::new();
    match set_up(&connection, &settings, inbound, &owned, &mut consumers).await {
        Ok(publisher) => {
            let inspector = connection.create_channel().await.ok();
            Ok(Session {
                connection,
                events,
                publisher,
                consumers,
                inspector,
            })
        }
        Err(e) => {
            drop(consumers);
            close_quietly(&connection, "set-up failed").await;
            Err(e)
        }
    }
}

async fn set_up(
    connection: &Connection,
    settings: &AmqpSettings,
    inbound: mpsc::Sender<InboundDelivery>,
    owned: &BTreeSet<u32>,
    consumers: &mut Vec<ConsumerHandle>,
) -> Result<Publisher, BrokerError> {
    let ns = &settings.namespace;
    let topology_channel = connection
        .create_channel()
        .await
        .context("opening the topology channel")?;
    topology::declare(
        &topology_channel,
        ns,
        settings.queue_type,
        settings.partitions,
        &settings.instance,
    )
    .await?;
    let publisher = Publisher::open(
        connection,
        topology_channel,
        ns,
        settings.queue_type,
        &settings.instance,
    )
    .await?;
    // Once nobody receives inbound messages, consuming would only bounce them back to the queue.
    if !inbound.is_closed() {
        consumers.push(
            ConsumerHandle::start_partitions(
                connection,
                ns,
                settings.prefetch,
                inbound.clone(),
                owned,
            )
            .await?,
        );
        for (source, queue) in [
            (
                Source::InstanceReplies,
                names::instance_replies_queue(ns, &settings.instance),
            ),
            (Source::Replies, names::replies_queue(ns)),
            (Source::DeadCommands, names::dead_commands_queue(ns)),
        ] {
            let consumer = ConsumerHandle::start(
                connection,
                source,
                &queue,
                ns,
                settings.prefetch,
                inbound.clone(),
            )
            .await?;
            consumers.push(consumer);
        }
    }
    Ok(publisher)
}

/// Resolves when a stop was asked for; never if the handle was dropped without asking.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves with the first consumer task that ends (and forgets it); never if none is running.
async fn consumer_end(consumers: &mut [ConsumerHandle]) -> (Source, ConsumerEnd) {
    let running = consumers.iter_mut().filter_map(|consumer| {
        let source = consumer.source;
        let task = consumer.task.as_mut()?;
        Some(Box::pin(async move {
            let end = task
                .await
                .unwrap_or_else(|e| ConsumerEnd::Lost(format!("the consumer task failed: {e}")));
            (source, end)
        }))
    });
    let running: Vec<_> = running.collect();
    if running.is_empty() {
        return std::future::pending().await;
    }
    let ((source, end), _, _) = futures_util::future::select_all(running).await;
    for consumer in consumers.iter_mut() {
        if consumer.source == source {
            consumer.task = None;
        }
    }
    (source, end)
}

async fn close_quietly(connection: &Connection, why: &str) {
    if !connection.status().connected() {
        return;
    }
    match timeout(CLOSE_TIMEOUT, connection.close(200, why.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("closing the RabbitMQ connection: {e}"),
        Err(_) => log::debug!("closing the RabbitMQ connection timed out"),
    }
}

/// Exponential backoff from 100 ms to 5 s with jitter (half fixed, half random), so coordinators
/// that lost the broker together do not all come back in the same instant.
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let base = MIN_BACKOFF
        .saturating_mul(1u32 << exponent)
        .min(MAX_BACKOFF);
    let half = base / 2;
    let spread = u64::try_from(half.as_millis()).unwrap_or(0);
    half + Duration::from_millis(rand::random_range(0..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_take_the_nodes_in_turn() {
        let mut nodes = Nodes::new(vec!["a".into(), "b".into(), "c".into()]);
        let taken: Vec<String> = (0..7).map(|_| nodes.next_url()).collect();
        assert_eq!(taken, ["a", "b", "c", "a", "b", "c", "a"]);
        let mut one = Nodes::new(vec!["only".into()]);
        assert_eq!([one.next_url(), one.next_url()], ["only", "only"]);
        assert_eq!(Nodes::new(Vec::new()).next_url(), "");
    }

    #[test]
    fn backoff_grows_from_100ms_to_5s() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= MIN_BACKOFF);
            assert!(backoff(0) <= MIN_BACKOFF);
            let third = backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(1000);
            assert!(late >= MAX_BACKOFF / 2 && late <= MAX_BACKOFF);
        }
    }
}
