//! Check-backs over HTTP (contract, section 5): `GET {url}?saga_id={id}` answering
//! `{"outcome": "committed" | "aborted" | "pending"}`.
//!
//! Check-backs to a participant travel as `check` commands through the outbox like every other
//! command; only the URL form is executed here. It is not written to the outbox: if the coordinator
//! crashes with a request out, the attempt's durable reply timeout fires after the restart and the
//! machine asks again, so nothing is lost by keeping the request in memory.
//!
//! The URL comes from a client, so the request stays narrow: redirects are not followed (a 3xx is
//! no answer), the answer is read only up to [`MAX_ANSWER_BYTES`], and the check-back's timeout
//! bounds the whole exchange. Each of these is an unusable answer: `retry`, ask again later.

use std::time::Duration;

use serde::Deserialize;
use uuid::Uuid;

use crate::saga::{CommandKind, Outcome, Reply};

/// The largest answer read from a check-back URL; `{"outcome": "committed"}` needs 24 bytes.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The body a check-back URL answers with.
#[derive(Deserialize)]
struct CheckBackAnswer {
    outcome: CheckBackOutcome,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum CheckBackOutcome {
    Committed,
    Aborted,
    Pending,
}

/// Asks check-back URLs; cheap to clone.
#[derive(Clone)]
pub struct HttpCheckBack {
    client: Option<reqwest::Client>,
}

/// The W3C trace context a check-back request carries: the attempt's `traceparent` and the
/// saga's `tracestate`, which is sent only beside a `traceparent`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceHeaders<'a> {
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

impl HttpCheckBack {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .user_agent(concat!("saga-coordinator/", env!("CARGO_PKG_VERSION")))
            // A redirect could lead the coordinator anywhere, past the check-back host allow-list.
            .redirect(reqwest::redirect::Policy::none())
            .build();
        if let Err(e) = &client {
            log::error!(
                "cannot build the HTTP client for check-backs: {e}; URL check-backs will fail"
            );
        }
        HttpCheckBack {
            client: client.ok(),
        }
    }

    /// Asks `url` about `saga_id` and turns the answer into the reply the machine expects: the
    /// outcome it gave, or `retry` with the reason when there was no usable answer. The request
    /// carries `traceparent` (the attempt's span), so the initiator's span joins the saga's trace,
    /// and the saga's `tracestate`.
    pub async fn ask(
        &self,
        url: &str,
        saga_id: Uuid,
        attempt: u32,
        timeout: Duration,
        trace: TraceHeaders<'_>,
    ) -> Reply {
        let (outcome, error) = match self.get(url, saga_id, timeout, trace).await {
            Ok(CheckBackOutcome::Committed) => (Outcome::Committed, None),
            Ok(CheckBackOutcome::Aborted) => (Outcome::Aborted, None),
            Ok(CheckBackOutcome::Pending) => (Outcome::Pending, None),
            Err(e) => (Outcome::Retry, Some(e)),
        };
        Reply {
            step: None,
            kind: CommandKind::Check,
            attempt,
            outcome,
            output: None,
            error,
        }
    }

    async fn get(
        &self,
        url: &str,
        saga_id: Uuid,
        timeout: Duration,
        trace: TraceHeaders<'_>,
    ) -> Result<CheckBackOutcome, String> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| "the coordinator has no HTTP client".to_string())?;
        let mut request = client
            .get(url)
            .query(&[("saga_id", saga_id.to_string())])
            .timeout(timeout);
        if let Some(traceparent) = trace.traceparent {
            request = request.header(contract::properties::TRACEPARENT, traceparent);
            if let Some(tracestate) = trace.tracestate {
                request = request.header(contract::properties::TRACESTATE, tracestate);
            }
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(format!(
                "GET {url} answered {status}: check-backs do not follow redirects"
            ));
        }
        if !status.is_success() {
            return Err(format!("GET {url} answered {status}"));
        }
        let too_large = || format!("GET {url}: the answer is larger than {MAX_ANSWER_BYTES} bytes");
        if response
            .content_length()
            .is_some_and(|length| length > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_large());
        }
        // Read piece by piece, so that an endless answer costs no more than the cap.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: reading the answer: {e}"))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice::<CheckBackAnswer>(&body)
            .map(|a| a.outcome)
            .map_err(|e| {
                format!(
                    "GET {url} answered {status} but not {{\"outcome\": \"committed\" | \"aborted\" | \"pending\"}}: {e}"
                )
            })
    }
}

impl Default for HttpCheckBack {
    fn default() -> Self {
        Self::new()
    }
}
