//! The AMQP side: duplicate, stale and malformed replies, participants that are down, and losing the
//! RabbitMQ connection mid-run.

use std::collections::HashSet;
use std::time::Duration;

use contract::CommandKind;
use e2e::api::{idempotency_key, state, step};
use e2e::defs::{fast_retry, saga, step_with};
use e2e::{
    connected_through, eventually, Behaviour, FakeParticipant, Reply, TestApp, BULK_TIMEOUT,
    SAGA_TIMEOUT,
};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn three_steps(name: &str) -> serde_json::Value {
    saga(
        name,
        vec![
            e2e::defs::step("s1", "p1"),
            e2e::defs::step("s2", "p2"),
            e2e::defs::step("s3", "p3"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_replies_are_harmless() {
    let app = TestApp::start().await;
    let twice = FakeParticipant::start(&app.ns, "twice", |cmd| match (cmd.step(), cmd.kind()) {
        ("bad", "action") => Behaviour::ReplyTwice(Reply::failure("no")),
        (s, _) => Behaviour::ReplyTwice(Reply::success_with(json!({"made": s}))),
    })
    .await;
    let committed = app
        .submit_id(&saga(
            "echo",
            vec![
                e2e::defs::step("a", "twice"),
                e2e::defs::step("b", "twice"),
                e2e::defs::step("c", "twice"),
            ],
        ))
        .await;
    let done = app
        .wait_for_state(&committed, &["committed"], SAGA_TIMEOUT)
        .await;
    for s in ["a", "b", "c"] {
        assert_eq!(step(&done, s)["attempts"], 1, "{done:#}");
        assert_eq!(step(&done, s)["output"], json!({"made": s}));
    }
    assert_eq!(twice.commands_for(&committed).len(), 3);

    let compensated = app
        .submit_id(&saga(
            "echo-fail",
            vec![
                e2e::defs::step("a", "twice"),
                e2e::defs::step("b", "twice"),
                e2e::defs::step("bad", "twice"),
            ],
        ))
        .await;
    app.wait_for_state(&compensated, &["compensated"], SAGA_TIMEOUT)
        .await;
    let commands = twice.commands_for(&compensated);
    let kinds: Vec<(String, String)> = commands
        .iter()
        .map(|c| (c.step().to_string(), c.kind().to_string()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("a", "action"),
            ("b", "action"),
            ("bad", "action"),
            ("b", "compensation"),
            ("a", "compensation"),
        ]
        .map(|(s, k)| (s.to_string(), k.to_string())),
        "each command once, despite every reply arriving twice"
    );
    // Later sagas still work, and the first one did not move.
    let later = app
        .submit_id(&saga("echo-again", vec![e2e::defs::step("a", "twice")]))
        .await;
    app.wait_for_state(&later, &["committed"], SAGA_TIMEOUT)
        .await;
    assert_eq!(state(&app.saga(&committed).await), "committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_late_replies_are_ignored() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let id = app
        .submit_id(&saga("first", vec![e2e::defs::step("a", "shop")]))
        .await;
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;

    // A reply for a saga nobody knows, and a late failure for the committed one.
    let unknown = uuid::Uuid::new_v4().to_string();
    for (saga_id, attempt) in [(unknown.as_str(), 1), (id.as_str(), 1), (id.as_str(), 7)] {
        let body = json!({"saga_id": saga_id, "step": "a", "kind": "action", "attempt": attempt,
                          "outcome": "failure", "output": null, "error": "too late"});
        app.ns
            .publish_to_replies(
                &serde_json::to_vec(&body).expect("json"),
                Some(&uuid::Uuid::new_v4().to_string()),
            )
            .await
            .expect("publishing a stale reply");
    }
    let compensation = json!({"saga_id": id, "step": "a", "kind": "compensation", "attempt": 1,
                              "outcome": "success", "output": null, "error": null});
    app.ns
        .publish_to_replies(&serde_json::to_vec(&compensation).expect("json"), None)
        .await
        .expect("publishing a stale reply");

    let later = app
        .submit_id(&saga("second", vec![e2e::defs::step("a", "shop")]))
        .await;
    app.wait_for_state(&later, &["committed"], SAGA_TIMEOUT)
        .await;
    eventually("the replies queue to drain", SAGA_TIMEOUT, async || {
        (app.ns.queue_len(&app.ns.replies_queue()).await.ok()?? == 0).then_some(())
    })
    .await;
    let first = app.saga(&id).await;
    assert_eq!(
        state(&first),
        "committed",
        "stale replies change nothing: {first:#}"
    );
    assert_eq!(state(step(&first, "a")), "succeeded");
    assert_eq!(
        app.get(&unknown).await.status(),
        StatusCode::NOT_FOUND,
        "a reply does not create a saga"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_replies_are_dead_lettered_and_the_coordinator_keeps_working() {
    let app = TestApp::start().await;
    let some_saga = uuid::Uuid::new_v4().to_string();
    let bodies: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"{\"saga_id\": \"nope\", \"step\": \"a\", \"kind\": \"action\", \"attempt\": 1, \"outcome\": \"success\"}".to_vec(),
        serde_json::to_vec(&json!({"saga_id": some_saga, "step": "a", "kind": "action", "attempt": 1, "outcome": "maybe"})).expect("json"),
        serde_json::to_vec(&json!({"saga_id": some_saga, "step": "a", "kind": "action", "attempt": 0, "outcome": "success"})).expect("json"),
        serde_json::to_vec(&json!({"saga_id": some_saga, "kind": "action", "attempt": 1, "outcome": "success"})).expect("json"),
        serde_json::to_vec(&json!({"saga_id": some_saga, "step": "a", "kind": "sideways", "attempt": 1, "outcome": "success"})).expect("json"),
        serde_json::to_vec(&json!([1, 2, 3])).expect("json"),
    ];
    for body in &bodies {
        app.ns
            .publish_to_replies(body, Some("whatever"))
            .await
            .expect("publishing a malformed reply");
    }
    let dead = app
        .ns
        .wait_for_dead_letters(bodies.len(), SAGA_TIMEOUT)
        .await;
    let dead_bodies: HashSet<Vec<u8>> = dead.iter().map(|d| d.body.clone()).collect();
    for body in &bodies {
        assert!(
            dead_bodies.contains(body),
            "{} should be in the dead letters",
            String::from_utf8_lossy(body)
        );
    }

    // A participant that answers garbage first: the garbage is dead-lettered, the attempt times out,
    // the retry succeeds.
    let garbled = FakeParticipant::start(&app.ns, "garbled", |cmd| {
        if cmd.attempt() == 1 {
            Behaviour::ReplyRaw(b"{\"oops\": true".to_vec())
        } else {
            Behaviour::success()
        }
    })
    .await;
    let id = app
        .submit_id(&saga(
            "survivor",
            vec![step_with(
                "a",
                "garbled",
                json!({"timeout_ms": 1000, "retry": fast_retry(5)}),
            )],
        ))
        .await;
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    assert!(garbled.commands().len() >= 2);
    let dead = app.ns.wait_for_dead_letters(1, SAGA_TIMEOUT).await;
    assert!(
        dead.iter().any(|d| d.body == b"{\"oops\": true"),
        "the garbled reply is dead-lettered"
    );
    let ready = app
        .request(Method::GET, "/readyz")
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_wait_in_the_queue_while_the_participant_is_down() {
    let app = TestApp::start().await;
    app.ns.register_participant("late");
    let id = app
        .submit_id(&saga("patient", vec![e2e::defs::step("a", "late")]))
        .await;
    // The coordinator declares the participant's queue and the command waits there.
    eventually(
        "the command to wait in the queue",
        SAGA_TIMEOUT,
        async || {
            (app.ns
                .queue_len(&app.ns.participant_queue("late"))
                .await
                .ok()??
                >= 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(state(&app.saga(&id).await), "running");
    let late = FakeParticipant::always_succeed(&app.ns, "late").await;
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    assert_eq!(late.commands().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_finishes_despite_losing_the_rabbitmq_connection() {
    let app = TestApp::builder().via_proxy().start().await;
    let mut participants = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let me = name.to_string();
        participants.push(
            FakeParticipant::start(&app.ns, name, move |cmd| {
                Behaviour::DelayThenReply(
                    Duration::from_millis(100),
                    Reply::success_with(FakeParticipant::default_output(&me, cmd)),
                )
            })
            .await,
        );
    }
    let received = |participants: &[FakeParticipant]| -> usize {
        participants.iter().map(|p| p.commands().len()).sum()
    };
    connected_through(app.proxy()).await;

    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(app.submit_id(&three_steps(&format!("survive-{i}"))).await);
    }
    eventually("a third of the commands", BULK_TIMEOUT, async || {
        (received(&participants) >= 30).then_some(())
    })
    .await;
    let cut = app.proxy().sever();
    assert!(cut >= 1, "the first sever cut the coordinator's connection");
    eventually("the coordinator to reconnect", BULK_TIMEOUT, async || {
        (app.proxy().active() >= 1).then_some(())
    })
    .await;
    eventually("two thirds of the commands", BULK_TIMEOUT, async || {
        (received(&participants) >= 60).then_some(())
    })
    .await;
    app.proxy().sever();

    for id in &ids {
        let done = app.wait_for_state(id, &["committed"], BULK_TIMEOUT).await;
        for (s, p) in [("s1", "p1"), ("s2", "p2"), ("s3", "p3")] {
            let output = &step(&done, s)["output"];
            assert_eq!(output["by"], p, "{done:#}");
            assert_eq!(
                output["key"],
                idempotency_key(id, Some(s), CommandKind::Action)
            );
        }
    }
    for p in &participants {
        let actions: HashSet<String> = p
            .commands()
            .iter()
            .filter(|c| c.is_action())
            .map(|c| c.saga_id().to_string())
            .collect();
        assert_eq!(actions.len(), 30, "{} saw every saga", p.name());
        assert!(
            !p.commands().iter().any(|c| c.is_compensation()),
            "nothing was compensated"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_rabbitmq_is_unreachable() {
    let app = TestApp::builder().via_proxy().start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let readyz = async || {
        app.request(Method::GET, "/readyz")
            .send()
            .await
            .map(|r| r.status())
            .ok()
    };
    eventually("/readyz 200", SAGA_TIMEOUT, async || {
        (readyz().await? == StatusCode::OK).then_some(())
    })
    .await;

    app.proxy().pause();
    app.proxy().sever();
    eventually("/readyz 503 without RabbitMQ", SAGA_TIMEOUT, async || {
        (readyz().await? == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let healthz = app
        .request(Method::GET, "/healthz")
        .send()
        .await
        .expect("healthz");
    assert_eq!(
        healthz.status(),
        StatusCode::OK,
        "the process is alive all the same"
    );
    // Submissions still work: they go to Postgres, the commands follow once RabbitMQ is back.
    let id = app
        .submit_id(&saga("while-down", vec![e2e::defs::step("a", "shop")]))
        .await;

    app.proxy().resume();
    eventually("/readyz 200 again", SAGA_TIMEOUT, async || {
        (readyz().await? == StatusCode::OK).then_some(())
    })
    .await;
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
}
