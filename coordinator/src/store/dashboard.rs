//! Aggregate reads for the operator's dashboard: throughput per minute and the in-flight sagas with
//! their steps (the counts per state are `state_counts.rs`).
//!
//! Each is one or two indexed queries, cheap enough to run on every live refresh of an overview.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamptz};
use uuid::Uuid;

use super::schema::sagas;
use super::{Queries, SagaRow, StoreError};
use crate::saga::{Saga, SagaState};

/// Sagas started and finished in one minute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MinuteCounts {
    /// The start of the minute.
    pub minute: DateTime<Utc>,
    pub started: i64,
    pub finished: i64,
}

/// Which in-flight sagas to show.
#[derive(Debug, Clone, Default)]
pub struct InFlightFilter {
    /// Only these unfinished states (all of them when empty).
    pub states: Vec<SagaState>,
    /// Only sagas whose name contains this text (any case).
    pub name: Option<String>,
    pub limit: i64,
}

#[derive(QueryableByName)]
struct MinuteRow {
    #[diesel(sql_type = Timestamptz)]
    minute: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    started: i64,
    #[diesel(sql_type = BigInt)]
    finished: i64,
}

impl Queries {
    /// Sagas started and finished (reached a final state) per minute over the last `minutes`
    /// minutes, oldest first, with every minute present (zeros included).
    pub fn throughput(
        &self,
        minutes: i32,
        now: DateTime<Utc>,
    ) -> Result<Vec<MinuteCounts>, StoreError> {
        let mut conn = self.conn()?;
        let start = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now)
            - TimeDelta::minutes(i64::from(minutes.max(1) - 1));
        // Ids are UUIDv7, whose first 48 bits are the creation time in milliseconds: the primary key
        // finds the sagas started in the window without scanning older ones.
        let first_id = Uuid::from_u128(u128::from(start.timestamp_millis().max(0) as u64) << 80);
        // `finished_at` is set (generated from `updated_at`) by a saga's final transition.
        let rows: Vec<MinuteRow> = diesel::sql_query(
            "WITH happened AS ( \
               SELECT date_trunc('minute', created_at) AS minute, 1 AS started, 0 AS finished \
                 FROM sagas WHERE id >= $2 AND created_at >= $1 \
               UNION ALL \
               SELECT date_trunc('minute', finished_at), 0, 1 \
                 FROM sagas WHERE finished_at >= $1) \
             SELECT m.minute, \
                    coalesce(sum(h.started), 0)::bigint AS started, \
                    coalesce(sum(h.finished), 0)::bigint AS finished \
               FROM generate_series($1, $3, interval '1 minute') AS m(minute) \
               LEFT JOIN happened h ON h.minute = m.minute \
              GROUP BY m.minute ORDER BY m.minute",
        )
        .bind::<Timestamptz, _>(start)
        .bind::<diesel::sql_types::Uuid, _>(first_id)
        .bind::<Timestamptz, _>(now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now))
        .load(&mut conn)?;
        Ok(rows
            .into_iter()
            .map(|r| MinuteCounts {
                minute: r.minute,
                started: r.started,
                finished: r.finished,
            })
            .collect())
    }

    /// Unfinished sagas (prepared, running, compensating, failed) with their steps, newest first.
    pub fn in_flight(&self, filter: &InFlightFilter) -> Result<Vec<Saga>, StoreError> {
        let states: Vec<&str> = if filter.states.is_empty() {
            SagaState::ALL
                .iter()
                .filter(|s| !s.is_final())
                .map(|s| s.as_str())
                .collect()
        } else {
            filter
                .states
                .iter()
                .filter(|s| !s.is_final())
                .map(|s| s.as_str())
                .collect()
        };
        let mut conn = self.conn()?;
        let mut query = sagas::table
            .filter(sagas::state.eq_any(states))
            .into_boxed();
        if let Some(name) = filter.name.as_deref().filter(|n| !n.is_empty()) {
            query = query.filter(sagas::name.ilike(format!("%{}%", escape_like(name))));
        }
        let rows: Vec<SagaRow> = query
            .order(sagas::id.desc())
            .limit(filter.limit)
            .select(SagaRow::as_select())
            .load(&mut conn)?;
        self.assemble(&mut conn, rows)
    }
}

/// Makes `%`, `_` and `\` match themselves in a LIKE pattern.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(super::escape_like(r"a%b_c\d"), r"a\%b\_c\\d");
    }
}
