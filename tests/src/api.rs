//! An HTTP client for the coordinator's API (contract, section 2).

use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};

/// The coordinator's HTTP API at one base URL.
#[derive(Clone, Debug)]
pub struct Api {
    pub base_url: String,
    pub token: Option<String>,
    pub client: reqwest::Client,
}

impl Api {
    /// `base_url` like `http://127.0.0.1:8080`; `token` is sent as a bearer token on every request.
    pub fn new(base_url: &str, token: Option<String>) -> Api {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("building the HTTP client");
        Api {
            base_url: base_url.trim_end_matches('/').to_string(),
            token,
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A request to `path` (e.g. `/api/v1/sagas`), with the bearer token if there is one.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.client.request(method, self.url(path));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// A request without any `Authorization` header.
    pub fn request_anonymous(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    async fn send(&self, builder: RequestBuilder) -> Response {
        builder.send().await.expect("sending an HTTP request")
    }

    /// `POST /api/v1/sagas`.
    pub async fn submit(&self, definition: &Value) -> Response {
        self.send(self.request(Method::POST, "/api/v1/sagas").json(definition))
            .await
    }

    /// `POST /api/v1/sagas` with a raw body (sent as `application/json`).
    pub async fn submit_raw(&self, body: impl Into<reqwest::Body>) -> Response {
        self.send(
            self.request(Method::POST, "/api/v1/sagas")
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await
    }

    /// Submits and expects `201 Created`; returns the saga document.
    pub async fn submit_ok(&self, definition: &Value) -> Value {
        let resp = self.submit(definition).await;
        expect_json(resp, StatusCode::CREATED).await
    }

    /// Submits and returns the new saga's id.
    pub async fn submit_id(&self, definition: &Value) -> String {
        saga_id(&self.submit_ok(definition).await)
    }

    /// `GET /api/v1/sagas/{id}`.
    pub async fn get(&self, id: &str) -> Response {
        self.send(self.request(Method::GET, &format!("/api/v1/sagas/{id}")))
            .await
    }

    /// The saga document; expects 200.
    pub async fn saga(&self, id: &str) -> Value {
        expect_json(self.get(id).await, StatusCode::OK).await
    }

    /// `GET /api/v1/sagas/{id}/events`.
    pub async fn events_response(&self, id: &str) -> Response {
        self.send(self.request(Method::GET, &format!("/api/v1/sagas/{id}/events")))
            .await
    }

    /// The event log's items; expects 200.
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let body = expect_json(self.events_response(id).await, StatusCode::OK).await;
        body.get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_else(|| panic!("events without items: {body}"))
    }

    /// `GET /api/v1/sagas?...`.
    pub async fn list(&self, query: &[(&str, &str)]) -> Response {
        self.send(self.request(Method::GET, "/api/v1/sagas").query(query))
            .await
    }

    /// The list document (`items`, `next`); expects 200.
    pub async fn list_ok(&self, query: &[(&str, &str)]) -> Value {
        expect_json(self.list(query).await, StatusCode::OK).await
    }

    /// `GET /api/v1/sagas/export?...`.
    pub async fn export(&self, query: &[(&str, &str)]) -> Response {
        self.send(
            self.request(Method::GET, "/api/v1/sagas/export")
                .query(query),
        )
        .await
    }

    /// The export's lines, each parsed; expects 200 with `application/x-ndjson` and every line
    /// ended.
    pub async fn export_lines(&self, query: &[(&str, &str)]) -> Vec<Value> {
        let resp = self.export(query).await;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.expect("reading the export");
        assert_eq!(status, StatusCode::OK, "unexpected status; body: {text}");
        assert_eq!(content_type, "application/x-ndjson", "{query:?}");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "a line without its end"
        );
        text.lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("an export line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// `POST /api/v1/sagas/{id}/abort`.
    pub async fn abort(&self, id: &str) -> Response {
        self.send(self.request(Method::POST, &format!("/api/v1/sagas/{id}/abort")))
            .await
    }

    /// `POST /api/v1/sagas/{id}/retry`.
    pub async fn retry(&self, id: &str) -> Response {
        self.send(self.request(Method::POST, &format!("/api/v1/sagas/{id}/retry")))
            .await
    }

    /// `POST /api/v1/sagas/{id}/retry-now`.
    pub async fn retry_now(&self, id: &str) -> Response {
        self.send(self.request(Method::POST, &format!("/api/v1/sagas/{id}/retry-now")))
            .await
    }

    /// `POST /api/v1/sagas/{id}/pause`.
    pub async fn pause(&self, id: &str) -> Response {
        self.send(self.request(Method::POST, &format!("/api/v1/sagas/{id}/pause")))
            .await
    }

    /// `POST /api/v1/sagas/{id}/resume`.
    pub async fn resume(&self, id: &str) -> Response {
        self.send(self.request(Method::POST, &format!("/api/v1/sagas/{id}/resume")))
            .await
    }

    /// `POST /api/v1/saga-names/{name}/pause` or `/resume`.
    pub async fn pause_name(&self, name: &str, pause: bool) -> Response {
        let verb = if pause { "pause" } else { "resume" };
        self.send(self.request(Method::POST, &format!("/api/v1/saga-names/{name}/{verb}")))
            .await
    }

    /// `GET /api/v1/saga-names/paused`.
    pub async fn paused_names(&self) -> Response {
        self.send(self.request(Method::GET, "/api/v1/saga-names/paused"))
            .await
    }

    /// `POST /api/v1/sagas/{id}/resolve` with `{"note": note}`.
    pub async fn resolve(&self, id: &str, note: &str) -> Response {
        self.send(
            self.request(Method::POST, &format!("/api/v1/sagas/{id}/resolve"))
                .json(&json!({ "note": note })),
        )
        .await
    }

    /// `POST /api/v1/bulk-actions` with `body`.
    pub async fn create_bulk_action(&self, body: &Value) -> Response {
        self.send(
            self.request(Method::POST, "/api/v1/bulk-actions")
                .json(body),
        )
        .await
    }

    /// `GET /api/v1/bulk-actions?limit=...` and the other pages' queries.
    pub async fn bulk_actions(&self, query: &[(&str, &str)]) -> Response {
        self.send(
            self.request(Method::GET, "/api/v1/bulk-actions")
                .query(query),
        )
        .await
    }

    /// `GET /api/v1/bulk-actions/{id}`.
    pub async fn bulk_action(&self, id: &str) -> Response {
        self.send(self.request(Method::GET, &format!("/api/v1/bulk-actions/{id}")))
            .await
    }

    /// `GET /api/v1/bulk-actions/{id}/sagas` with `query`.
    pub async fn bulk_action_sagas(&self, id: &str, query: &[(&str, &str)]) -> Response {
        self.send(
            self.request(Method::GET, &format!("/api/v1/bulk-actions/{id}/sagas"))
                .query(query),
        )
        .await
    }

    /// `POST /api/v1/bulk-actions/{id}/cancel`.
    pub async fn cancel_bulk_action(&self, id: &str) -> Response {
        self.send(self.request(Method::POST, &format!("/api/v1/bulk-actions/{id}/cancel")))
            .await
    }

    /// Waits until bulk action `id` is `done`; answers its document.
    pub async fn wait_for_bulk_action(&self, id: &str, timeout: Duration) -> Value {
        crate::eventually(&format!("bulk action {id} done"), timeout, async || {
            let doc = expect_json(self.bulk_action(id).await, StatusCode::OK).await;
            (doc["state"] == "done").then_some(doc)
        })
        .await
    }

    /// `POST /api/v1/sagas/{id}/commit`.
    pub async fn commit(&self, id: &str) -> Response {
        self.send(self.request(Method::POST, &format!("/api/v1/sagas/{id}/commit")))
            .await
    }

    /// The saga's state, or `None` if the request failed (e.g. the coordinator is down).
    pub async fn try_state(&self, id: &str) -> Option<String> {
        let resp = self
            .request(Method::GET, &format!("/api/v1/sagas/{id}"))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let doc: Value = resp.json().await.ok()?;
        doc.get("state").and_then(Value::as_str).map(str::to_string)
    }

    /// Polls the saga until its state is one of `states`; returns the document. Panics on timeout,
    /// or when the saga settles in another state that can't change by itself (`committed`,
    /// `compensated`, `aborted`), with the document and the event log.
    pub async fn wait_for_state(&self, id: &str, states: &[&str], timeout: Duration) -> Value {
        let start = Instant::now();
        let mut last = Value::Null;
        loop {
            if let Ok(resp) = self
                .request(Method::GET, &format!("/api/v1/sagas/{id}"))
                .send()
                .await
            {
                if resp.status() == StatusCode::OK {
                    if let Ok(doc) = resp.json::<Value>().await {
                        let state = doc
                            .get("state")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        if states.contains(&state.as_str()) {
                            return doc;
                        }
                        let stuck = crate::FINAL_STATES.contains(&state.as_str());
                        last = doc;
                        if stuck {
                            let events = self.events_for_diagnostics(id).await;
                            panic!(
                                "saga {id} settled in state {state:?}, expected one of {states:?}\n\
                                 document: {last:#}\nevents: {events:#}"
                            );
                        }
                    }
                }
            }
            if start.elapsed() > timeout {
                let events = self.events_for_diagnostics(id).await;
                panic!(
                    "timed out after {timeout:?} waiting for saga {id} to be in {states:?}\n\
                     last document: {last:#}\nevents: {events:#}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn events_for_diagnostics(&self, id: &str) -> Value {
        match self
            .request(Method::GET, &format!("/api/v1/sagas/{id}/events"))
            .send()
            .await
        {
            Ok(resp) => resp.json().await.unwrap_or(Value::Null),
            Err(e) => Value::String(format!("events unavailable: {e}")),
        }
    }
}

/// The idempotency key of a command of saga `id` (contract, section 1), `id` as documents spell it.
pub fn idempotency_key(id: &str, step: Option<&str>, kind: contract::CommandKind) -> String {
    let saga_id = id
        .parse()
        .unwrap_or_else(|e| panic!("saga id {id:?} is not a UUID: {e}"));
    contract::idempotency_key(saga_id, step, kind)
}

/// The `id` of a saga document.
pub fn saga_id(doc: &Value) -> String {
    doc.get("id")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("saga document without an id: {doc}"))
        .to_string()
}

/// The step called `name` in a saga document.
pub fn step<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc.get("steps")
        .and_then(Value::as_array)
        .and_then(|steps| {
            steps
                .iter()
                .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
        })
        .unwrap_or_else(|| panic!("no step {name:?} in {doc:#}"))
}

/// The `state` of a saga document or step.
pub fn state(doc: &Value) -> &str {
    doc.get("state").and_then(Value::as_str).unwrap_or("")
}

/// Checks the status and parses the JSON body; the panic message shows the body.
pub async fn expect_json(resp: Response, expected: StatusCode) -> Value {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, expected, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"))
}

/// Checks the status, the `application/problem+json` content type and the problem's `status`
/// member; returns the problem document.
pub async fn expect_problem(resp: Response, expected: StatusCode) -> Value {
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, expected, "unexpected status; body: {text}");
    assert!(
        content_type.starts_with("application/problem+json"),
        "a {status} answer must be application/problem+json, got {content_type:?}; body: {text}"
    );
    let problem: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("problem body is not JSON ({e}): {text}"));
    assert_eq!(
        problem.get("status").and_then(Value::as_u64),
        Some(u64::from(expected.as_u16())),
        "the problem's status member: {problem}"
    );
    assert!(
        problem.get("title").and_then(Value::as_str).is_some(),
        "a problem has a title: {problem}"
    );
    problem
}

/// The `field`s of a problem's `errors`.
pub fn error_fields(problem: &Value) -> Vec<String> {
    problem
        .get("errors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e.get("field").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
