//! The coordinator's side of the AMQP contract, played by hand: declares the topology, publishes
//! commands to participants and collects their replies. For testing participants (the SDK) without
//! a coordinator deciding what comes next.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use contract::properties::{CONTENT_TYPE, PERSISTENT};
use contract::{idempotency_key, CommandBody, CommandKind};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use serde_json::Value;

use crate::namespace::{amqp_connect, TestNamespace};

/// Declares the namespace's topology and listens on `{ns}.replies`. Dropping it closes its connection.
pub struct FakeCoordinator {
    ns: TestNamespace,
    connection: Option<Connection>,
    channel: Channel,
    replies: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A command body as the contract spells it (section 4), deadline one minute from now. Panics on a
/// `saga_id` that is not a UUID or a `kind` the contract does not know: callers are tests.
pub fn command_body(
    saga_id: &str,
    step: &str,
    kind: &str,
    command: &str,
    attempt: u32,
    payload: Value,
) -> Value {
    let saga_id = saga_id.parse().expect("a saga id is a UUID");
    let kind: CommandKind = kind.parse().expect("a command kind");
    let body = CommandBody {
        saga_id,
        saga_name: "sdk-test".into(),
        step: Some(step.into()),
        kind,
        command: command.into(),
        attempt,
        idempotency_key: idempotency_key(saga_id, Some(step), kind),
        deadline: chrono::Utc::now() + chrono::Duration::minutes(1),
        payload,
        saga_payload: Value::Null,
        outputs: Default::default(),
        // A compensation always carries its action's output, `null` when there was none.
        action_output: (kind == CommandKind::Compensation).then_some(Value::Null),
    };
    serde_json::to_value(body).expect("a command body serializes")
}

impl FakeCoordinator {
    pub async fn start(ns: &TestNamespace) -> anyhow::Result<FakeCoordinator> {
        let connection = amqp_connect().await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        ns.declare_coordinator_topology(&channel).await?;
        let consume_channel = connection.create_channel().await?;
        let mut consumer = consume_channel
            .basic_consume(
                ns.replies_queue().as_str().into(),
                "fake-coordinator".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .context("consuming replies")?;
        let replies = Arc::new(Mutex::new(Vec::new()));
        let sink = replies.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let mut body: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
                if let (Some(obj), Some(id)) = (
                    body.as_object_mut(),
                    delivery.properties.correlation_id().as_ref(),
                ) {
                    obj.insert("_correlation_id".into(), Value::String(id.to_string()));
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(body);
            }
        });
        Ok(FakeCoordinator {
            ns: ns.clone(),
            connection: Some(connection),
            channel,
            replies,
            task,
        })
    }

    /// Publishes a command body to `participant` (mandatory: repeated until the queue exists).
    pub async fn send(&self, participant: &str, body: &Value) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(body)?;
        let kind = body
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("action")
            .to_string();
        self.send_raw(participant, &bytes, &kind).await
    }

    /// Publishes raw bytes as a command to `participant`.
    pub async fn send_raw(
        &self,
        participant: &str,
        bytes: &[u8],
        kind: &str,
    ) -> anyhow::Result<()> {
        let id = uuid::Uuid::new_v4().to_string();
        let props = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(CONTENT_TYPE.into())
            .with_message_id(id.as_str().into())
            .with_correlation_id(id.as_str().into())
            .with_reply_to(self.ns.replies_queue().as_str().into())
            .with_type(kind.into());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let confirm = self
                .channel
                .basic_publish(
                    self.ns.commands_exchange().as_str().into(),
                    participant.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    bytes,
                    props.clone(),
                )
                .await?
                .await?;
            anyhow::ensure!(confirm.is_ack(), "the broker refused the command");
            if confirm.take_message().is_none() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no queue for participant {participant}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every reply received so far (with `_correlation_id` added).
    pub fn replies(&self) -> Vec<Value> {
        self.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The replies for one saga.
    pub fn replies_for(&self, saga_id: &str) -> Vec<Value> {
        self.replies()
            .into_iter()
            .filter(|r| r["saga_id"] == saga_id)
            .collect()
    }

    /// Waits until at least `n` replies for `saga_id` arrived, and returns them.
    pub async fn wait_replies(&self, saga_id: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let replies = self.replies_for(saga_id);
            if replies.len() >= n {
                return replies;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {n} replies of saga {saga_id}; got {replies:#?}"
            );
            tokio::time::sleep(crate::wait::POLL).await;
        }
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        self.task.abort();
        let Some(conn) = self.connection.take() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = conn.close(200, "fake coordinator dropped".into()).await;
            });
        }
    }
}
