//! The operator's command line, `coordinator sagas <verb>`: the real binary as a child process
//! against a running coordinator. Each verb as text and as `--json` (the API's own document), and
//! the exit codes that say what happened.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::api::{expect_json, step};
use e2e::defs::{saga, step as saga_step, step_with};
use e2e::scenarios::{
    broken_compensation_saga, broken_compensation_shop, flaky_participant, gated_participant,
    patient_saga,
};
use e2e::{eventually, Behaviour, FakeParticipant, TestApp, SAGA_TIMEOUT};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The coordinator's binary (`coordinator::cli::main`).
const BIN: &str = env!("CARGO_BIN_EXE_coordinator-under-test");

/// What one run of the binary printed, and its exit code.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Checks the exit code; the panic shows what was printed.
    fn exits(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "coordinator {:?} exited with {} (expected {code})\nstdout:\n{}\nstderr:\n{}",
            self.args, self.code, self.stdout, self.stderr
        );
        self
    }

    /// Stdout as JSON (what `--json` prints).
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{:?} printed no JSON ({e}): {}", self.args, self.stdout))
    }

    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// The line of stdout that starts with `start` (a field's name, a step's name).
    fn line(&self, start: &str) -> &str {
        self.stdout
            .lines()
            .find(|line| line.starts_with(start))
            .unwrap_or_else(|| panic!("no line starts with {start:?}:\n{}", self.stdout))
    }
}

/// `coordinator ARGS` with `env`, and none of the caller's `SAGA_URL` or `SAGA_API_TOKEN`.
async fn coordinator(args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("SAGA_URL")
        .env_remove("SAGA_API_TOKEN")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("running the coordinator binary");
    Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `coordinator sagas --url URL ARGS`.
async fn sagas(url: &str, args: &[&str]) -> Run {
    let mut all = vec!["sagas", "--url", url];
    all.extend(args);
    coordinator(&all, &[]).await
}

/// `doc` with every time cut to microseconds: an action answers the saga as it committed it (times
/// to the nanosecond), a read as Postgres stored it (to the microsecond).
fn to_micros(doc: &Value) -> Value {
    match doc {
        Value::String(text) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(at) => {
                let at = at.with_timezone(&chrono::Utc);
                json!(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            }
            Err(_) => doc.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(to_micros).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_micros(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The saga ids of a list's rows, in order (the header is the first line).
fn listed_ids(run: &Run) -> Vec<String> {
    run.lines()
        .iter()
        .skip(1)
        .filter(|line| !line.starts_with("more sagas") && !line.starts_with("newer sagas"))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_and_events_print_tables_and_the_apis_json() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let url = app.api.base_url.clone();
    let mut orders = Vec::new();
    for n in 0..3 {
        let mut def = saga(
            "cli-order",
            vec![saga_step("reserve", "shop"), saga_step("charge", "shop")],
        );
        def["key"] = json!(format!("order-{n}"));
        let id = app.submit_id(&def).await;
        app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
        orders.push(id);
    }
    let other = app
        .submit_id(&saga("cli-other", vec![saga_step("x", "shop")]))
        .await;
    app.wait_for_state(&other, &["committed"], SAGA_TIMEOUT)
        .await;

    // A table, newest first, with no next page.
    let list = sagas(&url, &["list"]).await.exits(0);
    let header = list.lines()[0];
    for column in ["ID", "NAME", "KEY", "STATE", "CREATED", "UPDATED"] {
        assert!(header.contains(column), "{header}");
    }
    let newest_first = [&other, &orders[2], &orders[1], &orders[0]].map(String::clone);
    assert_eq!(listed_ids(&list), newest_first, "{}", list.stdout);
    for (n, id) in orders.iter().enumerate() {
        let row = list.line(id);
        for cell in ["cli-order", &format!("order-{n}"), "committed"] {
            assert!(row.contains(cell), "{row}");
        }
    }
    assert!(
        !list.stdout.contains("--before"),
        "one page: {}",
        list.stdout
    );

    // --json prints what the API answers, filters included.
    let all = sagas(&url, &["list", "--json"]).await.exits(0);
    assert_eq!(all.json(), app.list_ok(&[]).await);
    let filtered = sagas(
        &url,
        &[
            "list",
            "--name",
            "cli-order",
            "--state",
            "committed",
            "--state",
            "running",
            "--json",
        ],
    )
    .await
    .exits(0);
    let expected = app
        .list_ok(&[
            ("name", "cli-order"),
            ("state", "committed"),
            ("state", "running"),
        ])
        .await;
    assert_eq!(filtered.json(), expected);
    assert_eq!(expected["items"].as_array().map(Vec::len), Some(3));

    // A full page ends with the cursor, and --before takes it.
    let page = sagas(&url, &["list", "--limit", "2"]).await.exits(0);
    let api_page = app.list_ok(&[("limit", "2")]).await;
    let cursor = api_page["next"].as_str().expect("a next page");
    assert_eq!(listed_ids(&page), newest_first[..2]);
    let last = page.lines().last().copied().unwrap_or_default();
    assert!(last.contains(&format!("--before {cursor}")), "{last}");
    let rest = sagas(&url, &["list", "--limit", "2", "--before", cursor])
        .await
        .exits(0);
    assert_eq!(listed_ids(&rest), newest_first[2..]);
    let rest = sagas(
        &url,
        &["list", "--limit", "2", "--before", cursor, "--json"],
    )
    .await
    .exits(0);
    assert_eq!(
        rest.json(),
        app.list_ok(&[("limit", "2"), ("before", cursor)]).await
    );
    // ... and the older page names the way back, which --after takes.
    let back = rest.json()["prev"]
        .as_str()
        .expect("a newer page")
        .to_owned();
    let rest = sagas(&url, &["list", "--limit", "2", "--before", cursor])
        .await
        .exits(0);
    assert!(
        rest.stdout.contains(&format!("--after {back}")),
        "{}",
        rest.stdout
    );
    let again = sagas(&url, &["list", "--limit", "2", "--after", &back])
        .await
        .exits(0);
    assert_eq!(listed_ids(&again), newest_first[..2]);

    // The search's filters, as the API names them.
    let found = sagas(
        &url,
        &[
            "list",
            "--key",
            "order-1",
            "--participant",
            "shop",
            "--step",
            "charge",
            "--created-after",
            "2020-01-01T00:00:00Z",
            "--finished-before",
            "2100-01-01T00:00:00Z",
        ],
    )
    .await
    .exits(0);
    assert_eq!(listed_ids(&found), [orders[1].clone()], "{}", found.stdout);
    let none = sagas(&url, &["list", "--error", "declined"]).await.exits(0);
    assert_eq!(none.stdout, "no sagas\n");

    // A filter the API refuses: 422, exit code 7, with the broken rule.
    let refused = sagas(&url, &["list", "--state", "sleeping"]).await.exits(7);
    assert!(
        refused.stderr.contains("Invalid request (422)"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("  state: "), "{}", refused.stderr);
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);

    // show: the fields, then one line per step.
    let id = &orders[0];
    let show = sagas(&url, &["show", id]).await.exits(0);
    assert!(show.line("id ").ends_with(id.as_str()), "{}", show.stdout);
    assert!(show.line("name ").ends_with("cli-order"), "{}", show.stdout);
    assert!(show.line("key ").ends_with("order-0"), "{}", show.stdout);
    assert!(
        show.line("state ").ends_with("committed"),
        "{}",
        show.stdout
    );
    let steps = show.line("STEP ");
    for column in [
        "STATE",
        "PARTICIPANT",
        "ATTEMPTS",
        "COMP. ATTEMPTS",
        "ERROR",
    ] {
        assert!(steps.contains(column), "{steps}");
    }
    for name in ["reserve", "charge"] {
        let row: Vec<&str> = show.line(name).split_whitespace().collect();
        assert_eq!(
            row,
            [name, "succeeded", "shop", "1", "0", "-"],
            "{}",
            show.stdout
        );
    }
    let show = sagas(&url, &["show", id, "--json"]).await.exits(0);
    assert_eq!(show.json(), app.saga(id).await);

    // events: one line per entry of the log, oldest first.
    let log = expect_json(app.events_response(id).await, StatusCode::OK).await;
    let entries = log["items"].as_array().expect("items");
    let events = sagas(&url, &["events", id]).await.exits(0);
    let lines = events.lines();
    assert_eq!(lines.len(), entries.len() + 1, "{}", events.stdout);
    assert!(lines[0].starts_with("SEQ  AT"), "{}", events.stdout);
    for (line, entry) in lines[1..].iter().zip(entries) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], entry["seq"].to_string(), "{line}");
        assert_eq!(
            cells[3],
            entry["type"].as_str().unwrap_or_default(),
            "{line}"
        );
    }
    let events = sagas(&url, &["events", id, "--json"]).await.exits(0);
    assert_eq!(events.json(), log);

    // An unknown saga, UUID or not, is 404: exit code 3.
    let unknown = uuid::Uuid::new_v4().to_string();
    for id in [unknown.as_str(), "not-a-saga"] {
        for verb in ["show", "events", "abort", "retry", "commit"] {
            let run = sagas(&url, &[verb, id]).await.exits(3);
            assert!(run.stderr.contains("Not found (404)"), "{}", run.stderr);
            assert!(run.stdout.is_empty(), "{}", run.stdout);
        }
    }
}

/// A two-phase saga at `shop` that waits for its commit (no check-back for ten minutes).
fn prepared_saga(name: &str) -> Value {
    let mut def = saga(name, vec![saga_step("reserve", "shop")]);
    def["mode"] = json!("prepare");
    def["check_back"] = json!({"participant": "orders"});
    def["prepare_timeout_ms"] = json!(600_000);
    def
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_abort_say_the_new_state_and_a_conflict_is_exit_code_4() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let stuck = FakeParticipant::start(&app.ns, "stuck", |_| Behaviour::NoReply).await;
    let url = app.api.base_url.clone();

    let id = app.submit_id(&prepared_saga("cli-two-phase")).await;
    let commit = sagas(&url, &["commit", &id]).await.exits(0);
    let state = commit
        .stdout
        .strip_prefix(&format!("saga {id} is now "))
        .unwrap_or_else(|| panic!("{}", commit.stdout));
    assert!(matches!(state, "running\n" | "committed\n"), "{state}");
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    // Repeating commit answers 200 with the saga.
    let again = sagas(&url, &["commit", &id, "--json"]).await.exits(0);
    assert_eq!(to_micros(&again.json()), to_micros(&app.saga(&id).await));
    // Abort of a committed saga: 409, exit code 4, and nothing changes.
    let refused = sagas(&url, &["abort", &id]).await.exits(4);
    assert!(
        refused.stderr.contains("Conflict (409)"),
        "{}",
        refused.stderr
    );
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);
    assert_eq!(app.saga(&id).await["state"], "committed");

    // Abort decides a prepared saga the other way; commit is refused afterwards.
    let id = app.submit_id(&prepared_saga("cli-two-phase")).await;
    let aborted = sagas(&url, &["abort", &id, "--json"]).await.exits(0);
    assert_eq!(aborted.json()["state"], "aborted", "{}", aborted.stdout);
    assert_eq!(to_micros(&aborted.json()), to_micros(&app.saga(&id).await));
    sagas(&url, &["commit", &id]).await.exits(4);

    // Abort of a running saga compensates.
    let id = app
        .submit_id(&saga(
            "cli-slow",
            vec![step_with("wait", "stuck", json!({"timeout_ms": 600_000}))],
        ))
        .await;
    stuck.wait_for_count(1, SAGA_TIMEOUT).await;
    app.wait_for_state(&id, &["running"], SAGA_TIMEOUT).await;
    let aborted = sagas(&url, &["abort", &id]).await.exits(0);
    assert_eq!(aborted.stdout, format!("saga {id} is now compensating\n"));
    assert_eq!(app.saga(&id).await["state"], "compensating");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_resolve_take_a_failed_saga_out_of_failed() {
    let app = TestApp::start().await;
    let fixed = Arc::new(AtomicBool::new(false));
    let _shop = broken_compensation_shop(&app, fixed.clone()).await;
    let url = app.api.base_url.clone();
    let to_retry = app.submit_id(&broken_compensation_saga()).await;
    let to_resolve = app.submit_id(&broken_compensation_saga()).await;
    for id in [&to_retry, &to_resolve] {
        app.wait_for_state(id, &["failed"], SAGA_TIMEOUT).await;
    }

    // The step table shows why it needs an operator.
    let show = sagas(&url, &["show", &to_resolve]).await.exits(0);
    assert!(show.line("state ").ends_with("failed"), "{}", show.stdout);
    let s1 = show.line("s1 ");
    for cell in ["compensation_failed", "shop", "the undo is broken"] {
        assert!(s1.contains(cell), "{s1}");
    }

    // resolve needs a note: without one it is a usage error (nothing sent); a blank one is the
    // API's to refuse (422, exit code 7), naming the field.
    let usage = sagas(&url, &["resolve", &to_resolve]).await.exits(2);
    assert!(usage.stderr.contains("--note"), "{}", usage.stderr);
    for blank in ["", "   "] {
        let refused = sagas(&url, &["resolve", &to_resolve, "--note", blank])
            .await
            .exits(7);
        assert!(refused.stderr.contains("  note: "), "{}", refused.stderr);
    }
    assert_eq!(app.saga(&to_resolve).await["state"], "failed");

    let resolved = sagas(
        &url,
        &[
            "resolve",
            &to_resolve,
            "--note",
            "refunded by hand",
            "--json",
        ],
    )
    .await
    .exits(0);
    assert_eq!(
        resolved.json()["state"],
        "compensated",
        "{}",
        resolved.stdout
    );
    assert_eq!(
        to_micros(&resolved.json()),
        to_micros(&app.saga(&to_resolve).await)
    );
    let events = sagas(&url, &["events", &to_resolve]).await.exits(0);
    assert!(
        events.stdout.contains("refunded by hand"),
        "{}",
        events.stdout
    );
    sagas(&url, &["resolve", &to_resolve, "--note", "again"])
        .await
        .exits(4);

    fixed.store(true, Ordering::SeqCst);
    let retried = sagas(&url, &["retry", &to_retry]).await.exits(0);
    assert_eq!(
        retried.stdout,
        format!("saga {to_retry} is now compensating\n")
    );
    app.wait_for_state(&to_retry, &["compensated"], SAGA_TIMEOUT)
        .await;
    sagas(&url, &["retry", &to_retry]).await.exits(4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_retry_follows_its_progress_and_reports_each_saga() {
    let app = TestApp::start().await;
    let fixed = Arc::new(AtomicBool::new(false));
    let _shop = broken_compensation_shop(&app, fixed.clone()).await;
    let url = app.api.base_url.clone();
    let mut failed = Vec::new();
    for _ in 0..3 {
        failed.push(app.submit_id(&broken_compensation_saga()).await);
    }
    for id in &failed {
        app.wait_for_state(id, &["failed"], SAGA_TIMEOUT).await;
    }
    fixed.store(true, Ordering::SeqCst);

    // Without a filter, or resolve without a note: the API's 422, exit code 7.
    let refused = sagas(&url, &["bulk", "start", "abort"]).await.exits(7);
    assert!(refused.stderr.contains("filter"), "{}", refused.stderr);
    sagas(&url, &["bulk", "start", "resolve", "--state", "failed"])
        .await
        .exits(7);
    sagas(&url, &["bulk", "start", "explode", "--state", "failed"])
        .await
        .exits(2);

    let started = sagas(
        &url,
        &[
            "bulk",
            "start",
            "retry",
            "--state",
            "failed",
            "--name",
            "hard-to-undo",
            "--wait",
        ],
    )
    .await
    .exits(0);
    assert!(
        started.line("state ").ends_with("done"),
        "{}",
        started.stdout
    );
    assert!(
        started.line("applied ").ends_with(" 3"),
        "{}",
        started.stdout
    );
    assert!(
        started
            .stderr
            .contains("3 of 3 done (3 applied, 0 unchanged, 0 skipped), 0 pending"),
        "{}",
        started.stderr
    );
    let id = started
        .line("id ")
        .split_whitespace()
        .nth(1)
        .expect("an id")
        .to_owned();
    for saga in &failed {
        app.wait_for_state(saga, &["compensated"], SAGA_TIMEOUT)
            .await;
    }

    let shown = sagas(&url, &["bulk", "show", &id, "--json"]).await.exits(0);
    assert_eq!(
        shown.json(),
        expect_json(app.bulk_action(&id).await, StatusCode::OK).await
    );
    let listed = sagas(&url, &["bulk", "list", "--json"]).await.exits(0);
    assert_eq!(listed.json()["items"][0]["id"], id.as_str());
    let list = sagas(&url, &["bulk", "list"]).await.exits(0);
    assert!(list.lines()[1].starts_with(&id), "{}", list.stdout);
    let each = sagas(
        &url,
        &["bulk", "sagas", &id, "--outcome", "applied", "--json"],
    )
    .await
    .exits(0);
    let mut applied: Vec<String> = each.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|s| s["saga_id"].as_str().map(str::to_owned))
        .collect();
    applied.sort();
    failed.sort();
    assert_eq!(applied, failed);

    // Done already: it cannot be cancelled (409, exit code 4); an unknown one is exit code 3.
    sagas(&url, &["bulk", "cancel", &id]).await.exits(4);
    let unknown = uuid::Uuid::now_v7().to_string();
    sagas(&url, &["bulk", "show", &unknown]).await.exits(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_now_sends_the_attempt_that_waits_out_a_backoff() {
    let app = TestApp::start().await;
    let flaky = flaky_participant(&app).await;
    let url = app.api.base_url.clone();
    let id = app.submit_id(&patient_saga("cli-patient")).await;
    flaky.wait_for_count(1, SAGA_TIMEOUT).await;
    eventually("the step waits out its backoff", SAGA_TIMEOUT, async || {
        step(&app.saga(&id).await, "charge")["retry_at"]
            .is_string()
            .then_some(())
    })
    .await;
    let show = sagas(&url, &["show", &id]).await.exits(0);
    assert!(show.line("STEP ").contains("RETRY AT"), "{}", show.stdout);
    let run = sagas(&url, &["retry-now", &id]).await.exits(0);
    assert_eq!(run.stdout, format!("saga {id} is now running\n"));
    flaky.wait_for_count(2, SAGA_TIMEOUT).await;
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    sagas(&url, &["retry-now", &id]).await.exits(4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_a_saga_and_resume_continues_it() {
    let app = TestApp::start().await;
    let (gate, release) = gated_participant(&app, "gate").await;
    let after = FakeParticipant::always_succeed(&app.ns, "after").await;
    let url = app.api.base_url.clone();
    let id = app
        .submit_id(&saga(
            "cli-held",
            vec![
                step_with("s1", "gate", json!({})),
                step_with("s2", "after", json!({})),
            ],
        ))
        .await;
    gate.wait_for_count(1, SAGA_TIMEOUT).await;

    let run = sagas(&url, &["pause", &id]).await.exits(0);
    assert_eq!(run.stdout, format!("saga {id} is now running (paused)\n"));
    let json_run = sagas(&url, &["--json", "pause", &id]).await.exits(0);
    let doc: Value = serde_json::from_str(&json_run.stdout).expect("--json prints the document");
    assert!(
        doc["paused_at"].is_string(),
        "pausing again keeps it paused: {doc}"
    );
    release.send_replace(true);
    eventually(
        "s1's reply recorded while paused",
        SAGA_TIMEOUT,
        async || (step(&app.saga(&id).await, "s1")["state"] == "succeeded").then_some(()),
    )
    .await;
    assert!(after.commands().is_empty(), "nothing sent while paused");

    let run = sagas(&url, &["resume", &id]).await.exits(0);
    assert!(
        run.stdout.starts_with(&format!("saga {id} is now ")),
        "{}",
        run.stdout
    );
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    assert_eq!(after.commands().len(), 1);
    sagas(&url, &["pause", &id]).await.exits(4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_name_holds_new_sagas_of_the_name_until_resume_name() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let url = app.api.base_url.clone();
    let none = sagas(&url, &["paused-names"]).await.exits(0);
    assert_eq!(none.stdout, "no saga name is paused\n");
    let run = sagas(&url, &["pause-name", "cli-orders"]).await.exits(0);
    assert!(
        run.stdout
            .starts_with("sagas named cli-orders are paused since "),
        "{}",
        run.stdout
    );
    let listed = sagas(&url, &["paused-names"]).await.exits(0);
    assert!(
        listed.line("cli-orders").starts_with("cli-orders "),
        "{}",
        listed.stdout
    );

    let id = app
        .submit_id(&saga(
            "cli-orders",
            vec![step_with("s1", "shop", json!({}))],
        ))
        .await;
    let show = sagas(&url, &["show", &id]).await.exits(0);
    assert!(
        show.line("state").contains("running (paused)"),
        "{}",
        show.stdout
    );
    assert!(shop.commands().is_empty(), "held from the start");

    let run = sagas(&url, &["resume-name", "cli-orders"]).await.exits(0);
    assert_eq!(run.stdout, "sagas named cli-orders are not paused\n");
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    sagas(&url, &["pause-name", "not a name"]).await.exits(7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_the_apis_lines_to_a_file_or_stdout_and_counts_them() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let url = app.api.base_url.clone();
    let mut committed = Vec::new();
    for _ in 0..3 {
        let id = app
            .submit_id(&saga("cli-archive", vec![saga_step("reserve", "shop")]))
            .await;
        app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
        committed.push(id);
    }
    let prepared = app.submit_id(&prepared_saga("cli-held")).await;
    let body = |query: &'static [(&'static str, &'static str)]| {
        let app = &app;
        async move {
            app.api
                .export(query)
                .await
                .text()
                .await
                .expect("the export's body")
        }
    };

    // To a file: the same bytes as the API's answer, the count on stderr.
    let dir = std::env::temp_dir().join(format!("cli-export-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let file = dir.join("archive.jsonl");
    let path = file.to_str().expect("a UTF-8 path");
    let run = sagas(&url, &["export", "--state", "committed", "--output", path])
        .await
        .exits(0);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr
            .contains(&format!("exported 3 saga(s) to {path}")),
        "{}",
        run.stderr
    );
    let written = std::fs::read_to_string(&file).expect("the export file");
    assert_eq!(written, body(&[("state", "committed")]).await);
    let ids: Vec<String> = written
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).expect("a JSON line");
            line["id"].as_str().expect("an id").to_owned()
        })
        .collect();
    assert_eq!(ids, committed);

    // To stdout, every filter passed on; without one, every saga.
    let run = sagas(
        &url,
        &[
            "export",
            "--name",
            "cli-held",
            "--state",
            "prepared",
            "--after",
            &committed[0],
        ],
    )
    .await
    .exits(0);
    assert_eq!(run.lines().len(), 1, "{}", run.stdout);
    assert!(run.stdout.contains(&prepared), "{}", run.stdout);
    let run = sagas(&url, &["export"]).await.exits(0);
    assert_eq!(run.stdout, body(&[]).await);
    assert!(
        run.stderr.contains("exported 4 saga(s) to stdout"),
        "{}",
        run.stderr
    );
    let run = sagas(
        &url,
        &[
            "export",
            "--finished-after",
            "2000-01-01T00:00:00Z",
            "--finished-before",
            "2000-01-02T00:00:00Z",
        ],
    )
    .await
    .exits(0);
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    // A refused filter is exit code 7, naming the parameter, and leaves no file behind.
    let refused = dir.join("refused.jsonl");
    let run = sagas(
        &url,
        &[
            "export",
            "--finished-after",
            "last tuesday",
            "--output",
            refused.to_str().expect("a UTF-8 path"),
        ],
    )
    .await
    .exits(7);
    assert!(run.stderr.contains("finished_after"), "{}", run.stderr);
    assert!(!refused.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_api_wants_the_token_and_401_is_exit_code_5() {
    let app = TestApp::builder().api_token("cli-s3cret").start().await;
    let url = app.api.base_url.clone();

    let anonymous = sagas(&url, &["list"]).await.exits(5);
    assert!(
        anonymous.stderr.contains("Unauthorized (401)"),
        "{}",
        anonymous.stderr
    );
    assert!(
        anonymous.stderr.contains("SAGA_API_TOKEN"),
        "{}",
        anonymous.stderr
    );
    sagas(&url, &["list", "--token", "wrong"]).await.exits(5);
    sagas(&url, &["list", "--token", "cli-s3cret"])
        .await
        .exits(0);

    // Both from the environment, as an operator's shell would have them.
    let env = [("SAGA_URL", url.as_str()), ("SAGA_API_TOKEN", "cli-s3cret")];
    let listed = coordinator(&["sagas", "list", "--json"], &env)
        .await
        .exits(0);
    assert_eq!(listed.json(), app.list_ok(&[]).await);

    // --help names the variable but never shows its value.
    let help = coordinator(&["sagas", "--help"], &env).await.exits(0);
    assert!(help.stdout.contains("SAGA_API_TOKEN"), "{}", help.stdout);
    assert!(!help.stdout.contains("cli-s3cret"), "{}", help.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_is_exit_code_6_naming_the_url() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("its address").port()
    };
    let url = format!("http://127.0.0.1:{closed}/");
    let refused = sagas(&url, &["list"]).await.exits(6);
    assert!(refused.stderr.contains(&url), "{}", refused.stderr);
    assert!(
        refused.stderr.to_lowercase().contains("refused"),
        "{}",
        refused.stderr
    );

    // Connected, but never answered: the timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let url = format!(
        "http://127.0.0.1:{}/",
        silent.local_addr().expect("its address").port()
    );
    let started = Instant::now();
    let timed_out = sagas(&url, &["show", "x", "--timeout-secs", "1"])
        .await
        .exits(6);
    assert!(
        timed_out.stderr.contains("no answer within 1 s"),
        "{}",
        timed_out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(silent);

    sagas(
        "http://no-such-host.invalid",
        &["list", "--timeout-secs", "5"],
    )
    .await
    .exits(6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_documents_every_verb_and_exit_code() {
    let top = coordinator(&["--help"], &[]).await.exits(0);
    assert!(
        top.stdout
            .contains("Operate sagas through a running coordinator's HTTP API"),
        "{}",
        top.stdout
    );
    let help = coordinator(&["sagas", "--help"], &[]).await.exits(0);
    for verb in [
        "list",
        "show",
        "events",
        "abort",
        "retry",
        "resolve",
        "commit",
        "retry-now",
        "pause",
        "resume",
        "pause-name",
        "resume-name",
        "paused-names",
        "export",
        "bulk",
    ] {
        assert!(
            help.stdout.contains(&format!("\n  {verb} ")),
            "{verb}: {}",
            help.stdout
        );
    }
    for option in ["--url", "SAGA_URL", "--token", "--json", "--timeout-secs"] {
        assert!(help.stdout.contains(option), "{option}: {}", help.stdout);
    }
    assert!(help.stdout.contains("Exit codes:"), "{}", help.stdout);
    for code in 0..=8 {
        assert!(
            help.stdout.contains(&format!("\n  {code}  ")),
            "{code}: {}",
            help.stdout
        );
    }

    // Usage errors are clap's: exit code 2, before any request (nothing listens on port 9).
    for args in [
        &["sagas", "show"][..],
        &["sagas", "list", "--limit", "501"],
        &["sagas", "frobnicate"],
        &["sagas", "--url", "ftp://127.0.0.1:9", "list"],
    ] {
        coordinator(args, &[("SAGA_URL", "http://127.0.0.1:9")])
            .await
            .exits(2);
    }
    // A token no header can carry (a newline pasted in) is refused without echoing the secret.
    let token = coordinator(
        &["sagas", "list"],
        &[
            ("SAGA_URL", "http://127.0.0.1:9"),
            ("SAGA_API_TOKEN", "s3cret\n"),
        ],
    )
    .await
    .exits(2);
    assert!(token.stderr.contains("SAGA_API_TOKEN"), "{}", token.stderr);
    assert!(!token.stderr.contains("s3cret"), "{}", token.stderr);
}
