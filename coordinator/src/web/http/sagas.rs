//! Handlers of `/api/v1/sagas`: submit, read, list, and the operator's actions.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use uuid::Uuid;

use super::filter;
use super::page::{both_ways, field_error, Page};
use super::schemas::{
    self, Conflict, Invalid, MalformedJson, NoSuchSaga, TooLarge, Unauthorized, Unavailable,
};
use crate::runtime::{EngineError, Submitted};
use crate::saga::machine::Event;
use crate::saga::PausedBy;
use crate::store::{Cursor, ListFilter, SagaFilter};
use crate::submission::parse_submission;
use crate::web::document::{saga_document, saga_summary};
use crate::web::error::ApiError;
use crate::web::forward::Forwarder;
use crate::web::state::AppState;

/// What a resolve `note` matches (as the OpenAPI document says it): something besides whitespace
/// (the information separators U+001C to U+001F count as whitespace, as Python's `\s` has them),
/// and no NUL, which Postgres text cannot hold.
pub(super) const NOTE_PATTERN: &str = "^[^\\u0000]*[^\\s\\u0000\\u001c-\\u001f][^\\u0000]*$";

/// Whether `note` is a note: [`NOTE_PATTERN`].
pub(super) fn is_note(note: &str) -> bool {
    let blank = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    !note.contains('\0') && note.chars().any(|c| !blank(c))
}

/// Submits a saga (contract, section 2 "Submit").
#[utoipa::path(post, path = "/api/v1/sagas", tag = "sagas", security(("bearer" = [])),
    request_body(content = schemas::SagaSubmission, description = "The saga definition"),
    responses(
    (status = 201, description = "Accepted: the saga runs", body = schemas::SagaDocument,
        headers(("Location" = String, description = "The saga's URL"))),
    (status = 200, description = "The key was used before with the same definition: that saga", body = schemas::SagaDocument),
    MalformedJson, Unauthorized, Conflict, TooLarge, Invalid, Unavailable,
))]
pub async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    match submit_here(&state, &req, &body).await {
        // This instance holds no partition (it is starting, or has just handed them over):
        // another one takes the saga.
        Err(EngineError::NotOwner(None)) if !Forwarder::was_forwarded(&req) => {
            let running = state.running_or_unavailable()?;
            let owner = running.ownership.some_owner_url().ok_or_else(|| {
                ApiError::Unavailable(
                    "no coordinator holds a partition right now; try again in a few seconds".into(),
                )
            })?;
            let body = serde_json::to_vec(&*body).map_err(|e| ApiError::Internal(e.to_string()))?;
            state
                .forwarder
                .forward(&owner, running.ownership.instance(), &req, body)
                .await
        }
        answer => answer.map_err(ApiError::from)?,
    }
}

async fn submit_here(
    state: &AppState,
    req: &HttpRequest,
    body: &Value,
) -> Result<Result<HttpResponse, ApiError>, EngineError> {
    let definition = match parse_submission(body) {
        Ok(definition) => definition,
        Err(errors) => return Ok(Err(ApiError::Invalid(errors))),
    };
    if let Some(refusal) = state.check_back_hosts.refusal(&definition) {
        return Ok(Err(ApiError::Invalid(vec![refusal])));
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (traceparent, tracestate) = (header("traceparent"), header("tracestate"));
    let registry = match state.registry() {
        Ok(registry) => registry,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(
        match registry.submit(definition, traceparent, tracestate).await? {
            Submitted::Started(saga) => HttpResponse::Created()
                .insert_header(("Location", format!("/api/v1/sagas/{}", saga.id)))
                .json(saga_document(&saga)),
            Submitted::Existing(existing) => HttpResponse::Ok().json(saga_document(&existing)),
            Submitted::KeyTaken(existing) => {
                return Ok(Err(ApiError::Conflict(format!(
                    "key {:?} was already used by saga {} with a different definition",
                    existing.definition.key.as_deref().unwrap_or_default(),
                    existing.id
                ))))
            }
        },
    ))
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(format!("no saga {raw:?}")))
}

/// One saga with its steps.
#[utoipa::path(get, path = "/api/v1/sagas/{id}", tag = "sagas", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The saga's id")),
    responses(
    (status = 200, description = "The saga", body = schemas::SagaDocument),
    Unauthorized, NoSuchSaga, Unavailable,
))]
pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let saga = state
        .store()?
        .interact(move |db| db.load(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no saga {id}")))?;
    Ok(HttpResponse::Ok().json(saga_document(&saga)))
}

/// A saga's event log, oldest first.
#[utoipa::path(get, path = "/api/v1/sagas/{id}/events", tag = "sagas", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The saga's id")),
    responses(
    (status = 200, description = "The event log", body = schemas::EventList),
    Unauthorized, NoSuchSaga, Unavailable,
))]
pub async fn events(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let (exists, items) = state
        .store()?
        .interact(move |db| Ok((db.load(id)?.is_some(), db.events(id)?)))
        .await?;
    if !exists {
        return Err(ApiError::NotFound(format!("no saga {id}")));
    }
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// Sagas, newest first, that match every filter given, a page at a time in either direction.
#[utoipa::path(get, path = "/api/v1/sagas", tag = "sagas", security(("bearer" = [])),
    params(
        ("state" = Option<Vec<schemas::SagaStateName>>, Query, description = "Only these states (repeat the parameter for several)"),
        ("name" = Option<String>, Query, description = "Only sagas of this name"),
        ("key" = Option<String>, Query, description = "Only the sagas submitted with this `key` (one per name), whatever their name"),
        ("participant" = Option<String>, Query, description = "Only sagas with a step sent to this participant"),
        ("step" = Option<String>, Query, description = "Only sagas with a step of this name"),
        ("error" = Option<String>, Query, description = "Only sagas with a step whose `error` contains this text, in any case (1 to 200 characters; `%` and `_` are plain characters)"),
        ("created_after" = Option<DateTime<Utc>>, Query, description = "Only sagas created at or after this time (RFC 3339)"),
        ("created_before" = Option<DateTime<Utc>>, Query, description = "Only sagas created strictly before this time (RFC 3339)"),
        ("finished_after" = Option<DateTime<Utc>>, Query, description = "Only sagas that finished (became committed, compensated or aborted) at or after this time (RFC 3339); a saga not finished never matches"),
        ("finished_before" = Option<DateTime<Utc>>, Query, description = "Only sagas that finished strictly before this time (RFC 3339); a saga not finished never matches"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 500 (default 50)"),
        ("before" = Option<Uuid>, Query, description = "The page of matching sagas older than this cursor: a `next` of an earlier answer. Not with `after`"),
        ("after" = Option<Uuid>, Query, description = "The page of matching sagas immediately newer than this cursor: a `prev` of an earlier answer. Not with `before`"),
    ),
    responses(
    (status = 200, description = "A page of sagas, newest first", body = schemas::SagaList),
    Unauthorized, Invalid, Unavailable,
))]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let mut filter = SagaFilter::default();
    // One `Page` per direction, to tell `before` and `after` apart.
    let (mut page, mut newer) = (Page::default(), Page::default());
    let mut errors = Vec::new();
    for (key, value) in query.into_inner() {
        if filter::shared(&key, &value, &mut filter, &mut errors)
            || filter::search(&key, &value, &mut filter, &mut errors)
        {
            continue;
        }
        match key.as_str() {
            "limit" => page.limit(&value, &mut errors),
            "before" => page.cursor(&key, &value, &mut errors),
            "after" => newer.cursor(&key, &value, &mut errors),
            other => errors.push(field_error(other, "unknown parameter")),
        }
    }
    let cursor = match (page.cursor, newer.cursor) {
        (Some(_), Some(_)) => {
            errors.push(field_error(
                "after",
                "give `before` (older sagas) or `after` (newer sagas), not both",
            ));
            None
        }
        (Some(id), None) => Some(Cursor::Before(id)),
        (None, Some(id)) => Some(Cursor::After(id)),
        (None, None) => None,
    };
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let list = ListFilter {
        filter,
        limit: page.limit,
        cursor,
    };
    let sagas = state.store()?.interact(move |db| db.list(&list)).await?;
    let ids: Vec<Uuid> = sagas.iter().map(|s| s.id).collect();
    let (next, prev) = both_ways(&ids, page.limit, cursor);
    let items: Vec<Value> = sagas.iter().map(saga_summary).collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next": next, "prev": prev })))
}

/// Runs an operator's action here if this instance owns the saga, or forwards it (once) to the
/// instance that does.
async fn operate(
    state: &AppState,
    req: &HttpRequest,
    id: &str,
    event: Event,
    body: Vec<u8>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(id)?;
    match state.registry()?.operate(id, event).await {
        Ok(saga) => Ok(HttpResponse::Ok().json(saga_document(&saga))),
        Err(EngineError::NotOwner(Some(partition))) if !Forwarder::was_forwarded(req) => {
            let running = state.running_or_unavailable()?;
            let owner = running.ownership.owner_url(partition).ok_or_else(|| {
                ApiError::Unavailable(format!(
                    "the saga's partition ({partition}) has no live coordinator right now (it is \
                     being handed over); try again in a few seconds"
                ))
            })?;
            state
                .forwarder
                .forward(&owner, running.ownership.instance(), req, body)
                .await
        }
        Err(e) => Err(e.into()),
    }
}

/// Stops dispatching actions and compensates (a prepared saga just aborts).
#[utoipa::path(post, path = "/api/v1/sagas/{id}/abort", tag = "sagas", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The saga's id")),
    responses(
    (status = 200, description = "The saga afterwards", body = schemas::SagaDocument),
    Unauthorized, NoSuchSaga, Conflict, Unavailable,
))]
pub async fn abort(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    operate(&state, &req, &id, Event::Abort, Vec::new()).await
}

/// Two-phase submission (contract, section 5): the initiator's local transaction committed, start
/// the prepared saga. Repeating it answers 200; after an abort it is 409.
#[utoipa::path(post, path = "/api/v1/sagas/{id}/commit", tag = "sagas", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The saga's id")),
    responses(
    (status = 200, description = "The saga afterwards", body = schemas::SagaDocument),
    (status = 409, description = "The saga was aborted, or was not submitted with \"mode\": \"prepare\"", body = schemas::Problem, content_type = "application/problem+json"),
    Unauthorized, NoSuchSaga, Unavailable,
))]
pub async fn commit(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    operate(&state, &req, &id, Event::Commit, Vec::new()).await
}

/// Gives a failed saga's exhausted compensations a fresh set of attempts.
#[utoipa::path(post, path = "/api/v1/sagas/{id}/retry", tag = "sagas", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The saga's id")),
    responses(
    (status = 200, description = "The saga afterwards", body = schemas::SagaDocument),
    Unauthorized, NoSuchSaga, Conflict, Unavailable,
))]
pub async fn retry(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    operate(&state, &req, &id, Event::Retry, Vec::new()).await
}

/// Sends now what waits out a backoff: a step's next attempt (action or compensation), or a
/// prepared saga's next check-back. For after a dependency recovered; 409 when nothing waits.
#[utoipa::path(post, path = "/api/v1/sagas/{id}/retry-now", tag = "sagas", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The saga's id")),
    responses(
    (status = 200, description = "The saga afterwards: the waiting attempts are out", body = schemas::SagaDocument),
    (status = 409, description = "Nothing of the saga waits out a backoff (an attempt is out, or the saga is final or failed)", body = schemas::Problem, content_type = "application/problem+json"),
    Unauthorized, NoSuchSaga, Unavailable,
))]
pub async fn retry_now(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    operate(&state, &req, &id, Event::RetryNow, Vec::new()).await
}

/// Holds an in-flight saga: it dispatches nothing and no timer fires until resumed; replies to
/// commands already out are still recorded. Pausing a paused saga answers 200 and changes nothing.
#[utoipa::path(post, path = "/api/v1/sagas/{id}/pause", tag = "sagas", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The saga's id")),
    responses(
    (status = 200, description = "The saga afterwards, with `paused_at` set", body = schemas::SagaDocument),
    (status = 409, description = "The saga is not running, compensating or prepared", body = schemas::Problem, content_type = "application/problem+json"),
    Unauthorized, NoSuchSaga, Unavailable,
))]
pub async fn pause(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    operate(
        &state,
        &req,
        &id,
        Event::Pause {
            by: PausedBy::Operator,
        },
        Vec::new(),
    )
    .await
}

/// Continues a paused saga where it stood: each timer gets back the wait it had left, counted from
/// now, and what became ready while paused is dispatched. Resuming a running saga answers 200.
#[utoipa::path(post, path = "/api/v1/sagas/{id}/resume", tag = "sagas", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The saga's id")),
    responses(
    (status = 200, description = "The saga afterwards, with `paused_at` null", body = schemas::SagaDocument),
    (status = 409, description = "The saga is final or failed, or every saga of its name is paused (resume the name)", body = schemas::Problem, content_type = "application/problem+json"),
    Unauthorized, NoSuchSaga, Unavailable,
))]
pub async fn resume(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let saga = parse_id(&id)?;
    // Its name's pause would hold it again within a second.
    if state
        .store()?
        .interact(move |db| db.name_paused_for(saga))
        .await?
    {
        return Err(ApiError::Conflict(
            "every saga of this name is paused: resume the name (POST /api/v1/saga-names/{name}/resume)"
                .into(),
        ));
    }
    operate(
        &state,
        &req,
        &id,
        Event::Resume {
            by: PausedBy::Operator,
        },
        Vec::new(),
    )
    .await
}

/// Marks a failed saga as repaired by hand.
#[utoipa::path(post, path = "/api/v1/sagas/{id}/resolve", tag = "sagas", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The saga's id")),
    request_body(content = schemas::ResolveRequest),
    responses(
    (status = 200, description = "The saga afterwards", body = schemas::SagaDocument),
    MalformedJson, Unauthorized, NoSuchSaga, Conflict, Invalid, Unavailable,
))]
pub async fn resolve(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let note =
        match body.get("note") {
            Some(Value::String(note)) if is_note(note) => note.clone(),
            _ => return Err(ApiError::invalid(
                "note",
                "say what was repaired: a string with more than whitespace, and no NUL character",
            )),
        };
    let forwarded = serde_json::to_vec(&*body).map_err(|e| ApiError::Internal(e.to_string()))?;
    operate(&state, &req, &id, Event::Resolve { note }, forwarded).await
}
