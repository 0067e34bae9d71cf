//! Check-backs over HTTP (contract, section 5): `GET {url}?saga_id={id}` answering
//! `{"outcome": "committed" | "aborted" | "pending"}`.
//!
//! Check-backs to a participant travel as `check` commands through the outbox like every other
//! command; only the URL form is executed here. It is not written to the outbox: if the coordinator
//! crashes with a request out, the attempt's durable reply timeout fires after the restart and the
//! machine asks again, so nothing is lost by keeping the request in memory.

use std::time::Duration;

use serde::Deserialize;
use uuid::Uuid;

use crate::saga::{CommandKind, Outcome, Reply};

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

impl HttpCheckBack {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .user_agent(concat!("saga-coordinator/", env!("CARGO_PKG_VERSION")))
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
    /// outcome it gave, or `retry` with the reason when there was no usable answer.
    pub async fn ask(&self, url: &str, saga_id: Uuid, attempt: u32, timeout: Duration) -> Reply {
        let (outcome, error) = match self.get(url, saga_id, timeout).await {
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
    ) -> Result<CheckBackOutcome, String> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| "the coordinator has no HTTP client".to_string())?;
        let response = client
            .get(url)
            .query(&[("saga_id", saga_id.to_string())])
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url} answered {status}"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
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
