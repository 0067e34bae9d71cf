//! The web edge: everything the coordinator answers over HTTP, and the only part that knows
//! actix-web. It has two halves, each depending only on this parent (`state`, `auth`, `error`,
//! `document`) and on the runtime and the store, never on the other (checked by `tests.rs`):
//! - [`http`] — the HTTP API (contract, section 2), the service endpoints, the OpenAPI document;
//! - [`dashboard`] — the operator's dashboard at `/`.
//!
//! This module registers every route. Its route table (service routes and API) is the one list the
//! OpenAPI document is checked against. Handlers parse, call the runtime or the store, and shape
//! documents; saga rules live in `crate::saga`, never here. Every read goes through
//! [`crate::store::Store::interact`], so none runs on an HTTP worker's thread.

pub mod auth;
pub mod dashboard;
pub mod document;
pub mod error;
pub mod forward;
pub mod http;
pub mod state;

use actix_web::dev::ResourceDef;
use actix_web::error::JsonPayloadError;
use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{web, FromRequest, Handler, HttpRequest, HttpResponse, Responder};

use auth::require_token;
use error::ApiError;
use state::AppState;

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
        route(Method::GET, "/healthz", http::healthz),
        route(Method::GET, "/readyz", http::readyz),
        route(Method::GET, "/metrics", http::metrics::scrape),
        // Public, so the API page can read it; registered before the API scope so it wins.
        route(Method::GET, "/api/v1/openapi.json", http::openapi::document),
    ]
}

/// The API (under [`API_PREFIX`], behind the bearer token). Every one is in the OpenAPI document.
pub fn api_routes() -> Vec<RouteSpec> {
    vec![
        route(Method::POST, "/sagas", http::sagas::submit),
        route(Method::GET, "/sagas", http::sagas::list),
        // Before `/sagas/{id}`, or `export` would be taken for an id.
        route(Method::GET, "/sagas/export", http::export::export),
        route(Method::GET, "/sagas/{id}", http::sagas::get),
        route(Method::GET, "/sagas/{id}/events", http::sagas::events),
        route(Method::POST, "/sagas/{id}/abort", http::sagas::abort),
        route(Method::POST, "/sagas/{id}/commit", http::sagas::commit),
        route(Method::POST, "/sagas/{id}/retry", http::sagas::retry),
        route(
            Method::POST,
            "/sagas/{id}/retry-now",
            http::sagas::retry_now,
        ),
        route(Method::POST, "/sagas/{id}/resolve", http::sagas::resolve),
        route(Method::POST, "/sagas/{id}/pause", http::sagas::pause),
        route(Method::POST, "/sagas/{id}/resume", http::sagas::resume),
        route(Method::GET, "/saga-names/paused", http::names::paused),
        route(Method::POST, "/saga-names/{name}/pause", http::names::pause),
        route(
            Method::POST,
            "/saga-names/{name}/resume",
            http::names::resume,
        ),
        route(Method::POST, "/bulk-actions", http::bulk_actions::create),
        route(Method::GET, "/bulk-actions", http::bulk_actions::list),
        route(Method::GET, "/bulk-actions/{id}", http::bulk_actions::get),
        route(
            Method::GET,
            "/bulk-actions/{id}/sagas",
            http::bulk_actions::sagas,
        ),
        route(
            Method::POST,
            "/bulk-actions/{id}/cancel",
            http::bulk_actions::cancel,
        ),
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

/// Registers every route (the table above, the API page, the dashboard); used by the server and by
/// tests alike.
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
    http::api_page::configure(cfg);
    let mut api = web::scope(API_PREFIX).wrap(from_fn(require_token));
    for r in api_routes() {
        api = api.route(r.path, r.route);
    }
    cfg.service(api)
        .configure(dashboard::configure)
        .default_service(web::to(no_route));
}

/// Reached when no route matched both path and method: a path some route has answers 405 with the
/// methods it has in `Allow`; any other path is 404.
async fn no_route(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let allowed = allowed_methods(request.path());
    if allowed.is_empty() {
        return Err(ApiError::NotFound("no such route".into()));
    }
    Err(ApiError::MethodNotAllowed {
        method: request.method().to_string(),
        allowed,
    })
}

/// The methods registered for `path`, over every route `configure` registers, in table order.
fn allowed_methods(path: &str) -> Vec<String> {
    let table = route_table();
    let registered = table
        .iter()
        .map(|(method, pattern)| (method.as_str(), pattern.as_str()))
        .chain(http::api_page::ROUTES.iter().copied())
        .chain(dashboard::ROUTES.iter().copied());
    let mut allowed: Vec<String> = Vec::new();
    for (method, pattern) in registered {
        if ResourceDef::new(pattern).is_match(path) && !allowed.iter().any(|m| m == method) {
            allowed.push(method.to_owned());
        }
    }
    allowed
}

#[cfg(test)]
mod starting_tests;

#[cfg(test)]
mod tests {
    use super::allowed_methods;

    #[test]
    fn a_known_path_lists_its_methods_and_an_unknown_one_none() {
        assert_eq!(allowed_methods("/api/v1/sagas"), ["POST", "GET"]);
        assert_eq!(allowed_methods("/api/v1/sagas/abc/abort"), ["POST"]);
        assert_eq!(allowed_methods("/sagas/abc"), ["GET"]);
        assert_eq!(allowed_methods("/history"), ["GET"]);
        assert_eq!(allowed_methods("/healthz"), ["GET"]);
        assert!(allowed_methods("/api/v1/nothing-here").is_empty());
        assert!(allowed_methods("/api/v1/sagas/abc/def/ghi").is_empty());
    }
}
