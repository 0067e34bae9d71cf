//! The OpenAPI 3.1 document of the HTTP API, generated from the code with `utoipa`.
//!
//! Each handler carries its `#[utoipa::path]` annotation (method, path, parameters, answers); this
//! module collects them, and `schemas` describes the bodies. The end-to-end tests check the route
//! table against the document (`tests/tests/observability.rs`).

use actix_web::HttpResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::schemas::{CommandKindName, Problem, SagaStateName, StepStateName};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Saga coordinator",
        description = "Runs distributed transactions (sagas) across microservices over Postgres and \
                       RabbitMQ. The contract is docs/contract.md; errors are RFC 9457 problem \
                       details. When SAGA_API_TOKEN is set, /api/v1 requires it as a bearer token.",
        license(name = "Apache-2.0"),
    ),
    paths(
        super::healthz,
        super::readyz,
        super::metrics::scrape,
        document,
        super::sagas::submit,
        super::sagas::list,
        super::sagas::get,
        super::sagas::events,
        super::sagas::abort,
        super::sagas::commit,
        super::sagas::retry,
        super::sagas::resolve,
    ),
    // Problem is named here because the shared problem answers (`schemas::Unauthorized`, ...)
    // reference it without registering it.
    components(schemas(SagaStateName, StepStateName, CommandKindName, Problem)),
    modifiers(&BearerToken),
    tags(
        (name = "sagas", description = "Submit, read and operate sagas"),
        (name = "service", description = "Health, readiness, metrics and this document"),
    ),
)]
pub struct ApiDoc;

/// The document as served at `/api/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "service", responses(
    (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object),
))]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(openapi())
}

/// Declares the bearer token the `/api/v1` operations name in their `security`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::SagaState;

    #[test]
    fn the_document_lists_every_state_from_the_domain() {
        let doc = serde_json::to_value(openapi()).expect("serialises");
        let states = &doc["components"]["schemas"]["SagaState"]["enum"];
        let expected: Vec<&str> = SagaState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(states, &serde_json::json!(expected));
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
