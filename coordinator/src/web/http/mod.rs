//! The HTTP API (contract, section 2) and the service endpoints (health, readiness, metrics, the
//! OpenAPI document and its page). The routes are registered by the parent's route table.

pub mod api_page;
pub mod metrics;
pub mod openapi;
pub mod sagas;
pub mod schemas;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::web::state::AppState;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "The process is alive", body = schemas::Health)))]
pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 only while both Postgres and RabbitMQ are reachable.
#[utoipa::path(get, path = "/readyz", tag = "service", responses(
    (status = 200, description = "Postgres and RabbitMQ are reachable", body = schemas::Readiness),
    (status = 503, description = "Postgres or RabbitMQ is not reachable", body = schemas::Readiness),
))]
pub(super) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let postgres = state
        .store
        .interact(|db| Ok(db.ping()))
        .await
        .unwrap_or(false);
    let rabbitmq = *state.amqp_connected.borrow();
    let body = json!({"postgres": postgres, "rabbitmq": rabbitmq});
    if postgres && rabbitmq {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
