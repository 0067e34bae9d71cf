//! The read behind the export (`GET /api/v1/sagas/export`): the sagas a filter matches in id
//! order, a page at a time, each with its steps and its whole event log.
//!
//! A page is read in one read-only repeatable-read transaction, so a saga and its event log agree
//! with each other; pages are separate transactions (an export of millions of sagas must not hold
//! one snapshot open for its whole length), and the next page starts after the last id of this
//! one, so each saga comes out at most once whatever changes in between.

use std::collections::HashMap;

use diesel::prelude::*;
use uuid::Uuid;

use super::rows::EventRow;
use super::schema::{saga_events, sagas};
use super::{EventRecord, Queries, SagaFilter, SagaRow, StoreError};
use crate::saga::Saga;

/// Sagas per page: each page is three queries (sagas, steps, events) in one transaction.
pub const EXPORT_PAGE: i64 = 500;

/// One exported saga: the saga with its steps, and its event log oldest first.
pub struct ExportedSaga {
    pub saga: Saga,
    pub events: Vec<EventRecord>,
}

impl Queries {
    /// Up to `limit` sagas matching `filter` with ids above `after`, in id order (ids are UUIDv7:
    /// creation order), each with its steps and event log, read from one snapshot.
    pub fn export_page(
        &self,
        filter: &SagaFilter,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<ExportedSaga>, StoreError> {
        let mut conn = self.conn()?;
        conn.build_transaction()
            .read_only()
            .repeatable_read()
            .run(|conn| {
                let mut query = filter.apply(sagas::table.into_boxed());
                if let Some(after) = after {
                    query = query.filter(sagas::id.gt(after));
                }
                let rows: Vec<SagaRow> = query
                    .order(sagas::id.asc())
                    .limit(limit)
                    .select(SagaRow::as_select())
                    .load(conn)?;
                let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
                let events: Vec<(Uuid, EventRow)> = saga_events::table
                    .filter(saga_events::saga_id.eq_any(&ids))
                    .order((saga_events::saga_id, saga_events::seq))
                    .select((saga_events::saga_id, EventRow::as_select()))
                    .load(conn)?;
                let mut logs: HashMap<Uuid, Vec<EventRecord>> = HashMap::new();
                for (saga_id, row) in events {
                    logs.entry(saga_id).or_default().push(row.into());
                }
                let sagas = self.assemble(conn, rows)?;
                Ok(sagas
                    .into_iter()
                    .map(|saga| ExportedSaga {
                        events: logs.remove(&saga.id).unwrap_or_default(),
                        saga,
                    })
                    .collect())
            })
    }
}
