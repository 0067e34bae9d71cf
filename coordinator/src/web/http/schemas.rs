//! The JSON bodies of the HTTP API as OpenAPI schemas, and the problem answers operations share.
//!
//! The handlers build their bodies with `serde_json`, so these types only describe them; the
//! end-to-end tests check the real answers against them (`tests/tests/observability.rs`).
//! Enumerations (saga and step states, command kinds) are generated from the domain's own lists.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoResponses, PartialSchema, ToSchema};
use uuid::Uuid;

use crate::runtime::bulk_actions::BulkOperation;
use crate::saga::{CommandKind, PausedBy, SagaState, StepState};

/// A string enumeration whose values come from the domain type's `ALL` list.
fn string_enum(values: impl Iterator<Item = &'static str>, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .description(Some(description))
        .into()
}

macro_rules! enum_schema {
    ($schema:ident, $name:literal, $domain:ty, $description:literal) => {
        #[doc = $description]
        pub struct $schema;

        impl PartialSchema for $schema {
            fn schema() -> RefOr<Schema> {
                string_enum(<$domain>::ALL.iter().map(|v| v.as_str()), $description)
            }
        }

        impl ToSchema for $schema {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

enum_schema!(
    SagaStateName,
    "SagaState",
    SagaState,
    "A saga's state (contract, section 1)"
);
enum_schema!(
    StepStateName,
    "StepState",
    StepState,
    "A step's state (contract, section 1)"
);
enum_schema!(
    PausedByName,
    "PausedBy",
    PausedBy,
    "Whose hold a paused saga is in: an operator's pause of this saga, or of every saga of its name"
);
enum_schema!(
    CommandKindName,
    "CommandKind",
    CommandKind,
    "Which command of a step a message is about"
);

/// `GET /healthz`.
#[derive(ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`: whether each dependency answers.
#[derive(ToSchema)]
pub struct Readiness {
    pub postgres: bool,
    pub rabbitmq: bool,
    /// Partitions this coordinator owns now (it runs their sagas); absent while starting. Several
    /// coordinators share the partitions of one database; one with none is still ready.
    pub partitions_owned: Option<u32>,
    /// Only when not ready: why, e.g. `waiting for Postgres: <error>` during start-up.
    pub reason: Option<String>,
}

/// How often and how fast a command is tried again (every field optional; defaults in the contract).
#[derive(ToSchema)]
pub struct RetryPolicy {
    #[schema(minimum = 1)]
    pub max_attempts: Option<u32>,
    pub initial_backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
    pub multiplier: Option<f64>,
}

/// One step of a submission.
#[derive(ToSchema)]
pub struct StepSubmission {
    /// Unique within the saga.
    pub name: String,
    /// Names the participant's command queue `{ns}.participant.{participant}`.
    pub participant: String,
    pub action: String,
    /// Omitted: the step needs no undoing.
    pub compensation: Option<String>,
    /// Any JSON, sent in the step's commands; no string in it (keys included) may hold the NUL
    /// character, which Postgres cannot store.
    pub payload: Option<Value>,
    pub timeout_ms: Option<u64>,
    pub retry: Option<RetryPolicy>,
    pub compensation_retry: Option<RetryPolicy>,
    /// Names of steps that must succeed first.
    pub after: Option<Vec<String>>,
}

/// Where a prepared saga asks whether its initiator committed (give one of `participant` and `url`),
/// and how patiently.
#[derive(ToSchema)]
pub struct CheckBack {
    /// A `check` command to `{ns}.participant.{participant}`.
    pub participant: Option<String>,
    /// `GET {url}?saga_id={id}`, answering `{"outcome": "committed" | "aborted" | "pending"}`.
    pub url: Option<String>,
    /// How long one check-back may go unanswered (default 5000).
    pub timeout_ms: Option<u64>,
    /// Check-back retry policy (default 10 attempts, 1 s doubling to 60 s); when it runs out the
    /// saga becomes `failed`.
    pub retry: Option<RetryPolicy>,
}

/// A two-phase saga's check-backs so far.
#[derive(ToSchema)]
pub struct CheckBackProgress {
    pub participant: Option<String>,
    pub url: Option<String>,
    /// Check-backs sent so far.
    pub attempts: u32,
    /// Check-backs allowed in total (an operator's `retry` adds a fresh budget).
    pub max_attempts: u32,
    /// When the next check-back goes out (or the one out times out); `null` when none is due.
    pub next_at: Option<DateTime<Utc>>,
}

/// `POST /api/v1/sagas` body (contract, section 2 "Submit").
#[derive(ToSchema)]
pub struct SagaSubmission {
    pub name: String,
    /// Idempotency key, scoped to the saga name.
    pub key: Option<String>,
    /// Any JSON, sent in every command; no string in it (keys included) may hold the NUL
    /// character, which Postgres cannot store.
    pub payload: Option<Value>,
    /// Saga deadline: past it a running saga compensates.
    pub timeout_ms: Option<u64>,
    /// `run` (default) or `prepare` (two-phase, contract section 5).
    pub mode: Option<String>,
    pub check_back: Option<CheckBack>,
    pub prepare_timeout_ms: Option<u64>,
    #[schema(min_items = 1)]
    pub steps: Vec<StepSubmission>,
}

/// A saga as the list shows it (no steps).
#[derive(ToSchema)]
pub struct SagaSummary {
    pub id: Uuid,
    pub name: String,
    pub key: Option<String>,
    #[schema(value_type = SagaStateName)]
    pub state: String,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
    /// Since when an operator holds the saga (`pause`); `null` while it runs.
    pub paused_at: Option<DateTime<Utc>>,
    /// Whose hold it is: `operator` (this saga was paused) or `name` (every saga of its name
    /// is); `null` while it runs.
    #[schema(value_type = Option<PausedByName>)]
    pub paused_by: Option<String>,
}

/// One step of a saga document.
#[derive(ToSchema)]
pub struct StepDocument {
    pub name: String,
    pub participant: String,
    pub action: String,
    pub compensation: Option<String>,
    #[schema(value_type = StepStateName)]
    pub state: String,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub after: Vec<String>,
    /// When the step's next attempt goes out, while it waits out a retry backoff (`retry-now`
    /// sends it at once); `null` otherwise.
    pub retry_at: Option<DateTime<Utc>>,
}

/// A saga with its steps (contract, section 2 "Read").
#[derive(ToSchema)]
pub struct SagaDocument {
    pub id: Uuid,
    pub name: String,
    pub key: Option<String>,
    #[schema(value_type = SagaStateName)]
    pub state: String,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
    /// Since when an operator holds the saga (`pause`); `null` while it runs.
    pub paused_at: Option<DateTime<Utc>>,
    /// Whose hold it is: `operator` (this saga was paused) or `name` (every saga of its name
    /// is); `null` while it runs.
    #[schema(value_type = Option<PausedByName>)]
    pub paused_by: Option<String>,
    pub steps: Vec<StepDocument>,
    /// `prepare` for a two-phase submission (absent otherwise).
    pub mode: Option<String>,
    /// Two-phase submissions only.
    pub check_back: Option<CheckBackProgress>,
}

/// One line of `GET /api/v1/sagas/export`: the saga document with its event log.
#[derive(ToSchema)]
pub struct ExportedSaga {
    #[serde(flatten)]
    pub saga: SagaDocument,
    /// The saga's event log, oldest first (the items of `GET /api/v1/sagas/{id}/events`).
    pub events: Vec<EventRecord>,
}

/// A name whose sagas are paused (or, answering a resume, no longer are).
#[derive(ToSchema)]
pub struct PausedName {
    pub name: String,
    /// Since when its sagas are paused; `null` once resumed.
    pub paused_at: Option<DateTime<Utc>>,
}

/// `GET /api/v1/saga-names/paused`.
#[derive(ToSchema)]
pub struct PausedNameList {
    pub items: Vec<PausedName>,
}

/// A page of sagas, newest first.
#[derive(ToSchema)]
pub struct SagaList {
    pub items: Vec<SagaSummary>,
    /// Pass as `before` for the page of older sagas; `null` when none can follow (a page from no
    /// cursor or `before` that is not full). After an `after` request it is set whenever the page
    /// has items.
    pub next: Option<String>,
    /// Pass as `after` for the page of newer sagas; `null` on the first page (no cursor) and
    /// when an `after` request reached the newest (fewer than `limit` items).
    pub prev: Option<String>,
}

/// One entry of a saga's event log.
#[derive(ToSchema)]
pub struct EventRecord {
    pub seq: i64,
    pub at: DateTime<Utc>,
    /// What happened (`started`, `dispatched`, `reply`, `timed_out`, `compensating`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    pub step: Option<String>,
    pub attempt: Option<i32>,
    pub detail: Value,
}

/// A saga's event log, oldest first.
#[derive(ToSchema)]
pub struct EventList {
    pub items: Vec<EventRecord>,
}

/// `POST /api/v1/sagas/{id}/resolve` body.
#[derive(ToSchema)]
pub struct ResolveRequest {
    /// What was repaired by hand (non-empty).
    pub note: String,
}

/// A broken rule of a request.
#[derive(ToSchema)]
pub struct FieldError {
    /// Path of the field (`steps[0].participant`), empty for the whole body.
    pub field: String,
    pub message: String,
}

enum_schema!(
    BulkOperationName,
    "BulkOperation",
    BulkOperation,
    "The operator's action a bulk action applies to each saga, as the single action's path says it"
);

/// Which sagas a bulk action applies to: the list's filters, at least one of them.
#[derive(ToSchema)]
pub struct BulkFilter {
    /// Only sagas in one of these states.
    pub state: Option<Vec<SagaStateName>>,
    /// Only sagas of this name.
    pub name: Option<String>,
}

/// `POST /api/v1/bulk-actions` body.
#[derive(ToSchema)]
pub struct BulkActionRequest {
    #[schema(value_type = BulkOperationName)]
    pub action: String,
    /// The sagas it applies to: those matching now (sagas submitted later are not included).
    pub filter: BulkFilter,
    /// For `resolve` only, and required there: what was repaired by hand (one note for all).
    pub note: Option<String>,
}

/// Where a bulk action stands.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BulkActionState {
    /// Sagas are still to be done.
    Running,
    /// Every saga is done.
    Done,
    /// Stopped by `cancel`; `pending` sagas were left as they were.
    Cancelled,
}

/// A bulk action with its progress. `total` = `applied` + `unchanged` + `skipped` + `pending`.
#[derive(ToSchema)]
pub struct BulkActionDocument {
    pub id: Uuid,
    #[schema(value_type = BulkOperationName)]
    pub action: String,
    pub filter: BulkFilter,
    pub note: Option<String>,
    pub state: BulkActionState,
    pub created_at: DateTime<Utc>,
    /// When the last saga was done, or when it was cancelled; `null` while running.
    pub finished_at: Option<DateTime<Utc>>,
    /// The sagas the filter matched when it was created.
    pub total: i64,
    /// Sagas the action changed (each exactly once).
    pub applied: i64,
    /// Sagas that already were as asked (a paused saga asked to pause).
    pub unchanged: i64,
    /// Sagas the action does not apply to (where the single action answers 409, or the saga is
    /// gone); the sagas list says why for each.
    pub skipped: i64,
    /// Sagas not done yet.
    pub pending: i64,
}

/// A page of bulk actions, newest first.
#[derive(ToSchema)]
pub struct BulkActionList {
    pub items: Vec<BulkActionDocument>,
    /// Pass as `before` for the next page; `null` on the last one.
    pub next: Option<String>,
}

/// What became of a saga of a bulk action.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BulkOutcome {
    Applied,
    Unchanged,
    Skipped,
}

/// The `outcome` filter of a bulk action's sagas: an outcome, or `pending` for those not done.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BulkOutcomeFilter {
    Applied,
    Unchanged,
    Skipped,
    Pending,
}

/// One saga of a bulk action.
#[derive(ToSchema)]
pub struct BulkSaga {
    pub saga_id: Uuid,
    /// `null` while not done.
    pub outcome: Option<BulkOutcome>,
    /// Why it was skipped.
    pub reason: Option<String>,
    pub done_at: Option<DateTime<Utc>>,
}

/// A page of a bulk action's sagas, in id order.
#[derive(ToSchema)]
pub struct BulkSagaList {
    pub items: Vec<BulkSaga>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next: Option<String>,
}

/// An error, as `application/problem+json` (RFC 9457).
#[derive(ToSchema)]
pub struct Problem {
    /// Always `about:blank`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Only for 422: every broken rule.
    pub errors: Option<Vec<FieldError>>,
}

// The problem answers (`application/problem+json`, see `web::error`) that several operations give
// alike; an operation lists the ones it can give in its `responses(...)`.

/// Declares a problem answer: `Name(status, variant of ApiError, description)`.
macro_rules! problem_responses {
    ($($name:ident($status:literal, $variant:literal, $description:literal);)*) => {$(
        #[doc = concat!(stringify!($status), ", answered for `ApiError::", $variant, "`.")]
        #[derive(IntoResponses)]
        #[response(
            status = $status,
            description = $description,
            content_type = "application/problem+json"
        )]
        pub struct $name(pub Problem);
    )*};
}

problem_responses! {
    MalformedJson(400, "MalformedJson", "The body is not JSON");
    Unauthorized(401, "Unauthorized", "A bearer token is required");
    NoSuchSaga(404, "NotFound", "No such saga");
    NoSuchBulkAction(404, "NotFound", "No such bulk action");
    Conflict(409, "Conflict", "The saga's state does not allow it, or the key was used with a different definition");
    TooLarge(413, "TooLarge", "The body is too large");
    Invalid(422, "Invalid", "The request breaks a rule (every broken rule is listed)");
    Unavailable(503, "Unavailable", "Postgres is unavailable");
}
