//! Every bad-input rule of contract section 2: 422 with one `errors` entry per broken rule, 400 for
//! malformed JSON, 413 over `SAGA_MAX_BODY_BYTES`, all as `application/problem+json`, nothing stored.

use e2e::api::{error_fields, expect_problem};
use e2e::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn ok_step(name: &str) -> Value {
    json!({"name": name, "participant": "shop", "action": "act"})
}

/// What a broken rule must be reported as.
enum Field {
    /// Exactly these fields, in any order.
    Exactly(&'static [&'static str]),
    /// One error whose field starts with this.
    OneUnder(&'static str),
}

fn cases() -> Vec<(&'static str, Value, Field)> {
    use Field::*;
    let long_name = "a".repeat(65);
    let too_many: Vec<Value> = (0..101).map(|i| ok_step(&format!("s{i}"))).collect();
    vec![
        (
            "missing name",
            json!({"steps": [ok_step("a")]}),
            Exactly(&["name"]),
        ),
        (
            "name with a space",
            json!({"name": "place order", "steps": [ok_step("a")]}),
            Exactly(&["name"]),
        ),
        (
            "name starting with a dot",
            json!({"name": ".hidden", "steps": [ok_step("a")]}),
            Exactly(&["name"]),
        ),
        (
            "name of 65 characters",
            json!({"name": long_name, "steps": [ok_step("a")]}),
            Exactly(&["name"]),
        ),
        (
            "empty name",
            json!({"name": "", "steps": [ok_step("a")]}),
            Exactly(&["name"]),
        ),
        (
            "name not a string",
            json!({"name": 42, "steps": [ok_step("a")]}),
            Exactly(&["name"]),
        ),
        ("missing steps", json!({"name": "s"}), Exactly(&["steps"])),
        (
            "no steps",
            json!({"name": "s", "steps": []}),
            Exactly(&["steps"]),
        ),
        (
            "101 steps",
            json!({"name": "s", "steps": too_many}),
            Exactly(&["steps"]),
        ),
        (
            "steps not an array",
            json!({"name": "s", "steps": "many"}),
            Exactly(&["steps"]),
        ),
        (
            "step without name",
            json!({"name": "s", "steps": [{"participant": "shop", "action": "act"}]}),
            Exactly(&["steps[0].name"]),
        ),
        (
            "step without participant",
            json!({"name": "s", "steps": [{"name": "a", "action": "act"}]}),
            Exactly(&["steps[0].participant"]),
        ),
        (
            "step without action",
            json!({"name": "s", "steps": [{"name": "a", "participant": "shop"}]}),
            Exactly(&["steps[0].action"]),
        ),
        (
            "bad step name",
            json!({"name": "s", "steps": [ok_step("a b")]}),
            Exactly(&["steps[0].name"]),
        ),
        (
            "bad participant",
            json!({"name": "s", "steps": [{"name": "a", "participant": "in/ventory", "action": "act"}]}),
            Exactly(&["steps[0].participant"]),
        ),
        (
            "bad action",
            json!({"name": "s", "steps": [ok_step("a"), {"name": "b", "participant": "shop", "action": "-x"}]}),
            Exactly(&["steps[1].action"]),
        ),
        (
            "bad compensation",
            json!({"name": "s", "steps": [{"name": "a", "participant": "shop", "action": "act", "compensation": "un do"}]}),
            Exactly(&["steps[0].compensation"]),
        ),
        (
            "duplicate step names",
            json!({"name": "s", "steps": [ok_step("a"), ok_step("a")]}),
            Exactly(&["steps[1].name"]),
        ),
        (
            "after names an unknown step",
            json!({"name": "s", "steps": [ok_step("a"),
            {"name": "b", "participant": "shop", "action": "act", "after": ["charge"]}]}),
            Exactly(&["steps[1].after[0]"]),
        ),
        (
            "after names an unknown step, second entry",
            json!({"name": "s", "steps": [ok_step("a"),
            {"name": "b", "participant": "shop", "action": "act", "after": ["a", "nope"]}]}),
            Exactly(&["steps[1].after[1]"]),
        ),
        (
            "a cycle",
            json!({"name": "s", "steps": [
            {"name": "a", "participant": "shop", "action": "act", "after": ["b"]},
            {"name": "b", "participant": "shop", "action": "act", "after": ["a"]}]}),
            OneUnder("steps"),
        ),
        (
            "a step after itself",
            json!({"name": "s", "steps": [
            {"name": "a", "participant": "shop", "action": "act", "after": ["a"]}]}),
            OneUnder("steps"),
        ),
        (
            "two broken rules",
            json!({"name": "bad name", "steps": [{"name": "a", "action": "act"}]}),
            Exactly(&["name", "steps[0].participant"]),
        ),
        (
            "three broken rules",
            json!({"steps": [ok_step("a"), {"name": "a", "participant": "shop"}]}),
            Exactly(&["name", "steps[1].name", "steps[1].action"]),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broken_rule_is_a_422_naming_its_field_and_nothing_is_stored() {
    let app = TestApp::start().await;
    let mut failures = Vec::new();
    for (what, body, expected) in cases() {
        let resp = app.submit(&body).await;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.unwrap_or_default();
        if status != StatusCode::UNPROCESSABLE_ENTITY {
            failures.push(format!("{what}: expected 422, got {status}: {text}"));
            continue;
        }
        if !content_type.starts_with("application/problem+json") {
            failures.push(format!("{what}: content type {content_type:?}"));
        }
        let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if problem["status"] != 422 {
            failures.push(format!("{what}: problem status member: {text}"));
        }
        let errors = problem["errors"].as_array().cloned().unwrap_or_default();
        if errors
            .iter()
            .any(|e| e["message"].as_str().is_none_or(str::is_empty))
        {
            failures.push(format!("{what}: every error has a message: {text}"));
        }
        let mut fields = error_fields(&problem);
        fields.sort();
        match expected {
            Field::Exactly(want) => {
                let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
                want.sort();
                if fields != want {
                    failures.push(format!(
                        "{what}: fields {fields:?}, expected {want:?}: {text}"
                    ));
                }
            }
            Field::OneUnder(prefix) => {
                if fields.len() != 1 || !fields[0].starts_with(prefix) {
                    failures.push(format!(
                        "{what}: expected one error under {prefix:?}, got {fields:?}: {text}"
                    ));
                }
            }
        }
    }

    let not_an_object = app.submit(&json!([1, 2])).await;
    if not_an_object.status() != StatusCode::UNPROCESSABLE_ENTITY {
        failures.push(format!(
            "a JSON array: expected 422, got {}",
            not_an_object.status()
        ));
    }

    let list = app.list_ok(&[]).await;
    assert_eq!(list["items"], json!([]), "nothing is stored on a 4xx");
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_400() {
    let app = TestApp::start().await;
    for body in [
        r#"{"name": "s", "steps": ["#,
        "not json at all",
        r#"{"name": "s",, }"#,
        "",
    ] {
        let problem = expect_problem(app.submit_raw(body).await, StatusCode::BAD_REQUEST).await;
        assert!(problem.get("title").is_some(), "{problem}");
    }
    let list = app.list_ok(&[]).await;
    assert_eq!(list["items"], json!([]), "nothing is stored on a 4xx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_a_413() {
    let app = TestApp::builder().max_body_bytes(4096).start().await;
    app.ns.register_participant("shop");
    let small =
        json!({"name": "small", "steps": [ok_step("a")], "payload": {"pad": "x".repeat(1000)}});
    let big = json!({"name": "big", "steps": [ok_step("a")], "payload": {"pad": "x".repeat(8000)}});
    let accepted = app.submit_ok(&small).await;
    expect_problem(app.submit(&big).await, StatusCode::PAYLOAD_TOO_LARGE).await;
    let list = app.list_ok(&[]).await;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "only the small saga is stored: {list}");
    assert_eq!(items[0]["id"], accepted["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_themselves_are_accepted() {
    let app = TestApp::start().await;
    app.ns.register_participant("shop");
    let longest = "a".repeat(64);
    let steps: Vec<Value> = (0..100).map(|i| ok_step(&format!("s{i}"))).collect();
    let doc = app
        .submit_ok(&json!({"name": longest, "steps": steps}))
        .await;
    assert_eq!(doc["steps"].as_array().map(Vec::len), Some(100));
    let names = json!({"name": "A0._-z", "steps": [
        {"name": "Z9-x_y.z", "participant": "p.a-r_t", "action": "go-now", "compensation": "Undo.it"}
    ]});
    app.ns.register_participant("p.a-r_t");
    app.submit_ok(&names).await;
}
