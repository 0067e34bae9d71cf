//! `GET /api/v1/sagas/export`: every saga a filter matches as JSON lines, for operators archiving
//! what retention will remove. One line per saga: its document (as `GET /api/v1/sagas/{id}`) with
//! an `events` member (the items of `GET /api/v1/sagas/{id}/events`), in id order.
//!
//! The answer is streamed: sagas are read a page at a time ([`EXPORT_PAGE`]) through
//! `Store::interact`, and the next page is read only when actix asks for more of the body, so a
//! slow reader holds back the reads and memory stays at about one page whatever the count.

use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use futures_util::stream::{self, Stream};
use serde_json::json;
use uuid::Uuid;

use super::filter;
use super::page::field_error;
use super::schemas::{self, Invalid, Unauthorized, Unavailable};
use crate::store::export::{ExportedSaga, EXPORT_PAGE};
use crate::store::{SagaFilter, Store};
use crate::submission::FieldError;
use crate::web::document::saga_document;
use crate::web::error::ApiError;
use crate::web::state::AppState;

/// The media type of the answer: one JSON document per line.
pub const NDJSON: &str = "application/x-ndjson";

/// Every saga matching the filters, oldest first (by id), each with its steps and event log.
#[utoipa::path(get, path = "/api/v1/sagas/export", tag = "sagas", security(("bearer" = [])),
    params(
        ("state" = Option<Vec<schemas::SagaStateName>>, Query, description = "Only these states (repeat the parameter for several)"),
        ("name" = Option<String>, Query, description = "Only sagas of this name"),
        ("finished_after" = Option<DateTime<Utc>>, Query, description = "Only sagas that finished (became committed, compensated or aborted) at or after this time (RFC 3339); a saga not finished never matches"),
        ("finished_before" = Option<DateTime<Utc>>, Query, description = "Only sagas that finished strictly before this time (RFC 3339); a saga not finished never matches"),
        ("after" = Option<Uuid>, Query, description = "Only sagas with a greater id: the last id of an interrupted export, to resume it"),
    ),
    responses(
    (status = 200, description = "One line per saga (JSON lines), in id order: the saga document with its event log as `events`. Each page of sagas is read from one snapshot; see the contract for what concurrent changes do", body = schemas::ExportedSaga, content_type = "application/x-ndjson"),
    Unauthorized, Invalid, Unavailable,
))]
pub async fn export(
    state: web::Data<AppState>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let (filter, after) = parse_query(query.into_inner()).map_err(ApiError::Invalid)?;
    let store = state.store()?.clone();
    // The first page before the answer's head: while Postgres is away the answer is a 503, not
    // a 200 that breaks off.
    let first = read_page(&store, &filter, after).await?;
    Ok(HttpResponse::Ok()
        .content_type(NDJSON)
        .streaming(pages(store, filter, first)))
}

/// The filters, and the id to start after; or every broken rule.
fn parse_query(
    query: Vec<(String, String)>,
) -> Result<(SagaFilter, Option<Uuid>), Vec<FieldError>> {
    let mut filter = SagaFilter::default();
    let mut after = None;
    let mut errors = Vec::new();
    for (key, value) in query {
        if filter::shared(&key, &value, &mut filter, &mut errors) {
            continue;
        }
        match key.as_str() {
            "after" => match Uuid::parse_str(&value) {
                Ok(id) => after = Some(id),
                Err(_) => errors.push(field_error("after", "not a saga id")),
            },
            other => errors.push(field_error(other, "unknown parameter")),
        }
    }
    if errors.is_empty() {
        Ok((filter, after))
    } else {
        Err(errors)
    }
}

async fn read_page(
    store: &Store,
    filter: &SagaFilter,
    after: Option<Uuid>,
) -> Result<Vec<ExportedSaga>, ApiError> {
    let filter = filter.clone();
    Ok(store
        .interact(move |db| db.export_page(&filter, after, EXPORT_PAGE))
        .await?)
}

/// The body: `first` as lines, then each following page as it is read. A page shorter than
/// [`EXPORT_PAGE`] is the last. A read that fails ends the body with an error, which actix answers
/// by closing the connection mid-body: the client sees a broken transfer, never a short export
/// that looks complete.
fn pages(
    store: Store,
    filter: SagaFilter,
    first: Vec<ExportedSaga>,
) -> impl Stream<Item = Result<Bytes, ApiError>> {
    struct Cursor {
        store: Store,
        filter: SagaFilter,
        page: Option<Vec<ExportedSaga>>,
        more: bool,
        after: Option<Uuid>,
    }
    let start = Cursor {
        store,
        filter,
        page: Some(first),
        more: true,
        after: None,
    };
    stream::unfold(start, |mut cursor| async move {
        let page = match cursor.page.take() {
            Some(page) => page,
            None if cursor.more => {
                match read_page(&cursor.store, &cursor.filter, cursor.after).await {
                    Ok(page) => page,
                    Err(e) => {
                        log::warn!("export broken off after saga {:?}: {e}", cursor.after);
                        cursor.more = false;
                        return Some((Err(e), cursor));
                    }
                }
            }
            None => return None,
        };
        cursor.more = i64::try_from(page.len()).is_ok_and(|n| n == EXPORT_PAGE);
        if page.is_empty() {
            return None;
        }
        cursor.after = page.last().map(|e| e.saga.id);
        Some((lines(&page), cursor))
    })
}

/// A page as JSON lines.
fn lines(page: &[ExportedSaga]) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    for exported in page {
        let mut line = saga_document(&exported.saga);
        line["events"] = json!(exported.events);
        serde_json::to_writer(&mut out, &line).map_err(|e| ApiError::Internal(e.to_string()))?;
        out.push(b'\n');
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_filters_are_the_lists_and_the_finish_window() {
        let (filter, after) = parse_query(query(&[
            ("state", "committed"),
            ("state", "aborted"),
            ("name", "place-order"),
            ("finished_after", "2026-01-01T00:00:00Z"),
            ("finished_before", "2026-02-01t01:00:00.5+01:00"),
            ("after", "0190a000-0000-7000-8000-000000000001"),
        ]))
        .expect("valid");
        assert_eq!(filter.states.len(), 2);
        assert_eq!(filter.name.as_deref(), Some("place-order"));
        assert_eq!(
            filter.finished_after.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-01-01T00:00:00+00:00")
        );
        assert_eq!(
            filter.finished_before.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-02-01T00:00:00.500+00:00")
        );
        assert!(after.is_some());
        let (everything, none) = parse_query(Vec::new()).expect("valid");
        assert!(everything.states.is_empty() && everything.name.is_none() && none.is_none());
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let errors = parse_query(query(&[
            ("state", "done"),
            ("name", ""),
            ("finished_after", "yesterday"),
            ("finished_before", "2026-01-01 00:00:00Z"),
            ("after", "x"),
            ("limit", "5"),
        ]))
        .expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "state",
                "name",
                "finished_after",
                "finished_before",
                "after",
                "limit"
            ]
        );
    }
}
