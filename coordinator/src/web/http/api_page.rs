//! The interactive API page at `/api/docs`: Swagger UI, served by the coordinator itself.
//!
//! The Swagger UI files (`coordinator/assets/swagger-ui/`, Apache-2.0, version in `VERSION`) are
//! compiled into the binary, so the page works without internet access. It reads the document from
//! `/api/v1/openapi.json`; "Authorize" takes the bearer token when `SAGA_API_TOKEN` is set.

use actix_web::http::header::{CacheControl, CacheDirective, ContentType};
use actix_web::{web, HttpResponse};

const BUNDLE_JS: &[u8] = include_bytes!("../../../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../../../assets/swagger-ui/swagger-ui.css");
const LICENSE: &[u8] = include_bytes!("../../../assets/swagger-ui/LICENSE");

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Saga coordinator API</title>
  <link rel="stylesheet" href="/api/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/api/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/api/v1/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      validatorUrl: "none"
    });
  </script>
</body>
</html>
"##;

/// The API page's routes by method and path, for the 405 answer of `web::configure`.
pub const ROUTES: &[(&str, &str)] = &[("GET", "/api/docs"), ("GET", "/api/docs/{file}")];

/// Registers the page and its assets (not part of the API, so not in the OpenAPI document).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/docs", web::get().to(page))
        .route("/api/docs/{file}", web::get().to(asset));
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .body(PAGE)
}

async fn asset(file: web::Path<String>) -> HttpResponse {
    let (body, content_type) = match file.as_str() {
        "swagger-ui-bundle.js" => (BUNDLE_JS, "text/javascript; charset=utf-8"),
        "swagger-ui.css" => (CSS, "text/css; charset=utf-8"),
        "LICENSE" => (LICENSE, "text/plain; charset=utf-8"),
        _ => return HttpResponse::NotFound().finish(),
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(CacheControl(vec![
            CacheDirective::Public,
            CacheDirective::MaxAge(86_400),
        ]))
        .body(body)
}
