//! Tests against the real RabbitMQ, each in its own namespace that it deletes again.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use contract::{idempotency_key, CommandBody, CommandKind, Outcome, ReplyBody};
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicRejectOptions, ExchangeDeclareOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde_json::{json, Map, Value};
use testkit::{amqp_connect, amqp_url, TcpProxy, TestNamespace};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::names::QueueType;
use super::topology::{instance_replies_arguments, queue_arguments};
use super::*;

const WAIT: Duration = Duration::from_secs(15);
/// The instance id of every harness: its commands name this instance's reply queue.
const INSTANCE: &str = "c1";

/// The coordinator side of one test: the broker task and the ends of its channels.
struct Harness {
    /// Deleted, with the queues of every participant sent to, when the harness is dropped.
    ns: TestNamespace,
    handle: Option<BrokerHandle>,
    outbound: mpsc::UnboundedSender<OutboxMessage>,
    published: mpsc::UnboundedReceiver<PublishResult>,
    inbound: mpsc::Receiver<InboundDelivery>,
    /// The partitions whose reply queues are consumed (none unless a test says so).
    owned: watch::Sender<BTreeSet<u32>>,
}

impl Harness {
    async fn start(url: &str) -> Harness {
        Self::start_with(url, QueueType::Classic).await
    }

    async fn start_with(url: &str, queue_type: QueueType) -> Harness {
        let _ = env_logger::builder().is_test(true).try_init();
        let ns = TestNamespace::new();
        ns.instance_replies_queue(INSTANCE);
        let (outbound, outbound_rx) = mpsc::unbounded_channel();
        let (published_tx, published) = mpsc::unbounded_channel();
        let (inbound_tx, inbound) = mpsc::channel(16);
        let (owned, owned_rx) = watch::channel(BTreeSet::new());
        let handle = start(
            AmqpSettings {
                url: url.to_owned(),
                namespace: ns.name().to_owned(),
                queue_type,
                prefetch: 8,
                partitions: Partitions::default(),
                instance: INSTANCE.to_owned(),
            },
            outbound_rx,
            published_tx,
            inbound_tx,
            owned_rx,
        );
        Harness {
            ns,
            handle: Some(handle),
            outbound,
            published,
            inbound,
            owned,
        }
    }

    fn connected(&self) -> watch::Receiver<bool> {
        self.handle.as_ref().expect("running").connected()
    }

    async fn wait_connected(&self, want: bool) {
        let mut connected = self.connected();
        tokio::time::timeout(WAIT, connected.wait_for(|c| *c == want))
            .await
            .unwrap_or_else(|_| panic!("connected never became {want}"))
            .expect("broker task alive");
    }

    fn send(&mut self, message: OutboxMessage) {
        self.ns.register_participant(&message.participant);
        self.outbound.send(message).expect("broker task alive");
    }

    async fn next_published(&mut self) -> PublishResult {
        tokio::time::timeout(WAIT, self.published.recv())
            .await
            .expect("a publish result in time")
            .expect("broker task alive")
    }

    async fn next_inbound(&mut self) -> InboundDelivery {
        tokio::time::timeout(WAIT, self.inbound.recv())
            .await
            .expect("an inbound delivery in time")
            .expect("broker task alive")
    }

    async fn shutdown(&mut self) {
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(WAIT, handle.shutdown())
                .await
                .expect("shutdown in time");
        }
    }
}

impl Drop for Harness {
    /// Stops the broker task before the namespace (a field, dropped after this) is deleted.
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.task.abort();
        }
    }
}

/// A participant: a plain client on its own connection.
async fn participant() -> (Connection, Channel) {
    let connection = amqp_connect().await.expect("participant connects");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

fn command(kind: CommandKind, step: Option<&str>, attempt: u32) -> CommandBody {
    let saga_id = Uuid::now_v7();
    CommandBody {
        saga_id,
        saga_name: "place-order".into(),
        step: step.map(str::to_owned),
        kind,
        command: "charge".into(),
        attempt,
        idempotency_key: idempotency_key(saga_id, step, kind),
        deadline: Utc::now(),
        payload: json!({"amount_cents": 4200}),
        saga_payload: Value::Null,
        outputs: Map::new(),
        action_output: None,
    }
}

fn outbox(id: i64, participant: &str, command: &CommandBody) -> OutboxMessage {
    OutboxMessage {
        id,
        saga_id: command.saga_id,
        saga_name: command.saga_name.clone(),
        message_id: Uuid::now_v7(),
        participant: participant.to_owned(),
        kind: command.kind,
        step: command.step.clone(),
        attempt: command.attempt,
        body: serde_json::to_vec(command).expect("serializes"),
        traceparent: None,
        tracestate: None,
        created_at: Utc.timestamp_opt(1_800_000_000, 0).single().expect("valid"),
    }
}

/// Polls a queue until it yields a message.
async fn get_one(channel: &Channel, queue: &str) -> BasicGetMessage {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get");
        if let Some(message) = got {
            return message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing arrived in {queue}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn message_count(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists")
        .message_count()
}

async fn publish_reply(channel: &Channel, ns: &str, body: &[u8]) {
    channel
        .basic_publish(
            "".into(),
            names::replies_queue(ns).as_str().into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_correlation_id("c-1".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("no confirm needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_the_contract_topology() {
    let mut h = Harness::start(&amqp_url()).await;
    h.wait_connected(true).await;
    let ns = h.ns.name().to_owned();
    let (conn, channel) = participant().await;

    for (exchange, kind) in [
        (names::commands_exchange(&ns), ExchangeKind::Direct),
        (names::dead_exchange(&ns), ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{exchange} exists: {e}"));
    }
    for queue in [
        names::replies_queue(&ns),
        names::dead_letters_queue(&ns),
        names::dead_commands_queue(&ns),
    ] {
        assert_eq!(message_count(&channel, &queue).await, 0, "{queue}");
    }

    // The first command to a participant declares its queue.
    let cmd = command(CommandKind::Action, Some("charge"), 1);
    h.send(outbox(1, "payments", &cmd));
    assert_eq!(h.next_published().await.result, Ok(()));

    // Participants (and operators) redeclare with exactly the contract's arguments.
    let mut contract_arguments = FieldTable::default();
    contract_arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(format!("{ns}.dead").into()),
    );
    assert_eq!(contract_arguments, queue_arguments(&ns, QueueType::Classic));
    for queue in [
        names::participant_queue(&ns, "payments"),
        names::replies_queue(&ns),
    ] {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                contract_arguments.clone(),
            )
            .await
            .unwrap_or_else(|e| panic!("redeclaring {queue}: {e}"));
    }
    assert_eq!(
        message_count(&channel, &names::participant_queue(&ns, "payments")).await,
        1
    );
    // ... and RabbitMQ really compares arguments: the queue does dead-letter.
    let other = conn.create_channel().await.expect("channel");
    assert!(other
        .queue_declare(
            names::participant_queue(&ns, "payments").as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .is_err());

    // The dead fanout feeds both the operators' queue and the coordinator's.
    channel
        .basic_publish(
            names::dead_exchange(&ns).as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("published");
    get_one(&channel, &names::dead_letters_queue(&ns)).await;

    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_commands_with_the_contract_properties() {
    let mut h = Harness::start(&amqp_url()).await;
    h.wait_connected(true).await;
    let ns = h.ns.name().to_owned();
    let (_conn, channel) = participant().await;

    let cmd = command(CommandKind::Compensation, Some("reserve"), 2);
    let mut message = outbox(7, "inventory", &cmd);
    message.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    h.send(message.clone());
    assert_eq!(
        h.next_published().await,
        PublishResult {
            outbox_id: 7,
            result: Ok(())
        }
    );

    let got = get_one(&channel, &names::participant_queue(&ns, "inventory")).await;
    let delivery = &got.delivery;
    assert_eq!(delivery.exchange.as_str(), names::commands_exchange(&ns));
    assert_eq!(delivery.routing_key.as_str(), "inventory");
    assert_eq!(delivery.data, message.body);
    let p = &delivery.properties;
    let id = message.message_id.to_string();
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(
        p.correlation_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(
        p.reply_to().as_ref().map(|s| s.as_str()),
        Some(h.ns.instance_replies_queue(INSTANCE).as_str())
    );
    assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("compensation"));
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*p.timestamp(), Some(1_800_000_000));
    let headers = p.headers().as_ref().expect("headers");
    match headers.inner().get("traceparent") {
        Some(AMQPValue::LongString(s)) => assert_eq!(
            s.as_bytes(),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ),
        other => panic!("traceparent header: {other:?}"),
    }
    let body: CommandBody = serde_json::from_slice(&delivery.data).expect("a command");
    assert_eq!(body, cmd);

    // Without a trace context there is no header; many messages are pipelined, all confirmed, and
    // they reach the queue in the order they were handed over.
    let mut sent = Vec::new();
    for id in 100..150 {
        let check = command(CommandKind::Check, None, 1);
        let message = outbox(id, "orders", &check);
        sent.push(message.message_id.to_string());
        h.send(message);
    }
    let mut confirmed: Vec<i64> = Vec::new();
    for _ in 100..150 {
        let result = h.next_published().await;
        assert_eq!(result.result, Ok(()));
        confirmed.push(result.outbox_id);
    }
    confirmed.sort_unstable();
    assert_eq!(confirmed, (100..150).collect::<Vec<_>>());
    let mut arrived = Vec::new();
    for _ in 100..150 {
        let got = get_one(&channel, &names::participant_queue(&ns, "orders")).await;
        let p = &got.delivery.properties;
        assert_eq!(p.headers(), &None);
        assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("check"));
        arrived.push(p.message_id().as_ref().map(|s| s.to_string()));
    }
    assert_eq!(arrived, sent.into_iter().map(Some).collect::<Vec<_>>());

    // A message nobody can route (its queue vanished) is an error, not a silent loss.
    channel
        .queue_delete(
            names::participant_queue(&ns, "inventory").as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("delete");
    h.send(outbox(8, "inventory", &cmd));
    let result = h.next_published().await;
    assert_eq!(result.outbox_id, 8);
    assert!(result.result.is_err(), "{result:?}");
    // ... and the next attempt declares the queue again.
    h.send(outbox(9, "inventory", &cmd));
    assert_eq!(h.next_published().await.result, Ok(()));
    assert_eq!(
        message_count(&channel, &names::participant_queue(&ns, "inventory")).await,
        1
    );

    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_replies_and_settles_them() {
    let mut h = Harness::start(&amqp_url()).await;
    h.wait_connected(true).await;
    let ns = h.ns.name().to_owned();
    let (_conn, channel) = participant().await;

    let reply = ReplyBody {
        saga_id: Uuid::now_v7(),
        step: Some("charge".into()),
        kind: CommandKind::Action,
        attempt: 2,
        outcome: Outcome::Success,
        output: Some(json!({"payment": "p-9"})),
        error: None,
    };
    publish_reply(&channel, &ns, &serde_json::to_vec(&reply).expect("json")).await;

    // Requeue hands it back, so it comes again.
    let first = h.next_inbound().await;
    assert_eq!(first.message, Inbound::Reply(reply.clone()));
    first.settle.send(Settlement::Requeue).expect("task waits");
    let second = h.next_inbound().await;
    assert_eq!(second.message, Inbound::Reply(reply.clone()));
    // Dropping the sender is a requeue too.
    drop(second);
    let third = h.next_inbound().await;
    assert_eq!(third.message, Inbound::Reply(reply));
    third.settle.send(Settlement::Ack).expect("task waits");

    // Acked for good: after shutdown (which would requeue anything unacked) the queue is empty.
    h.shutdown().await;
    assert_eq!(message_count(&channel, &names::replies_queue(&ns)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_acknowledgements_never_cover_an_unsettled_reply() {
    let mut h = Harness::start(&amqp_url()).await;
    h.wait_connected(true).await;
    let ns = h.ns.name().to_owned();
    let (_conn, channel) = participant().await;

    let replies: Vec<ReplyBody> = (1..=5)
        .map(|attempt| ReplyBody {
            saga_id: Uuid::now_v7(),
            step: Some("charge".into()),
            kind: CommandKind::Action,
            attempt,
            outcome: Outcome::Success,
            output: None,
            error: None,
        })
        .collect();
    for reply in &replies {
        publish_reply(&channel, &ns, &serde_json::to_vec(reply).expect("json")).await;
    }
    let mut delivered = Vec::new();
    for reply in &replies {
        let delivery = h.next_inbound().await;
        assert_eq!(delivery.message, Inbound::Reply(reply.clone()));
        delivered.push(Some(delivery));
    }
    let mut take = |n: usize| delivered[n].take().expect("not settled yet");

    // The first, fourth and fifth are committed while the second and third are not: only the first
    // may be covered by a batched acknowledgement; the others wait or are acknowledged alone.
    take(0)
        .settle
        .send(Settlement::Ack)
        .expect("consumer waits");
    take(3)
        .settle
        .send(Settlement::Ack)
        .expect("consumer waits");
    take(4)
        .settle
        .send(Settlement::Ack)
        .expect("consumer waits");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The second one fails to commit: requeued, it comes again and is committed then.
    take(1)
        .settle
        .send(Settlement::Requeue)
        .expect("consumer waits");
    let again = h.next_inbound().await;
    assert_eq!(again.message, Inbound::Reply(replies[1].clone()));
    again.settle.send(Settlement::Ack).expect("consumer waits");
    // The third one is still being handled when the coordinator stops: it goes back to the queue.
    let third = take(2);
    h.shutdown().await;
    drop(third);
    let left = get_one(&channel, &names::replies_queue(&ns)).await;
    let left: ReplyBody = serde_json::from_slice(&left.data).expect("a reply");
    assert_eq!(left, replies[2]);
    assert_eq!(message_count(&channel, &names::replies_queue(&ns)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_replies_end_in_dead_letters() {
    let mut h = Harness::start(&amqp_url()).await;
    h.wait_connected(true).await;
    let ns = h.ns.name().to_owned();
    let (_conn, channel) = participant().await;

    publish_reply(&channel, &ns, b"{\"saga_id\": \"not a uuid\"}").await;
    let dead = get_one(&channel, &names::dead_letters_queue(&ns)).await;
    assert_eq!(dead.delivery.data, b"{\"saga_id\": \"not a uuid\"}");

    // The coordinator saw it in its dead-commands copy too, and dropped it as not a command.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), h.inbound.recv())
            .await
            .is_err(),
        "nothing is delivered for a malformed reply"
    );
    h.shutdown().await;
    assert_eq!(message_count(&channel, &names::replies_queue(&ns)).await, 0);
    assert_eq!(
        message_count(&channel, &names::dead_commands_queue(&ns)).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_a_participant_rejects_come_back_as_dead_lettered() {
    let mut h = Harness::start(&amqp_url()).await;
    h.wait_connected(true).await;
    let ns = h.ns.name().to_owned();
    let (_conn, channel) = participant().await;

    let cmd = command(CommandKind::Action, Some("reserve"), 3);
    h.send(outbox(1, "inventory", &cmd));
    assert_eq!(h.next_published().await.result, Ok(()));

    let got = get_one(&channel, &names::participant_queue(&ns, "inventory")).await;
    got.delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");

    let dead = h.next_inbound().await;
    assert_eq!(
        dead.message,
        Inbound::DeadLettered {
            saga_id: cmd.saga_id,
            step: Some("reserve".into()),
            kind: CommandKind::Action,
            attempt: 3,
        }
    );
    dead.settle.send(Settlement::Ack).expect("task waits");
    // Operators still find it in dead-letters.
    let kept = get_one(&channel, &names::dead_letters_queue(&ns)).await;
    assert_eq!(kept.delivery.data, serde_json::to_vec(&cmd).expect("json"));

    h.shutdown().await;
    assert_eq!(
        message_count(&channel, &names::dead_commands_queue(&ns)).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_connection_is_severed() {
    let proxy = TcpProxy::to_rabbitmq();
    let mut h = Harness::start(&proxy.amqp_url()).await;
    h.wait_connected(true).await;
    let ns = h.ns.name().to_owned();
    let (_conn, channel) = participant().await;

    let cmd = command(CommandKind::Action, Some("charge"), 1);
    h.send(outbox(1, "payments", &cmd));
    assert_eq!(h.next_published().await.result, Ok(()));

    // Severed with the broker unreachable: disconnected, and publishes are refused at once.
    proxy.pause();
    proxy.sever();
    h.wait_connected(false).await;
    h.send(outbox(2, "payments", &cmd));
    assert_eq!(
        h.next_published().await,
        PublishResult {
            outbox_id: 2,
            result: Err("not connected".into())
        }
    );

    // Reachable again: it reconnects by itself and publishing works.
    proxy.resume();
    h.wait_connected(true).await;
    h.send(outbox(3, "payments", &cmd));
    assert_eq!(h.next_published().await.result, Ok(()));

    // Severed while reachable: down and up again, consumers included. Going down is seen as a
    // change of `connected` (it may be up again before this task looks at the value).
    let mut connected = h.connected();
    connected.borrow_and_update();
    proxy.sever();
    tokio::time::timeout(WAIT, connected.changed())
        .await
        .expect("the drop is noticed")
        .expect("broker task alive");
    h.wait_connected(true).await;
    h.send(outbox(4, "payments", &cmd));
    assert_eq!(h.next_published().await.result, Ok(()));
    assert_eq!(
        message_count(&channel, &names::participant_queue(&ns, "payments")).await,
        3
    );
    let reply = ReplyBody {
        saga_id: cmd.saga_id,
        step: Some("charge".into()),
        kind: CommandKind::Action,
        attempt: 1,
        outcome: Outcome::Retry,
        output: None,
        error: Some("busy".into()),
    };
    publish_reply(&channel, &ns, &serde_json::to_vec(&reply).expect("json")).await;
    let delivered = h.next_inbound().await;
    assert_eq!(delivered.message, Inbound::Reply(reply));
    delivered.settle.send(Settlement::Ack).expect("task waits");

    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_publishes_while_the_broker_is_unreachable() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address").port()
    };
    let mut h = Harness::start(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).await;
    let cmd = command(CommandKind::Action, Some("charge"), 1);
    for id in 1..=3 {
        h.send(outbox(id, "payments", &cmd));
        assert_eq!(
            h.next_published().await,
            PublishResult {
                outbox_id: id,
                result: Err("not connected".into())
            }
        );
    }
    assert!(!*h.connected().borrow());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_inbound_receiver_replies_stay_queued_and_publishing_goes_on() {
    let mut h = Harness::start(&amqp_url()).await;
    h.wait_connected(true).await;
    let ns = h.ns.name().to_owned();
    let (_conn, channel) = participant().await;

    let (_, closed) = mpsc::channel(1);
    drop(std::mem::replace(&mut h.inbound, closed));
    let reply = br#"{"saga_id": "0193a0a0-0000-7000-8000-000000000000", "step": "a", "kind": "action", "attempt": 1, "outcome": "success"}"#;
    publish_reply(&channel, &ns, reply).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while message_count(&channel, &names::replies_queue(&ns)).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reply is back in its queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let cmd = command(CommandKind::Action, Some("charge"), 1);
    h.send(outbox(1, "payments", &cmd));
    assert_eq!(h.next_published().await.result, Ok(()));
    assert!(*h.connected().borrow());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_when_nobody_is_left_to_talk_to() {
    let mut h = Harness::start(&amqp_url()).await;
    h.wait_connected(true).await;
    let mut connected = h.connected();
    let (_, closed) = mpsc::channel(1);
    drop(std::mem::replace(&mut h.inbound, closed));
    let (orphan, _) = mpsc::unbounded_channel();
    drop(std::mem::replace(&mut h.outbound, orphan));
    tokio::time::timeout(WAIT, connected.wait_for(|c| !*c))
        .await
        .expect("stops in time")
        .expect("value seen before the task ended");
    let handle = h.handle.take().expect("handle");
    tokio::time::timeout(WAIT, handle.task)
        .await
        .expect("the task ends")
        .expect("without panicking");
}

#[test]
fn settings_do_not_show_the_password() {
    let settings = AmqpSettings {
        url: "amqp://guest:secret@rabbit:5672/%2f".into(),
        namespace: "saga".into(),
        queue_type: QueueType::Quorum,
        prefetch: 10,
        partitions: Partitions::default(),
        instance: "c1".into(),
    };
    let shown = format!("{settings:?}");
    assert!(!shown.contains("secret"), "{shown}");
    assert!(
        shown.contains("amqp://guest:***@rabbit:5672/%2f"),
        "{shown}"
    );
    assert_eq!(redact_url("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
}

/// Waits until `queue` holds `count` messages.
async fn wait_for_count(channel: &Channel, queue: &str, count: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while message_count(channel, queue).await != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} never held {count} message(s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_for_another_owner_is_forwarded_to_its_partition_which_is_consumed_only_while_owned(
) {
    let mut h = Harness::start(&amqp_url()).await;
    h.wait_connected(true).await;
    let ns = h.ns.name().to_owned();
    let (_conn, channel) = participant().await;
    let partition_queue = names::partition_replies_queue(&ns, 5);
    // Every partition's queue exists from the first connection, owned or not.
    assert_eq!(message_count(&channel, &partition_queue).await, 0);

    let reply = ReplyBody {
        saga_id: Uuid::now_v7(),
        step: Some("charge".into()),
        kind: CommandKind::Action,
        attempt: 1,
        outcome: Outcome::Success,
        output: None,
        error: None,
    };
    publish_reply(&channel, &ns, &serde_json::to_vec(&reply).expect("json")).await;
    let shared = h.next_inbound().await;
    assert_eq!(shared.message, Inbound::Reply(reply.clone()));
    shared
        .settle
        .send(Settlement::Forward(5))
        .expect("task waits");
    // Nobody here owns partition 5: the copy waits in its queue, and the shared queue is empty.
    wait_for_count(&channel, &partition_queue, 1).await;
    wait_for_count(&channel, &names::replies_queue(&ns), 0).await;

    // Owning it starts its consumer; giving it up stops it.
    h.owned.send_replace(BTreeSet::from([5]));
    let owned = h.next_inbound().await;
    assert_eq!(owned.message, Inbound::Reply(reply.clone()));
    owned.settle.send(Settlement::Ack).expect("task waits");
    wait_for_count(&channel, &partition_queue, 0).await;

    h.owned.send_replace(BTreeSet::new());
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_to(
        &channel,
        &partition_queue,
        &serde_json::to_vec(&reply).expect("json"),
    )
    .await;
    wait_for_count(&channel, &partition_queue, 1).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), h.inbound.recv())
            .await
            .is_err(),
        "a partition given up is not consumed"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_reply_queue_is_consumed_and_what_waits_there_moves_on_to_the_shared_one() {
    let mut h = Harness::start(&amqp_url()).await;
    h.wait_connected(true).await;
    let ns = h.ns.name().to_owned();
    let own = h.ns.instance_replies_queue(INSTANCE);
    let (_conn, channel) = participant().await;
    let reply = |attempt| ReplyBody {
        saga_id: Uuid::now_v7(),
        step: Some("charge".into()),
        kind: CommandKind::Action,
        attempt,
        outcome: Outcome::Success,
        output: None,
        error: None,
    };

    // Consumed while the instance runs, like the shared queue.
    let first = reply(1);
    publish_to(&channel, &own, &serde_json::to_vec(&first).expect("json")).await;
    let delivered = h.next_inbound().await;
    assert_eq!(delivered.message, Inbound::Reply(first));
    delivered.settle.send(Settlement::Ack).expect("task waits");
    // A malformed one is rejected there, rejected again from the shared queue, and ends with the
    // operators like any other.
    publish_to(&channel, &own, b"not json").await;
    let dead = get_one(&channel, &names::dead_letters_queue(&ns)).await;
    assert_eq!(dead.delivery.data, b"not json");
    h.shutdown().await;
    assert_eq!(message_count(&channel, &own).await, 0);

    // The instance is gone: a reply to its queue moves to `{ns}.replies` after the TTL, where any
    // other instance takes it.
    let late = reply(2);
    publish_to(&channel, &own, &serde_json::to_vec(&late).expect("json")).await;
    // Without confirms, the publish may still be on its way: wait until the queue holds it.
    wait_for_count(&channel, &own, 1).await;
    wait_for_count(&channel, &names::replies_queue(&ns), 1).await;
    assert_eq!(message_count(&channel, &own).await, 0);
    let moved = get_one(&channel, &names::replies_queue(&ns)).await;
    assert_eq!(
        serde_json::from_slice::<ReplyBody>(&moved.delivery.data).expect("a reply"),
        late
    );
}

async fn publish_to(channel: &Channel, queue: &str, body: &[u8]) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("published")
        .await
        .expect("sent");
}

/// Redeclares `queue` as a participant would, on a channel of its own (a refusal closes it).
async fn redeclare(
    connection: &Connection,
    queue: &str,
    arguments: FieldTable,
) -> lapin::Result<()> {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_namespace_declares_every_queue_as_quorum_and_works_as_classic() {
    let mut h = Harness::start_with(&amqp_url(), QueueType::Quorum).await;
    h.wait_connected(true).await;
    let ns = h.ns.name().to_owned();
    let (conn, channel) = participant().await;

    let cmd = command(CommandKind::Action, Some("reserve"), 1);
    h.send(outbox(1, "inventory", &cmd));
    assert_eq!(h.next_published().await.result, Ok(()));

    // The contract's quorum arguments are accepted; the classic ones (no x-queue-type) are not,
    // so every queue really is a quorum queue.
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let mut dead_lettering = queue_arguments(&ns, QueueType::Classic);
    assert_eq!(queue_arguments(&ns, QueueType::Quorum), {
        dead_lettering.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        dead_lettering
    });
    for (queue, arguments) in [
        (
            names::replies_queue(&ns),
            queue_arguments(&ns, QueueType::Quorum),
        ),
        (
            names::participant_queue(&ns, "inventory"),
            queue_arguments(&ns, QueueType::Quorum),
        ),
        (names::dead_letters_queue(&ns), quorum.clone()),
        (names::dead_commands_queue(&ns), quorum),
        (
            h.ns.instance_replies_queue(INSTANCE),
            instance_replies_arguments(&ns, QueueType::Quorum),
        ),
    ] {
        redeclare(&conn, &queue, arguments)
            .await
            .unwrap_or_else(|e| panic!("redeclaring {queue} as quorum: {e}"));
        let classic = if queue.ends_with("dead-letters") || queue.ends_with("dead-commands") {
            FieldTable::default()
        } else if queue.ends_with(INSTANCE) {
            instance_replies_arguments(&ns, QueueType::Classic)
        } else {
            queue_arguments(&ns, QueueType::Classic)
        };
        assert!(
            redeclare(&conn, &queue, classic).await.is_err(),
            "{queue} is a quorum queue"
        );
    }

    // Commands, rejections through the dead-letter exchange, and replies flow as with classic.
    let got = get_one(&channel, &names::participant_queue(&ns, "inventory")).await;
    assert_eq!(got.delivery.data, serde_json::to_vec(&cmd).expect("json"));
    got.delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    let dead = h.next_inbound().await;
    assert!(
        matches!(dead.message, Inbound::DeadLettered { saga_id, .. } if saga_id == cmd.saga_id),
        "{:?}",
        dead.message
    );
    dead.settle.send(Settlement::Ack).expect("task waits");
    get_one(&channel, &names::dead_letters_queue(&ns)).await;

    let reply = ReplyBody {
        saga_id: cmd.saga_id,
        step: Some("reserve".into()),
        kind: CommandKind::Action,
        attempt: 1,
        outcome: Outcome::Success,
        output: None,
        error: None,
    };
    publish_reply(&channel, &ns, &serde_json::to_vec(&reply).expect("json")).await;
    let delivered = h.next_inbound().await;
    assert_eq!(delivered.message, Inbound::Reply(reply));
    delivered.settle.send(Settlement::Ack).expect("task waits");

    h.shutdown().await;
    assert_eq!(message_count(&channel, &names::replies_queue(&ns)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_of_another_queue_type_is_refused_naming_the_queue_and_the_setting() {
    let ns = TestNamespace::new();
    ns.instance_replies_queue(INSTANCE);
    let connection = amqp_connect().await.expect("connects");
    // Declared classic, as a coordinator of before the switch did.
    let classic = connection.create_channel().await.expect("channel");
    topology::declare(
        &classic,
        ns.name(),
        QueueType::Classic,
        Partitions::default(),
        INSTANCE,
    )
    .await
    .expect("declared classic");

    let channel = connection.create_channel().await.expect("channel");
    let refused = topology::declare(
        &channel,
        ns.name(),
        QueueType::Quorum,
        Partitions::default(),
        INSTANCE,
    )
    .await
    .expect_err("a classic namespace cannot be declared quorum");
    assert!(
        matches!(
            &refused,
            BrokerError::Inequivalent {
                queue_type: QueueType::Quorum,
                ..
            }
        ),
        "{refused:?}"
    );
    let said = refused.to_string();
    for needed in [
        format!("queue {}", names::dead_letters_queue(ns.name())),
        "SAGA_QUEUE_TYPE=quorum".to_owned(),
        "x-queue-type".to_owned(),
        "SAGA_NAMESPACE".to_owned(),
        "docs/contract-notes.md".to_owned(),
    ] {
        assert!(said.contains(&needed), "{needed:?} missing from: {said}");
    }
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_urls_fails_over_to_the_next_node() {
    let unreachable = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address").port()
    };
    let (first, second) = (TcpProxy::to_rabbitmq(), TcpProxy::to_rabbitmq());
    let list = format!(
        "amqp://guest:guest@127.0.0.1:{unreachable}/%2f, {}, {}",
        first.amqp_url(),
        second.amqp_url()
    );
    let mut h = Harness::start(&list).await;
    // The dead node is passed over.
    h.wait_connected(true).await;
    assert!(first.active() >= 1, "connected through the first live node");
    assert_eq!(second.accepted(), 0, "the second was not needed yet");

    let cmd = command(CommandKind::Action, Some("charge"), 1);
    h.send(outbox(1, "payments", &cmd));
    assert_eq!(h.next_published().await.result, Ok(()));

    // The node goes away for good: the next connections try the others in turn.
    first.outage();
    let deadline = tokio::time::Instant::now() + WAIT;
    while second.active() == 0 || !*h.connected().borrow() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never connected through the second node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.send(outbox(2, "payments", &cmd));
    assert_eq!(h.next_published().await.result, Ok(()));
    h.shutdown().await;
}
