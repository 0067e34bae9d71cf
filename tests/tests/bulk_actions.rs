//! Bulk actions: one operator's action over every saga a filter matches, as a durable job that
//! survives a SIGKILL of its coordinator and applies the action to each saga once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::api::{expect_json, expect_problem, Api};
use e2e::defs::saga;
use e2e::scenarios::{broken_compensation_saga, gated_participant};
use e2e::{
    eventually, Behaviour, CoordinatorProcess, FakeParticipant, TestApp, TestDb, TestNamespace,
    BULK_TIMEOUT, SAGA_TIMEOUT,
};
use futures_util::stream::{self, StreamExt};
use reqwest::StatusCode;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_coordinator-under-test");

/// Every saga id in `state` named `name`, through the list's pages.
async fn ids_in(api: &Api, state: &str, name: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut query = vec![("state", state), ("name", name), ("limit", "500")];
        if let Some(cursor) = &before {
            query.push(("before", cursor));
        }
        let page = api.list_ok(&query).await;
        ids.extend(
            page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["id"].as_str().map(str::to_owned)),
        );
        match page["next"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => return ids,
        }
    }
}

/// Starts the coordinator binary; a fixed instance id, so that its restart takes its partitions
/// back at once; `rate` sagas per second for bulk actions, so that one is cut halfway.
async fn start(db: &TestDb, ns: &TestNamespace, rate: &'static str) -> CoordinatorProcess {
    let (url, namespace) = (db.url().to_string(), ns.name().to_string());
    tokio::task::spawn_blocking(move || {
        CoordinatorProcess::start(
            BIN,
            &url,
            &e2e::amqp_url(),
            &namespace,
            &[
                ("SAGA_INSTANCE_ID", "bulk-test"),
                ("SAGA_BULK_ACTION_RATE", rate),
            ],
        )
    })
    .await
    .expect("join")
    .expect("starting the coordinator process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_retry_of_1000_failed_sagas_survives_a_sigkill_and_retries_each_once() {
    const SAGAS: usize = 1_000;
    let db = tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("creating the test database");
    let ns = TestNamespace::new();
    let mut first = start(&db, &ns, "150").await;
    // Compensations fail until the undo is fixed, so every saga ends `failed`.
    let fixed = Arc::new(AtomicBool::new(false));
    let undo_fixed = Arc::clone(&fixed);
    let _shop = FakeParticipant::start(&ns, "shop", move |cmd| match (cmd.step(), cmd.kind()) {
        ("s2", "action") => Behaviour::failure("card declined"),
        (_, "action") => Behaviour::success(),
        _ if undo_fixed.load(Ordering::SeqCst) => Behaviour::success(),
        _ => Behaviour::failure("the undo is broken"),
    })
    .await;
    let definition = broken_compensation_saga();
    let submitted: Vec<String> = stream::iter(0..SAGAS)
        .map(|_| first.api().submit_id(&definition))
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(submitted.len(), SAGAS);
    eventually("every saga failed", BULK_TIMEOUT, async || {
        (ids_in(first.api(), "failed", "hard-to-undo").await.len() == SAGAS).then_some(())
    })
    .await;
    fixed.store(true, Ordering::SeqCst);

    let created = expect_json(
        first
            .api()
            .create_bulk_action(&json!({
                "action": "retry",
                "filter": {"state": ["failed"], "name": "hard-to-undo"},
            }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["total"], SAGAS, "{created}");
    let bulk = created["id"].as_str().expect("an id").to_owned();

    // Cut it halfway: SIGKILL once some sagas are retried and most are not.
    let halfway = eventually("the bulk action under way", BULK_TIMEOUT, async || {
        let doc = expect_json(first.api().bulk_action(&bulk).await, StatusCode::OK).await;
        (doc["applied"].as_i64().unwrap_or(0) >= 100).then_some(doc)
    })
    .await;
    first.kill();
    assert!(
        halfway["pending"].as_i64().unwrap_or(0) > 0,
        "still going when killed: {halfway}"
    );

    let second = start(&db, &ns, "500").await;
    let done = second.api().wait_for_bulk_action(&bulk, BULK_TIMEOUT).await;
    // Each saga retried exactly once: none was applied twice (the second time it would have
    // been `skipped`, no longer failed) and none was left out.
    assert_eq!(
        (
            &done["applied"],
            &done["skipped"],
            &done["unchanged"],
            &done["pending"]
        ),
        (&json!(SAGAS), &json!(0), &json!(0), &json!(0)),
        "{done}"
    );
    eventually("every saga compensated", BULK_TIMEOUT, async || {
        (ids_in(second.api(), "compensated", "hard-to-undo")
            .await
            .len()
            == SAGAS)
            .then_some(())
    })
    .await;
    let api = second.api();
    let retries: Vec<usize> = stream::iter(submitted.iter())
        .map(|id| async move {
            api.events(id)
                .await
                .iter()
                .filter(|e| e["type"] == "retry_requested")
                .count()
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        retries.iter().all(|&n| n == 1),
        "retries per saga: {:?}",
        retries.iter().filter(|&&n| n != 1).collect::<Vec<_>>()
    );

    // Running it again changes nothing new: no saga is failed any more.
    let again = expect_json(
        second
            .api()
            .create_bulk_action(&json!({"action": "retry", "filter": {"name": "hard-to-undo"}}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let again = second
        .api()
        .wait_for_bulk_action(again["id"].as_str().expect("an id"), BULK_TIMEOUT)
        .await;
    assert_eq!(
        (&again["total"], &again["skipped"], &again["applied"]),
        (&json!(SAGAS), &json!(SAGAS), &json!(0)),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_pause_resume_and_resolve_report_each_sagas_outcome() {
    let app = TestApp::start().await;
    let (_gate, release) = gated_participant(&app, "gate").await;
    let after = FakeParticipant::always_succeed(&app.ns, "after").await;
    let definition = saga(
        "held",
        vec![
            e2e::defs::step("s1", "gate"),
            e2e::defs::step("s2", "after"),
        ],
    );
    let held: Vec<String> = stream::iter(0..5)
        .map(|_| app.submit_id(&definition))
        .buffer_unordered(5)
        .collect()
        .await;
    for id in &held {
        app.wait_for_state(id, &["running"], SAGA_TIMEOUT).await;
    }
    // One is paused already: the bulk pause leaves it `unchanged`.
    expect_json(app.pause(&held[0]).await, StatusCode::OK).await;

    let pause = json!({"action": "pause", "filter": {"state": ["running"], "name": "held"}});
    let created = expect_json(app.create_bulk_action(&pause).await, StatusCode::CREATED).await;
    assert_eq!(created["total"], 5);
    assert_eq!(created["filter"], pause["filter"]);
    let paused = app
        .wait_for_bulk_action(created["id"].as_str().expect("id"), SAGA_TIMEOUT)
        .await;
    assert_eq!(
        (&paused["applied"], &paused["unchanged"]),
        (&json!(4), &json!(1))
    );
    for id in &held {
        assert!(app.saga(id).await["paused_at"].is_string());
    }

    // The gate opens; the paused sagas record their replies and send nothing more.
    release.send(true).expect("released");
    for id in &held {
        eventually("s1's reply recorded", SAGA_TIMEOUT, async || {
            let doc = app.saga(id).await;
            (e2e::api::state(e2e::api::step(&doc, "s1")) == "succeeded").then_some(())
        })
        .await;
    }
    assert!(after.commands().is_empty(), "nothing sent while paused");
    let resume = json!({"action": "resume", "filter": {"name": "held"}});
    let created = expect_json(app.create_bulk_action(&resume).await, StatusCode::CREATED).await;
    let resumed = app
        .wait_for_bulk_action(created["id"].as_str().expect("id"), SAGA_TIMEOUT)
        .await;
    assert_eq!(resumed["applied"], 5, "{resumed}");
    for id in &held {
        app.wait_for_state(id, &["committed"], SAGA_TIMEOUT).await;
    }

    // Resolve takes its note; a committed saga is skipped with the 409's reason.
    let resolve = json!({"action": "resolve", "filter": {"name": "held"}, "note": "checked"});
    let created = expect_json(app.create_bulk_action(&resolve).await, StatusCode::CREATED).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let resolved = app.wait_for_bulk_action(&id, SAGA_TIMEOUT).await;
    assert_eq!(resolved["skipped"], 5, "{resolved}");
    assert_eq!(resolved["note"], "checked");
    let skipped = expect_json(
        app.bulk_action_sagas(&id, &[("outcome", "skipped"), ("limit", "2")])
            .await,
        StatusCode::OK,
    )
    .await;
    let items = skipped["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert!(
        items[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{skipped}"
    );
    let next = skipped["next"].as_str().expect("a next page");
    let rest = expect_json(
        app.bulk_action_sagas(&id, &[("outcome", "skipped"), ("after", next)])
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(3));
    let pending = expect_json(
        app.bulk_action_sagas(&id, &[("outcome", "pending")]).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(pending["items"], json!([]));

    // A finished one cannot be cancelled; the list shows all three, newest first.
    expect_problem(app.cancel_bulk_action(&id).await, StatusCode::CONFLICT).await;
    let list = expect_json(app.bulk_actions(&[("limit", "2")]).await, StatusCode::OK).await;
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    assert!(list["next"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_bulk_action_leaves_the_rest_alone() {
    // One saga per second: the cancel comes long before the last of thirty.
    let app = TestApp::builder().bulk_action_rate(1).start().await;
    let (_gate, _release) = gated_participant(&app, "gate").await;
    let definition = saga("slow-abort", vec![e2e::defs::step("s1", "gate")]);
    let ids: Vec<String> = stream::iter(0..30)
        .map(|_| app.submit_id(&definition))
        .buffer_unordered(10)
        .collect()
        .await;
    let created = expect_json(
        app.create_bulk_action(&json!({"action": "abort", "filter": {"name": "slow-abort"}}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let cancelled = expect_json(app.cancel_bulk_action(&id).await, StatusCode::OK).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert!(cancelled["finished_at"].is_string());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = expect_json(app.bulk_action(&id).await, StatusCode::OK).await;
    let pending = after["pending"].as_i64().expect("pending");
    assert!(pending >= 25, "the rest is left alone: {after}");
    let mut running = 0;
    for saga in &ids {
        if app.saga(saga).await["state"] == "running" {
            running += 1;
        }
    }
    assert_eq!(i64::from(running), pending, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bulk_actions_are_refused_with_every_reason() {
    let app = TestApp::builder().api_token("secret").start().await;
    let refused = expect_problem(
        app.create_bulk_action(&json!({
            "action": "explode", "filter": {"state": ["nope"], "colour": "red"}, "extra": 1
        }))
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let fields: Vec<&str> = refused["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str())
        .collect();
    for field in ["action", "extra", "filter.colour", "filter.state[0]"] {
        assert!(fields.contains(&field), "{field} not in {refused}");
    }
    for body in [
        json!({"action": "abort", "filter": {}}),
        json!({"action": "abort"}),
        json!({"action": "resolve", "filter": {"name": "x"}}),
        json!({"action": "pause", "filter": {"name": "x"}, "note": "why"}),
    ] {
        expect_problem(
            app.create_bulk_action(&body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    expect_problem(app.bulk_action(&unknown).await, StatusCode::NOT_FOUND).await;
    expect_problem(
        app.cancel_bulk_action(&unknown).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        app.bulk_action_sagas(&unknown, &[]).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        app.bulk_actions(&[("limit", "0")]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    // Like every change, it needs the token.
    let anonymous = app
        .request_anonymous(reqwest::Method::POST, "/api/v1/bulk-actions")
        .json(&json!({"action": "abort", "filter": {"name": "x"}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}
