//! The HTTP API (contract, section 2): routes, authentication, and the service endpoints.
//!
//! Handlers parse, call the runtime or the store, and shape documents; saga rules live in
//! `crate::saga`, never here.

pub mod document;
pub mod error;
pub mod sagas;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::JsonPayloadError;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpResponse};
use serde_json::json;
use tokio::sync::watch;

use crate::runtime::Registry;
use error::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub registry: Registry,
    pub amqp_connected: watch::Receiver<bool>,
    pub api_token: Option<String>,
    pub max_body_bytes: usize,
}

/// Registers every route; used by the server and by tests alike.
pub fn configure(cfg: &mut web::ServiceConfig, state: web::Data<AppState>) {
    let limit = state.max_body_bytes;
    let json = web::JsonConfig::default()
        .limit(limit)
        .content_type_required(false)
        .error_handler(move |err, _| {
            let api = match err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => ApiError::TooLarge(limit),
                other => ApiError::MalformedJson(other.to_string()),
            };
            api.into()
        });
    cfg.app_data(state)
        .app_data(json)
        .app_data(
            web::QueryConfig::default()
                .error_handler(|err, _| ApiError::invalid("query", err.to_string()).into()),
        )
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .service(
            web::scope("/api/v1")
                .wrap(from_fn(require_token))
                .route("/sagas", web::post().to(sagas::submit))
                .route("/sagas", web::get().to(sagas::list))
                .route("/sagas/{id}", web::get().to(sagas::get))
                .route("/sagas/{id}/events", web::get().to(sagas::events))
                .route("/sagas/{id}/abort", web::post().to(sagas::abort))
                .route("/sagas/{id}/commit", web::post().to(sagas::commit))
                .route("/sagas/{id}/retry", web::post().to(sagas::retry))
                .route("/sagas/{id}/resolve", web::post().to(sagas::resolve)),
        )
        .default_service(web::to(not_found));
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

/// `SAGA_API_TOKEN`: when set, every `/api/` request must carry it as a bearer token.
async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let expected = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.api_token.clone());
    if let Some(expected) = expected {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
            return Err(ApiError::Unauthorized.into());
        }
    }
    next.call(req).await
}

/// Compares without leaking where the first difference is through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 only while both Postgres and RabbitMQ are reachable.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.registry.store().clone();
    let postgres = web::block(move || store.ping()).await.unwrap_or(false);
    let rabbitmq = *state.amqp_connected.borrow();
    let body = json!({"postgres": postgres, "rabbitmq": rabbitmq});
    if postgres && rabbitmq {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
