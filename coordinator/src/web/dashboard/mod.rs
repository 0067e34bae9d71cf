//! The operator's dashboard, served by the coordinator itself at `/` (one half of the web edge,
//! beside the API): an overview of sagas by state, a history search, each saga's page (with its
//! attempts drawn on a time axis), the dead letters, and the operator's actions, updated live
//! through server-sent events.
//!
//! The page is plain HTML, CSS and JavaScript embedded in the binary (no build step). The script
//! builds every element with `textContent`, never `innerHTML`, so values from sagas (names,
//! payloads, errors) are always shown as text; a strict Content-Security-Policy forbids inline
//! scripts besides. The script reuses the JSON API (`/api/v1/...`) for sagas, events and actions, and
//! reads what the API has no answer for (aggregates, step payloads, dead letters, the change
//! stream) from `/dashboard/api/...`.
//!
//! Authentication follows the API's: with `SAGA_API_TOKEN` set, the page asks for the token once and
//! `web::auth` keeps it in an HttpOnly, SameSite=Strict cookie, which the API accepts in place of the
//! bearer header for same-origin requests only.

mod api;
mod stream;

use actix_web::http::header;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpResponse};

use crate::web::auth;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Scripts, styles and data only from this origin; no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The dashboard's routes by method and path, for the 405 answer of `web::configure` (kept beside
/// `configure`, which registers exactly these).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/history"),
    ("GET", "/sagas/{id}"),
    ("GET", "/dead-letters"),
    ("GET", "/dashboard/app.js"),
    ("GET", "/dashboard/app.css"),
    ("POST", "/dashboard/login"),
    ("POST", "/dashboard/logout"),
    ("GET", "/dashboard/api/overview"),
    ("GET", "/dashboard/api/sagas/{id}/stored"),
    ("GET", "/dashboard/api/dead-letters"),
    ("GET", "/dashboard/api/stream"),
];

/// Registers the dashboard's pages, assets and JSON endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(page))
        .route("/history", web::get().to(page))
        .route("/sagas/{id}", web::get().to(page))
        .route("/dead-letters", web::get().to(page))
        .route("/dashboard/app.js", web::get().to(app_js))
        .route("/dashboard/app.css", web::get().to(app_css))
        .route("/dashboard/login", web::post().to(auth::login))
        .route("/dashboard/logout", web::post().to(auth::logout))
        .service(
            web::scope("/dashboard/api")
                .wrap(from_fn(auth::require_token))
                .route("/overview", web::get().to(api::overview))
                .route("/sagas/{id}/stored", web::get().to(api::stored))
                .route("/dead-letters", web::get().to(api::dead_letters))
                .route("/stream", web::get().to(stream::changes)),
        );
}

/// Every page is the same document; the script draws the one its path names. It holds no saga
/// data, so it needs no authentication (the data requests do).
async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(INDEX_HTML)
}

async fn app_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> HttpResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}
