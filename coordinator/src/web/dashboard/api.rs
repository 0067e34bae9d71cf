//! `/dashboard/api/...`: what the page needs beyond the JSON API — the overview's aggregates and
//! in-flight list, a saga's stored definition (step payloads), and the dead letters.

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use actix_web::{web, HttpResponse};

use crate::saga::{Saga, SagaState, StepState};
use crate::store::dashboard::InFlightFilter;
use crate::store::{ListFilter, SagaFilter};
use crate::telemetry::TraceParent;
use crate::web::document::saga_summary;
use crate::web::error::ApiError;
use crate::web::state::AppState;

/// In-flight sagas listed at most.
const IN_FLIGHT_LIMIT: i64 = 200;
/// Recently finished sagas listed.
const FINISHED_LIMIT: i64 = 20;
/// Minutes of throughput shown.
const THROUGHPUT_MINUTES: i32 = 30;
/// Dead letters shown at most.
const DEAD_LETTERS_LIMIT: usize = 100;

/// `GET /dashboard/api/overview?state=..&name=..`: counts per state, throughput per minute, the
/// in-flight sagas (filtered) with their current step, and the recently finished ones.
pub async fn overview(
    state: web::Data<AppState>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let mut filter = InFlightFilter {
        limit: IN_FLIGHT_LIMIT,
        ..InFlightFilter::default()
    };
    for (key, value) in query.into_inner() {
        match key.as_str() {
            "state" if value.is_empty() => {}
            "state" => match value.parse::<SagaState>() {
                Ok(s) if !s.is_final() => filter.states.push(s),
                _ => {
                    return Err(ApiError::invalid(
                        "state",
                        format!("not an in-flight state: {value:?}"),
                    ))
                }
            },
            "name" => filter.name = Some(value),
            other => return Err(ApiError::invalid(other, "unknown parameter")),
        }
    }
    let now = Utc::now();
    let finished = ListFilter {
        filter: SagaFilter {
            states: SagaState::ALL
                .iter()
                .copied()
                .filter(|s| s.is_final())
                .collect(),
            ..SagaFilter::default()
        },
        limit: FINISHED_LIMIT,
        cursor: None,
    };
    let (counts, throughput, in_flight, finished) = state
        .store()?
        .interact(move |db| {
            Ok((
                db.count_by_state()?,
                db.throughput(THROUGHPUT_MINUTES, now)?,
                db.in_flight(&filter)?,
                db.list(&finished)?,
            ))
        })
        .await?;
    let mut by_state = serde_json::Map::new();
    for s in SagaState::ALL {
        let n = counts.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
        by_state.insert(s.as_str().to_owned(), json!(n));
    }
    Ok(HttpResponse::Ok().json(json!({
        "now": now,
        "authentication": state.api_token.is_some(),
        "counts": by_state,
        "throughput": throughput,
        "in_flight": in_flight.iter().map(in_flight_item).collect::<Vec<_>>(),
        "finished": finished.iter().map(saga_summary).collect::<Vec<_>>(),
    })))
}

/// A saga of the in-flight list: where it is, how hard it tried, what went wrong last.
fn in_flight_item(saga: &Saga) -> Value {
    let active: Vec<usize> = (0..saga.steps.len())
        .filter(|&i| {
            matches!(
                saga.steps[i].state,
                StepState::Running | StepState::Compensating | StepState::CompensationFailed
            )
        })
        .collect();
    let current: Vec<&str> = active
        .iter()
        .map(|&i| saga.definition.steps[i].name.as_str())
        .collect();
    let attempts = active
        .iter()
        .map(|&i| {
            let p = &saga.steps[i];
            if p.state == StepState::Running {
                p.attempts
            } else {
                p.compensation_attempts
            }
        })
        .max()
        .unwrap_or(0);
    let error = active
        .iter()
        .copied()
        .chain(0..saga.steps.len())
        .find_map(|i| saga.steps[i].error.clone());
    json!({
        "id": saga.id,
        "name": saga.definition.name,
        "state": saga.state,
        "created_at": saga.created_at,
        "updated_at": saga.updated_at,
        "current_step": current.join(", "),
        "attempts": attempts,
        "error": error,
    })
}

/// The saga `id` names, as stored; 404 for an id that is no saga's.
async fn stored_saga(state: &AppState, id: &str) -> Result<Saga, ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no saga {id:?}")))?;
    state
        .store()?
        .interact(move |db| db.load(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no saga {id}")))
}

/// `GET /dashboard/api/sagas/{id}/stored`: what the saga page needs beyond the API's document, from
/// one read: `definition`, the saga as submitted with defaults applied (for the step payloads);
/// `trace_id`, from the `traceparent` it is stored with (`null` for a saga stored without one);
/// `trace_url`, `SAGA_TRACE_URL_TEMPLATE` with the id in place of `{trace_id}` (`null` if unset).
pub async fn stored(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let saga = stored_saga(&state, &id).await?;
    let trace_id = saga
        .traceparent
        .as_deref()
        .and_then(TraceParent::parse)
        .map(TraceParent::trace_id_hex);
    let trace_url = match (&trace_id, &state.trace_url_template) {
        (Some(trace_id), Some(template)) => Some(template.replace("{trace_id}", trace_id)),
        _ => None,
    };
    Ok(HttpResponse::Ok().json(json!({
        "definition": saga.definition.as_ref(),
        "trace_id": trace_id,
        "trace_url": trace_url,
    })))
}

/// `GET /dashboard/api/dead-letters`: the head of `{ns}.dead-letters`, left in the queue.
pub async fn dead_letters(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let found = state
        .dead_letters
        .browse(DEAD_LETTERS_LIMIT)
        .await
        .map_err(ApiError::Unavailable)?;
    Ok(HttpResponse::Ok().json(found))
}
