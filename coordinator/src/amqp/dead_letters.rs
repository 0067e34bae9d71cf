//! Browsing `{ns}.dead-letters` for operators, without taking anything away.
//!
//! A short-lived connection of its own fetches up to N messages with `basic.get` and **no ack**, reads
//! what RabbitMQ recorded about each (the `x-death` header and its `x-first-death-*` summary), then
//! closes the channel: RabbitMQ puts every unacknowledged message back in the queue, in its original
//! place, marked redelivered. Nothing else consumes this queue, so holding the messages for the
//! moment of a browse hides them from no one. A separate connection keeps a slow or failing browse
//! away from the coordinator's own publishing and consuming.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde::Serialize;

use super::{names, short, AmqpSettings, BrokerError, Context};

/// A whole browse gives up after this long.
const BROWSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bodies are shown up to this many bytes.
const BODY_LIMIT: usize = 64 * 1024;

/// One dead-lettered message, as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    /// The AMQP `type` property (`action`, `compensation`, `check`, `reply`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The routing key it was published with (a command's participant).
    pub routing_key: String,
    /// Why RabbitMQ dead-lettered it: `rejected`, `expired`, `maxlen` or `delivery_limit`.
    pub reason: Option<String>,
    /// The queue it died in.
    pub queue: Option<String>,
    /// How many times it was dead-lettered from that queue.
    pub count: Option<i64>,
    /// When it was (first) dead-lettered.
    pub died_at: Option<DateTime<Utc>>,
    /// The body as text (lossy UTF-8, cut at 64 KiB).
    pub body: String,
}

/// What a browse found.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetters {
    /// Messages in the queue when it was browsed (possibly more than `items`).
    pub total: u64,
    pub items: Vec<DeadLetter>,
}

/// Browses the dead-letters queue of one namespace.
#[derive(Clone)]
pub struct DeadLetterBrowser {
    settings: AmqpSettings,
}

impl DeadLetterBrowser {
    pub fn new(settings: AmqpSettings) -> Self {
        DeadLetterBrowser { settings }
    }

    /// Up to `limit` messages from the head of `{ns}.dead-letters`, all left in the queue.
    pub async fn browse(&self, limit: usize) -> Result<DeadLetters, String> {
        match tokio::time::timeout(BROWSE_TIMEOUT, self.fetch(limit)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(BrokerError::Timeout("browsing the dead letters".into()).to_string()),
        }
    }

    /// The first node of the URL list that answers.
    async fn connect(&self) -> Result<Connection, BrokerError> {
        let mut failure = None;
        for url in self.settings.urls() {
            let properties = ConnectionProperties::default()
                .with_connection_name("saga-coordinator-dead-letters".into());
            match Connection::connect(&url, properties).await {
                Ok(connection) => return Ok(connection),
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) => Err(e).context("connecting to browse the dead letters"),
            None => Err(BrokerError::Invalid("no RabbitMQ URL".to_owned())),
        }
    }

    async fn fetch(&self, limit: usize) -> Result<DeadLetters, BrokerError> {
        let queue = names::dead_letters_queue(&self.settings.namespace);
        let connection = self.connect().await?;
        let result = async {
            let channel = connection
                .create_channel()
                .await
                .context("opening a channel")?;
            let mut items = Vec::new();
            let mut remaining = 0u64;
            while items.len() < limit {
                let got = channel
                    .basic_get(short(&queue)?, BasicGetOptions { no_ack: false })
                    .await
                    .context(format!("reading {queue}"))?;
                let Some(message) = got else { break };
                remaining = u64::from(message.message_count);
                items.push(describe(&message.delivery));
            }
            // Closing without acknowledging puts every message back where it was.
            channel
                .close(200, "browsed".into())
                .await
                .context("closing the channel")?;
            Ok(DeadLetters {
                total: items.len() as u64 + remaining,
                items,
            })
        }
        .await;
        let _ = connection.close(200, "browsed".into()).await;
        result
    }
}

fn describe(delivery: &lapin::message::Delivery) -> DeadLetter {
    let props = &delivery.properties;
    let headers = props.headers().as_ref();
    let first_death = headers
        .and_then(|h| header(h, "x-death"))
        .and_then(|v| match v {
            AMQPValue::FieldArray(deaths) => deaths.as_slice().first().and_then(|d| match d {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            }),
            _ => None,
        });
    let death = |key: &str| first_death.as_ref().and_then(|t| header(t, key));
    let reason = headers
        .and_then(|h| header(h, "x-first-death-reason"))
        .or_else(|| death("reason"))
        .and_then(text);
    let queue = headers
        .and_then(|h| header(h, "x-first-death-queue"))
        .or_else(|| death("queue"))
        .and_then(text);
    let count = death("count").and_then(|v| match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        _ => None,
    });
    let died_at = death("time").and_then(|v| match v {
        AMQPValue::Timestamp(t) => DateTime::from_timestamp(i64::try_from(*t).ok()?, 0),
        _ => None,
    });
    let cut = delivery.data.len().min(BODY_LIMIT);
    DeadLetter {
        message_id: props.message_id().as_ref().map(|s| s.to_string()),
        kind: props.kind().as_ref().map(|s| s.to_string()),
        routing_key: delivery.routing_key.to_string(),
        reason,
        queue,
        count,
        died_at,
        body: String::from_utf8_lossy(&delivery.data[..cut]).into_owned(),
    }
}

fn header<'a>(table: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    table
        .inner()
        .iter()
        .find(|(k, _)| k.as_str() == key)
        .map(|(_, v)| v)
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}
