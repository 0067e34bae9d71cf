//! Checks of the harness itself (no coordinator involved): if these fail, the other tests' failures
//! say nothing about the coordinator.

use std::time::Duration;

use e2e::namespace::amqp_connect;
use e2e::{Behaviour, FakeParticipant, Reply, TestNamespace};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::{json, Value};

async fn publish_command(channel: &Channel, ns: &TestNamespace, participant: &str, body: &Value) {
    let id = uuid::Uuid::new_v4().to_string();
    channel
        .basic_publish(
            ns.commands_exchange().as_str().into(),
            participant.into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(body).expect("json"),
            BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_correlation_id(id.as_str().into())
                .with_reply_to(ns.replies_queue().as_str().into())
                .with_type("action".into())
                .with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

fn command(step: &str, attempt: u64) -> Value {
    json!({"saga_id": "00000000-0000-0000-0000-000000000001", "saga_name": "s", "step": step,
           "kind": "action", "command": "do", "attempt": attempt,
           "idempotency_key": format!("00000000-0000-0000-0000-000000000001:{step}:action")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_participant_answers_by_script_and_dead_letters_on_reject() {
    let ns = TestNamespace::new();
    let conn = amqp_connect().await.expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ns.declare_coordinator_topology(&channel)
        .await
        .expect("the coordinator's topology");

    let participant = FakeParticipant::start(&ns, "svc", |cmd| match cmd.step() {
        "ok" => Behaviour::success_with(json!({"n": 1})),
        "twice" => Behaviour::ReplyTwice(Reply::failure("no")),
        "reject" => Behaviour::Reject,
        "late" => Behaviour::DelayThenReply(Duration::from_millis(200), Reply::retry("busy")),
        _ => Behaviour::NoReply,
    })
    .await;

    let mut replies = channel
        .basic_consume(
            ns.replies_queue().as_str().into(),
            "test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume replies");

    for step in ["ok", "twice", "reject", "late", "silent"] {
        publish_command(&channel, &ns, "svc", &command(step, 1)).await;
    }

    let mut got = Vec::new();
    while got.len() < 4 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), replies.next())
            .await
            .expect("a reply within 30 s")
            .expect("stream open")
            .expect("delivery");
        assert_eq!(delivery.properties.delivery_mode(), &Some(2));
        assert!(delivery.properties.correlation_id().is_some());
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        got.push(serde_json::from_slice::<Value>(&delivery.data).expect("json reply"));
    }
    let outcomes: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            (
                r["step"].as_str().unwrap_or("").to_string(),
                r["outcome"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&("ok".into(), "success".into())),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| *o == &("twice".to_string(), "failure".to_string()))
            .count(),
        2,
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("late".into(), "retry".into())),
        "{outcomes:?}"
    );
    let ok = got.iter().find(|r| r["step"] == "ok").expect("ok reply");
    assert_eq!(ok["output"], json!({"n": 1}));
    assert_eq!(ok["attempt"], 1);
    assert_eq!(ok["kind"], "action");

    let dead = ns.wait_for_dead_letters(1, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].body_text().contains("\"reject\""));

    let commands = participant.wait_for_count(5, Duration::from_secs(30)).await;
    assert_eq!(
        commands.iter().map(|c| c.step()).collect::<Vec<_>>(),
        ["ok", "twice", "reject", "late", "silent"]
    );
    assert_eq!(commands[0].type_property.as_deref(), Some("action"));
    assert!(
        participant.errors().is_empty(),
        "{:?}",
        participant.errors()
    );
    // The silent one was acknowledged: nothing left in the queue.
    e2e::eventually(
        "the participant queue to drain",
        Duration::from_secs(30),
        async || (ns.queue_len(participant.queue()).await.ok()?? == 0).then_some(()),
    )
    .await;

    let queue = participant.queue().to_string();
    drop(participant);
    drop(replies);
    let _ = conn.close(200, "bye".into()).await;
    drop(ns);
    let probe = TestNamespace::new();
    assert_eq!(
        probe.queue_len(&queue).await.expect("probe"),
        None,
        "the namespace's queues are deleted on drop"
    );
}
