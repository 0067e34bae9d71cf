//! `GET /api/v1/sagas` as a search (issue 15): each filter, their combinations, the 422s, and
//! pages in both directions that neither skip nor repeat a saga while new ones are created.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use e2e::api::{error_fields, expect_json, expect_problem, saga_id, Api};
use e2e::defs::{saga, step, step_with};
use e2e::{Behaviour, FakeParticipant, TestApp, SAGA_TIMEOUT};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A two-phase saga that waits for its commit: stored, nothing dispatched for ten minutes.
fn prepared_saga(name: &str) -> Value {
    let mut def = saga(name, vec![step("reserve", "shop")]);
    def["mode"] = json!("prepare");
    def["check_back"] = json!({"participant": "orders"});
    def["prepare_timeout_ms"] = json!(600_000);
    def
}

fn with_key(mut def: Value, key: &str) -> Value {
    def["key"] = json!(key);
    def
}

/// The ids of a list answer's items, in its order.
fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(saga_id)
        .collect()
}

/// The ids of the first page (up to 500) the query matches.
async fn search(api: &Api, query: &[(&str, &str)]) -> Vec<String> {
    let mut query = query.to_vec();
    query.push(("limit", "500"));
    let page = api.list_ok(&query).await;
    assert!(page["next"].is_null() && page["prev"].is_null(), "{page}");
    ids(&page)
}

fn time(doc: &Value, field: &str) -> String {
    doc[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field}: {doc}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_filter_selects_exactly_its_sagas_and_they_combine() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let _bank = FakeParticipant::start(&app.ns, "bank", |_| {
        Behaviour::failure("Card DECLINED: 100% of_limit used")
    })
    .await;
    let stuck = FakeParticipant::start(&app.ns, "stuck", |_| Behaviour::NoReply).await;

    let shipped = app
        .submit_id(&with_key(
            saga("order", vec![step("reserve", "shop"), step("ship", "shop")]),
            "k-1",
        ))
        .await;
    app.wait_for_state(&shipped, &["committed"], SAGA_TIMEOUT)
        .await;
    let declined = app
        .submit_id(&with_key(
            saga(
                "order",
                vec![step("reserve", "shop"), step("charge", "bank")],
            ),
            "k-2",
        ))
        .await;
    app.wait_for_state(&declined, &["compensated"], SAGA_TIMEOUT)
        .await;
    // The same key under another name is another saga.
    let refund = app
        .submit_id(&with_key(
            saga("refund", vec![step("refund", "shop")]),
            "k-1",
        ))
        .await;
    app.wait_for_state(&refund, &["committed"], SAGA_TIMEOUT)
        .await;
    let aborted = app.submit_id(&prepared_saga("order")).await;
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
    let all = [&running, &aborted, &refund, &declined, &shipped].map(|s| s.clone());
    let api = &app.api;
    assert_eq!(search(api, &[]).await, all);

    // The error a step keeps is the participant's text, searched in any case; `%` and `_` are
    // plain characters.
    let document = app.saga(&declined).await;
    assert_eq!(
        document["steps"][1]["error"], "Card DECLINED: 100% of_limit used",
        "{document}"
    );

    let one = |id: &String| vec![id.clone()];
    assert_eq!(
        search(api, &[("key", "k-1")]).await,
        [refund.clone(), shipped.clone()]
    );
    assert_eq!(
        search(api, &[("key", "k-1"), ("name", "order")]).await,
        one(&shipped)
    );
    assert!(search(api, &[("key", "k-3")]).await.is_empty());
    assert_eq!(
        search(api, &[("participant", "bank")]).await,
        one(&declined)
    );
    assert_eq!(
        search(api, &[("participant", "stuck")]).await,
        one(&running)
    );
    assert_eq!(
        search(api, &[("participant", "shop")]).await,
        [
            aborted.clone(),
            refund.clone(),
            declined.clone(),
            shipped.clone()
        ]
    );
    assert!(search(api, &[("participant", "Shop")]).await.is_empty());
    assert_eq!(search(api, &[("step", "charge")]).await, one(&declined));
    assert_eq!(search(api, &[("step", "ship")]).await, one(&shipped));
    assert!(search(api, &[("step", "bank")]).await.is_empty());
    for text in ["declined", "card declined: 1", "100%", "of_limit", "D"] {
        assert_eq!(
            search(api, &[("error", text)]).await,
            one(&declined),
            "{text}"
        );
    }
    for text in ["100%%", "of-limit", "ofxlimit", "declined  "] {
        assert!(search(api, &[("error", text)]).await.is_empty(), "{text}");
    }

    // The creation window: at or after, strictly before, by `created_at`.
    let created = time(&document, "created_at");
    assert_eq!(
        search(api, &[("created_after", &created)]).await,
        [&running, &aborted, &refund, &declined].map(|s| s.clone())
    );
    assert_eq!(
        search(api, &[("created_before", &created)]).await,
        one(&shipped)
    );
    let aborted_created = time(&app.saga(&aborted).await, "created_at");
    assert_eq!(
        search(
            api,
            &[
                ("created_after", &created),
                ("created_before", &aborted_created)
            ]
        )
        .await,
        [refund.clone(), declined.clone()]
    );

    // The finish window: final sagas only, as the export counts them.
    let finished = time(&document, "updated_at");
    assert_eq!(
        search(api, &[("finished_after", &finished)]).await,
        [&aborted, &refund, &declined].map(|s| s.clone())
    );
    assert_eq!(
        search(api, &[("finished_before", &finished)]).await,
        one(&shipped)
    );
    assert_eq!(
        search(api, &[("finished_after", "2000-01-01T00:00:00Z")]).await,
        [&aborted, &refund, &declined, &shipped].map(|s| s.clone())
    );

    // Combined: every filter must hold.
    assert_eq!(
        search(
            api,
            &[
                ("state", "compensated"),
                ("state", "committed"),
                ("name", "order"),
                ("participant", "shop"),
                ("created_after", &created),
            ]
        )
        .await,
        one(&declined)
    );
    assert_eq!(
        search(
            api,
            &[
                ("participant", "bank"),
                ("step", "reserve"),
                ("error", "DECLINED"),
                ("key", "k-2"),
                ("finished_before", "2999-01-01T00:00:00Z"),
            ]
        )
        .await,
        one(&declined)
    );
    assert!(search(api, &[("participant", "bank"), ("step", "ship")])
        .await
        .is_empty());
    assert!(
        search(api, &[("error", "declined"), ("state", "committed")])
            .await
            .is_empty()
    );
    assert_eq!(
        search(api, &[("state", "running"), ("participant", "stuck")]).await,
        one(&running)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_value_is_a_422_naming_its_parameter() {
    let app = TestApp::start().await;
    let cursor = uuid::Uuid::now_v7().to_string();
    let long_key = "k".repeat(201);
    let long_error = "é".repeat(201);
    for (query, field) in [
        (vec![("key", "")], "key"),
        (vec![("key", long_key.as_str())], "key"),
        (vec![("key", "a\0b")], "key"),
        (vec![("created_after", "yesterday")], "created_after"),
        (
            vec![("created_before", "2026-01-01 00:00:00Z")],
            "created_before",
        ),
        (vec![("finished_after", "2026-01-01")], "finished_after"),
        (vec![("finished_before", "x")], "finished_before"),
        (vec![("participant", "")], "participant"),
        (vec![("participant", "a b")], "participant"),
        (vec![("step", "-x")], "step"),
        (vec![("error", "")], "error"),
        (vec![("error", long_error.as_str())], "error"),
        (vec![("error", "\0")], "error"),
        (vec![("after", "nope")], "after"),
        (vec![("before", "nope")], "before"),
        (
            vec![("before", cursor.as_str()), ("after", cursor.as_str())],
            "after",
        ),
        (vec![("limit", "0")], "limit"),
        (vec![("search", "x")], "search"),
    ] {
        let problem =
            expect_problem(app.list(&query).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), [field], "{query:?}: {problem}");
    }
    // Each broken rule is reported.
    let problem = expect_problem(
        app.list(&[("key", ""), ("error", ""), ("step", "?")]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&problem), ["key", "error", "step"]);
    // The longest texts are fine.
    let key = "k".repeat(200);
    let error = "é".repeat(200);
    let page = app
        .list_ok(&[("key", key.as_str()), ("error", error.as_str())])
        .await;
    assert_eq!(page, json!({"items": [], "next": null, "prev": null}));
}

/// Submits prepared sagas named `page` until `stop`, recording each id as its 201 arrives.
fn keep_creating(
    api: Api,
    stop: Arc<AtomicBool>,
    created: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let id = api.submit_id(&prepared_saga("page")).await;
            created.lock().expect("not poisoned").push(id);
        }
    })
}

/// Asserts that `ids` are newest first (strictly descending: no repeat).
fn assert_newest_first(ids: &[String], what: &str) {
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "{what} not strictly newest first: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_go_both_ways_without_a_gap_or_a_repeat_while_sagas_are_created() {
    let app = TestApp::start().await;
    let mut before_the_walks = Vec::new();
    for _ in 0..40 {
        before_the_walks.push(app.submit_id(&prepared_saga("page")).await);
    }
    // Sagas of another name are never on these pages.
    for _ in 0..5 {
        app.submit_id(&prepared_saga("other")).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(Mutex::new(Vec::new()));
    let creating = keep_creating(app.api.clone(), stop.clone(), created.clone());
    let of_name = [("name", "page"), ("limit", "7")];

    // Older: from the first page until `next` is null.
    let first = app.list_ok(&of_name).await;
    assert!(first["prev"].is_null(), "{first}");
    let mut older = ids(&first);
    let mut page = first;
    let mut last_page = Value::Null;
    while let Some(next) = page["next"].as_str().map(str::to_owned) {
        let mut query = of_name.to_vec();
        query.push(("before", &next));
        page = app.list_ok(&query).await;
        // A page read with `before` leads back with `prev`: its newest saga.
        let items = ids(&page);
        if let Some(newest) = items.first() {
            assert_eq!(page["prev"].as_str(), Some(newest.as_str()), "{page}");
        }
        older.extend(items);
        last_page = page.clone();
    }
    assert_newest_first(&older, "the walk to older sagas");
    let older_set: BTreeSet<&String> = older.iter().collect();
    for id in &before_the_walks {
        assert!(older_set.contains(id), "{id} was skipped going older");
    }

    // Newer: from the oldest page, by `prev`, until it is null. The pages a request with `after`
    // answers are newest first too; together they are every saga of the name once, in order.
    let mut newer = ids(&last_page);
    let mut page = last_page;
    while let Some(prev) = page["prev"].as_str().map(str::to_owned) {
        let mut query = of_name.to_vec();
        query.push(("after", &prev));
        page = app.list_ok(&query).await;
        let items = ids(&page);
        assert_newest_first(&items, "an `after` page");
        // Older sagas exist (at least the cursor's): `next` leads back down.
        match items.last() {
            Some(oldest) => assert_eq!(page["next"].as_str(), Some(oldest.as_str()), "{page}"),
            None => assert!(page["next"].is_string(), "{page}"),
        }
        if items.len() < 7 {
            assert!(page["prev"].is_null(), "{page}");
        }
        newer.splice(0..0, items);
    }
    assert_newest_first(&newer, "the walk to newer sagas");
    let newer_set: BTreeSet<&String> = newer.iter().collect();
    for id in before_the_walks.iter().chain(&older) {
        assert!(newer_set.contains(id), "{id} was skipped going newer");
    }

    // Once nothing is created any more, both walks see exactly the sagas created.
    stop.store(true, Ordering::SeqCst);
    creating.await.expect("the submissions ended");
    let mut every: Vec<String> = before_the_walks.clone();
    every.extend(created.lock().expect("not poisoned").iter().cloned());
    every.sort_by(|a, b| b.cmp(a));
    assert!(
        every.len() > before_the_walks.len(),
        "sagas were created meanwhile"
    );
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = of_name.to_vec();
        if let Some(c) = &cursor {
            query.push(("before", c));
        }
        let page = app.list_ok(&query).await;
        walked.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(walked, every);
    let mut walked = Vec::new();
    let mut cursor = "00000000-0000-0000-0000-000000000000".to_owned();
    loop {
        let page = app
            .list_ok(&[("name", "page"), ("limit", "7"), ("after", &cursor)])
            .await;
        walked.splice(0..0, ids(&page));
        match page["prev"].as_str() {
            Some(prev) => cursor = prev.to_owned(),
            None => break,
        }
    }
    assert_eq!(walked, every);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_page_leads_back_to_the_saga_at_its_cursor() {
    let app = TestApp::start().await;
    let mut sagas = Vec::new();
    for _ in 0..4 {
        sagas.push(app.submit_id(&prepared_saga("page")).await);
    }
    sagas.reverse();
    // Two full pages, then an empty one.
    let first = app.list_ok(&[("limit", "2")]).await;
    assert_eq!(ids(&first), sagas[..2]);
    let next = first["next"].as_str().expect("a full page has next");
    let second = app.list_ok(&[("limit", "2"), ("before", next)]).await;
    assert_eq!(ids(&second), sagas[2..]);
    assert_eq!(second["prev"].as_str(), Some(sagas[2].as_str()));
    let next = second["next"].as_str().expect("a full page has next");
    let empty = app.list_ok(&[("limit", "2"), ("before", next)]).await;
    assert_eq!(ids(&empty), Vec::<String>::new());
    assert!(empty["next"].is_null(), "{empty}");
    // Newer than the empty page: the oldest saga and the one above it.
    let prev = empty["prev"].as_str().expect("newer sagas exist");
    let back = app.list_ok(&[("limit", "2"), ("after", prev)]).await;
    assert_eq!(ids(&back), sagas[2..]);
    assert_eq!(back["prev"].as_str(), Some(sagas[2].as_str()));
    assert_eq!(back["next"].as_str(), Some(sagas[3].as_str()));
    // Past the newest: an empty page whose `next` leads back to the newest.
    let top = app
        .list_ok(&[("limit", "2"), ("after", sagas[0].as_str())])
        .await;
    assert_eq!(ids(&top), Vec::<String>::new());
    assert!(top["prev"].is_null(), "{top}");
    let next = top["next"].as_str().expect("older sagas exist");
    let down = app.list_ok(&[("limit", "2"), ("before", next)]).await;
    assert_eq!(ids(&down), sagas[..2]);
    // A full page read with `after` leads further up; past the newest, `prev` is null.
    let newest = app
        .list_ok(&[("limit", "2"), ("after", sagas[2].as_str())])
        .await;
    assert_eq!(ids(&newest), sagas[..2]);
    assert_eq!(newest["prev"].as_str(), Some(sagas[0].as_str()));
    let above = app
        .list_ok(&[("limit", "2"), ("after", sagas[0].as_str())])
        .await;
    assert!(above["prev"].is_null() && ids(&above).is_empty(), "{above}");
}
