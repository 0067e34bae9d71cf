//! `GET /metrics`: the Prometheus scrape endpoint.

use actix_web::{web, HttpResponse};
use chrono::Utc;

use crate::metrics::{OutboxBacklog, Snapshot, CONTENT_TYPE};
use crate::web::error::ApiError;
use crate::web::state::AppState;

/// Every metric of this coordinator in the OpenMetrics text format (listed in `docs/metrics.md`).
///
/// Values that Postgres holds (sagas in flight, the outbox backlog) are read now; if Postgres is
/// unreachable they are left out and everything else is still answered.
#[utoipa::path(get, path = "/metrics", tag = "service", responses(
    (status = 200, description = "Prometheus metrics (OpenMetrics text)", body = String,
        content_type = "application/openmetrics-text"),
))]
pub async fn scrape(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let running = state.running();
    let (in_flight, outbox) = match running {
        // Starting: Postgres may not be there yet, and the gauges it holds are left out.
        None => (None, None),
        // Another instance reports them (see `Ownership::reports_shared_gauges`).
        Some(running) if !running.ownership.reports_shared_gauges() => (None, None),
        Some(running) => {
            let read = running
                .store
                .interact(|db| Ok((db.in_flight_counts(), db.outbox_backlog())))
                .await;
            let (in_flight, outbox) = match read {
                Ok((in_flight, outbox)) => (in_flight.ok(), outbox.ok()),
                Err(_) => (None, None),
            };
            if in_flight.is_none() || outbox.is_none() {
                log::warn!("metrics: cannot read sagas in flight or the outbox from Postgres");
            }
            (in_flight, outbox)
        }
    };
    let now = Utc::now();
    let snapshot = Snapshot {
        in_flight,
        outbox: outbox.map(|(rows, oldest)| OutboxBacklog {
            rows,
            oldest_age_seconds: oldest
                .and_then(|t| (now - t).to_std().ok())
                .map_or(0.0, |d| d.as_secs_f64()),
        }),
        actors: running.map_or(0, |r| r.registry.in_flight()),
        amqp_connected: running.is_some_and(|r| *r.amqp_connected.borrow()),
        dead_letters: running
            .filter(|r| r.ownership.reports_shared_gauges())
            .and_then(|r| *r.dead_letter_depth.borrow()),
    };
    let text = state
        .metrics
        .render(snapshot)
        .map_err(|e| ApiError::Internal(format!("cannot encode the metrics: {e}")))?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}
