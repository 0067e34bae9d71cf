//! Forwarding a request about a saga to the coordinator that owns its partition.
//!
//! With several coordinators on one database, a saga runs only at its partition's owner. An
//! operator's action (or a submission at an instance that owns no partition) may arrive anywhere:
//! it is sent on, once, to the owner's advertised URL with the caller's credentials, and the
//! owner's answer is passed back as it is, so the caller sees the same status codes and bodies as
//! from one coordinator. A request that was forwarded already is never forwarded again: if
//! ownership moved meanwhile, the caller is told to try again.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use crate::web::error::ApiError;

/// Marks a forwarded request, with the id of the instance that forwarded it.
pub const FORWARDED_BY: &str = "x-saga-forwarded-by";

/// Headers a forwarded request keeps.
const KEPT: [&str; 4] = ["authorization", "content-type", "traceparent", "tracestate"];
/// Headers of the owner's answer that are passed back.
const ANSWERED: [&str; 3] = ["content-type", "location", "retry-after"];

/// Longest wait for the owner's answer (it commits before answering).
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
}

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder {
            client: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }
}

impl Forwarder {
    /// Whether `req` was forwarded to this instance by another one.
    pub fn was_forwarded(req: &HttpRequest) -> bool {
        req.headers().contains_key(FORWARDED_BY)
    }

    /// Sends `req` (with `body`) to the instance at `owner_url` and answers what it answered.
    pub async fn forward(
        &self,
        owner_url: &str,
        instance: &str,
        req: &HttpRequest,
        body: Vec<u8>,
    ) -> Result<HttpResponse, ApiError> {
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned());
        let url = format!("{}{path}", owner_url.trim_end_matches('/'));
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
            .map_err(|e| ApiError::Internal(format!("cannot forward the method: {e}")))?;
        let mut request = self
            .client
            .request(method, &url)
            .header(FORWARDED_BY, instance)
            .body(body);
        for name in KEPT {
            if let Some(value) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
                request = request.header(name, value);
            }
        }
        let answer = request.send().await.map_err(|e| {
            ApiError::Unavailable(format!(
                "the coordinator that runs this saga ({owner_url}) did not answer: {e}; try again"
            ))
        })?;
        let status = StatusCode::from_u16(answer.status().as_u16())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = HttpResponse::build(status);
        for name in ANSWERED {
            if let Some(value) = answer.headers().get(name).and_then(|v| v.to_str().ok()) {
                response.insert_header((name, value.to_owned()));
            }
        }
        let body = answer.bytes().await.map_err(|e| {
            ApiError::Unavailable(format!(
                "the answer of the coordinator that runs this saga was cut: {e}; try again"
            ))
        })?;
        Ok(response.body(body))
    }
}
