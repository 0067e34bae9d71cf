//! The HTTP API (contract, section 2) and the service endpoints (health, readiness, metrics, the
//! OpenAPI document and its page). The routes are registered by the parent's route table.

pub mod api_page;
pub mod bulk_actions;
pub mod export;
mod filter;
pub mod metrics;
pub mod names;
pub mod openapi;
mod page;
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

/// 200 only while both Postgres and RabbitMQ are reachable; 503 otherwise, and while the
/// coordinator starts (waiting for Postgres, migrating, resuming sagas), with the reason.
#[utoipa::path(get, path = "/readyz", tag = "service", responses(
    (status = 200, description = "Postgres and RabbitMQ are reachable", body = schemas::Readiness),
    (status = 503, description = "Starting, or Postgres or RabbitMQ is not reachable", body = schemas::Readiness),
))]
pub(super) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let Some(running) = state.running() else {
        let (postgres, reason) = state
            .still_starting()
            .map_or((false, String::new()), |s| (s.postgres, s.doing));
        // RabbitMQ is connected only once Postgres is ready: until then it is not, whatever the broker.
        let body = json!({"postgres": postgres, "rabbitmq": false, "reason": reason});
        return HttpResponse::ServiceUnavailable().json(body);
    };
    let postgres = running
        .store
        .interact(|db| Ok(db.ping()))
        .await
        .unwrap_or(false);
    let rabbitmq = *running.amqp_connected.borrow();
    let reason = match (postgres, rabbitmq) {
        (true, true) => None,
        (false, true) => Some("Postgres is not reachable"),
        (true, false) => Some("RabbitMQ is not connected"),
        (false, false) => Some("Postgres is not reachable and RabbitMQ is not connected"),
    };
    // A member that owns no partition now is still ready: it takes submissions (forwarding them)
    // and gets partitions within a few lease periods.
    let partitions_owned = running.ownership.owned_count();
    match reason {
        None => HttpResponse::Ok().json(json!({
            "postgres": postgres, "rabbitmq": rabbitmq, "partitions_owned": partitions_owned,
        })),
        Some(reason) => HttpResponse::ServiceUnavailable().json(json!({
            "postgres": postgres, "rabbitmq": rabbitmq, "partitions_owned": partitions_owned,
            "reason": reason,
        })),
    }
}
