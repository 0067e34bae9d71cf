//! Handlers of `/api/v1/saga-names`: pausing and resuming every saga of a name.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::schemas::{self, Invalid, Unauthorized, Unavailable};
use crate::web::error::ApiError;
use crate::web::state::AppState;

/// The name from the path, if it can be a saga's name at all.
fn saga_name(raw: String) -> Result<String, ApiError> {
    if crate::submission::is_name(&raw) {
        Ok(raw)
    } else {
        Err(ApiError::invalid(
            "name",
            format!(
                "not a saga name (it matches {})",
                crate::submission::NAME_PATTERN
            ),
        ))
    }
}

fn held(name: &str, since: Option<DateTime<Utc>>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "name": name, "paused_at": since }))
}

/// The names whose sagas are paused, by name.
#[utoipa::path(get, path = "/api/v1/saga-names/paused", tag = "sagas", security(("bearer" = [])),
    responses(
    (status = 200, description = "The paused names", body = schemas::PausedNameList),
    Unauthorized, Unavailable,
))]
pub async fn paused(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let names = state.store()?.interact(|db| db.paused_names()).await?;
    let items: Vec<_> = names
        .into_iter()
        .map(|(name, since)| json!({ "name": name, "paused_at": since }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// Pauses every saga of this name: running ones (each within about a second, on whichever
/// coordinator owns it) and new ones (they start paused), until the name is resumed. Pausing a
/// paused name answers 200 and keeps the first pause's time.
#[utoipa::path(post, path = "/api/v1/saga-names/{name}/pause", tag = "sagas", security(("bearer" = [])),
    params(("name" = String, Path, description = "The sagas' name (what `name` was at submission)")),
    responses(
    (status = 200, description = "The name is paused, since `paused_at`", body = schemas::PausedName),
    Unauthorized, Invalid, Unavailable,
))]
pub async fn pause(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = saga_name(name.into_inner())?;
    let running = state.running_or_unavailable()?;
    let held_name = name.clone();
    let since = running
        .store
        .interact(move |db| db.pause_name(&held_name))
        .await?;
    running.registry.paused_names().changed(&name, true);
    Ok(held(&name, Some(since)))
}

/// Resumes the sagas this name's pause holds (not those an operator paused one by one); new
/// sagas of the name run at once again. Resuming a name that is not paused answers 200.
#[utoipa::path(post, path = "/api/v1/saga-names/{name}/resume", tag = "sagas", security(("bearer" = [])),
    params(("name" = String, Path, description = "The sagas' name")),
    responses(
    (status = 200, description = "The name is not paused (`paused_at` is null)", body = schemas::PausedName),
    Unauthorized, Invalid, Unavailable,
))]
pub async fn resume(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = saga_name(name.into_inner())?;
    let running = state.running_or_unavailable()?;
    let released = name.clone();
    running
        .store
        .interact(move |db| db.resume_name(&released))
        .await?;
    running.registry.paused_names().changed(&name, false);
    Ok(held(&name, None))
}
