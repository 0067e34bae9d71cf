//! The HTTP API (contract, section 2): routes, authentication, and the service endpoints.
//!
//! Handlers parse, call the runtime or the store, and shape documents; saga rules live in
//! `crate::saga`, never here.

pub mod api_page;
pub mod document;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod sagas;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::JsonPayloadError;
use actix_web::http::Method;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, FromRequest, Handler, HttpResponse, Responder};
use serde_json::json;
use tokio::sync::watch;

use crate::runtime::Registry;
use error::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub registry: Registry,
    pub amqp_connected: watch::Receiver<bool>,
    /// Depth of `{ns}.dead-letters`, for the metrics.
    pub dead_letter_depth: watch::Receiver<Option<u32>>,
    pub api_token: Option<String>,
    pub max_body_bytes: usize,
    /// Browses `{ns}.dead-letters` for the dashboard.
    pub dead_letters: crate::amqp::dead_letters::DeadLetterBrowser,
}

/// Where the API lives; its routes are listed relative to it in [`api_routes`].
pub const API_PREFIX: &str = "/api/v1";

/// One route of the route table: method, path and handler.
pub struct RouteSpec {
    pub method: Method,
    /// Relative to the table's prefix, in actix and OpenAPI syntax alike (`/sagas/{id}`).
    pub path: &'static str,
    route: actix_web::Route,
}

fn route<F, Args>(method: Method, path: &'static str, handler: F) -> RouteSpec
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    RouteSpec {
        route: web::method(method.clone()).to(handler),
        method,
        path,
    }
}

/// Routes outside the API scope: no token needed. Every one is in the OpenAPI document.
pub fn service_routes() -> Vec<RouteSpec> {
    vec![
        route(Method::GET, "/healthz", healthz),
        route(Method::GET, "/readyz", readyz),
        route(Method::GET, "/metrics", metrics::scrape),
        // Public, so the API page can read it; registered before the API scope so it wins.
        route(Method::GET, "/api/v1/openapi.json", openapi::document),
    ]
}

/// The API (under [`API_PREFIX`], behind the bearer token). Every one is in the OpenAPI document.
pub fn api_routes() -> Vec<RouteSpec> {
    vec![
        route(Method::POST, "/sagas", sagas::submit),
        route(Method::GET, "/sagas", sagas::list),
        route(Method::GET, "/sagas/{id}", sagas::get),
        route(Method::GET, "/sagas/{id}/events", sagas::events),
        route(Method::POST, "/sagas/{id}/abort", sagas::abort),
        route(Method::POST, "/sagas/{id}/commit", sagas::commit),
        route(Method::POST, "/sagas/{id}/retry", sagas::retry),
        route(Method::POST, "/sagas/{id}/resolve", sagas::resolve),
    ]
}

/// Every route of the table as (method, full path): what the OpenAPI document must describe.
pub fn route_table() -> Vec<(Method, String)> {
    let service = service_routes()
        .into_iter()
        .map(|r| (r.method, r.path.to_owned()));
    let api = api_routes()
        .into_iter()
        .map(|r| (r.method, format!("{API_PREFIX}{}", r.path)));
    service.chain(api).collect()
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
    cfg.app_data(state).app_data(json).app_data(
        web::QueryConfig::default()
            .error_handler(|err, _| ApiError::invalid("query", err.to_string()).into()),
    );
    for r in service_routes() {
        cfg.route(r.path, r.route);
    }
    api_page::configure(cfg);
    let mut api = web::scope(API_PREFIX).wrap(from_fn(require_token));
    for r in api_routes() {
        api = api.route(r.path, r.route);
    }
    cfg.service(api)
        .configure(crate::dashboard::configure)
        .default_service(web::to(not_found));
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

/// `SAGA_API_TOKEN`: when set, every `/api/` request must carry it as a bearer token, or come from
/// the dashboard with its login cookie (see `crate::dashboard::auth`). Requests that would change
/// something are refused when a browser says they come from another site.
pub(crate) async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    use crate::dashboard::auth;
    let changes = auth::changes_state(req.request());
    if changes && auth::is_cross_origin(req.request()) {
        return Err(ApiError::Forbidden("cross-site requests may not change sagas".into()).into());
    }
    let expected = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.api_token.clone());
    if let Some(expected) = expected {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), expected.as_bytes()) => {}
            None if auth::cookie_matches(req.request(), &expected) => {
                if changes && !auth::from_dashboard(req.request()) {
                    return Err(ApiError::Forbidden(
                        "a change authenticated by the dashboard's cookie must come from its page"
                            .into(),
                    )
                    .into());
                }
            }
            _ => return Err(ApiError::Unauthorized.into()),
        }
    }
    next.call(req).await
}

/// Compares without leaking where the first difference is through timing.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "The process is alive", body = openapi::Health)))]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 only while both Postgres and RabbitMQ are reachable.
#[utoipa::path(get, path = "/readyz", tag = "service", responses(
    (status = 200, description = "Postgres and RabbitMQ are reachable", body = openapi::Readiness),
    (status = 503, description = "Postgres or RabbitMQ is not reachable", body = openapi::Readiness),
))]
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
