//! Structured logs (issue 17): the real binary with `SAGA_LOG_FORMAT=json` writes one JSON object
//! per line, and every line about a saga carries its id and name (and step and attempt when it is
//! about an attempt, and the trace id of the request that submitted it).

use std::process::{Command, Stdio};

use e2e::api::saga_id;
use e2e::defs::{fast_retry, saga, step, step_with};
use e2e::{
    eventually, Behaviour, CoordinatorProcess, FakeParticipant, TestDb, TestNamespace, SAGA_TIMEOUT,
};
use serde_json::{json, Map, Value};

const BIN: &str = env!("CARGO_BIN_EXE_coordinator-under-test");

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The process's log lines, each parsed; panics on a line that is not one JSON object with the
/// fields every line has. The two lines `serve` prints for scripts (not logged) are left out.
fn json_lines(process: &CoordinatorProcess) -> Vec<Map<String, Value>> {
    process
        .output()
        .into_iter()
        .filter(|line| {
            !line.starts_with(e2e::process::STARTING_PREFIX)
                && !line.starts_with(e2e::process::LISTENING_PREFIX)
        })
        .map(|line| {
            let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&line) else {
                panic!("not one JSON object: {line:?}");
            };
            for field in ["ts", "level", "target", "message"] {
                assert!(
                    fields.get(field).is_some_and(Value::is_string),
                    "no {field} string: {line}"
                );
            }
            let ts = fields["ts"].as_str().unwrap_or_default();
            assert!(
                chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
                "ts is not RFC 3339 UTC: {line}"
            );
            fields
        })
        .collect()
}

/// The lines about saga `id`, once the one recording `event` (of `step`, if given) is among them.
async fn lines_about(
    process: &CoordinatorProcess,
    id: &str,
    event: &str,
    step: Option<&str>,
) -> Vec<Map<String, Value>> {
    eventually(
        &format!("the {event} line of saga {id}"),
        SAGA_TIMEOUT,
        async || {
            let lines: Vec<_> = json_lines(process)
                .into_iter()
                .filter(|l| l.get("saga_id") == Some(&json!(id)))
                .collect();
            lines
                .iter()
                .any(|l| {
                    l.get("event") == Some(&json!(event))
                        && step.is_none_or(|s| l.get("step") == Some(&json!(s)))
                })
                .then_some(lines)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_parse_and_carry_the_saga_fields() {
    let db: TestDb = tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("creating the test database");
    let ns = TestNamespace::new();
    let (url, namespace) = (db.url().to_string(), ns.name().to_string());
    let process = tokio::task::spawn_blocking(move || {
        CoordinatorProcess::start(
            BIN,
            &url,
            &e2e::amqp_url(),
            &namespace,
            // Debug for the coordinator's own lines: one per committed event-log entry.
            &[
                ("SAGA_LOG_FORMAT", "json"),
                ("RUST_LOG", "info,coordinator=debug"),
            ],
        )
    })
    .await
    .expect("join")
    .expect("starting the coordinator process");

    let _stock = FakeParticipant::always_succeed(&ns, "stock").await;
    // Busy once, then a refusal: a second attempt, then compensation.
    let _payments = FakeParticipant::start(&ns, "payments", |cmd| {
        if cmd.attempt() == 1 {
            Behaviour::retry("busy")
        } else {
            Behaviour::failure("card declined")
        }
    })
    .await;

    let api = process.api();
    let traced = saga_id(
        &e2e::api::expect_json(
            api.request(reqwest::Method::POST, "/api/v1/sagas")
                .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
                .json(&saga("log-commit", vec![step("reserve", "stock")]))
                .send()
                .await
                .expect("submit"),
            reqwest::StatusCode::CREATED,
        )
        .await,
    );
    let failing = api
        .submit_id(&saga(
            "log-compensate",
            vec![
                step("reserve", "stock"),
                step_with(
                    "charge",
                    "payments",
                    json!({"retry": fast_retry(3), "after": ["reserve"]}),
                ),
            ],
        ))
        .await;
    api.wait_for_state(&traced, &["committed"], SAGA_TIMEOUT)
        .await;
    api.wait_for_state(&failing, &["compensated"], SAGA_TIMEOUT)
        .await;

    // The saga that committed, submitted with a traceparent.
    let lines = lines_about(&process, &traced, "committed", None).await;
    for line in &lines {
        assert_eq!(line.get("saga"), Some(&json!("log-commit")), "{line:?}");
        assert_eq!(line.get("trace_id"), Some(&json!(TRACE_ID)), "{line:?}");
    }
    let dispatched = lines
        .iter()
        .find(|l| l.get("event") == Some(&json!("dispatched")))
        .unwrap_or_else(|| panic!("no dispatched line: {lines:#?}"));
    assert_eq!(dispatched.get("step"), Some(&json!("reserve")));
    assert_eq!(dispatched.get("attempt"), Some(&json!(1)));

    // The saga that failed and compensated, without one: the trace the coordinator began for it.
    let lines = lines_about(&process, &failing, "compensated", None).await;
    let own_trace = lines[0].get("trace_id").cloned();
    assert!(
        own_trace
            .as_ref()
            .and_then(Value::as_str)
            .is_some_and(|t| t.len() == 32 && t != TRACE_ID),
        "{lines:#?}"
    );
    for line in &lines {
        assert_eq!(line.get("saga"), Some(&json!("log-compensate")), "{line:?}");
        assert_eq!(line.get("trace_id"), own_trace.as_ref(), "{line:?}");
        // A line about an attempt names both its step and the attempt.
        if line.get("attempt").is_some() || line.get("step").is_some() {
            assert!(line.get("step").is_some_and(Value::is_string), "{line:?}");
            assert!(line.get("attempt").is_some_and(Value::is_u64), "{line:?}");
        }
    }
    let has = |event: &str, step: &str, attempt: u64| {
        lines.iter().any(|l| {
            l.get("event") == Some(&json!(event))
                && l.get("step") == Some(&json!(step))
                && l.get("attempt") == Some(&json!(attempt))
        })
    };
    assert!(has("retry_scheduled", "charge", 1), "{lines:#?}");
    assert!(has("dispatched", "charge", 2), "{lines:#?}");
    assert!(has("reply", "reserve", 1), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.get("event") == Some(&json!("compensating"))),
        "{lines:#?}"
    );

    // Every line that names a saga in its message carries it as a field as well.
    for line in json_lines(&process) {
        let message = line["message"].as_str().unwrap_or_default();
        for id in [&traced, &failing] {
            if message.contains(id.as_str()) {
                assert_eq!(line.get("saga_id"), Some(&json!(id)), "{line:?}");
            }
        }
    }
}

#[test]
fn an_unknown_log_format_stops_start_up_naming_the_setting() {
    let output = Command::new(BIN)
        .arg("serve")
        .env("SAGA_LOG_FORMAT", "xml")
        .stdin(Stdio::null())
        .output()
        .expect("running the coordinator");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SAGA_LOG_FORMAT") && stderr.contains("`text` or `json`"),
        "{stderr}"
    );
}
