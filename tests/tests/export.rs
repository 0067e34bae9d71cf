//! `GET /api/v1/sagas/export`: every saga a filter matches as JSON lines, each the saga's document
//! with its event log, in id order, streamed a page at a time.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use coordinator::store::export::EXPORT_PAGE;
use e2e::api::{error_fields, expect_json, expect_problem, saga_id};
use e2e::defs::{saga, step, step_with};
use e2e::{Behaviour, FakeParticipant, TestApp, SAGA_TIMEOUT};
use futures_util::{stream, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A two-phase saga that waits for its commit: stored, nothing dispatched for ten minutes.
fn prepared_saga(name: &str) -> Value {
    let mut def = saga(name, vec![step("reserve", "shop")]);
    def["mode"] = json!("prepare");
    def["check_back"] = json!({"participant": "orders"});
    def["prepare_timeout_ms"] = json!(600_000);
    def
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines.iter().map(saga_id).collect()
}

fn finished_at(doc: &Value) -> DateTime<Utc> {
    doc["updated_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("no updated_at: {doc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_is_what_get_and_events_show_and_its_filters_select_exactly() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let _bank = FakeParticipant::start(&app.ns, "bank", |_| Behaviour::failure("declined")).await;
    let stuck = FakeParticipant::start(&app.ns, "stuck", |_| Behaviour::NoReply).await;

    let mut committed = Vec::new();
    for n in 0..2 {
        let mut def = saga("order", vec![step("reserve", "shop"), step("ship", "shop")]);
        def["key"] = json!(format!("order-{n}"));
        def["payload"] = json!({"order": n, "note": "ünïcode \"quoted\"\nline"});
        let id = app.submit_id(&def).await;
        app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
        committed.push(id);
    }
    let compensated = app
        .submit_id(&saga(
            "order",
            vec![step("reserve", "shop"), step("charge", "bank")],
        ))
        .await;
    app.wait_for_state(&compensated, &["compensated"], SAGA_TIMEOUT)
        .await;
    let aborted = app.submit_id(&prepared_saga("refund")).await;
    expect_json(app.abort(&aborted).await, StatusCode::OK).await;
    app.wait_for_state(&aborted, &["aborted"], SAGA_TIMEOUT)
        .await;
    let running = app
        .submit_id(&saga(
            "order",
            vec![step_with("wait", "stuck", json!({"timeout_ms": 600_000}))],
        ))
        .await;
    stuck.wait_for_count(1, SAGA_TIMEOUT).await;
    app.wait_for_state(&running, &["running"], SAGA_TIMEOUT)
        .await;
    let all_ids = [
        committed[0].clone(),
        committed[1].clone(),
        compensated.clone(),
        aborted.clone(),
        running.clone(),
    ];

    // Every line is GET /sagas/{id} plus `events`, the items of GET /sagas/{id}/events, field by
    // field; the lines are in id order.
    let lines = app.export_lines(&[]).await;
    let mut in_order = all_ids.to_vec();
    in_order.sort();
    assert_eq!(ids(&lines), in_order, "every saga once, by id");
    let mut documents = Vec::new();
    for line in &lines {
        let id = saga_id(line);
        let mut document = line.clone();
        let events = document
            .as_object_mut()
            .and_then(|d| d.remove("events"))
            .unwrap_or_else(|| panic!("a line without events: {line}"));
        let shown = app.saga(&id).await;
        assert_eq!(document, shown, "the document of {id}");
        assert_eq!(events, json!(app.events(&id).await), "the events of {id}");
        assert!(events.as_array().is_some_and(|e| !e.is_empty()), "{events}");
        documents.push(shown);
    }
    let document = |id: &str| {
        documents
            .iter()
            .find(|d| saga_id(d) == id)
            .cloned()
            .unwrap_or_else(|| panic!("no document for {id}"))
    };

    // The list's filters.
    let exported = |query: Vec<(&'static str, String)>| {
        let app = &app;
        async move {
            let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ids(&app.export_lines(&query).await)
        }
    };
    let q = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    };
    assert_eq!(
        exported(q(&[("state", "committed")])).await,
        committed,
        "committed only"
    );
    let mut expected = vec![committed[0].clone(), committed[1].clone(), aborted.clone()];
    expected.sort();
    assert_eq!(
        exported(q(&[("state", "committed"), ("state", "aborted")])).await,
        expected
    );
    assert_eq!(
        exported(q(&[("name", "refund")])).await,
        vec![aborted.clone()]
    );
    assert_eq!(
        exported(q(&[("name", "order"), ("state", "running")])).await,
        vec![running.clone()]
    );
    assert!(exported(q(&[("name", "nothing-of-this-name")]))
        .await
        .is_empty());

    // The finish window: at or after `finished_after`, strictly before `finished_before`; a saga
    // not finished is in no window.
    let finals: Vec<Value> = [&committed[0], &committed[1], &compensated, &aborted]
        .into_iter()
        .map(|id| document(id))
        .collect();
    let mut times: Vec<DateTime<Utc>> = finals.iter().map(finished_at).collect();
    times.sort();
    let (from, to) = (times[1], times[3]);
    let window = |from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>| -> Vec<String> {
        let mut ids: Vec<String> = finals
            .iter()
            .filter(|d| from.is_none_or(|f| finished_at(d) >= f))
            .filter(|d| to.is_none_or(|t| finished_at(d) < t))
            .map(saga_id)
            .collect();
        ids.sort();
        ids
    };
    let text = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    assert_eq!(
        exported(vec![
            ("finished_after", text(from)),
            ("finished_before", text(to))
        ])
        .await,
        window(Some(from), Some(to))
    );
    assert_eq!(window(Some(from), Some(to)).len(), 2, "{times:?}");
    assert_eq!(
        exported(vec![("finished_after", text(from))]).await,
        window(Some(from), None)
    );
    assert_eq!(
        exported(vec![("finished_before", text(from))]).await,
        window(None, Some(from))
    );
    // The same instant written with an offset.
    let offset = from
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).expect("an offset"))
        .to_rfc3339();
    assert_eq!(
        exported(vec![("finished_after", offset)]).await,
        window(Some(from), None)
    );
    let everything = window(None, None);
    assert_eq!(
        exported(q(&[("finished_after", "0001-01-01T00:00:00Z")])).await,
        everything,
        "every final saga and not the running one"
    );
    assert_eq!(
        exported(q(&[("finished_before", "9999-12-31T23:59:59Z")])).await,
        everything
    );
    assert!(exported(q(&[
        ("finished_after", "9999-01-01T00:00:00Z"),
        ("finished_before", "0001-01-01T00:00:00Z")
    ]))
    .await
    .is_empty());

    // Bad input is a 422 naming every broken parameter, like the list's.
    for (query, fields) in [
        (
            vec![("finished_after", "yesterday")],
            vec!["finished_after"],
        ),
        (
            vec![("finished_before", "2026-01-01 00:00:00Z")],
            vec!["finished_before"],
        ),
        (
            vec![("state", "done"), ("name", "no spaces"), ("limit", "5")],
            vec!["state", "name", "limit"],
        ),
        (vec![("after", "not-an-id")], vec!["after"]),
    ] {
        let problem =
            expect_problem(app.export(&query).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), fields, "{query:?}: {problem}");
    }

    // `/sagas/export` is not taken for a saga id, and only GET is routed there.
    let post = app
        .api
        .request(Method::POST, "/api/v1/sagas/export")
        .send()
        .await
        .expect("request");
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_sagas_than_a_page_come_out_each_once_in_id_order() {
    let app = TestApp::start().await;
    let count = 2 * usize::try_from(EXPORT_PAGE).expect("a page size") + 100;
    let submitted: Vec<String> = stream::iter(0..count)
        .map(|_| async { app.submit_id(&prepared_saga("bulk-order")).await })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut expected = submitted.clone();
    expected.sort();

    let all = ids(&app.export_lines(&[("state", "prepared")]).await);
    assert_eq!(all.len(), count);
    assert_eq!(
        all.iter().collect::<BTreeSet<_>>().len(),
        count,
        "each saga once"
    );
    assert_eq!(all, expected, "in id order");

    // Resuming after any saga gives exactly the rest, across page boundaries.
    let cut = usize::try_from(EXPORT_PAGE).expect("a page size") + 17;
    let rest = ids(&app
        .export_lines(&[("name", "bulk-order"), ("after", &expected[cut - 1])])
        .await);
    assert_eq!(rest, expected[cut..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_api_wants_the_token_for_the_export() {
    let app = TestApp::builder().api_token("export-secret").start().await;
    let anonymous = app
        .api
        .request_anonymous(Method::GET, "/api/v1/sagas/export")
        .send()
        .await
        .expect("request");
    expect_problem(anonymous, StatusCode::UNAUTHORIZED).await;
    let saga = app.submit_id(&prepared_saga("guarded")).await;
    assert_eq!(ids(&app.export_lines(&[]).await), [saga]);
}
