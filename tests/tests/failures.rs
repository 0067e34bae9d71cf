//! Sagas that go wrong: business failures, timeouts, exhausted retries, rejected commands, failing
//! compensations and what an operator does about them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use contract::CommandKind;
use e2e::api::{idempotency_key, state, step};
use e2e::defs::{fast_retry, saga, step_with};
use e2e::scenarios::{broken_compensation_saga, broken_compensation_shop};
use e2e::{Behaviour, FakeParticipant, ReceivedCommand, TestApp, SAGA_TIMEOUT};
use serde_json::json;

fn summary(commands: &[ReceivedCommand]) -> Vec<(String, String)> {
    commands
        .iter()
        .map(|c| (c.step().to_string(), c.kind().to_string()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(s, k)| (s.to_string(), k.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_failure_on_step_3_compensates_2_then_1() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::start(&app.ns, "shop", |cmd| match (cmd.step(), cmd.kind()) {
        ("s3", "action") => Behaviour::failure("out of stock"),
        (s, "action") => Behaviour::success_with(json!({"made": s})),
        _ => Behaviour::success(),
    })
    .await;
    let id = app
        .submit_id(&saga(
            "doomed",
            vec![
                e2e::defs::step("s1", "shop"),
                e2e::defs::step("s2", "shop"),
                e2e::defs::step("s3", "shop"),
            ],
        ))
        .await;
    let done = app
        .wait_for_state(&id, &["compensated"], SAGA_TIMEOUT)
        .await;
    assert_eq!(state(step(&done, "s1")), "compensated");
    assert_eq!(state(step(&done, "s2")), "compensated");
    let s3 = step(&done, "s3");
    assert_eq!(state(s3), "failed", "{s3}");
    assert_eq!(s3["compensation_attempts"], 0, "{s3}");
    assert!(
        s3["error"]
            .as_str()
            .is_some_and(|e| e.contains("out of stock")),
        "the participant's error is kept: {s3}"
    );

    let commands = shop.commands();
    assert_eq!(
        summary(&commands),
        pairs(&[
            ("s1", "action"),
            ("s2", "action"),
            ("s3", "action"),
            ("s2", "compensation"),
            ("s1", "compensation"),
        ]),
        "compensation in reverse order, never of the step that failed"
    );
    let s2_comp = &commands[3];
    let s1_comp = &commands[4];
    let s2_comp_reply = shop.replies_to(s2_comp.seq);
    assert!(
        s1_comp.received_at >= s2_comp_reply[0].published_at,
        "s1 is compensated only after s2's compensation answered"
    );
    for (cmd, s) in [(s2_comp, "s2"), (s1_comp, "s1")] {
        let b = &cmd.body;
        assert_eq!(cmd.type_property.as_deref(), Some("compensation"));
        assert_eq!(b["kind"], "compensation", "{b}");
        assert_eq!(b["command"], format!("undo-{s}"), "{b}");
        assert_eq!(b["attempt"], 1, "{b}");
        assert_eq!(
            b["idempotency_key"],
            idempotency_key(&id, Some(s), CommandKind::Compensation),
            "{b}"
        );
        assert_eq!(b["action_output"], json!({"made": s}), "{b}");
        assert_eq!(cmd.correlation_id, cmd.message_id);
        assert_eq!(cmd.reply_to.as_deref(), Some(app.reply_queue.as_str()));
        assert_eq!(cmd.delivery_mode, Some(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_timeout_with_retries_exhausted_compensates_that_step_too() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::start(&app.ns, "shop", |cmd| match (cmd.step(), cmd.kind()) {
        // Never answers the action: every attempt times out, the outcome is unknown.
        ("s2", "action") => Behaviour::NoReply,
        (s, "action") => Behaviour::success_with(json!({"made": s})),
        _ => Behaviour::success(),
    })
    .await;
    let id = app
        .submit_id(&saga(
            "timing-out",
            vec![
                e2e::defs::step("s1", "shop"),
                step_with(
                    "s2",
                    "shop",
                    json!({"timeout_ms": 300, "retry": fast_retry(2)}),
                ),
            ],
        ))
        .await;
    let done = app
        .wait_for_state(&id, &["compensated"], SAGA_TIMEOUT)
        .await;
    let s2 = step(&done, "s2");
    assert_eq!(s2["attempts"], 2, "{s2}");
    assert_eq!(
        state(s2),
        "compensated",
        "a timed-out action may have taken effect: {s2}"
    );
    assert_eq!(state(step(&done, "s1")), "compensated");

    let commands = shop.commands();
    assert_eq!(
        summary(&commands),
        pairs(&[
            ("s1", "action"),
            ("s2", "action"),
            ("s2", "action"),
            ("s2", "compensation"),
            ("s1", "compensation"),
        ])
    );
    assert_eq!(commands[1].attempt(), 1);
    assert_eq!(commands[2].attempt(), 2);
    let s2_comp = &commands[3].body;
    assert!(
        s2_comp
            .as_object()
            .is_some_and(|o| o.contains_key("action_output"))
            && s2_comp["action_output"].is_null(),
        "a compensation of an action without output carries action_output null: {s2_comp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_by_retry_replies_fail_the_step_and_compensate_it() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::start(&app.ns, "shop", |cmd| match (cmd.step(), cmd.kind()) {
        ("s2", "action") => Behaviour::retry("still warming up"),
        (s, "action") => Behaviour::success_with(json!({"made": s})),
        _ => Behaviour::success(),
    })
    .await;
    let id = app
        .submit_id(&saga(
            "never-ready",
            vec![
                e2e::defs::step("s1", "shop"),
                step_with("s2", "shop", json!({"retry": fast_retry(3)})),
                e2e::defs::step("s3", "shop"),
            ],
        ))
        .await;
    let done = app
        .wait_for_state(&id, &["compensated"], SAGA_TIMEOUT)
        .await;
    assert_eq!(step(&done, "s2")["attempts"], 3);
    assert_eq!(state(step(&done, "s2")), "compensated");
    assert_eq!(
        state(step(&done, "s3")),
        "pending",
        "s3 was never dispatched"
    );
    let commands = shop.commands();
    assert_eq!(
        summary(&commands),
        pairs(&[
            ("s1", "action"),
            ("s2", "action"),
            ("s2", "action"),
            ("s2", "action"),
            ("s2", "compensation"),
            ("s1", "compensation"),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_command_counts_as_a_retry_at_once() {
    let app = TestApp::start().await;
    let picky = FakeParticipant::start(&app.ns, "picky", |cmd| {
        if cmd.attempt() == 1 {
            Behaviour::Reject
        } else {
            Behaviour::success_with(json!({"attempt": cmd.attempt()}))
        }
    })
    .await;
    // With a two-minute step timeout, only the dead-lettering can make the second attempt come in time.
    let id = app
        .submit_id(&saga(
            "rejected-once",
            vec![step_with(
                "only",
                "picky",
                json!({"timeout_ms": 120000, "retry": fast_retry(3)}),
            )],
        ))
        .await;
    let done = app
        .wait_for_state(&id, &["committed"], Duration::from_secs(60))
        .await;
    assert_eq!(step(&done, "only")["attempts"], 2);
    let commands = picky.commands();
    assert_eq!(
        commands
            .iter()
            .map(ReceivedCommand::attempt)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(commands[0].idempotency_key(), commands[1].idempotency_key());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensation_runs_in_reverse_dependency_order() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::start(&app.ns, "shop", |cmd| match (cmd.step(), cmd.kind()) {
        ("d", "action") => Behaviour::failure("no"),
        (s, "action") => Behaviour::success_with(json!({"made": s})),
        // Slow compensations, so an early compensation of `a` could not hide behind a fast one.
        _ => Behaviour::DelayThenReply(Duration::from_millis(200), e2e::Reply::success()),
    })
    .await;
    let id = app
        .submit_id(&json!({
            "name": "diamond",
            "steps": [
                {"name": "a", "participant": "shop", "action": "do-a", "compensation": "undo-a"},
                {"name": "b", "participant": "shop", "action": "do-b", "compensation": "undo-b", "after": ["a"]},
                {"name": "c", "participant": "shop", "action": "do-c", "compensation": "undo-c", "after": ["a"]},
                {"name": "d", "participant": "shop", "action": "do-d", "compensation": "undo-d", "after": ["b", "c"]}
            ]
        }))
        .await;
    let done = app
        .wait_for_state(&id, &["compensated"], SAGA_TIMEOUT)
        .await;
    assert_eq!(state(step(&done, "d")), "failed");
    for s in ["a", "b", "c"] {
        assert_eq!(state(step(&done, s)), "compensated", "{done:#}");
    }
    let commands = shop.commands();
    let comp = |s: &str| {
        let found: Vec<&ReceivedCommand> = commands
            .iter()
            .filter(|c| c.step() == s && c.is_compensation())
            .collect();
        assert_eq!(found.len(), 1, "one compensation of {s}: {commands:#?}");
        found[0].clone()
    };
    assert!(
        !commands
            .iter()
            .any(|c| c.step() == "d" && c.is_compensation()),
        "d failed explicitly: never compensated"
    );
    let (a, b, c) = (comp("a"), comp("b"), comp("c"));
    let answered = |cmd: &ReceivedCommand| shop.replies_to(cmd.seq)[0].published_at;
    assert!(
        a.received_at >= answered(&b) && a.received_at >= answered(&c),
        "a is compensated only after b and c, which depend on it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_keeps_failing_fails_the_saga_until_retry() {
    let app = TestApp::start().await;
    let fixed = Arc::new(AtomicBool::new(false));
    let shop = broken_compensation_shop(&app, fixed.clone()).await;
    let id = app.submit_id(&broken_compensation_saga()).await;

    let failed = app.wait_for_state(&id, &["failed"], SAGA_TIMEOUT).await;
    let s1 = step(&failed, "s1");
    assert_eq!(state(s1), "compensation_failed", "{s1}");
    assert_eq!(s1["compensation_attempts"], 2, "{s1}");
    assert_eq!(state(step(&failed, "s2")), "failed");
    let compensations: Vec<u64> = shop
        .commands()
        .iter()
        .filter(|c| c.is_compensation())
        .map(ReceivedCommand::attempt)
        .collect();
    assert_eq!(
        compensations,
        [1, 2],
        "a failure reply to a compensation is retried"
    );

    fixed.store(true, Ordering::SeqCst);
    let resp = app.retry(&id).await;
    assert!(
        resp.status().is_success(),
        "retry of a failed saga: {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    let done = app
        .wait_for_state(&id, &["compensated"], SAGA_TIMEOUT)
        .await;
    assert_eq!(state(step(&done, "s1")), "compensated");
    let compensations = shop
        .commands()
        .iter()
        .filter(|c| c.is_compensation())
        .count();
    assert_eq!(
        compensations, 3,
        "retry dispatched the compensation once more"
    );
    let again = app.retry(&id).await;
    assert_eq!(again.status(), 409, "retry of a compensated saga");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_marks_a_failed_saga_compensated_and_keeps_the_note() {
    let app = TestApp::start().await;
    let shop = broken_compensation_shop(&app, Arc::new(AtomicBool::new(false))).await;
    let id = app.submit_id(&broken_compensation_saga()).await;
    app.wait_for_state(&id, &["failed"], SAGA_TIMEOUT).await;

    let resp = app.resolve(&id, "fixed by hand").await;
    assert!(
        resp.status().is_success(),
        "resolve of a failed saga: {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    app.wait_for_state(&id, &["compensated"], SAGA_TIMEOUT)
        .await;
    let events = app.events(&id).await;
    assert!(
        events
            .iter()
            .any(|e| e.to_string().contains("fixed by hand")),
        "the operator's note is in the event log: {events:#?}"
    );
    let compensations = shop
        .commands()
        .iter()
        .filter(|c| c.is_compensation())
        .count();
    assert_eq!(compensations, 2, "resolve dispatches nothing");
    assert_eq!(app.resolve(&id, "again").await.status(), 409);
}
