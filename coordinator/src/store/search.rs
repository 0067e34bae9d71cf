//! The saga list's search (`GET /api/v1/sagas`, issue 15): which sagas a filter matches, a page at a
//! time in id order, in either direction from a cursor. The export reads with the same filter.
//!
//! Every filter is a condition on `sagas` that an index serves at ten million sagas (see the
//! `search` migration): the creation window is an id range on the primary key (ids are UUIDv7), the
//! finish window the `sagas_finished_at` index, a key the unique key index (led by the key), participants and
//! step names a GIN index on the terms the writer stores with each new saga ([`step_terms`]), and an error's text a trigram index on the
//! steps' errors.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use diesel::dsl::sql;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Jsonb};
use serde_json::json;
use uuid::Uuid;

use super::schema::{saga_steps, sagas};
use super::{Queries, SagaRow, StoreError};
use crate::saga::{Saga, SagaDefinition, SagaState};

/// Which sagas: every condition that is set must hold. Empty `states` means every state.
#[derive(Debug, Clone, Default)]
pub struct SagaFilter {
    pub states: Vec<SagaState>,
    pub name: Option<String>,
    /// The saga's `key`, whatever its name.
    pub key: Option<String>,
    /// Created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Created strictly before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Finished (became committed, compensated or aborted) at or after this time; a saga that is
    /// not final never matches.
    pub finished_after: Option<DateTime<Utc>>,
    /// Finished strictly before this time; likewise.
    pub finished_before: Option<DateTime<Utc>>,
    /// A step of the saga is sent to this participant.
    pub participant: Option<String>,
    /// The saga has a step of this name.
    pub step: Option<String>,
    /// A step's error contains this text, in any case.
    pub error: Option<String>,
}

/// Where a page starts: past a saga id, towards older or newer sagas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Sagas older than (ids below) this one, newest first.
    Before(Uuid),
    /// Sagas newer than (ids above) this one: the ones immediately newer.
    After(Uuid),
}

/// A page of the saga list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub filter: SagaFilter,
    pub limit: i64,
    /// None: the newest matching sagas.
    pub cursor: Option<Cursor>,
}

/// How far a saga's id time may be from its `created_at`: the id is drawn right after `created_at`
/// is read from the clock, and drawn again when a write was fenced (`Registry::submit`), so the two
/// differ by a write's round trip at most. The creation window is widened by this as an id range,
/// which the primary key serves, and then applied exactly to `created_at`.
const ID_CLOCK_SLACK: TimeDelta = TimeDelta::minutes(1);

/// The smallest UUIDv7 of the millisecond `at` falls in (its first 48 bits are the time in
/// milliseconds); clamped to what 48 bits hold.
fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let millis = at.timestamp_millis().clamp(0, (1 << 48) - 1);
    Uuid::from_u128(u128::from(millis.unsigned_abs()) << 80)
}

/// `text` as a `LIKE` pattern matching itself anywhere: `%`, `_` and the escape character `\` are
/// escaped, so they match only themselves.
fn containing(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl SagaFilter {
    /// `query` narrowed to the sagas this filter matches.
    pub(super) fn apply<'a>(
        &self,
        mut query: sagas::BoxedQuery<'a, Pg>,
    ) -> sagas::BoxedQuery<'a, Pg> {
        if !self.states.is_empty() {
            let states: Vec<&'static str> = self.states.iter().map(|s| s.as_str()).collect();
            query = query.filter(sagas::state.eq_any(states));
        }
        if let Some(name) = &self.name {
            query = query.filter(sagas::name.eq(name.clone()));
        }
        if let Some(key) = &self.key {
            query = query.filter(sagas::idempotency_key.eq(key.clone()));
        }
        if let Some(at) = self.created_after {
            let earliest = at.checked_sub_signed(ID_CLOCK_SLACK);
            query = query
                .filter(sagas::id.ge(first_id_at(earliest.unwrap_or(DateTime::<Utc>::MIN_UTC))))
                .filter(sagas::created_at.ge(at));
        }
        if let Some(at) = self.created_before {
            let latest = at.checked_add_signed(ID_CLOCK_SLACK);
            query = query
                .filter(sagas::id.lt(first_id_at(latest.unwrap_or(DateTime::<Utc>::MAX_UTC))))
                .filter(sagas::created_at.lt(at));
        }
        // `finished_at` is NULL until the saga is final, and NULL compares as no match.
        if let Some(at) = self.finished_after {
            query = query.filter(sagas::finished_at.ge(at));
        }
        if let Some(at) = self.finished_before {
            query = query.filter(sagas::finished_at.lt(at));
        }
        // Participants are in the definition only (a step row has its name, not its participant).
        if let Some(participant) = &self.participant {
            query = query.filter(step_terms_contain(participant_term(participant)));
        }
        if let Some(step) = &self.step {
            query = query.filter(step_terms_contain(step_term(step)));
        }
        if let Some(error) = &self.error {
            // `ILIKE` implies a non-null error, so the partial trigram index serves it; saying
            // `IS NOT NULL` as well would count the nulls twice in the estimate (fifty times too
            // few rows), and Postgres then gathers every match instead of walking the newest.
            query = query.filter(
                sagas::id.eq_any(
                    saga_steps::table
                        .filter(saga_steps::error.ilike(containing(error)))
                        .select(saga_steps::saga_id),
                ),
            );
        }
        query
    }
}

/// The saga's definition names `term` among its steps'.
fn step_terms_contain(
    term: String,
) -> Box<dyn BoxableExpression<sagas::table, Pg, SqlType = Bool>> {
    Box::new(sql::<Bool>("sagas.step_terms @> ").bind::<Jsonb, _>(json!([term])))
}

fn participant_term(participant: &str) -> String {
    format!("participant:{participant}")
}

fn step_term(step: &str) -> String {
    format!("step:{step}")
}

/// What the `step_terms` column holds for a saga of `definition`, as the SQL function
/// `saga_step_terms` (migration `search`) computes it for rows written before the column: a
/// sorted array without repeats. Sorted, so that sagas of one shape share one value, which is
/// what Postgres' statistics of the column count (a term few sagas have is then estimated as rare).
pub(super) fn step_terms(definition: &SagaDefinition) -> serde_json::Value {
    let terms: BTreeSet<String> = definition
        .steps
        .iter()
        .flat_map(|s| [participant_term(&s.participant), step_term(&s.name)])
        .collect();
    serde_json::Value::Array(terms.into_iter().map(serde_json::Value::String).collect())
}

impl Queries {
    /// A page of the saga list: up to `limit` matching sagas next to the cursor, newest first,
    /// without their steps.
    pub fn list(&self, page: &ListFilter) -> Result<Vec<Saga>, StoreError> {
        let mut conn = self.conn()?;
        let query = page.filter.apply(sagas::table.into_boxed());
        let query = match page.cursor {
            None => query.order(sagas::id.desc()),
            Some(Cursor::Before(id)) => query.filter(sagas::id.lt(id)).order(sagas::id.desc()),
            // The sagas immediately newer: the oldest ones above the cursor.
            Some(Cursor::After(id)) => query.filter(sagas::id.gt(id)).order(sagas::id.asc()),
        };
        let mut rows: Vec<SagaRow> = query
            .limit(page.limit)
            .select(SagaRow::as_select())
            .load(&mut conn)?;
        if matches!(page.cursor, Some(Cursor::After(_))) {
            rows.reverse();
        }
        rows.into_iter().map(|r| r.into_saga(Vec::new())).collect()
    }
}

#[cfg(test)]
#[path = "search_tests.rs"]
mod tests;
