//! Two-phase submission (contract, section 5): prepare, commit and abort, and the check-back that
//! asks the initiator (over AMQP and over HTTP) when neither arrives in time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use contract::CommandKind;
use e2e::api::{expect_json, expect_problem, idempotency_key, saga_id, state};
use e2e::defs::{fast_retry, saga, step};
use e2e::{
    Behaviour, CheckAnswer, CheckBackServer, CoordinatorProcess, FakeParticipant, Reply, TestApp,
    TestDb, TestNamespace, SAGA_TIMEOUT,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A two-step saga at `shop` in prepare mode, asking `check_back` after `prepare_timeout_ms`.
fn prepared_saga(check_back: Value, prepare_timeout_ms: u64) -> Value {
    let mut def = saga(
        "place-order",
        vec![step("reserve", "shop"), step("charge", "shop")],
    );
    def["mode"] = json!("prepare");
    def["check_back"] = check_back;
    def["prepare_timeout_ms"] = json!(prepare_timeout_ms);
    def
}

/// Check-backs that retry fast: `max_attempts` of them, each unanswered after 300 ms.
fn fast_check_back(target: Value, max_attempts: u32) -> Value {
    let mut cb = target;
    cb["timeout_ms"] = json!(300);
    cb["retry"] = fast_retry(max_attempts);
    cb
}

fn events_of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_starts_a_prepared_saga_and_both_decisions_are_idempotent() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let def = prepared_saga(json!({"participant": "orders"}), 600_000);

    let doc = app.submit_ok(&def).await;
    let id = saga_id(&doc);
    assert_eq!(state(&doc), "prepared");
    assert_eq!(doc["mode"], "prepare");
    assert_eq!(doc["check_back"]["participant"], "orders");

    // Another saga, committed at once, proves the shop is listening: the prepared one got nothing.
    let other = app.submit_id(&saga("other", vec![step("x", "shop")])).await;
    app.wait_for_state(&other, &["committed"], SAGA_TIMEOUT)
        .await;
    assert!(
        shop.commands_for(&id).is_empty(),
        "dispatched before commit"
    );
    assert_eq!(state(&app.saga(&id).await), "prepared");

    let committed = expect_json(app.commit(&id).await, StatusCode::OK).await;
    assert_ne!(state(&committed), "prepared");
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    assert_eq!(shop.commands_for(&id).len(), 2);

    // Repeating commit answers 200 with the saga; abort after commit is refused.
    let again = expect_json(app.commit(&id).await, StatusCode::OK).await;
    assert_eq!(state(&again), "committed");
    expect_problem(app.abort(&id).await, StatusCode::CONFLICT).await;
    let events = app.events(&id).await;
    assert_eq!(events_of_type(&events, "commit").len(), 1, "{events:#?}");
    assert_eq!(
        events_of_type(&events, "commit")[0]["detail"]["by"],
        "initiator"
    );

    // Abort decides the other way: aborted, repeatable, and commit is refused afterwards.
    let id = app.submit_id(&def).await;
    let aborted = expect_json(app.abort(&id).await, StatusCode::OK).await;
    assert_eq!(state(&aborted), "aborted");
    let again = expect_json(app.abort(&id).await, StatusCode::OK).await;
    assert_eq!(state(&again), "aborted");
    expect_problem(app.commit(&id).await, StatusCode::CONFLICT).await;
    assert!(shop.commands_for(&id).is_empty());

    // Commit is only for two-phase sagas.
    let plain = app.submit_id(&saga("plain", vec![step("x", "shop")])).await;
    expect_problem(app.commit(&plain).await, StatusCode::CONFLICT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_check_back_answers_committed_aborted_and_pending() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    // The initiator answers what the saga payload says; "pending-then-committed" answers pending
    // to the first check-back and committed to the next.
    let orders = FakeParticipant::start(&app.ns, "orders", |cmd| {
        let answer = cmd.body["saga_payload"]["answer"].as_str().unwrap_or("");
        let outcome = match (answer, cmd.attempt()) {
            ("pending-then-committed", 1) => "pending",
            ("pending-then-committed", _) => "committed",
            (other, _) => other,
        };
        Behaviour::Reply(Reply::outcome(outcome))
    })
    .await;

    let mut ids = Vec::new();
    for answer in ["committed", "aborted", "pending-then-committed"] {
        let mut def = prepared_saga(fast_check_back(json!({"participant": "orders"}), 5), 200);
        def["payload"] = json!({"answer": answer});
        ids.push(app.submit_id(&def).await);
    }
    let done = app
        .wait_for_state(&ids[0], &["committed"], SAGA_TIMEOUT)
        .await;
    assert_eq!(state(&done), "committed");
    app.wait_for_state(&ids[1], &["aborted"], SAGA_TIMEOUT)
        .await;
    app.wait_for_state(&ids[2], &["committed"], SAGA_TIMEOUT)
        .await;

    // The check command is the contract's: kind check, no step, at the named participant.
    let checks = orders.commands_for(&ids[0]);
    assert_eq!(checks.len(), 1);
    let check = &checks[0];
    assert_eq!(check.kind(), "check");
    assert!(
        check.body.get("step").is_none_or(Value::is_null),
        "{:#}",
        check.body
    );
    assert_eq!(
        check.body["idempotency_key"],
        idempotency_key(&ids[0], None, CommandKind::Check)
    );
    assert_eq!(
        orders.commands_for(&ids[2]).len(),
        2,
        "asked again after pending"
    );
    assert!(
        shop.commands_for(&ids[1]).is_empty(),
        "aborted saga dispatched nothing"
    );
    let events = app.events(&ids[0]).await;
    assert_eq!(
        events_of_type(&events, "commit")[0]["detail"]["by"],
        "check_back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_back_answers_committed_aborted_and_pending() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let answers: Arc<std::sync::Mutex<std::collections::HashMap<String, &'static str>>> =
        Arc::default();
    let table = answers.clone();
    let server = CheckBackServer::start(move |id, n| {
        let answer = table.lock().expect("answers").get(id).copied();
        match (answer, n) {
            (Some("pending-then-aborted"), 1) => CheckAnswer::outcome("pending"),
            (Some("pending-then-aborted"), _) => CheckAnswer::outcome("aborted"),
            (Some("error-then-committed"), 1) => CheckAnswer::status(503),
            (Some("error-then-committed"), _) => CheckAnswer::outcome("committed"),
            (Some("garbage-then-aborted"), 1) => CheckAnswer {
                body: "<html>not an answer</html>".into(),
                ..CheckAnswer::status(200)
            },
            (Some("garbage-then-aborted"), _) => CheckAnswer::outcome("aborted"),
            (Some(outcome), _) => CheckAnswer::outcome(outcome),
            (None, _) => CheckAnswer::status(404),
        }
    })
    .await;

    let mut ids = Vec::new();
    for answer in [
        "committed",
        "aborted",
        "pending-then-aborted",
        "error-then-committed",
        "garbage-then-aborted",
    ] {
        let def = prepared_saga(fast_check_back(json!({"url": server.url()}), 5), 200);
        // Submit, then register the answer: the first check-back is 200 ms away.
        let id = app.submit_id(&def).await;
        answers.lock().expect("answers").insert(id.clone(), answer);
        ids.push(id);
    }
    app.wait_for_state(&ids[0], &["committed"], SAGA_TIMEOUT)
        .await;
    app.wait_for_state(&ids[1], &["aborted"], SAGA_TIMEOUT)
        .await;
    app.wait_for_state(&ids[2], &["aborted"], SAGA_TIMEOUT)
        .await;
    app.wait_for_state(&ids[3], &["committed"], SAGA_TIMEOUT)
        .await;
    assert_eq!(server.calls_for(&ids[0]), 1);
    assert_eq!(server.calls_for(&ids[2]), 2);
    assert_eq!(server.calls_for(&ids[3]), 2);
    // A 200 whose body is not an answer counts as no answer: asked again, then decided.
    app.wait_for_state(&ids[4], &["aborted"], SAGA_TIMEOUT)
        .await;
    assert_eq!(server.calls_for(&ids[4]), 2);
    let events = app.events(&ids[4]).await;
    assert!(
        events_of_type(&events, "retry_scheduled")[0]["detail"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not {\"outcome\"")),
        "{events:#?}"
    );
    assert_eq!(shop.commands_for(&ids[0]).len(), 2);
    assert!(shop.commands_for(&ids[2]).is_empty());
    // The failed HTTP attempt is in the event log with its reason.
    let events = app.events(&ids[3]).await;
    let retried = events_of_type(&events, "retry_scheduled");
    assert!(
        retried[0]["detail"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_check_backs_leave_the_saga_failed_until_an_operator_acts() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::always_succeed(&app.ns, "shop").await;

    // Over HTTP: nothing listens on the URL.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let url = format!("http://{closed}/check");
    let def = prepared_saga(fast_check_back(json!({"url": url}), 3), 100);
    let http_id = app.submit_id(&def).await;
    let failed = app
        .wait_for_state(&http_id, &["failed"], SAGA_TIMEOUT)
        .await;
    assert_eq!(failed["check_back"]["attempts"], 3);
    let events = app.events(&http_id).await;
    assert_eq!(events_of_type(&events, "gave_up").len(), 1, "{events:#?}");
    // It stays failed: nothing is due any more.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(state(&app.saga(&http_id).await), "failed");
    // The initiator's late commit still decides it.
    expect_json(app.commit(&http_id).await, StatusCode::OK).await;
    app.wait_for_state(&http_id, &["committed"], SAGA_TIMEOUT)
        .await;

    // Over AMQP: the initiator is down, so every check-back times out.
    let def = prepared_saga(fast_check_back(json!({"participant": "orders"}), 2), 100);
    let amqp_id = app.submit_id(&def).await;
    app.wait_for_state(&amqp_id, &["failed"], SAGA_TIMEOUT)
        .await;
    // The operator asks again once the initiator is back: it answers committed.
    let orders = FakeParticipant::start(&app.ns, "orders", |_| {
        Behaviour::Reply(Reply::outcome("committed"))
    })
    .await;
    let retried = expect_json(app.retry(&amqp_id).await, StatusCode::OK).await;
    assert_eq!(state(&retried), "prepared");
    app.wait_for_state(&amqp_id, &["committed"], SAGA_TIMEOUT)
        .await;
    assert!(!orders.commands_for(&amqp_id).is_empty());
    assert_eq!(shop.commands_for(&amqp_id).len(), 2);

    // Or the operator resolves it: nothing was dispatched, so it ends aborted.
    let def = prepared_saga(fast_check_back(json!({"url": url}), 1), 100);
    let resolved = app.submit_id(&def).await;
    app.wait_for_state(&resolved, &["failed"], SAGA_TIMEOUT)
        .await;
    let doc = expect_json(
        app.resolve(&resolved, "the order was never written").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(state(&doc), "aborted");
}

const BIN: &str = env!("CARGO_BIN_EXE_coordinator-under-test");

async fn start_process(db: &TestDb, ns: &TestNamespace) -> CoordinatorProcess {
    CoordinatorProcess::start_on(BIN, db, ns).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_sagas_survive_a_coordinator_crash() {
    let db = tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("creating the test database");
    let ns = TestNamespace::new();
    let mut first = start_process(&db, &ns).await;
    let shop = FakeParticipant::always_succeed(&ns, "shop").await;
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let _orders = FakeParticipant::start(&ns, "orders", move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        Behaviour::Reply(Reply::outcome("committed"))
    })
    .await;

    // One saga the initiator will commit over HTTP, one whose check-back falls due while the
    // coordinator is down.
    let by_commit = first
        .api()
        .submit_id(&prepared_saga(json!({"participant": "orders"}), 600_000))
        .await;
    let by_check = first
        .api()
        .submit_id(&prepared_saga(
            fast_check_back(json!({"participant": "orders"}), 5),
            1_500,
        ))
        .await;
    first.kill();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(asked.load(Ordering::SeqCst), 0, "nobody asked while down");

    let second = start_process(&db, &ns).await;
    let api = second.api();
    assert_eq!(api.try_state(&by_commit).await.as_deref(), Some("prepared"));
    expect_json(api.commit(&by_commit).await, StatusCode::OK).await;
    api.wait_for_state(&by_commit, &["committed"], SAGA_TIMEOUT)
        .await;
    api.wait_for_state(&by_check, &["committed"], SAGA_TIMEOUT)
        .await;
    assert_eq!(shop.commands_for(&by_check).len(), 2);
}

/// A redirect, or an answer over the size cap (announced or not), is no answer: the saga is neither
/// committed nor aborted by it, and is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_backs_follow_no_redirect_and_read_no_oversized_answer() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    // Where a redirect points: it would commit every saga it were asked about.
    let elsewhere = CheckBackServer::start(|_, _| CheckAnswer::outcome("committed")).await;
    let target = elsewhere.url();
    let answers: Arc<std::sync::Mutex<std::collections::HashMap<String, &'static str>>> =
        Arc::default();
    let table = answers.clone();
    let server = CheckBackServer::start(move |id, n| {
        let answer = table.lock().expect("answers").get(id).copied();
        match (answer, n) {
            (Some("redirect"), 1) => CheckAnswer::redirect(&target),
            (Some("oversized"), 1) => CheckAnswer::oversized("committed", 70 * 1024),
            (Some("oversized-unannounced"), 1) => CheckAnswer {
                content_length: false,
                ..CheckAnswer::oversized("committed", 70 * 1024)
            },
            (Some(_), _) => CheckAnswer::outcome("aborted"),
            (None, _) => CheckAnswer::status(404),
        }
    })
    .await;

    let mut ids = Vec::new();
    for answer in ["redirect", "oversized", "oversized-unannounced"] {
        let def = prepared_saga(fast_check_back(json!({"url": server.url()}), 5), 200);
        let id = app.submit_id(&def).await;
        answers.lock().expect("answers").insert(id.clone(), answer);
        ids.push((answer, id));
    }
    for (answer, id) in &ids {
        app.wait_for_state(id, &["aborted"], SAGA_TIMEOUT).await;
        assert_eq!(server.calls_for(id), 2, "{answer}: asked again");
        assert_eq!(elsewhere.calls_for(id), 0, "{answer}: no redirect followed");
        assert!(
            shop.commands_for(id).is_empty(),
            "{answer}: nothing dispatched"
        );
        let events = app.events(id).await;
        let error = events_of_type(&events, "retry_scheduled")[0]["detail"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let expected = if *answer == "redirect" {
            "do not follow redirects"
        } else {
            "larger than 65536 bytes"
        };
        assert!(error.contains(expected), "{answer}: {error}");
    }
}

/// With `SAGA_CHECK_BACK_HOSTS` set, a check-back URL naming another host (or port) is refused at
/// submission, on its field; a listed one is accepted and asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_back_urls_outside_the_listed_hosts_are_refused_at_submission() {
    let server = CheckBackServer::start(|_, _| CheckAnswer::outcome("aborted")).await;
    let listed = server.url();
    let authority = listed
        .trim_start_matches("http://")
        .trim_end_matches("/check")
        .to_owned();
    let app = TestApp::builder()
        .check_back_hosts(&["orders.internal", &authority])
        .start()
        .await;
    let port = authority
        .rsplit_once(':')
        .map(|(_, p)| p)
        .unwrap_or_default();
    let other_port: u16 = port.parse::<u16>().expect("a port").wrapping_add(1);
    for unlisted in [
        format!("http://localhost:{port}/check"),
        format!("http://127.0.0.1:{other_port}/check"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
    ] {
        let def = prepared_saga(json!({"url": unlisted}), 200);
        let refused =
            expect_problem(app.submit(&def).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(
            refused["errors"][0]["field"], "check_back.url",
            "{unlisted}: {refused}"
        );
    }
    assert_eq!(
        expect_json(app.list(&[]).await, StatusCode::OK).await["items"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "nothing stored"
    );
    let def = prepared_saga(fast_check_back(json!({"url": listed}), 5), 200);
    let id = app.submit_id(&def).await;
    app.wait_for_state(&id, &["aborted"], SAGA_TIMEOUT).await;
    assert_eq!(server.calls_for(&id), 1);
}
