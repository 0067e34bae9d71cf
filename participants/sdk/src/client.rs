//! A small typed client for the coordinator's HTTP API (contract, section 2).
//!
//! The request and document types mirror the contract's JSON field for field (same names, optional
//! fields as `Option`), so their fields are documented there.
//!
//! ```no_run
//! # async fn demo() -> Result<(), participants::client::ClientError> {
//! use participants::client::{Client, SagaRequest, StepRequest};
//! use std::time::Duration;
//!
//! let client = Client::new("http://127.0.0.1:8080")?;
//! let saga = client
//!     .submit(
//!         &SagaRequest::new("place-order")
//!             .key("order-8812")
//!             .step(StepRequest::new("reserve", "inventory", "reserve").compensation("release"))
//!             .step(StepRequest::new("charge", "payments", "charge").compensation("refund")),
//!     )
//!     .await?;
//! let done = client.wait(saga.id, Duration::from_secs(30)).await?;
//! println!("{} is {:?}", done.id, done.state);
//! # Ok(()) }
//! ```

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// What went wrong talking to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not get an answer (connection refused, timeout, bad body).
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The coordinator answered with an error (`application/problem+json`).
    #[error("the coordinator answered {status}: {problem}")]
    Problem { status: StatusCode, problem: Value },
    /// [`Client::wait`] ran out of time; the last state seen.
    #[error("saga {id} was still {state:?} after {waited:?}")]
    Timeout {
        id: Uuid,
        state: SagaState,
        waited: Duration,
    },
}

impl ClientError {
    /// The HTTP status of a [`ClientError::Problem`].
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Problem { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A saga's state (contract, section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    Prepared,
    Running,
    Compensating,
    Committed,
    Compensated,
    Aborted,
    Failed,
    /// A state this client does not know (a newer coordinator).
    #[serde(other)]
    Unknown,
}

impl SagaState {
    /// `committed`, `compensated` or `aborted`: the saga will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SagaState::Committed | SagaState::Compensated | SagaState::Aborted
        )
    }

    /// Final, or `failed` (which waits for an operator).
    pub fn is_settled(self) -> bool {
        self.is_final() || self == SagaState::Failed
    }
}

/// A retry policy (contract, section 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
}

/// One step of a [`SagaRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRequest {
    pub name: String,
    pub participant: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<String>>,
}

impl StepRequest {
    /// A step `name` that runs `action` at `participant`.
    pub fn new(name: &str, participant: &str, action: &str) -> StepRequest {
        StepRequest {
            name: name.to_string(),
            participant: participant.to_string(),
            action: action.to_string(),
            compensation: None,
            payload: None,
            timeout_ms: None,
            retry: None,
            compensation_retry: None,
            after: None,
        }
    }

    pub fn compensation(mut self, command: &str) -> Self {
        self.compensation = Some(command.to_string());
        self
    }

    /// The step payload; a value that does not serialize is sent as `null`.
    pub fn payload(mut self, payload: impl Serialize) -> Self {
        self.payload = Some(serde_json::to_value(payload).unwrap_or(Value::Null));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(millis(timeout));
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.compensation_retry = Some(policy);
        self
    }

    pub fn after(mut self, steps: &[&str]) -> Self {
        self.after = Some(steps.iter().map(|s| s.to_string()).collect());
        self
    }
}

/// How a saga is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmitMode {
    /// Start at once (the default).
    Run,
    /// Two-phase submission (contract, section 5): stored as `prepared` until
    /// [`Client::commit`] or [`Client::abort`].
    Prepare,
}

/// Where the coordinator asks about a prepared saga that was neither committed nor aborted in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CheckBack {
    /// A `check` command to this participant's queue.
    Participant { participant: String },
    /// `GET {url}?saga_id={id}`.
    Url { url: String },
}

/// A saga to submit (`POST /api/v1/sagas`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    pub steps: Vec<StepRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SubmitMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_back: Option<CheckBack>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare_timeout_ms: Option<u64>,
}

impl SagaRequest {
    /// A saga of kind `name`, without steps yet.
    pub fn new(name: &str) -> SagaRequest {
        SagaRequest {
            name: name.to_string(),
            key: None,
            payload: None,
            timeout_ms: None,
            steps: Vec::new(),
            mode: None,
            check_back: None,
            prepare_timeout_ms: None,
        }
    }

    /// The client's idempotency key: resubmitting the same saga with it returns the first one.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The saga payload; a value that does not serialize is sent as `null`.
    pub fn payload(mut self, payload: impl Serialize) -> Self {
        self.payload = Some(serde_json::to_value(payload).unwrap_or(Value::Null));
        self
    }

    /// The saga deadline, from submission.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(millis(timeout));
        self
    }

    pub fn step(mut self, step: StepRequest) -> Self {
        self.steps.push(step);
        self
    }

    /// Two-phase submission: the saga waits as `prepared` until committed or aborted; the coordinator
    /// asks `check_back` when neither arrives in time.
    pub fn prepare(mut self, check_back: CheckBack) -> Self {
        self.mode = Some(SubmitMode::Prepare);
        self.check_back = Some(check_back);
        self
    }
}

/// A step of a saga document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub participant: String,
    pub action: String,
    #[serde(default)]
    pub compensation: Option<String>,
    pub state: String,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub compensation_attempts: u32,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub after: Option<Vec<String>>,
}

/// A saga document (`GET /api/v1/sagas/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saga {
    pub id: Uuid,
    pub name: String,
    #[serde(default)]
    pub key: Option<String>,
    pub state: SagaState,
    #[serde(default)]
    pub payload: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

impl Saga {
    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// The coordinator's HTTP API at one base URL. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    base_url: String,
    token: Option<String>,
    http: reqwest::Client,
    poll: Duration,
}

impl Client {
    /// A client for the coordinator at `base_url`, e.g. `http://127.0.0.1:8080`.
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Client {
            base_url: base_url.trim_end_matches('/').to_string(),
            token: None,
            http,
            poll: Duration::from_millis(100),
        })
    }

    /// Sends `Authorization: Bearer <token>` (when the coordinator has `SAGA_API_TOKEN`).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How often [`wait`](Self::wait) polls.
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `POST /api/v1/sagas`: the new saga (or, for a known `key` and the same definition, the
    /// earlier one).
    pub async fn submit(&self, saga: &SagaRequest) -> Result<Saga, ClientError> {
        self.call(Method::POST, "/api/v1/sagas", Some(saga)).await
    }

    /// `GET /api/v1/sagas/{id}`.
    pub async fn get(&self, id: Uuid) -> Result<Saga, ClientError> {
        self.call::<()>(Method::GET, &format!("/api/v1/sagas/{id}"), None)
            .await
    }

    /// `POST /api/v1/sagas/{id}/abort`: compensate a running saga, or abort a prepared one.
    pub async fn abort(&self, id: Uuid) -> Result<Saga, ClientError> {
        self.call::<()>(Method::POST, &format!("/api/v1/sagas/{id}/abort"), None)
            .await
    }

    /// `POST /api/v1/sagas/{id}/commit`: start a prepared saga (two-phase submission).
    pub async fn commit(&self, id: Uuid) -> Result<Saga, ClientError> {
        self.call::<()>(Method::POST, &format!("/api/v1/sagas/{id}/commit"), None)
            .await
    }

    /// Polls the saga until it is final (`committed`, `compensated`, `aborted`) or `failed`, and
    /// returns it; [`ClientError::Timeout`] after `timeout`. Transient request errors are retried
    /// until then.
    pub async fn wait(&self, id: Uuid, timeout: Duration) -> Result<Saga, ClientError> {
        let start = Instant::now();
        let mut last_state = SagaState::Unknown;
        loop {
            match self.get(id).await {
                Ok(saga) if saga.state.is_settled() => return Ok(saga),
                Ok(saga) => last_state = saga.state,
                Err(ClientError::Http(_)) => {}
                Err(e) => return Err(e),
            }
            if start.elapsed() >= timeout {
                return Err(ClientError::Timeout {
                    id,
                    state: last_state,
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn call<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Saga, ClientError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        // The caller's trace: a saga submitted from a traced request joins it.
        for (name, value) in crate::telemetry::current_trace_headers() {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        decode(response).await
    }
}

async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response.json().await?);
    }
    let text = response.text().await?;
    let problem = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Err(ClientError::Problem { status, problem })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
