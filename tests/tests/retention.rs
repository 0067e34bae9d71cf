//! History retention: with `SAGA_RETAIN_*` set, finished sagas past their state's retention are
//! deleted with their steps and event log, and nothing else is: not younger ones, not a final state
//! kept forever, never a failed saga.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use e2e::defs::{saga, step};
use e2e::scenarios::{broken_compensation_saga, broken_compensation_shop};
use e2e::{eventually, Behaviour, FakeParticipant, TestApp, SAGA_TIMEOUT};
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

/// Moves finished saga `id` `days` into the past, as if it had run then: its id (a UUIDv7 starts
/// with its creation time; the rest, and so its partition, stays), times and event times. Answers
/// the new id.
async fn age(app: &TestApp, id: &str, days: i64) -> String {
    let old: Uuid = id.parse().expect("a saga id");
    let then = chrono::Utc::now() - chrono::Duration::days(days);
    let mut bytes = *old.as_bytes();
    let ms = u64::try_from(then.timestamp_millis()).expect("after 1970");
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    let new = Uuid::from_bytes(bytes);
    let url = app.db.url().to_string();
    tokio::task::spawn_blocking(move || {
        let mut conn = PgConnection::establish(&url).expect("connect");
        conn.batch_execute(&format!(
            "BEGIN;
             UPDATE sagas SET id = '{new}', created_at = created_at - interval '{days} days',
                 updated_at = updated_at - interval '{days} days' WHERE id = '{old}';
             UPDATE saga_steps SET saga_id = '{new}' WHERE saga_id = '{old}';
             UPDATE saga_events SET saga_id = '{new}', at = at - interval '{days} days'
                 WHERE saga_id = '{old}';
             COMMIT;"
        ))
        .expect("aged");
    })
    .await
    .expect("join");
    new.to_string()
}

/// Rows of saga `id` left in its steps and events.
async fn rows_left(app: &TestApp, id: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let (url, id) = (app.db.url().to_string(), id.to_string());
    tokio::task::spawn_blocking(move || {
        let mut conn = PgConnection::establish(&url).expect("connect");
        diesel::sql_query(format!(
            "SELECT (SELECT count(*) FROM saga_steps WHERE saga_id = '{id}')
                  + (SELECT count(*) FROM saga_events WHERE saga_id = '{id}') AS n"
        ))
        .get_result::<N>(&mut conn)
        .expect("a count")
        .n
    })
    .await
    .expect("join")
}

async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app
        .api
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sagas_past_their_retention_go_and_nothing_else_does() {
    let app = TestApp::builder()
        .retain("30d", "forever", "30d")
        .start()
        .await;
    let _store = FakeParticipant::start(&app.ns, "store", |cmd| match (cmd.step(), cmd.kind()) {
        ("pay", "action") => Behaviour::failure("card declined"),
        _ => Behaviour::success(),
    })
    .await;
    let _shop = broken_compensation_shop(&app, Arc::new(AtomicBool::new(false))).await;
    let order = saga("order", vec![step("reserve", "store")]);
    let declined = saga(
        "order",
        vec![step("reserve", "store"), step("pay", "store")],
    );
    let mut prepared = order.clone();
    prepared["mode"] = json!("prepare");
    prepared["check_back"] = json!({"participant": "orders"});
    prepared["prepare_timeout_ms"] = json!(600_000);

    let mut committed = Vec::new();
    for _ in 0..3 {
        committed.push(app.submit_id(&order).await);
    }
    let recent = app.submit_id(&order).await;
    let compensated = app.submit_id(&declined).await;
    let failed = app.submit_id(&broken_compensation_saga()).await;
    let aborted = app.submit_id(&prepared).await;
    assert_eq!(app.abort(&aborted).await.status(), StatusCode::OK);
    for id in committed.iter().chain([&recent]) {
        app.wait_for_state(id, &["committed"], SAGA_TIMEOUT).await;
    }
    app.wait_for_state(&compensated, &["compensated"], SAGA_TIMEOUT)
        .await;
    app.wait_for_state(&failed, &["failed"], SAGA_TIMEOUT).await;
    app.wait_for_state(&aborted, &["aborted"], SAGA_TIMEOUT)
        .await;

    let mut doomed = Vec::new();
    for id in committed.iter().chain([&aborted]) {
        doomed.push(age(&app, id, 40).await);
    }
    let kept = [
        age(&app, &recent, 3).await,
        age(&app, &compensated, 40).await,
        age(&app, &failed, 400).await,
    ];
    for id in &doomed {
        eventually("an old saga deleted", SAGA_TIMEOUT, async || {
            (app.get(id).await.status() == StatusCode::NOT_FOUND).then_some(())
        })
        .await;
        assert_eq!(
            rows_left(&app, id).await,
            0,
            "its steps and events went too"
        );
    }
    for id in &kept {
        let resp = app.get(id).await;
        assert_eq!(resp.status(), StatusCode::OK, "{id} is kept");
        assert!(rows_left(&app, id).await > 0);
    }
    assert_eq!(
        metric(&app, "saga_purged_total{state=\"committed\"}").await,
        3.0
    );
    assert_eq!(
        metric(&app, "saga_purged_total{state=\"aborted\"}").await,
        1.0
    );
    assert_eq!(
        metric(&app, "saga_purged_total{state=\"compensated\"}").await,
        0.0
    );
}
