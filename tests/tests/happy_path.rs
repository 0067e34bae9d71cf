//! Sagas whose actions all succeed: commands, replies, outputs, retries, parallel steps, events.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use contract::properties::TRACEPARENT;
use contract::{names, CommandKind};
use e2e::api::{idempotency_key, saga_id, state, step};
use e2e::defs::{fast_retry, saga, step_with};
use e2e::{Behaviour, FakeParticipant, ReceivedCommand, Reply, TestApp, SAGA_TIMEOUT};
use serde_json::{json, Value};

fn parse_time(v: &Value, what: &str) -> DateTime<Utc> {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{what} {s:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// The properties every command carries (contract, sections 3 and 4).
fn assert_command_envelope(
    cmd: &ReceivedCommand,
    ns: &str,
    reply_queue: &str,
    participant: &str,
    kind: &str,
) {
    let message_id = cmd
        .message_id
        .as_deref()
        .unwrap_or_else(|| panic!("command without message_id: {cmd:?}"));
    assert!(!message_id.is_empty());
    assert_eq!(
        cmd.correlation_id.as_deref(),
        Some(message_id),
        "correlation_id == message_id"
    );
    // The reply queue of the coordinator that sent it (contract, section 4).
    assert_eq!(cmd.reply_to.as_deref(), Some(reply_queue));
    assert_eq!(
        cmd.type_property.as_deref(),
        Some(kind),
        "the AMQP type property"
    );
    assert_eq!(cmd.delivery_mode, Some(2), "commands are persistent");
    assert!(
        cmd.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json")),
        "content_type: {:?}",
        cmd.content_type
    );
    assert!(cmd.timestamp.is_some(), "commands carry a timestamp");
    assert_eq!(cmd.exchange, names::commands_exchange(ns));
    assert_eq!(cmd.routing_key, participant);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_steps_commit_and_commands_carry_the_contract_fields() {
    let app = TestApp::start().await;
    let inventory = FakeParticipant::start(&app.ns, "inventory", |_| {
        Behaviour::success_with(json!({"reservation": "r-77"}))
    })
    .await;
    let payments = FakeParticipant::start(&app.ns, "payments", |_| {
        Behaviour::success_with(json!({"payment": "p-9"}))
    })
    .await;
    let mailer = FakeParticipant::start(&app.ns, "mailer", |_| Behaviour::success()).await;

    let definition = json!({
        "name": "place-order",
        "key": "order-8812",
        "payload": {"order_id": 8812},
        "steps": [
            {"name": "reserve", "participant": "inventory", "action": "reserve", "compensation": "release",
             "payload": {"sku": "A-1", "qty": 2}, "timeout_ms": 5000,
             "retry": {"max_attempts": 5, "initial_backoff_ms": 100, "max_backoff_ms": 10000, "multiplier": 2.0}},
            {"name": "charge", "participant": "payments", "action": "charge", "compensation": "refund",
             "payload": {"amount_cents": 4200}},
            {"name": "notify", "participant": "mailer", "action": "send-confirmation"}
        ]
    });
    let resp = app.submit(&definition).await;
    assert_eq!(resp.status(), 201);
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let created: Value = resp.json().await.expect("saga document");
    let id = saga_id(&created);
    assert!(
        location.ends_with(&format!("/api/v1/sagas/{id}")),
        "Location {location:?}"
    );
    assert_eq!(created["name"], "place-order");
    assert_eq!(created["key"], "order-8812");
    assert_eq!(created["payload"], json!({"order_id": 8812}));
    let names: Vec<&str> = created["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["reserve", "charge", "notify"]);

    let done = app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["name"], "place-order");
    assert_eq!(done["key"], "order-8812");
    assert_eq!(done["payload"], json!({"order_id": 8812}));
    assert!(
        done["deadline"].is_null(),
        "no saga timeout_ms, no deadline: {done}"
    );
    let created_at = parse_time(&done["created_at"], "created_at");
    let updated_at = parse_time(&done["updated_at"], "updated_at");
    assert!(updated_at >= created_at);

    let expected = [
        (
            "reserve",
            "inventory",
            "reserve",
            Some("release"),
            json!({"reservation": "r-77"}),
        ),
        (
            "charge",
            "payments",
            "charge",
            Some("refund"),
            json!({"payment": "p-9"}),
        ),
        ("notify", "mailer", "send-confirmation", None, Value::Null),
    ];
    for (name, participant, action, compensation, output) in &expected {
        let s = step(&done, name);
        assert_eq!(state(s), "succeeded", "step {name}: {s}");
        assert_eq!(s["participant"], *participant);
        assert_eq!(s["action"], *action);
        assert_eq!(
            s["compensation"].as_str(),
            *compensation,
            "step {name}: {s}"
        );
        assert_eq!(s["attempts"], 1, "step {name}: {s}");
        assert_eq!(s["compensation_attempts"], 0, "step {name}: {s}");
        assert_eq!(s["output"], *output, "step {name}: {s}");
        assert!(s["error"].is_null(), "step {name}: {s}");
    }

    let ns = app.ns.name();
    let reserve = inventory.commands();
    let charge = payments.commands();
    let notify = mailer.commands();
    assert_eq!(reserve.len(), 1, "{reserve:#?}");
    assert_eq!(charge.len(), 1, "{charge:#?}");
    assert_eq!(notify.len(), 1, "{notify:#?}");
    let (reserve, charge, notify) = (&reserve[0], &charge[0], &notify[0]);
    assert_command_envelope(reserve, ns, &app.reply_queue, "inventory", "action");
    assert_command_envelope(charge, ns, &app.reply_queue, "payments", "action");
    assert_command_envelope(notify, ns, &app.reply_queue, "mailer", "action");
    let ids: HashSet<_> = [reserve, charge, notify]
        .iter()
        .map(|c| c.message_id.clone())
        .collect();
    assert_eq!(ids.len(), 3, "message_id is unique per attempt");

    for (cmd, name, action, timeout_ms) in [
        (reserve, "reserve", "reserve", 5000),
        (charge, "charge", "charge", 30000),
        (notify, "notify", "send-confirmation", 30000),
    ] {
        let b = &cmd.body;
        assert_eq!(b["saga_id"], id.as_str(), "{b}");
        assert_eq!(b["saga_name"], "place-order", "{b}");
        assert_eq!(b["step"], name, "{b}");
        assert_eq!(b["kind"], "action", "{b}");
        assert_eq!(b["command"], action, "{b}");
        assert_eq!(b["attempt"], 1, "{b}");
        assert_eq!(
            b["idempotency_key"],
            idempotency_key(&id, Some(name), CommandKind::Action),
            "{b}"
        );
        assert_eq!(b["saga_payload"], json!({"order_id": 8812}), "{b}");
        assert!(
            b.get("action_output").is_none(),
            "only compensations carry action_output: {b}"
        );
        // The deadline is the dispatch time plus the step's timeout_ms (default 30000).
        let deadline = parse_time(&b["deadline"], "deadline");
        let earliest = created_at + chrono::Duration::milliseconds(timeout_ms - 1000);
        let latest = Utc::now() + chrono::Duration::milliseconds(timeout_ms + 1000);
        assert!(
            deadline >= earliest && deadline <= latest,
            "step {name}: deadline {deadline} should be about dispatch + {timeout_ms} ms (created {created_at})"
        );
    }
    assert_eq!(reserve.body["payload"], json!({"sku": "A-1", "qty": 2}));
    assert_eq!(charge.body["payload"], json!({"amount_cents": 4200}));
    assert!(
        notify.body.get("payload").is_none_or(Value::is_null),
        "a step without payload: {}",
        notify.body
    );
    assert_eq!(reserve.body["outputs"], json!({}));
    assert_eq!(
        charge.body["outputs"],
        json!({"reserve": {"reservation": "r-77"}})
    );
    assert_eq!(
        notify.body["outputs"],
        json!({"reserve": {"reservation": "r-77"}, "charge": {"payment": "p-9"}})
    );
    for p in [&inventory, &payments, &mailer] {
        assert!(p.errors().is_empty(), "{}: {:?}", p.name(), p.errors());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_without_after_run_one_after_another() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::start(&app.ns, "shop", |cmd| {
        Behaviour::DelayThenReply(
            Duration::from_millis(300),
            Reply::success_with(json!({"done": cmd.step()})),
        )
    })
    .await;
    let id = app
        .submit_id(&saga(
            "sequential",
            vec![
                e2e::defs::step("one", "shop"),
                e2e::defs::step("two", "shop"),
                e2e::defs::step("three", "shop"),
            ],
        ))
        .await;
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    let commands = shop.commands();
    assert_eq!(
        commands.iter().map(|c| c.step()).collect::<Vec<_>>(),
        ["one", "two", "three"]
    );
    let replies = shop.replies();
    for pair in commands.windows(2) {
        let previous_reply = replies
            .iter()
            .find(|r| r.command_seq == pair[0].seq)
            .expect("a reply to the previous step");
        assert!(
            pair[1].received_at >= previous_reply.published_at,
            "step {} was dispatched before step {} answered",
            pair[1].step(),
            pair[0].step()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_list_the_saga_log_oldest_first() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let id = app
        .submit_id(&saga(
            "logged",
            vec![e2e::defs::step("a", "shop"), e2e::defs::step("b", "shop")],
        ))
        .await;
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    let events = app.events(&id).await;
    assert!(
        events.len() >= 3,
        "submission and two steps at least: {events:#?}"
    );
    let mut previous_seq = None;
    let mut previous_at = None;
    for event in &events {
        for field in ["seq", "at", "type", "step", "attempt", "detail"] {
            assert!(event.get(field).is_some(), "event without {field}: {event}");
        }
        assert!(
            event["type"].as_str().is_some_and(|t| !t.is_empty()),
            "{event}"
        );
        let seq = event["seq"].as_i64().expect("seq is a number");
        let at = parse_time(&event["at"], "at");
        if let (Some(ps), Some(pa)) = (previous_seq, previous_at) {
            assert!(seq > ps, "events are oldest first: {events:#?}");
            assert!(at >= pa, "events are oldest first: {events:#?}");
        }
        previous_seq = Some(seq);
        previous_at = Some(at);
    }
    for s in ["a", "b"] {
        assert!(
            events.iter().any(|e| e["step"] == s),
            "an event about step {s}: {events:#?}"
        );
    }
    assert!(
        events.iter().any(|e| e["step"] == "a" && e["attempt"] == 1),
        "events of a step name its attempt: {events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_replies_then_success_commit_with_attempts_counted() {
    let app = TestApp::start().await;
    let flaky = FakeParticipant::start(&app.ns, "flaky", |cmd| {
        if cmd.attempt() < 3 {
            Behaviour::retry("busy, try later")
        } else {
            Behaviour::success_with(json!({"attempt": cmd.attempt()}))
        }
    })
    .await;
    let id = app
        .submit_id(&saga(
            "flaky-saga",
            vec![step_with(
                "wobble",
                "flaky",
                json!({"retry": fast_retry(5)}),
            )],
        ))
        .await;
    let done = app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    let s = step(&done, "wobble");
    assert_eq!(state(s), "succeeded");
    assert_eq!(s["attempts"], 3, "{s}");
    assert_eq!(s["output"], json!({"attempt": 3}));

    let commands = flaky.commands();
    assert_eq!(
        commands
            .iter()
            .map(ReceivedCommand::attempt)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let keys: HashSet<_> = commands
        .iter()
        .map(|c| c.idempotency_key().to_string())
        .collect();
    assert_eq!(keys.len(), 1, "all attempts share one idempotency key");
    assert_eq!(
        keys.into_iter().next(),
        Some(idempotency_key(&id, Some("wobble"), CommandKind::Action))
    );
    let message_ids: HashSet<_> = commands.iter().map(|c| c.message_id.clone()).collect();
    assert_eq!(message_ids.len(), 3, "message_id is unique per attempt");
    for c in &commands {
        assert_eq!(c.correlation_id, c.message_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_steps_via_after_and_a_join_that_waits_for_both() {
    let app = TestApp::start().await;
    // `a` and `b` hold their replies until both commands have arrived (or 20 s passed, in which case
    // the assertions below fail): only a coordinator that dispatches both at once passes.
    let (arrived, watch) = tokio::sync::watch::channel(0usize);
    let arrived = Arc::new(arrived);
    let shop = FakeParticipant::start(&app.ns, "shop", move |cmd| {
        let output = json!({"from": cmd.step()});
        if cmd.is_action() && (cmd.step() == "a" || cmd.step() == "b") {
            arrived.send_modify(|n| *n += 1);
            let mut watch = watch.clone();
            Behaviour::after(
                async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(20), watch.wait_for(|n| *n >= 2))
                            .await;
                },
                Behaviour::success_with(output),
            )
        } else {
            Behaviour::success_with(output)
        }
    })
    .await;
    let id = app
        .submit_id(&json!({
            "name": "fan-out",
            "steps": [
                {"name": "a", "participant": "shop", "action": "do-a"},
                {"name": "b", "participant": "shop", "action": "do-b", "after": []},
                {"name": "join", "participant": "shop", "action": "do-join", "after": ["a", "b"]}
            ]
        }))
        .await;
    let done = app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    assert_eq!(step(&done, "join")["after"], json!(["a", "b"]));

    let commands = shop.commands();
    let replies = shop.replies();
    let find = |s: &str| {
        commands
            .iter()
            .find(|c| c.step() == s)
            .unwrap_or_else(|| panic!("no command for {s}: {commands:#?}"))
    };
    let (a, b, join) = (find("a"), find("b"), find("join"));
    let reply_of = |c: &ReceivedCommand| {
        replies
            .iter()
            .find(|r| r.command_seq == c.seq)
            .unwrap_or_else(|| panic!("no reply to {}", c.step()))
            .published_at
    };
    let first_reply = reply_of(a).min(reply_of(b));
    assert!(
        a.received_at < first_reply && b.received_at < first_reply,
        "a and b must both be dispatched before either answers"
    );
    assert!(
        join.received_at >= reply_of(a).max(reply_of(b)),
        "the join step waits for both of its dependencies"
    );
    assert_eq!(
        join.body["outputs"],
        json!({"a": {"from": "a"}, "b": {"from": "b"}})
    );
    assert_eq!(commands.len(), 3, "{commands:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_carry_the_traceparent_and_tracestate_of_the_submitting_request() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let resp = app
        .request(reqwest::Method::POST, "/api/v1/sagas")
        .header("traceparent", traceparent)
        .header("tracestate", tracestate)
        .json(&saga("traced", vec![e2e::defs::step("a", "shop")]))
        .send()
        .await
        .expect("submit");
    let traced = saga_id(&e2e::api::expect_json(resp, reqwest::StatusCode::CREATED).await);
    // A tracestate without a traceparent belongs to no trace, and is dropped.
    let resp = app
        .request(reqwest::Method::POST, "/api/v1/sagas")
        .header("tracestate", tracestate)
        .json(&saga("untraced", vec![e2e::defs::step("a", "shop")]))
        .send()
        .await
        .expect("submit");
    let untraced = saga_id(&e2e::api::expect_json(resp, reqwest::StatusCode::CREATED).await);
    app.wait_for_state(&traced, &["committed"], SAGA_TIMEOUT)
        .await;
    app.wait_for_state(&untraced, &["committed"], SAGA_TIMEOUT)
        .await;

    let with = &shop.commands_for(&traced)[0];
    let header = with
        .headers
        .get(TRACEPARENT)
        .unwrap_or_else(|| panic!("no traceparent header: {with:?}"));
    assert!(
        header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "the command continues the request's trace: {header}"
    );
    assert_eq!(
        with.headers.get("tracestate").map(String::as_str),
        Some(tracestate),
        "{with:?}"
    );
    // Without one, the saga starts a trace of its own, and its commands carry it.
    let without = &shop.commands_for(&untraced)[0];
    let header = without
        .headers
        .get(TRACEPARENT)
        .unwrap_or_else(|| panic!("no traceparent on a saga submitted without one: {without:?}"));
    let fields: Vec<&str> = header.split('-').collect();
    assert_eq!(fields.len(), 4, "{header}");
    assert_eq!(
        (fields[0], fields[1].len(), fields[2].len()),
        ("00", 32, 16),
        "{header}"
    );
    assert_ne!(
        fields[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "a trace of its own: {header}"
    );
    assert!(!without.headers.contains_key("tracestate"), "{without:?}");
}
