//! The delivery loop: connect, declare the queue, consume; for each command run its handler,
//! publish the reply with a confirm, and only then acknowledge the command. Reconnects with backoff.
//!
//! Reply before acknowledgement means a crash anywhere loses nothing: a command whose reply was not
//! confirmed is still unacknowledged, so the broker delivers it again, and the handler (through the
//! idempotency barrier) answers it with the recorded outcome.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use contract::properties::{CONTENT_TYPE, PERSISTENT, TRACEPARENT, TRACESTATE};
use contract::{broker, names, CommandBody};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Event, ExchangeKind};
use opentelemetry::context::FutureExt as _;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Handlers, Participant, Settings};
use crate::command::{Command, CommandKind};
use crate::command_log;
use crate::logging::Attempt;
use crate::outcome::{reply_body, Outcome};

/// A session that lasted this long resets the reconnection backoff.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// Connecting and declaring; past this the broker counts as unreachable.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a reply that found no queue waits before its command goes back to the queue.
const UNROUTED_DELAY: Duration = Duration::from_secs(1);
/// Waiting for the broker's confirm of a reply; past this the channel is presumed stuck and the
/// session starts over, so the command is delivered again.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Closing a connection that may already be dead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a session ended.
enum SessionEnd {
    Lost(String),
    Stopped,
}

pub(super) async fn run(
    participant: Participant,
    shutdown: CancellationToken,
    consuming: watch::Sender<bool>,
) {
    let name = participant.name.clone();
    let urls = broker::amqp_urls(&participant.settings.amqp_url);
    let mut delays = backoff();
    // Each (re)connection takes the next node of the list, leaving behind one that went away.
    for url in urls.iter().cycle() {
        if shutdown.is_cancelled() {
            break;
        }
        let started = tokio::time::Instant::now();
        let end = session(&participant, url, &shutdown, &consuming).await;
        consuming.send_replace(false);
        let reason = match end {
            Ok(SessionEnd::Stopped) => break,
            Ok(SessionEnd::Lost(reason)) | Err(reason) => reason,
        };
        if started.elapsed() >= STABLE_SESSION {
            delays = backoff();
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        let node = broker::redact_url(url);
        log::warn!("participant {name} at {node}: {reason}; reconnecting in {delay:?}");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => break,
        }
    }
    log::info!("participant {name} stopped");
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// What one session sets up on the broker at `url`: a connection, a confirming channel and a
/// consumer.
async fn establish(
    name: &str,
    settings: &Settings,
    url: &str,
) -> Result<(Connection, Channel, lapin::Consumer), String> {
    let fail = |what: &str, e: lapin::Error| format!("{what}: {e}");
    let properties =
        ConnectionProperties::default().with_connection_name(format!("participant.{name}").into());
    let connection = Connection::connect(url, properties)
        .await
        .map_err(|e| fail("connecting to RabbitMQ", e))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| fail("opening a channel", e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| fail("enabling publisher confirms", e))?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| fail("setting the prefetch", e))?;
    let queue = short(&names::participant_queue(&settings.namespace, name))?;
    let exchange = short(&names::commands_exchange(&settings.namespace))?;
    // Same declarations as the coordinator's (contract, section 3): idempotent, so commands are
    // routed here even when the participant starts first.
    channel
        .exchange_declare(
            exchange.clone(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| fail("declaring the commands exchange", e))?;
    let mut arguments = FieldTable::default();
    for (name, value) in names::queue_arguments(&settings.namespace, settings.queue_type) {
        arguments.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .map_err(|e| {
            let hint = if refused_as_inequivalent(&e) {
                format!(
                    " (the queue exists with other arguments, most likely as another queue type: \
                     SAGA_QUEUE_TYPE={} must be the coordinator's; see the coordinator's \
                     docs/contract-notes.md, \"Queue type\")",
                    settings.queue_type
                )
            } else {
                String::new()
            };
            format!("declaring queue {queue}: {e}{hint}")
        })?;
    channel
        .queue_bind(
            queue.clone(),
            exchange,
            short(name)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| fail(&format!("binding queue {queue}"), e))?;
    let tag = short(&format!("participant.{name}.{}", uuid::Uuid::new_v4()))?;
    let consumer = channel
        .basic_consume(
            queue,
            tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| fail("consuming", e))?;
    Ok((connection, channel, consumer))
}

/// RabbitMQ's answer to a declaration that differs from the existing queue's.
fn refused_as_inequivalent(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(refusal)
            if matches!(refusal.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

async fn session(
    participant: &Participant,
    url: &str,
    shutdown: &CancellationToken,
    consuming: &watch::Sender<bool>,
) -> Result<SessionEnd, String> {
    let name = participant.name.as_str();
    let settings = &participant.settings;
    let established = tokio::select! {
        r = tokio::time::timeout(ESTABLISH_TIMEOUT, establish(name, settings, url)) => r,
        () = shutdown.cancelled() => return Ok(SessionEnd::Stopped),
    };
    let (connection, channel, mut consumer) =
        established.map_err(|_| "connecting timed out".to_string())??;
    let mut events = connection.events_listener();
    log::info!(
        "participant {name} consuming {} at {}",
        names::participant_queue(&settings.namespace, name),
        broker::redact_url(url)
    );
    consuming.send_replace(true);

    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let mut in_flight = JoinSet::new();
    // Cancelled by a handler whose reply failed: the channel cannot be trusted any more.
    let broken = CancellationToken::new();
    let end = loop {
        tokio::select! {
            () = shutdown.cancelled() => break SessionEnd::Stopped,
            () = broken.cancelled() => break SessionEnd::Lost("a reply failed".into()),
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            event = events.next() => match event {
                Some(Event::Error(e)) => break SessionEnd::Lost(format!("connection error: {e}")),
                None => break SessionEnd::Lost("the connection's events ended".into()),
                Some(_) => {}
            },
            next = consumer.next() => match next {
                None => break SessionEnd::Lost("the broker cancelled the consumer".into()),
                Some(Err(e)) => break SessionEnd::Lost(format!("consuming failed: {e}")),
                Some(Ok(delivery)) => {
                    let job = Job {
                        participant: name.to_string(),
                        handlers: participant.handlers.clone(),
                        channel: channel.clone(),
                        redeliver_rate: settings.redeliver_rate,
                        broken: broken.clone(),
                    };
                    let permits = permits.clone();
                    in_flight.spawn(async move {
                        let _permit = permits.acquire_owned().await;
                        job.handle(delivery).await;
                    });
                }
            },
        }
    };
    match &end {
        SessionEnd::Stopped => {
            // No new commands; those under way reply and acknowledge; the rest go back to the queue
            // when the channel closes.
            let tag = consumer.tag();
            if let Err(e) = channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await
            {
                log::debug!("participant {name}: cancelling the consumer: {e}");
            }
            let waiting = in_flight.len();
            if waiting > 0 {
                log::info!("participant {name}: finishing {waiting} commands under way");
            }
            while in_flight.join_next().await.is_some() {}
            let _ = connection.close(200, "participant stopping".into()).await;
        }
        SessionEnd::Lost(_) => {
            // Handlers under way cannot reply on this channel; their commands are redelivered on the
            // next connection. Let them finish in the background rather than cut them mid-write.
            in_flight.detach_all();
            // Closed explicitly, as the connection may still be up (a stuck channel): its
            // unacknowledged commands go back to the queue only once it is gone.
            if connection.status().connected() {
                let closing = connection.close(200, "participant reconnecting".into());
                if let Ok(Err(e)) = tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
                    log::debug!("participant {name}: closing the connection: {e}");
                }
            }
        }
    }
    Ok(end)
}

fn short(s: &str) -> Result<ShortString, String> {
    ShortString::try_new(s).map_err(|_| format!("AMQP name longer than 255 bytes: {s:?}"))
}

/// Everything one delivery needs.
struct Job {
    participant: String,
    handlers: Arc<Handlers>,
    channel: Channel,
    redeliver_rate: f64,
    /// Ends the session.
    broken: CancellationToken,
}

impl Job {
    async fn handle(self, delivery: Delivery) {
        let command = match self.decode(&delivery) {
            Ok(command) => command,
            Err(why) => {
                log::warn!(
                    "participant {}: rejecting a command to the dead-letter queue: {why}; body: {}",
                    self.participant,
                    String::from_utf8_lossy(&delivery.data)
                );
                if let Err(e) = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                {
                    log::warn!("participant {}: basic.reject: {e}", self.participant);
                }
                return;
            }
        };
        let Some(reply_to) = delivery.properties.reply_to().clone() else {
            // Checked in `decode`.
            return;
        };
        let (outcome, context) = match self.dispatch(command.clone()) {
            Ok(future) => {
                // The handler runs in its span, a child of the command's (the coordinator's
                // attempt); an async handler's body runs only once polled, so all of it is inside.
                let context = crate::telemetry::handler_context(&self.participant, &command);
                let outcome = future.with_context(context.clone()).await;
                crate::telemetry::handler_ended(&context, &outcome);
                (outcome, context)
            }
            Err(why) => {
                command_log!(
                    log::Level::Warn,
                    command;
                    "participant {}: rejecting {} {} of saga {} to the dead-letter queue: {why}",
                    self.participant,
                    command.kind,
                    command.name,
                    command.saga_id
                );
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
                return;
            }
        };
        command_log!(
            log::Level::Debug,
            command;
            "participant {}: {} {} of saga {} (attempt {}): {}",
            self.participant,
            command.kind,
            command.name,
            command.saga_id,
            command.attempt,
            outcome.label()
        );
        match self
            .reply(
                &reply_to,
                &delivery.properties,
                &command,
                &outcome,
                &context,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                command_log!(
                    log::Level::Warn,
                    command;
                    "participant {}: the reply to {} found no queue {reply_to}; the command goes back to the queue",
                    self.participant,
                    command.idempotency_key
                );
                tokio::time::sleep(UNROUTED_DELAY).await;
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
                return;
            }
            Err(e) => {
                // Not acknowledged: the broker delivers the command again once the channel is gone,
                // which ending the session makes sure of. A fresh channel also heals what a nack
                // or a missing confirm may mean: a channel whose quorum queue client lost track of
                // the queue's leader (seen with RabbitMQ 3.10 when a node is killed) refuses or
                // ignores every later publish while new channels work.
                command_log!(
                    log::Level::Warn,
                    command;
                    "participant {}: replying to {} failed: {e}; reconnecting, the command will be \
                     delivered again",
                    self.participant,
                    command.idempotency_key
                );
                self.broken.cancel();
                return;
            }
        }
        let settled = if self.redeliver_rate > 0.0 && fastrand::f64() < self.redeliver_rate {
            command_log!(
                log::Level::Info,
                command;
                "participant {}: fault injection: {} goes back to the queue after its reply",
                self.participant,
                command.idempotency_key
            );
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        } else {
            delivery.acker.ack(BasicAckOptions::default()).await
        };
        if let Err(e) = settled {
            command_log!(
                log::Level::Warn,
                command;
                "participant {}: acknowledging {}: {e}",
                self.participant,
                command.idempotency_key
            );
        }
    }

    fn decode(&self, delivery: &Delivery) -> Result<Command<serde_json::Value>, String> {
        let body: CommandBody = serde_json::from_slice(&delivery.data)
            .map_err(|e| format!("undecodable command body: {e}"))?;
        if delivery.properties.reply_to().is_none() {
            return Err("the command has no reply_to".into());
        }
        let header = |name: &str| {
            delivery.properties.headers().as_ref().and_then(|headers| {
                match headers.inner().get(name) {
                    Some(AMQPValue::LongString(s)) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
                    _ => None,
                }
            })
        };
        let trace = (header(TRACEPARENT), header(TRACESTATE));
        Command::from_body(body, delivery.redelivered, trace)
            .ok_or_else(|| "an action or compensation without a step".to_string())
    }

    /// The handler's future, already guarded so that an error or a panic becomes `retry`.
    fn dispatch(
        &self,
        command: Command<serde_json::Value>,
    ) -> Result<impl std::future::Future<Output = Outcome>, String> {
        let handler = self
            .handlers
            .get(&(command.kind, command.name.clone()))
            .ok_or_else(|| format!("unknown {} {:?}", command.kind, command.name))?
            .clone();
        let participant = self.participant.clone();
        let key = command.idempotency_key.clone();
        let kind = command.kind;
        let about = Attempt::of(&command);
        // Calling the handler may panic too (before it returns a future).
        let future = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(command))) {
            Ok(Ok(future)) => future,
            Ok(Err(e)) => return Err(format!("undecodable payload: {e}")),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                return Ok(futures_util::future::ready(Outcome::retry(format!(
                    "the handler panicked: {message}"
                )))
                .left_future());
            }
        };
        Ok(async move {
            match AssertUnwindSafe(future).catch_unwind().await {
                Ok(Ok(outcome)) => fit_to_kind(kind, outcome),
                Ok(Err(e)) => {
                    command_log!(
                        log::Level::Warn,
                        about;
                        "participant {participant}: handler of {key} failed: {e}"
                    );
                    Outcome::retry(format!("handler error: {e}"))
                }
                Err(panic) => {
                    let message = panic_message(panic.as_ref());
                    command_log!(
                        log::Level::Error,
                        about;
                        "participant {participant}: handler of {key} panicked: {message}"
                    );
                    Outcome::retry(format!("the handler panicked: {message}"))
                }
            }
        }
        .right_future())
    }

    /// Publishes the reply and waits for the broker's confirm. `Ok(false)`: nothing took it.
    async fn reply(
        &self,
        reply_to: &ShortString,
        command_properties: &BasicProperties,
        command: &Command<serde_json::Value>,
        outcome: &Outcome,
        context: &opentelemetry::Context,
    ) -> Result<bool, String> {
        let body = serde_json::to_vec(&reply_body(command, outcome))
            .map_err(|e| format!("serializing the reply: {e}"))?;
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(CONTENT_TYPE.into());
        if let Some(id) = command_properties.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        // The handler's span, so the coordinator's side can follow the answer to it.
        let trace = crate::telemetry::trace_headers(context);
        if !trace.is_empty() {
            let mut headers = FieldTable::default();
            for (name, value) in trace {
                headers.insert(name.into(), AMQPValue::LongString(value.as_str().into()));
            }
            properties = properties.with_headers(headers);
        }
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                reply_to.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                properties,
            )
            .await
            .map_err(|e| format!("publishing: {e}"))?;
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| format!("no confirm within {CONFIRM_TIMEOUT:?}"))?
            .map_err(|e| format!("waiting for the confirm: {e}"))?;
        if !confirm.is_ack() {
            return Err("the broker refused the reply".into());
        }
        Ok(confirm.take_message().is_none())
    }
}

/// A check-back answer is only an answer to a `check` command, and a `check` command only takes one:
/// anything else becomes `retry` rather than a reply the coordinator would ignore.
fn fit_to_kind(kind: CommandKind, outcome: Outcome) -> Outcome {
    match (kind, outcome) {
        (CommandKind::Check, outcome @ (Outcome::CheckBack(_) | Outcome::Retry(_))) => outcome,
        (CommandKind::Check, other) => Outcome::retry(format!(
            "a check-back must answer committed, aborted or pending, not {}",
            other.label()
        )),
        (_, Outcome::CheckBack(answer)) => Outcome::retry(format!(
            "{} is only an answer to a check-back",
            answer.as_str()
        )),
        (_, outcome) => outcome,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}
