//! Observability: the Prometheus metrics move as sagas run, and the OpenAPI document matches the
//! real routes and the real answers.

use std::collections::{BTreeMap, BTreeSet};

use e2e::api::{expect_json, saga_id};
use e2e::defs::{fast_retry, saga, step, step_with};
use e2e::{eventually, Behaviour, FakeParticipant, TestApp, SAGA_TIMEOUT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// One scrape: every sample as `name{labels}` → value.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// The sample, 0 when the series does not exist (a counter that never moved).
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

async fn scrape(app: &TestApp) -> Scrape {
    let resp = app
        .api
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.expect("metrics body");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect();
    Scrape { text, samples }
}

/// Scrapes until `check` holds (metrics that Postgres or the broker feed settle a little later).
async fn scrape_until(app: &TestApp, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    eventually(what, SAGA_TIMEOUT, async || {
        let s = scrape(app).await;
        check(&s).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_sagas_commit() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let _stuck = FakeParticipant::start(&app.ns, "stuck", |_| Behaviour::NoReply).await;

    let before = scrape(&app).await;
    assert_eq!(before.get(r#"saga_sagas_started_total{saga="order"}"#), 0.0);

    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = app
            .submit_id(&saga(
                "order",
                vec![step("pay", "shop"), step("ship", "shop")],
            ))
            .await;
        app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
        ids.push(id);
    }
    let waiting = app
        .submit_id(&saga(
            "slow",
            vec![step_with("wait", "stuck", json!({"timeout_ms": 600000}))],
        ))
        .await;
    ids.push(waiting);

    let s = scrape_until(&app, "the outbox to drain and the broker to be up", |s| {
        s.get("saga_outbox_backlog") == 0.0
            && s.get("saga_outbox_published_total") >= 5.0
            && s.get("saga_amqp_connected") == 1.0
            && s.get("saga_actors") == 1.0
    })
    .await;
    let shop = r#"saga="order",participant="shop""#;
    assert_eq!(s.get(r#"saga_sagas_started_total{saga="order"}"#), 2.0);
    assert_eq!(s.get(r#"saga_sagas_started_total{saga="slow"}"#), 1.0);
    assert_eq!(
        s.get(r#"saga_sagas_finished_total{saga="order",state="committed"}"#),
        2.0
    );
    assert_eq!(
        s.get(r#"saga_duration_seconds_count{saga="order",state="committed"}"#),
        2.0
    );
    assert_eq!(
        s.get(&format!(
            r#"saga_step_attempts_total{{{shop},kind="action"}}"#
        )),
        4.0
    );
    assert_eq!(
        s.get(&format!(
            r#"saga_step_replies_total{{{shop},kind="action",outcome="success"}}"#
        )),
        4.0
    );
    assert_eq!(
        s.get(&format!(
            r#"saga_step_duration_seconds_count{{{shop},kind="action",outcome="success"}}"#
        )),
        4.0
    );
    assert_eq!(
        s.get(r#"saga_sagas_in_flight{saga="slow",state="running"}"#),
        1.0
    );
    assert_eq!(
        s.get(r#"saga_sagas_in_flight{saga="order",state="running"}"#),
        0.0,
        "finished sagas are not in flight"
    );
    assert_eq!(s.get("saga_actors"), 1.0, "only the slow saga has an actor");
    assert_eq!(
        s.get("saga_outbox_publish_latency_seconds_count"),
        s.get("saga_outbox_published_total"),
        "every confirm has a latency"
    );
    // Each order committed its start and two replies, the slow saga its start.
    let writes = s.get("saga_store_write_seconds_count");
    assert!(writes >= 7.0, "{writes} transitions written");
    assert_eq!(
        s.get("saga_store_batch_size_sum"),
        writes,
        "every transition of every batch has a write latency"
    );
    assert!(
        (1.0..=writes).contains(&s.get("saga_store_batch_size_count")),
        "batches"
    );
    for id in &ids {
        assert!(!s.text.contains(id.as_str()), "saga id {id} is a label");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_failures_compensations_timeouts_and_dead_letters() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::start(&app.ns, "shop", |cmd| match (cmd.step(), cmd.kind()) {
        ("refused", "action") => Behaviour::failure("out of stock"),
        _ => Behaviour::success(),
    })
    .await;
    let _silent = FakeParticipant::start(&app.ns, "silent", |_| Behaviour::NoReply).await;
    let _slowpoke = FakeParticipant::start(&app.ns, "slowpoke", |cmd| match cmd.kind() {
        "action" => Behaviour::NoReply,
        _ => Behaviour::success(),
    })
    .await;
    let _picky = FakeParticipant::start(&app.ns, "picky", |_| Behaviour::Reject).await;

    // A business failure: the first step is compensated.
    let refused = app
        .submit_id(&saga(
            "refusal",
            vec![
                step_with("ok", "shop", json!({})),
                step_with("refused", "shop", json!({"after": ["ok"]})),
            ],
        ))
        .await;
    // Every attempt times out until the step gives up.
    let timing_out = app
        .submit_id(&saga(
            "timeouts",
            vec![step_with(
                "mute",
                "silent",
                json!({"timeout_ms": 100, "retry": fast_retry(2), "compensation_retry": fast_retry(1)}),
            )],
        ))
        .await;
    // The saga's own deadline passes while its step waits.
    let mut deadline = saga(
        "deadline",
        vec![step_with("wait", "slowpoke", json!({"timeout_ms": 600000}))],
    );
    deadline["timeout_ms"] = json!(200);
    let late = app.submit_id(&deadline).await;
    // The participant rejects the command: it is dead-lettered.
    let rejected = app
        .submit_id(&saga(
            "rejection",
            vec![step_with(
                "r",
                "picky",
                json!({"retry": fast_retry(1), "compensation_retry": fast_retry(1)}),
            )],
        ))
        .await;

    app.wait_for_state(&refused, &["compensated"], SAGA_TIMEOUT)
        .await;
    let timed_out = app
        .wait_for_state(&timing_out, &["compensated", "failed"], SAGA_TIMEOUT)
        .await;
    app.wait_for_state(&late, &["compensated"], SAGA_TIMEOUT)
        .await;
    app.wait_for_state(&rejected, &["failed"], SAGA_TIMEOUT)
        .await;

    let s = scrape_until(&app, "the dead-letter queue depth", |s| {
        s.get("saga_dead_letters") >= 2.0
    })
    .await;
    assert_eq!(
        s.get(r#"saga_step_replies_total{saga="refusal",participant="shop",kind="action",outcome="failure"}"#),
        1.0
    );
    assert_eq!(
        s.get(r#"saga_compensations_total{saga="refusal",reason="step_failed"}"#),
        1.0
    );
    assert_eq!(
        s.get(r#"saga_step_attempts_total{saga="refusal",participant="shop",kind="compensation"}"#),
        1.0
    );
    assert_eq!(
        s.get(r#"saga_sagas_finished_total{saga="refusal",state="compensated"}"#),
        1.0
    );

    let mute = r#"saga="timeouts",participant="silent""#;
    assert_eq!(
        s.get(&format!(
            r#"saga_step_attempts_total{{{mute},kind="action"}}"#
        )),
        2.0
    );
    assert_eq!(
        s.get(&format!(
            r#"saga_step_timeouts_total{{{mute},kind="action"}}"#
        )),
        2.0
    );
    assert_eq!(
        s.get(&format!(
            r#"saga_step_gave_up_total{{{mute},kind="action"}}"#
        )),
        1.0
    );
    // Its single compensation attempt times out too: the saga needs an operator.
    assert_eq!(timed_out["state"], "failed", "{timed_out}");
    assert_eq!(
        s.get(&format!(
            r#"saga_step_timeouts_total{{{mute},kind="compensation"}}"#
        )),
        1.0
    );
    assert_eq!(s.get(r#"saga_sagas_failed_total{saga="timeouts"}"#), 1.0);
    assert_eq!(
        s.get(r#"saga_sagas_in_flight{saga="timeouts",state="failed"}"#),
        1.0
    );

    assert_eq!(
        s.get(r#"saga_compensations_total{saga="deadline",reason="timed_out"}"#),
        1.0
    );
    assert_eq!(
        s.get(r#"saga_sagas_finished_total{saga="deadline",state="compensated"}"#),
        1.0
    );

    // The action and then its compensation were rejected.
    for kind in ["action", "compensation"] {
        assert_eq!(
            s.get(&format!(
                r#"saga_dead_lettered_commands_total{{saga="rejection",participant="picky",kind="{kind}"}}"#
            )),
            1.0
        );
    }

    // An operator resolves the failed saga: it finishes.
    let resolved = app.resolve(&timing_out, "undone by hand").await;
    assert_eq!(resolved.status(), StatusCode::OK);
    let s = scrape(&app).await;
    assert_eq!(
        s.get(r#"saga_sagas_finished_total{saga="timeouts",state="compensated"}"#),
        1.0
    );
    assert_eq!(
        s.get(r#"saga_sagas_in_flight{saga="timeouts",state="failed"}"#),
        0.0
    );
}

/// `(method, path)` of every operation in the document.
fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("path item");
            methods
                .keys()
                .filter(|m| {
                    ["get", "put", "post", "delete", "patch", "head", "options"]
                        .contains(&m.as_str())
                })
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_real_routes() {
    let app = TestApp::start().await;
    let doc = expect_json(
        app.api
            .request(Method::GET, "/api/v1/openapi.json")
            .send()
            .await
            .expect("GET openapi.json"),
        StatusCode::OK,
    )
    .await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let documented = documented_operations(&doc);

    // Every route the server registers is documented, and nothing else is.
    let registered: BTreeSet<(String, String)> = coordinator::web::route_table()
        .into_iter()
        .map(|(method, path)| (method.as_str().to_string(), path))
        .collect();
    assert_eq!(documented, registered, "document vs route table");

    // Every documented operation answers on the live app with something other than "no such route".
    for (method, path) in &documented {
        let concrete = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let resp = app
            .api
            .request(method.clone(), &concrete)
            .json(&json!({}))
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(
            !(status == StatusCode::NOT_FOUND && body.contains("no such route")),
            "{method} {path} is documented but not routed"
        );
    }
    // And the probe would have noticed: an undocumented path is "no such route".
    let missing = app
        .api
        .request(Method::GET, "/api/v1/nothing-here")
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing
        .text()
        .await
        .unwrap_or_default()
        .contains("no such route"));
}

/// Checks `value`'s keys against a component schema: every key is a property, every required
/// property is there.
fn assert_shape(doc: &Value, schema: &str, value: &Value) {
    let component = &doc["components"]["schemas"][schema];
    let properties: BTreeSet<&str> = component["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {schema} has no properties: {component}"))
        .keys()
        .map(String::as_str)
        .collect();
    let keys: BTreeSet<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    let undocumented: Vec<_> = keys.difference(&properties).collect();
    assert!(
        undocumented.is_empty(),
        "{schema}: undocumented fields {undocumented:?} in {value}"
    );
    for required in component["required"].as_array().into_iter().flatten() {
        let required = required.as_str().unwrap_or_default();
        assert!(
            keys.contains(required),
            "{schema}: {required} missing in {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_have_the_documented_shapes() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let doc = expect_json(
        app.api
            .request(Method::GET, "/api/v1/openapi.json")
            .send()
            .await
            .expect("GET openapi.json"),
        StatusCode::OK,
    )
    .await;
    let created = app
        .submit_ok(&saga(
            "shaped",
            vec![
                step("a", "shop"),
                step_with("b", "shop", json!({"after": ["a"]})),
            ],
        ))
        .await;
    assert_shape(&doc, "SagaDocument", &created);
    let id = saga_id(&created);
    let done = app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    assert_shape(&doc, "SagaDocument", &done);
    for s in done["steps"].as_array().expect("steps") {
        assert_shape(&doc, "StepDocument", s);
    }
    let list = app.list_ok(&[("name", "shaped")]).await;
    assert_shape(&doc, "SagaList", &list);
    for item in list["items"].as_array().expect("items") {
        assert_shape(&doc, "SagaSummary", item);
    }
    let events = app.events(&id).await;
    assert!(!events.is_empty());
    for e in &events {
        assert_shape(&doc, "EventRecord", e);
    }
    let bulk = expect_json(
        app.create_bulk_action(&json!({"action": "pause", "filter": {"name": "shaped"}}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_shape(&doc, "BulkActionDocument", &bulk);
    let bulk_id = bulk["id"].as_str().expect("id").to_owned();
    let bulk = app.wait_for_bulk_action(&bulk_id, SAGA_TIMEOUT).await;
    assert_shape(&doc, "BulkActionDocument", &bulk);
    assert_shape(&doc, "BulkFilter", &bulk["filter"]);
    let bulk_list = expect_json(app.bulk_actions(&[]).await, StatusCode::OK).await;
    assert_shape(&doc, "BulkActionList", &bulk_list);
    let bulk_sagas = expect_json(app.bulk_action_sagas(&bulk_id, &[]).await, StatusCode::OK).await;
    assert_shape(&doc, "BulkSagaList", &bulk_sagas);
    for item in bulk_sagas["items"].as_array().expect("items") {
        assert_eq!(item["outcome"], "skipped", "a committed saga: {item}");
        assert_shape(&doc, "BulkSaga", item);
    }
    let invalid = app.submit(&json!({"name": ""})).await;
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = invalid.json().await.expect("problem");
    assert_shape(&doc, "Problem", &problem);
    for e in problem["errors"].as_array().expect("errors") {
        assert_shape(&doc, "FieldError", e);
    }
    let ready = app
        .api
        .request(Method::GET, "/readyz")
        .send()
        .await
        .expect("readyz");
    assert_shape(&doc, "Readiness", &ready.json().await.expect("json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_page_is_served_without_internet() {
    let app = TestApp::builder().api_token("secret").start().await;
    let page = app
        .api
        .request_anonymous(Method::GET, "/api/docs")
        .send()
        .await
        .expect("GET /api/docs");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for asset in ["/api/docs/swagger-ui-bundle.js", "/api/docs/swagger-ui.css"] {
        assert!(html.contains(asset), "{asset} not referenced");
        let resp = app
            .api
            .request_anonymous(Method::GET, asset)
            .send()
            .await
            .expect("asset");
        assert_eq!(resp.status(), StatusCode::OK, "{asset}");
        assert!(resp.bytes().await.expect("body").len() > 10_000, "{asset}");
    }
    // The page reads the document without a token; the API itself still needs one.
    let doc = app
        .api
        .request_anonymous(Method::GET, "/api/v1/openapi.json")
        .send()
        .await
        .expect("openapi");
    assert_eq!(doc.status(), StatusCode::OK);
    let sagas = app
        .api
        .request_anonymous(Method::GET, "/api/v1/sagas")
        .send()
        .await
        .expect("list");
    assert_eq!(sagas.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_backs_are_counted_and_a_prepared_saga_starts_once() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let _orders = FakeParticipant::start(&app.ns, "orders", |cmd| {
        let outcome = match (cmd.body["saga_payload"]["answer"].as_str(), cmd.attempt()) {
            (Some("aborted"), _) => "aborted",
            (_, 1) => "pending",
            _ => "committed",
        };
        Behaviour::Reply(e2e::Reply::outcome(outcome))
    })
    .await;
    for answer in ["committed", "aborted"] {
        let mut def = saga("two-phase", vec![step("a", "shop")]);
        def["mode"] = json!("prepare");
        def["prepare_timeout_ms"] = json!(100);
        def["payload"] = json!({"answer": answer});
        def["check_back"] =
            json!({"participant": "orders", "timeout_ms": 2000, "retry": fast_retry(5)});
        app.submit_ok(&def).await;
    }
    let s = scrape_until(&app, "both two-phase sagas finished", |s| {
        s.get(r#"saga_sagas_finished_total{saga="two-phase",state="committed"}"#) == 1.0
            && s.get(r#"saga_sagas_finished_total{saga="two-phase",state="aborted"}"#) == 1.0
    })
    .await;
    assert_eq!(
        s.get(r#"saga_sagas_started_total{saga="two-phase"}"#),
        2.0,
        "{}",
        s.text
    );
    assert_eq!(s.get(r#"saga_check_backs_total{saga="two-phase"}"#), 3.0);
    for (outcome, n) in [("pending", 1.0), ("committed", 1.0), ("aborted", 1.0)] {
        let series =
            format!(r#"saga_check_back_answers_total{{saga="two-phase",outcome="{outcome}"}}"#);
        assert_eq!(s.get(&series), n, "{series}\n{}", s.text);
    }
}
