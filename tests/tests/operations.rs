//! Operating sagas over HTTP: idempotency keys, listing, abort/retry/resolve, auth, service endpoints.

use std::collections::HashSet;
use std::time::Duration;

use e2e::api::{expect_json, expect_problem, saga_id, state, step};
use e2e::defs::{saga, step_with};
use e2e::scenarios::{flaky_participant, gated_participant, patient_saga};
use e2e::{eventually, Behaviour, FakeParticipant, Reply, TestApp, SAGA_TIMEOUT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A definition whose single step waits on `participant` for ten minutes (the saga stays `running`).
fn slow_saga(name: &str, participant: &str) -> Value {
    saga(
        name,
        vec![step_with(
            "wait",
            participant,
            json!({"timeout_ms": 600000}),
        )],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_same_saga_or_conflicts() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let mut definition = saga("keyed", vec![e2e::defs::step("a", "shop")]);
    definition["key"] = json!("order-1");
    definition["payload"] = json!({"n": 1});

    let first = app.submit_ok(&definition).await;
    let id = saga_id(&first);
    let again = expect_json(app.submit(&definition).await, StatusCode::OK).await;
    assert_eq!(
        saga_id(&again),
        id,
        "same key, same definition: the same saga"
    );

    let mut different = definition.clone();
    different["payload"] = json!({"n": 2});
    expect_problem(app.submit(&different).await, StatusCode::CONFLICT).await;
    let mut different_steps = definition.clone();
    different_steps["steps"] = json!([e2e::defs::step("b", "shop")]);
    expect_problem(app.submit(&different_steps).await, StatusCode::CONFLICT).await;

    // The key is scoped to the saga name.
    let mut other_name = definition.clone();
    other_name["name"] = json!("keyed-too");
    let other = app.submit_ok(&other_name).await;
    assert_ne!(saga_id(&other), id);

    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    // Still the same saga after it finished.
    let late = expect_json(app.submit(&definition).await, StatusCode::OK).await;
    assert_eq!(saga_id(&late), id);

    let keyed = app.list_ok(&[("name", "keyed")]).await;
    assert_eq!(keyed["items"].as_array().map(Vec::len), Some(1), "{keyed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_state_and_name_and_pages_with_the_cursor() {
    let app = TestApp::start().await;
    let _fast = FakeParticipant::always_succeed(&app.ns, "fast").await;
    let stuck = FakeParticipant::start(&app.ns, "stuck", |_| Behaviour::NoReply).await;

    let mut submitted = Vec::new();
    let mut committed = Vec::new();
    let mut running = Vec::new();
    for _ in 0..3 {
        let id = app
            .submit_id(&saga("alpha", vec![e2e::defs::step("a", "fast")]))
            .await;
        app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
        submitted.push(id.clone());
        committed.push(id);
    }
    for name in ["beta", "beta", "alpha"] {
        let id = app.submit_id(&slow_saga(name, "stuck")).await;
        submitted.push(id.clone());
        running.push(id);
    }
    stuck.wait_for_count(3, SAGA_TIMEOUT).await;
    for id in &running {
        app.wait_for_state(id, &["running"], SAGA_TIMEOUT).await;
    }

    let ids = |doc: &Value| -> Vec<String> {
        doc["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items: {doc}"))
            .iter()
            .map(saga_id)
            .collect()
    };
    let as_set = |v: &[String]| v.iter().cloned().collect::<HashSet<_>>();

    let all = app.list_ok(&[]).await;
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();
    assert_eq!(ids(&all), newest_first, "newest first");
    assert!(all["next"].is_null(), "{all}");
    for item in all["items"].as_array().expect("items") {
        assert!(
            item.get("steps").is_none(),
            "list items have no steps: {item}"
        );
        for field in [
            "id",
            "name",
            "key",
            "state",
            "payload",
            "created_at",
            "updated_at",
            "deadline",
        ] {
            assert!(
                item.get(field).is_some(),
                "list item without {field}: {item}"
            );
        }
    }

    let by_state = app.list_ok(&[("state", "committed")]).await;
    assert_eq!(as_set(&ids(&by_state)), as_set(&committed));
    let by_state = app.list_ok(&[("state", "running")]).await;
    assert_eq!(as_set(&ids(&by_state)), as_set(&running));
    let both = app
        .list_ok(&[("state", "running"), ("state", "committed")])
        .await;
    assert_eq!(as_set(&ids(&both)), as_set(&submitted), "state may repeat");
    let none = app.list_ok(&[("state", "compensated")]).await;
    assert!(ids(&none).is_empty());

    let alpha = app.list_ok(&[("name", "alpha")]).await;
    let mut expected_alpha = committed.clone();
    expected_alpha.push(running[2].clone());
    assert_eq!(as_set(&ids(&alpha)), as_set(&expected_alpha));
    let alpha_running = app
        .list_ok(&[("name", "alpha"), ("state", "running")])
        .await;
    assert_eq!(ids(&alpha_running), [running[2].clone()]);
    let gamma = app.list_ok(&[("name", "gamma")]).await;
    assert!(ids(&gamma).is_empty());
    assert!(gamma["next"].is_null());

    // Pages of two, following `next` as `before`.
    let mut paged = Vec::new();
    let mut before: Option<String> = None;
    for page_no in 0.. {
        assert!(page_no < 10, "the cursor never ended: {paged:?}");
        let mut query = vec![("limit", "2".to_string())];
        if let Some(cursor) = &before {
            query.push(("before", cursor.clone()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = app.list_ok(&query).await;
        let page_ids = ids(&page);
        assert!(page_ids.len() <= 2, "limit is honoured: {page}");
        paged.extend(page_ids);
        match &page["next"] {
            Value::Null => break,
            Value::String(cursor) => before = Some(cursor.clone()),
            other => before = Some(other.to_string()),
        }
    }
    assert_eq!(
        paged, newest_first,
        "paging visits every saga once, newest first"
    );

    let max = app.list(&[("limit", "500")]).await;
    assert_eq!(max.status(), StatusCode::OK);

    // A name no saga can have is refused as the document says (a NUL once reached Postgres: 500).
    for name in ["al\u{0}pha", "al pha", "", &"a".repeat(65)] {
        let refused = app.list(&[("name", name)]).await;
        assert_eq!(
            refused.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name:?}"
        );
        let problem: Value = refused.json().await.expect("a problem document");
        assert_eq!(problem["errors"][0]["field"], "name", "{problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_of_a_running_saga_compensates_what_was_dispatched() {
    let app = TestApp::start().await;
    // s2's action answers (success) only once the abort has been sent.
    let (aborted_tx, aborted_rx) = tokio::sync::watch::channel(false);
    let shop = FakeParticipant::start(&app.ns, "shop", move |cmd| match (cmd.step(), cmd.kind()) {
        ("s2", "action") => {
            let mut aborted = aborted_rx.clone();
            Behaviour::after(
                async move {
                    let _ = tokio::time::timeout(Duration::from_secs(30), aborted.wait_for(|a| *a))
                        .await;
                },
                Behaviour::Reply(Reply::success()),
            )
        }
        (s, "action") => Behaviour::success_with(json!({"made": s})),
        _ => Behaviour::success(),
    })
    .await;
    let id = app
        .submit_id(&saga(
            "abortable",
            vec![
                e2e::defs::step("s1", "shop"),
                e2e::defs::step("s2", "shop"),
                e2e::defs::step("s3", "shop"),
            ],
        ))
        .await;
    shop.wait_for("s2's action", SAGA_TIMEOUT, |c| {
        c.iter().any(|c| c.step() == "s2")
    })
    .await;
    let resp = app.abort(&id).await;
    assert!(
        resp.status().is_success(),
        "abort of a running saga: {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    let _ = aborted_tx.send(true);
    // Once it is no longer running, a second abort conflicts.
    app.wait_for_state(&id, &["compensating", "compensated"], SAGA_TIMEOUT)
        .await;
    expect_problem(app.abort(&id).await, StatusCode::CONFLICT).await;

    let done = app
        .wait_for_state(&id, &["compensated"], SAGA_TIMEOUT)
        .await;
    assert_eq!(state(step(&done, "s1")), "compensated");
    assert_eq!(state(step(&done, "s2")), "compensated", "s2 was dispatched");
    assert_eq!(
        state(step(&done, "s3")),
        "pending",
        "s3 was never dispatched"
    );
    let commands = shop.commands();
    assert!(
        !commands.iter().any(|c| c.step() == "s3"),
        "nothing dispatched after the abort: {commands:#?}"
    );
    let position = |s: &str| {
        commands
            .iter()
            .position(|c| c.step() == s && c.is_compensation())
            .unwrap_or_else(|| panic!("no compensation of {s}: {commands:#?}"))
    };
    assert!(position("s2") < position("s1"), "reverse order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_now_skips_a_ten_minute_backoff() {
    let app = TestApp::start().await;
    // The first attempt asks for a retry; the policy would wait ten minutes before the second.
    let flaky = flaky_participant(&app).await;
    let id = app.submit_id(&patient_saga("patient")).await;
    let waiting = eventually("the step waits out its backoff", SAGA_TIMEOUT, async || {
        let doc = app.saga(&id).await;
        step(&doc, "charge")["retry_at"].is_string().then_some(doc)
    })
    .await;
    let retry_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(step(&waiting, "charge")["retry_at"].clone())
            .expect("retry_at is a time");
    let updated_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(waiting["updated_at"].clone()).expect("updated_at is a time");
    assert!(
        retry_at - updated_at >= chrono::Duration::minutes(5),
        "a long backoff (jitter halves it at most): {waiting}"
    );

    let after = expect_json(app.retry_now(&id).await, StatusCode::OK).await;
    assert_eq!(step(&after, "charge")["attempts"], 2, "{after}");
    assert_eq!(step(&after, "charge")["retry_at"], Value::Null, "{after}");
    let done = app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    assert_eq!(step(&done, "charge")["attempts"], 2);
    assert_eq!(flaky.commands().len(), 2, "one retry, sent once");
    expect_problem(app.retry_now(&id).await, StatusCode::CONFLICT).await;
    let types: Vec<String> = app
        .events(&id)
        .await
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect();
    let asked = types
        .iter()
        .position(|t| t == "retry_now_requested")
        .unwrap_or_else(|| panic!("no retry_now_requested in {types:?}"));
    assert_eq!(
        types.get(asked + 1).map(String::as_str),
        Some("dispatched"),
        "{types:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_a_name_holds_its_new_and_running_sagas_until_the_name_resumes() {
    let app = TestApp::start().await;
    let (gate, release) = gated_participant(&app, "gate").await;
    let after = FakeParticipant::always_succeed(&app.ns, "after").await;
    let two_steps = || {
        saga(
            "checkout",
            vec![
                e2e::defs::step("s1", "gate"),
                e2e::defs::step("s2", "after"),
            ],
        )
    };
    let running = app.submit_id(&two_steps()).await;
    gate.wait_for_count(1, SAGA_TIMEOUT).await;

    let held = expect_json(app.pause_name("checkout", true).await, StatusCode::OK).await;
    assert_eq!(held["name"], "checkout");
    assert!(held["paused_at"].is_string(), "{held}");
    let listed = expect_json(app.paused_names().await, StatusCode::OK).await;
    assert_eq!(listed["items"][0]["name"], "checkout", "{listed}");
    eventually(
        "the running saga held by its name",
        SAGA_TIMEOUT,
        async || (app.saga(&running).await["paused_by"] == "name").then_some(()),
    )
    .await;

    // A new saga of the name starts held; another name runs.
    let new = app.submit_ok(&two_steps()).await;
    assert_eq!(new["paused_by"], "name", "{new}");
    let new = saga_id(&new);
    let other = app
        .submit_id(&saga("refund", vec![e2e::defs::step("r1", "after")]))
        .await;
    app.wait_for_state(&other, &["committed"], SAGA_TIMEOUT)
        .await;
    // One saga is the operator's now: resuming the name leaves it paused. Resuming one the name
    // holds is refused while the name is paused.
    let mine = expect_json(app.pause(&new).await, StatusCode::OK).await;
    assert_eq!(mine["paused_by"], "operator", "{mine}");
    expect_problem(app.resume(&running).await, StatusCode::CONFLICT).await;

    // The reply to the command already out is recorded; nothing more is sent.
    release.send_replace(true);
    eventually("s1's reply recorded while held", SAGA_TIMEOUT, async || {
        (state(step(&app.saga(&running).await, "s1")) == "succeeded").then_some(())
    })
    .await;
    assert_eq!(
        after.commands().len(),
        1,
        "only the other name's step went out"
    );

    let released = expect_json(app.pause_name("checkout", false).await, StatusCode::OK).await;
    assert_eq!(released["paused_at"], Value::Null, "{released}");
    app.wait_for_state(&running, &["committed"], SAGA_TIMEOUT)
        .await;
    let still = app.saga(&new).await;
    assert_eq!(still["paused_by"], "operator", "{still}");
    assert_eq!(state(step(&still, "s1")), "pending", "{still}");
    expect_json(app.resume(&new).await, StatusCode::OK).await;
    app.wait_for_state(&new, &["committed"], SAGA_TIMEOUT).await;
    expect_problem(
        app.pause_name("not a name", true).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_in_the_wrong_state_conflict() {
    let app = TestApp::start().await;
    let _fast = FakeParticipant::always_succeed(&app.ns, "fast").await;
    let stuck = FakeParticipant::start(&app.ns, "stuck", |_| Behaviour::NoReply).await;

    let committed = app
        .submit_id(&saga("done", vec![e2e::defs::step("a", "fast")]))
        .await;
    app.wait_for_state(&committed, &["committed"], SAGA_TIMEOUT)
        .await;
    expect_problem(app.abort(&committed).await, StatusCode::CONFLICT).await;
    expect_problem(app.retry(&committed).await, StatusCode::CONFLICT).await;
    expect_problem(app.retry_now(&committed).await, StatusCode::CONFLICT).await;
    expect_problem(
        app.resolve(&committed, "nothing to do").await,
        StatusCode::CONFLICT,
    )
    .await;

    let running = app.submit_id(&slow_saga("busy", "stuck")).await;
    stuck.wait_for_count(1, SAGA_TIMEOUT).await;
    app.wait_for_state(&running, &["running"], SAGA_TIMEOUT)
        .await;
    expect_problem(app.retry(&running).await, StatusCode::CONFLICT).await;
    expect_problem(app.retry_now(&running).await, StatusCode::CONFLICT).await;
    expect_problem(app.resolve(&running, "not yet").await, StatusCode::CONFLICT).await;
    assert_eq!(
        state(&app.saga(&running).await),
        "running",
        "409s change nothing"
    );
    assert!(app.abort(&running).await.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sagas_are_404() {
    let app = TestApp::start().await;
    let unknown = uuid::Uuid::new_v4().to_string();
    expect_problem(app.get(&unknown).await, StatusCode::NOT_FOUND).await;
    expect_problem(app.events_response(&unknown).await, StatusCode::NOT_FOUND).await;
    expect_problem(app.abort(&unknown).await, StatusCode::NOT_FOUND).await;
    expect_problem(app.retry(&unknown).await, StatusCode::NOT_FOUND).await;
    expect_problem(app.resolve(&unknown, "?").await, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_route_lacks_is_405_with_allow_and_an_unknown_path_404() {
    let app = TestApp::start().await;
    let id = uuid::Uuid::new_v4().to_string();
    let cases = [
        (Method::DELETE, "/api/v1/sagas".to_owned(), "POST, GET"),
        (Method::PUT, format!("/api/v1/sagas/{id}"), "GET"),
        (Method::GET, format!("/api/v1/sagas/{id}/abort"), "POST"),
        (Method::POST, "/healthz".to_owned(), "GET"),
        (Method::POST, "/api/v1/openapi.json".to_owned(), "GET"),
        (Method::GET, "/dashboard/login".to_owned(), "POST"),
    ];
    for (method, path, allow) in cases {
        let response = app
            .request(method.clone(), &path)
            .send()
            .await
            .expect("request");
        let allow_header = response
            .headers()
            .get(reqwest::header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(allow_header.as_deref(), Some(allow), "{method} {path}");
        let body = expect_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
        assert_eq!(body["status"], 405, "{body}");
    }
    for path in ["/api/v1/nothing", "/api/v1/sagas/x/y/z", "/nothing"] {
        let response = app
            .request(Method::GET, path)
            .send()
            .await
            .expect("request");
        expect_problem(response, StatusCode::NOT_FOUND).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_guards_the_api_but_not_health() {
    let app = TestApp::builder().api_token("s3cret-token").start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let definition = saga("guarded", vec![e2e::defs::step("a", "shop")]);

    let anonymous = app
        .request_anonymous(Method::GET, "/api/v1/sagas")
        .send()
        .await
        .expect("request");
    expect_problem(anonymous, StatusCode::UNAUTHORIZED).await;
    let wrong = app
        .request_anonymous(Method::GET, "/api/v1/sagas")
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("request");
    expect_problem(wrong, StatusCode::UNAUTHORIZED).await;
    let anonymous_submit = app
        .request_anonymous(Method::POST, "/api/v1/sagas")
        .json(&definition)
        .send()
        .await
        .expect("request");
    expect_problem(anonymous_submit, StatusCode::UNAUTHORIZED).await;
    let anonymous_get = app
        .request_anonymous(
            Method::GET,
            &format!("/api/v1/sagas/{}", uuid::Uuid::new_v4()),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous_get.status(), StatusCode::UNAUTHORIZED);

    let list = app.list_ok(&[]).await;
    assert_eq!(list["items"], json!([]), "nothing was stored by the 401s");
    let id = app.submit_id(&definition).await;
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;

    for path in ["/healthz", "/readyz"] {
        let resp = app
            .request_anonymous(Method::GET, path)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), StatusCode::OK, "{path} needs no token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer() {
    let app = TestApp::start().await;
    let get = |path: &'static str| {
        let api = app.api.clone();
        async move {
            api.request(Method::GET, path)
                .send()
                .await
                .expect("request")
        }
    };
    assert_eq!(get("/healthz").await.status(), StatusCode::OK);
    eventually("/readyz to answer 200", SAGA_TIMEOUT, async || {
        (get("/readyz").await.status() == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_openapi_answer() {
    let app = TestApp::start().await;
    let get = |path: &'static str| {
        let api = app.api.clone();
        async move {
            api.request(Method::GET, path)
                .send()
                .await
                .expect("request")
        }
    };
    let metrics = get("/metrics").await;
    assert_eq!(metrics.status(), StatusCode::OK);
    let content_type = metrics
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // OpenMetrics text, which Prometheus asks for first.
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = metrics.text().await.unwrap_or_default();
    assert!(text.contains("saga_amqp_connected"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    let openapi = expect_json(get("/api/v1/openapi.json").await, StatusCode::OK).await;
    assert!(
        openapi["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with('3')),
        "OpenAPI 3: {}",
        openapi["openapi"]
    );
    assert!(openapi["paths"].to_string().contains("sagas"));
    let page = get("/api/docs").await;
    assert_eq!(page.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_answers() {
    let app = TestApp::start().await;
    let dashboard = app
        .api
        .request(Method::GET, "/")
        .send()
        .await
        .expect("request");
    assert_eq!(dashboard.status(), StatusCode::OK);
    let csp = dashboard
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let page = dashboard.text().await.expect("page");
    assert!(page.contains("<html"), "{page}");
}
