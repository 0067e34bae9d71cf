//! Handlers of `/api/v1/bulk-actions`: one operator's action over every saga a filter matches,
//! as a durable job (`runtime/bulk_actions.rs` works through it), with its progress.
//!
//! Any coordinator takes a bulk action and answers for it: the job and its sagas are rows, and each
//! saga is applied by its partition's owner, so nothing here is forwarded.

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::page::{field_error, page_end, Page};
use super::sagas::is_note;
use super::schemas::{self, Invalid, MalformedJson, NoSuchBulkAction, Unauthorized, Unavailable};
use crate::runtime::bulk_actions::BulkOperation;
use crate::saga::SagaState;
use crate::store::bulk_actions::{BulkActionRecord, BulkSagaRecord, NewBulkAction};
use crate::submission::FieldError;
use crate::web::error::ApiError;
use crate::web::state::AppState;

/// What `outcome` of the sagas' list accepts: the recorded outcomes, and `pending` for the rest.
pub(super) const OUTCOMES: [&str; 4] = ["applied", "unchanged", "skipped", "pending"];

/// Starts a bulk action: applies `action` to every saga `filter` matches now, in the background,
/// each saga once; the answer's `Location` shows its progress. Creating the same one again
/// changes nothing new: a saga already as asked is `unchanged`, one the action does not apply to
/// any more is `skipped`.
#[utoipa::path(post, path = "/api/v1/bulk-actions", tag = "bulk actions", security(("bearer" = [])),
    request_body(content = schemas::BulkActionRequest),
    responses(
    (status = 201, description = "Started: the sagas it applies to are counted in `total`", body = schemas::BulkActionDocument,
        headers(("Location" = String, description = "The bulk action's URL"))),
    MalformedJson, Unauthorized, Invalid, Unavailable,
))]
pub async fn create(
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut new = parse_request(&body).map_err(ApiError::Invalid)?;
    new.id = Uuid::now_v7();
    let running = state.running_or_unavailable()?;
    let record = running
        .store
        .interact(move |db| db.create_bulk_action(&new))
        .await?;
    running.registry.bulk_wake().created();
    log::info!(
        "bulk action {}: {} on {} sagas ({})",
        record.id,
        record.action,
        record.total,
        record.filter
    );
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/bulk-actions/{}", record.id)))
        .json(bulk_action_document(&record)))
}

/// Bulk actions, newest first, paged with a cursor.
#[utoipa::path(get, path = "/api/v1/bulk-actions", tag = "bulk actions", security(("bearer" = [])),
    params(
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 500 (default 50)"),
        ("before" = Option<Uuid>, Query, description = "The `next` cursor of the previous page"),
    ),
    responses(
    (status = 200, description = "A page of bulk actions", body = schemas::BulkActionList),
    Unauthorized, Invalid, Unavailable,
))]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let mut page = Page::default();
    let mut errors = Vec::new();
    for (key, value) in query.into_inner() {
        match key.as_str() {
            "before" => page.cursor(&key, &value, &mut errors),
            "limit" => page.limit(&value, &mut errors),
            other => errors.push(field_error(other, "unknown parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let Page { limit, cursor } = page;
    let records = state
        .store()?
        .interact(move |db| db.bulk_actions(limit, cursor))
        .await?;
    let next = page_end(&records, limit, |r| r.id);
    let items: Vec<Value> = records.iter().map(bulk_action_document).collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next": next })))
}

/// One bulk action with its progress.
#[utoipa::path(get, path = "/api/v1/bulk-actions/{id}", tag = "bulk actions", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The bulk action's id")),
    responses(
    (status = 200, description = "The bulk action", body = schemas::BulkActionDocument),
    Unauthorized, NoSuchBulkAction, Unavailable,
))]
pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let record = state
        .store()?
        .interact(move |db| db.bulk_action(id))
        .await?
        .ok_or_else(|| no_such(id))?;
    Ok(HttpResponse::Ok().json(bulk_action_document(&record)))
}

/// The sagas of a bulk action in id order, with what became of each.
#[utoipa::path(get, path = "/api/v1/bulk-actions/{id}/sagas", tag = "bulk actions", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The bulk action's id"),
        ("outcome" = Option<schemas::BulkOutcomeFilter>, Query, description = "Only sagas with this outcome (`pending`: not done yet)"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 500 (default 50)"),
        ("after" = Option<Uuid>, Query, description = "The `next` cursor of the previous page"),
    ),
    responses(
    (status = 200, description = "A page of the bulk action's sagas", body = schemas::BulkSagaList),
    Unauthorized, NoSuchBulkAction, Invalid, Unavailable,
))]
pub async fn sagas(
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let mut page = Page::default();
    let mut outcome = None;
    let mut errors = Vec::new();
    for (key, value) in query.into_inner() {
        match key.as_str() {
            "after" => page.cursor(&key, &value, &mut errors),
            "limit" => page.limit(&value, &mut errors),
            "outcome" if OUTCOMES.contains(&value.as_str()) => outcome = Some(value),
            "outcome" => errors.push(field_error(
                "outcome",
                format!("must be one of {}", OUTCOMES.join(", ")),
            )),
            other => errors.push(field_error(other, "unknown parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let Page { limit, cursor } = page;
    let (exists, records) = state
        .store()?
        .interact(move |db| {
            let exists = db.bulk_action(id)?.is_some();
            let records = db.bulk_action_sagas(id, outcome.as_deref(), cursor, limit)?;
            Ok((exists, records))
        })
        .await?;
    if !exists {
        return Err(no_such(id));
    }
    let next = page_end(&records, limit, |r| r.saga_id);
    let items: Vec<Value> = records.iter().map(bulk_saga_document).collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next": next })))
}

/// Stops a bulk action: sagas not done yet stay as they are (a batch under way finishes).
#[utoipa::path(post, path = "/api/v1/bulk-actions/{id}/cancel", tag = "bulk actions", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The bulk action's id")),
    responses(
    (status = 200, description = "The bulk action afterwards (`state` is `cancelled`)", body = schemas::BulkActionDocument),
    (status = 409, description = "The bulk action is finished already (done or cancelled)", body = schemas::Problem, content_type = "application/problem+json"),
    Unauthorized, NoSuchBulkAction, Unavailable,
))]
pub async fn cancel(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let (cancelled, record) = state
        .store()?
        .interact(move |db| Ok((db.cancel_bulk_action(id)?, db.bulk_action(id)?)))
        .await?;
    let record = record.ok_or_else(|| no_such(id))?;
    if !cancelled {
        return Err(ApiError::Conflict(format!(
            "bulk action {id} is {} already",
            finished_state(&record)
        )));
    }
    Ok(HttpResponse::Ok().json(bulk_action_document(&record)))
}

fn no_such(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no bulk action {id}"))
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(format!("no bulk action {raw:?}")))
}

/// Reads a `POST /api/v1/bulk-actions` body; every broken rule is reported.
fn parse_request(body: &Value) -> Result<NewBulkAction, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(object) = body.as_object() else {
        return Err(vec![field_error("", "must be an object")]);
    };
    for key in object.keys() {
        if !["action", "filter", "note"].contains(&key.as_str()) {
            errors.push(field_error(key, "unknown field"));
        }
    }
    let operation = match object.get("action").and_then(Value::as_str) {
        Some(name) => BulkOperation::parse(name),
        None => None,
    };
    if operation.is_none() {
        let names: Vec<&str> = BulkOperation::ALL.iter().map(|o| o.as_str()).collect();
        errors.push(field_error(
            "action",
            format!("required, one of {}", names.join(", ")),
        ));
    }
    let note = match (operation, object.get("note")) {
        (Some(BulkOperation::Resolve), Some(Value::String(note))) if is_note(note) => {
            Some(note.clone())
        }
        (Some(BulkOperation::Resolve), _) => {
            errors.push(field_error(
                "note",
                "say what was repaired: a string with more than whitespace, and no NUL character",
            ));
            None
        }
        (_, None | Some(Value::Null)) => None,
        (_, Some(_)) => {
            errors.push(field_error("note", "only a resolve takes a note"));
            None
        }
    };
    let (states, name, filter) = parse_filter(object.get("filter"), &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(NewBulkAction {
        id: Uuid::nil(),
        action: operation
            .map(BulkOperation::as_str)
            .unwrap_or_default()
            .to_owned(),
        note,
        states,
        name,
        filter,
    })
}

/// The filter: the list's `state` (several) and `name`, at least one of them; answers the states,
/// the name and the filter as stored.
fn parse_filter(
    filter: Option<&Value>,
    errors: &mut Vec<FieldError>,
) -> (Vec<String>, Option<String>, Value) {
    let Some(filter) = filter.and_then(Value::as_object) else {
        errors.push(field_error(
            "filter",
            "required: an object with `state` (a list of states) or `name`, or both",
        ));
        return (Vec::new(), None, Value::Null);
    };
    let mut stored = Map::new();
    let mut states = Vec::new();
    for key in filter.keys() {
        if !["state", "name"].contains(&key.as_str()) {
            errors.push(field_error(&format!("filter.{key}"), "unknown field"));
        }
    }
    match filter.get("state") {
        None | Some(Value::Null) => {}
        Some(Value::Array(given)) if !given.is_empty() => {
            for (i, state) in given.iter().enumerate() {
                match state.as_str().map(str::parse::<SagaState>) {
                    Some(Ok(state)) => states.push(state.as_str().to_owned()),
                    _ => errors.push(field_error(
                        &format!("filter.state[{i}]"),
                        format!("unknown state {state}"),
                    )),
                }
            }
            stored.insert("state".into(), json!(states));
        }
        Some(_) => errors.push(field_error(
            "filter.state",
            "a non-empty list of saga states",
        )),
    }
    let name = match filter.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if crate::submission::is_name(name) => {
            stored.insert("name".into(), json!(name));
            Some(name.clone())
        }
        Some(_) => {
            errors.push(field_error(
                "filter.name",
                format!(
                    "not a saga name (it matches {})",
                    crate::submission::NAME_PATTERN
                ),
            ));
            None
        }
    };
    if states.is_empty() && name.is_none() && errors.is_empty() {
        errors.push(field_error(
            "filter",
            "say which sagas: `state`, `name` or both (a bulk action never applies to every saga)",
        ));
    }
    (states, name, Value::Object(stored))
}

fn finished_state(record: &BulkActionRecord) -> &'static str {
    match (record.finished_at, record.cancelled_at) {
        (_, Some(_)) => "cancelled",
        (Some(_), None) => "done",
        (None, None) => "running",
    }
}

/// A bulk action as the API shows it (`schemas::BulkActionDocument`).
pub fn bulk_action_document(record: &BulkActionRecord) -> Value {
    json!({
        "id": record.id,
        "action": record.action,
        "filter": record.filter,
        "note": record.note,
        "state": finished_state(record),
        "created_at": record.created_at,
        "finished_at": record.finished_at,
        "total": record.total,
        "applied": record.applied,
        "unchanged": record.unchanged,
        "skipped": record.skipped,
        "pending": record.pending(),
    })
}

fn bulk_saga_document(record: &BulkSagaRecord) -> Value {
    json!({
        "saga_id": record.saga_id,
        "outcome": record.outcome,
        "reason": record.reason,
        "done_at": record.done_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_an_action_and_a_filter() {
        let new = parse_request(&json!({"action": "retry", "filter": {"state": ["failed"]}}))
            .expect("valid");
        assert_eq!(new.action, "retry");
        assert_eq!(new.states, vec!["failed".to_owned()]);
        assert_eq!(new.filter, json!({"state": ["failed"]}));
        assert_eq!(new.note, None);
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let errors = parse_request(&json!({
            "action": "explode", "filter": {"state": ["nope"], "colour": 1}, "extra": true
        }))
        .expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for field in ["extra", "action", "filter.colour", "filter.state[0]"] {
            assert!(fields.contains(&field), "{field} missing from {fields:?}");
        }
    }

    #[test]
    fn an_empty_filter_is_refused() {
        for filter in [json!({}), json!({"state": null}), json!({"state": []})] {
            let errors = parse_request(&json!({"action": "abort", "filter": filter}))
                .expect_err("no filter");
            assert!(errors.iter().any(|e| e.field.starts_with("filter")));
        }
    }

    #[test]
    fn only_resolve_takes_a_note_and_it_needs_one() {
        assert!(parse_request(&json!({"action": "resolve", "filter": {"name": "n"}})).is_err());
        assert!(parse_request(
            &json!({"action": "resolve", "filter": {"name": "n"}, "note": "  "})
        )
        .is_err());
        assert!(
            parse_request(&json!({"action": "abort", "filter": {"name": "n"}, "note": "x"}))
                .is_err()
        );
        let new = parse_request(
            &json!({"action": "resolve", "filter": {"name": "n"}, "note": "refunded by hand"}),
        )
        .expect("valid");
        assert_eq!(new.note.as_deref(), Some("refunded by hand"));
        assert_eq!(new.name.as_deref(), Some("n"));
    }
}
