//! The OpenAPI 3.1 document of the HTTP API, generated from the code with `utoipa`.
//!
//! Each handler carries its `#[utoipa::path]` annotation (method, path, parameters, answers); this
//! module collects them, and `schemas` describes the bodies. The end-to-end tests check the route
//! table against the document (`tests/tests/observability.rs`).

use std::sync::OnceLock;

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::filter::{MAX_ERROR_TEXT, NO_NUL_PATTERN};
use super::page::{DEFAULT_LIMIT, MAX_LIMIT};
use super::sagas::NOTE_PATTERN;
use crate::submission::{
    CHECK_BACK_URL_PATTERN, MAX_ATTEMPTS, MAX_BACKOFF_MS, MAX_KEY_CHARS, MAX_NAME_LEN, MAX_STEPS,
    MAX_TIMEOUT_MS, MULTIPLIER_RANGE, NAME_PATTERN,
};

use super::schemas::{
    BulkOutcomeFilter, CommandKindName, PausedByName, Problem, SagaStateName, StepStateName,
};
use crate::web::state::AppState;

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
        super::export::export,
        super::sagas::get,
        super::sagas::events,
        super::sagas::abort,
        super::sagas::commit,
        super::sagas::retry,
        super::sagas::retry_now,
        super::sagas::pause,
        super::sagas::resume,
        super::names::paused,
        super::names::pause,
        super::names::resume,
        super::sagas::resolve,
        super::bulk_actions::create,
        super::bulk_actions::list,
        super::bulk_actions::get,
        super::bulk_actions::sagas,
        super::bulk_actions::cancel,
    ),
    // Problem is named here because the shared problem answers (`schemas::Unauthorized`, ...)
    // reference it without registering it.
    components(schemas(
        SagaStateName,
        StepStateName,
        CommandKindName,
        PausedByName,
        BulkOutcomeFilter,
        Problem
    )),
    modifiers(&BearerToken),
    tags(
        (name = "sagas", description = "Submit, read and operate sagas"),
        (name = "bulk actions", description = "One operator's action over every saga a filter matches, as a durable job"),
        (name = "service", description = "Health, readiness, metrics and this document"),
    ),
)]
pub struct ApiDoc;

/// The document as served at `/api/v1/openapi.json`: the generated one with the constraints the
/// server enforces written in from the constants that enforce them.
pub fn openapi() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|e| {
        log::error!("cannot serialise the OpenAPI document: {e}");
        Value::Null
    });
    for (pointer, constraints) in constraints() {
        match doc.pointer_mut(pointer).and_then(Value::as_object_mut) {
            Some(schema) => schema.extend(constraints),
            None => log::error!("the OpenAPI document has no {pointer}"),
        }
    }
    doc
}

/// Where each rule of `crate::submission` (and of the handlers) goes in the document, as JSON
/// Schema keywords. utoipa's attributes take literals only, so the values are written in here from
/// the constants themselves, and the document cannot drift from the code.
fn constraints() -> Vec<(&'static str, Map<String, Value>)> {
    let object = |value: Value| match value {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let name =
        || object(json!({"minLength": 1, "maxLength": MAX_NAME_LEN, "pattern": NAME_PATTERN}));
    let timeout = || object(json!({"minimum": 1, "maximum": MAX_TIMEOUT_MS}));
    let backoff = || object(json!({"minimum": 0, "maximum": MAX_BACKOFF_MS}));
    let closed = || object(json!({"additionalProperties": false}));
    const SUBMISSION: &str = "/components/schemas/SagaSubmission";
    const STEP: &str = "/components/schemas/StepSubmission";
    const CHECK_BACK: &str = "/components/schemas/CheckBack";
    const RETRY: &str = "/components/schemas/RetryPolicy";
    const BULK_REQUEST: &str = "/components/schemas/BulkActionRequest";
    const BULK_FILTER: &str = "/components/schemas/BulkFilter";
    vec![
        // Unknown fields are errors (contract-notes), so the submission's objects are closed.
        (SUBMISSION, closed()),
        // `submission::two_phase`: a prepared saga needs a check-back; a running one takes neither
        // a check-back nor a prepare timeout (null counts as absent).
        (
            SUBMISSION,
            object(json!({
                "if": {"properties": {"mode": {"const": "prepare"}}, "required": ["mode"]},
                "then": {
                    "required": ["check_back"],
                    "properties": {"check_back": {"$ref": "#/components/schemas/CheckBack"}},
                },
                "else": {
                    "properties": {
                        "check_back": {"type": "null"},
                        "prepare_timeout_ms": {"type": "null"},
                    },
                },
            })),
        ),
        ("/components/schemas/SagaSubmission/properties/name", name()),
        (
            "/components/schemas/SagaSubmission/properties/key",
            object(json!({"minLength": 1, "maxLength": MAX_KEY_CHARS})),
        ),
        (
            "/components/schemas/SagaSubmission/properties/timeout_ms",
            timeout(),
        ),
        (
            "/components/schemas/SagaSubmission/properties/prepare_timeout_ms",
            timeout(),
        ),
        (
            "/components/schemas/SagaSubmission/properties/mode",
            object(json!({"enum": ["run", "prepare", null]})),
        ),
        (
            "/components/schemas/SagaSubmission/properties/steps",
            object(json!({"maxItems": MAX_STEPS})),
        ),
        (STEP, closed()),
        ("/components/schemas/StepSubmission/properties/name", name()),
        (
            "/components/schemas/StepSubmission/properties/participant",
            name(),
        ),
        (
            "/components/schemas/StepSubmission/properties/action",
            name(),
        ),
        (
            "/components/schemas/StepSubmission/properties/compensation",
            name(),
        ),
        (
            "/components/schemas/StepSubmission/properties/timeout_ms",
            timeout(),
        ),
        (
            "/components/schemas/StepSubmission/properties/after/items",
            name(),
        ),
        (
            "/components/schemas/StepSubmission/properties/after",
            // What JSON Schema cannot say is said in words: the names are of other steps of the
            // same saga, and they form no cycle.
            object(json!({
                "uniqueItems": true,
                "description": "Names of other steps of this saga that must succeed first \
                                (no step twice, no cycle).",
            })),
        ),
        (CHECK_BACK, closed()),
        // Exactly one of `participant` and `url`.
        (
            CHECK_BACK,
            object(json!({"oneOf": [
                {
                    "required": ["participant"],
                    "properties": {"participant": {"type": "string"}, "url": {"type": "null"}},
                },
                {
                    "required": ["url"],
                    "properties": {"url": {"type": "string"}, "participant": {"type": "null"}},
                },
            ]})),
        ),
        (
            "/components/schemas/CheckBack/properties/participant",
            name(),
        ),
        (
            "/components/schemas/CheckBack/properties/url",
            object(json!({"pattern": CHECK_BACK_URL_PATTERN})),
        ),
        (
            "/components/schemas/CheckBack/properties/timeout_ms",
            timeout(),
        ),
        (RETRY, closed()),
        (
            RETRY,
            object(json!({
                "description": "How often and how fast a command is tried again (every field \
                                optional; defaults in the contract). `max_backoff_ms` must be at \
                                least `initial_backoff_ms`, a given one compared with the \
                                other's default.",
            })),
        ),
        (
            "/components/schemas/RetryPolicy/properties/max_attempts",
            object(json!({"minimum": 1, "maximum": MAX_ATTEMPTS})),
        ),
        (
            "/components/schemas/RetryPolicy/properties/initial_backoff_ms",
            backoff(),
        ),
        (
            "/components/schemas/RetryPolicy/properties/max_backoff_ms",
            backoff(),
        ),
        (
            "/components/schemas/RetryPolicy/properties/multiplier",
            object(json!({
                "minimum": MULTIPLIER_RANGE.start(),
                "maximum": MULTIPLIER_RANGE.end(),
            })),
        ),
        (
            "/components/schemas/ResolveRequest/properties/note",
            object(json!({"minLength": 1, "pattern": NOTE_PATTERN})),
        ),
        (BULK_REQUEST, closed()),
        // A resolve needs a note; no other action takes one.
        (
            BULK_REQUEST,
            object(json!({"oneOf": [
                {
                    "required": ["note"],
                    "properties": {
                        "action": {"const": "resolve"},
                        "note": {"type": "string", "minLength": 1, "pattern": NOTE_PATTERN},
                    },
                },
                {
                    "properties": {
                        "action": {"not": {"const": "resolve"}},
                        "note": {"type": "null"},
                    },
                },
            ]})),
        ),
        (BULK_FILTER, closed()),
        // At least one of the two; a bulk action never applies to every saga.
        (
            BULK_FILTER,
            object(json!({"anyOf": [
                {"required": ["state"], "properties": {"state": {"type": "array"}}},
                {"required": ["name"], "properties": {"name": {"type": "string"}}},
            ]})),
        ),
        (
            "/components/schemas/BulkFilter/properties/state",
            object(json!({"minItems": 1})),
        ),
        ("/components/schemas/BulkFilter/properties/name", name()),
        // The list's parameters in their order: state, name, key, participant, step, error,
        // created_after, created_before, finished_after, finished_before, limit, before, after.
        ("/paths/~1api~1v1~1sagas/get/parameters/1/schema", name()),
        (
            "/paths/~1api~1v1~1sagas/get/parameters/2/schema",
            object(json!({"minLength": 1, "maxLength": MAX_KEY_CHARS, "pattern": NO_NUL_PATTERN})),
        ),
        ("/paths/~1api~1v1~1sagas/get/parameters/3/schema", name()),
        ("/paths/~1api~1v1~1sagas/get/parameters/4/schema", name()),
        (
            "/paths/~1api~1v1~1sagas/get/parameters/5/schema",
            object(json!({"minLength": 1, "maxLength": MAX_ERROR_TEXT, "pattern": NO_NUL_PATTERN})),
        ),
        // The export's parameters in their order: state, name, finished_after, finished_before,
        // after.
        (
            "/paths/~1api~1v1~1sagas~1export/get/parameters/1/schema",
            name(),
        ),
        (
            "/paths/~1api~1v1~1saga-names~1{name}~1pause/post/parameters/0/schema",
            name(),
        ),
        (
            "/paths/~1api~1v1~1saga-names~1{name}~1resume/post/parameters/0/schema",
            name(),
        ),
        (
            "/paths/~1api~1v1~1sagas/get/parameters/10/schema",
            object(json!({"minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT})),
        ),
        (
            // limit, before.
            "/paths/~1api~1v1~1bulk-actions/get/parameters/0/schema",
            object(json!({"minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT})),
        ),
        (
            // id, outcome, limit, after.
            "/paths/~1api~1v1~1bulk-actions~1{id}~1sagas/get/parameters/2/schema",
            object(json!({"minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT})),
        ),
    ]
}

/// The document for a server that requires the bearer token or not (`SAGA_API_TOKEN`): without
/// one, no operation names a security requirement or answers 401, so that the document says what
/// this server accepts, and clients (and API fuzzers) can trust it either way.
pub fn openapi_for(token_required: bool) -> Value {
    let mut doc = openapi();
    if token_required {
        return doc;
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for operation in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|item| item.values_mut())
            .filter_map(Value::as_object_mut)
        {
            operation.remove("security");
            if let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            {
                responses.remove("401");
            }
        }
    }
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        components.remove("securitySchemes");
    }
    doc
}

/// This OpenAPI document, as it applies to this server: with the bearer token only when
/// `SAGA_API_TOKEN` is set.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "service", responses(
    (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object),
))]
pub async fn document(state: web::Data<AppState>) -> HttpResponse {
    // Built once per token mode: the document never changes while the process runs.
    static WITH_TOKEN: OnceLock<Value> = OnceLock::new();
    static WITHOUT_TOKEN: OnceLock<Value> = OnceLock::new();
    let token_required = state.api_token.is_some();
    let cell = if token_required {
        &WITH_TOKEN
    } else {
        &WITHOUT_TOKEN
    };
    HttpResponse::Ok().json(cell.get_or_init(|| openapi_for(token_required)))
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
        let doc = openapi();
        let states = &doc["components"]["schemas"]["SagaState"]["enum"];
        let expected: Vec<&str> = SagaState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(states, &serde_json::json!(expected));
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[test]
    fn without_a_token_the_document_asks_for_none() {
        let with = openapi_for(true);
        let without = openapi_for(false);
        let submit = "/paths/~1api~1v1~1sagas/post";
        assert_eq!(
            with.pointer(&format!("{submit}/security/0/bearer")),
            Some(&json!([]))
        );
        assert!(with.pointer(&format!("{submit}/responses/401")).is_some());
        assert!(with["components"]["securitySchemes"]["bearer"].is_object());
        let text = without.to_string();
        assert!(!text.contains("\"security\""), "{text}");
        assert!(!text.contains("securitySchemes"), "{text}");
        for (path, item) in without["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("an item") {
                assert!(
                    operation["responses"].get("401").is_none(),
                    "{method} {path} still answers 401"
                );
            }
        }
        // Everything else is the same document.
        assert_eq!(
            with["components"]["schemas"],
            without["components"]["schemas"]
        );
        assert_eq!(
            with["paths"].as_object().map(|p| p.len()),
            without["paths"].as_object().map(|p| p.len())
        );
    }

    #[test]
    fn the_document_carries_the_rules_the_server_enforces() {
        let doc = openapi();
        for (pointer, constraints) in constraints() {
            let schema = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("no {pointer}"));
            for (keyword, value) in constraints {
                assert_eq!(schema[&keyword], value, "{pointer} {keyword}");
            }
        }
        let schemas = &doc["components"]["schemas"];
        let name = &schemas["StepSubmission"]["properties"]["participant"];
        assert_eq!(name["pattern"], crate::submission::NAME_PATTERN);
        assert_eq!(name["maxLength"], 64);
        assert_eq!(
            schemas["RetryPolicy"]["properties"]["max_attempts"]["maximum"],
            1000
        );
        assert_eq!(
            schemas["ResolveRequest"]["properties"]["note"]["minLength"],
            1
        );
        assert_eq!(
            schemas["ResolveRequest"]["properties"]["note"]["pattern"],
            super::super::sagas::NOTE_PATTERN
        );
        let list = &doc["paths"]["/api/v1/sagas"]["get"]["parameters"];
        let names: Vec<&str> = list
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            names,
            [
                "state",
                "name",
                "key",
                "participant",
                "step",
                "error",
                "created_after",
                "created_before",
                "finished_after",
                "finished_before",
                "limit",
                "before",
                "after"
            ]
        );
        let limit = &list[10];
        assert_eq!(limit["schema"]["maximum"], 500);
        assert_eq!(limit["schema"]["minimum"], 1);
        for (i, max) in [(2, MAX_KEY_CHARS), (5, MAX_ERROR_TEXT)] {
            assert_eq!(list[i]["schema"]["maxLength"], max, "{i}");
            assert_eq!(list[i]["schema"]["pattern"], NO_NUL_PATTERN, "{i}");
        }
        for i in [1, 3, 4] {
            assert_eq!(list[i]["schema"]["pattern"], NAME_PATTERN, "{i}");
        }
        for i in 6..10 {
            assert_eq!(list[i]["schema"]["format"], "date-time", "{i}");
        }
        assert!(doc["components"]["schemas"]["SagaList"]["properties"]["prev"].is_object());
    }

    #[test]
    fn the_export_is_documented_as_json_lines_with_the_lists_filters() {
        let doc = openapi();
        let export = &doc["paths"]["/api/v1/sagas/export"]["get"];
        let names: Vec<&str> = export["parameters"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            names,
            [
                "state",
                "name",
                "finished_after",
                "finished_before",
                "after"
            ],
            "{export}"
        );
        let list = &doc["paths"]["/api/v1/sagas"]["get"]["parameters"];
        for (e, l) in [(0, 0), (1, 1), (2, 8), (3, 9)] {
            assert_eq!(export["parameters"][e], list[l], "{e}");
        }
        for i in 2..4 {
            let schema = &export["parameters"][i]["schema"];
            assert_eq!(schema["format"], "date-time", "{schema}");
        }
        let ok = &export["responses"]["200"]["content"];
        assert_eq!(
            ok["application/x-ndjson"]["schema"]["$ref"], "#/components/schemas/ExportedSaga",
            "{ok}"
        );
        assert!(export["responses"]["422"].is_object());
        let line = &doc["components"]["schemas"]["ExportedSaga"];
        assert!(
            line.to_string()
                .contains("#/components/schemas/SagaDocument"),
            "{line}"
        );
        assert!(line.to_string().contains("events"), "{line}");
    }

    #[test]
    fn the_published_note_pattern_is_the_rule_the_server_applies() {
        let pattern = regex::Regex::new(super::super::sagas::NOTE_PATTERN).expect("a regex");
        for note in [
            "refunded",
            " x ",
            "",
            " ",
            "\t\n",
            "\u{1c}\u{1f}",
            "\0",
            "a\0",
            "\0 b",
            "\u{a0}",
            "\u{a0}é",
            "\u{2028}",
            "\u{200b}",
            "\u{85}",
        ] {
            assert_eq!(
                pattern.is_match(note),
                super::super::sagas::is_note(note),
                "{note:?}"
            );
        }
    }
}
