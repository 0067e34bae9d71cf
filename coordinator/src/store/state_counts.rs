//! How many sagas are in each state, and how many started and finished in each recent minute,
//! without counting the table (issues 15 and 19).
//!
//! Every statement that inserts sagas, changes their state or deletes them appends its net change
//! per state to `saga_state_count_changes`, and the sagas it started and finished per minute to
//! `saga_minute_count_changes`, in the same statement: the batch statement (`batch.rs`), the purge
//! (`retention.rs`) and the bench's seed. [`Queries::fold_counts`] moves the changes into
//! `saga_state_counts` and `saga_minute_counts` now and then. A count is the folded count plus the
//! changes not yet folded: one snapshot of small tables, exact and instant at any table size.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text, Timestamptz};

use super::{Queries, StoreError};
use crate::saga::SagaState;

/// The counts as of one snapshot: folded plus not yet folded.
const STATE_COUNTS: &str = "
SELECT state, sum(sagas)::bigint AS sagas FROM (
    SELECT state, sagas FROM saga_state_counts
    UNION ALL
    SELECT state, sagas FROM saga_state_count_changes
) AS c
GROUP BY state HAVING sum(sagas) <> 0";

/// Takes the changes and adds them to the counts in one statement, and forgets minutes older than
/// [`MINUTES_KEPT`]. Two coordinators folding at once cannot count a change twice: the second
/// waits for the rows the first deletes and then skips them. Rows in key order, so that two folds
/// lock the counts in the same order.
const FOLD: &str = "
WITH taken AS (
    DELETE FROM saga_state_count_changes RETURNING state, sagas
), states AS (
    INSERT INTO saga_state_counts (state, sagas)
    SELECT state, sum(sagas) FROM taken GROUP BY state ORDER BY state
    ON CONFLICT (state) DO UPDATE SET sagas = saga_state_counts.sagas + excluded.sagas
    RETURNING 1
), minutes_taken AS (
    DELETE FROM saga_minute_count_changes RETURNING minute, started, finished
), minutes AS (
    INSERT INTO saga_minute_counts (minute, started, finished)
    SELECT minute, sum(started), sum(finished) FROM minutes_taken
    WHERE minute >= now() - $1 * interval '1 minute'
    GROUP BY minute ORDER BY minute
    ON CONFLICT (minute) DO UPDATE SET started = saga_minute_counts.started + excluded.started,
                                       finished = saga_minute_counts.finished + excluded.finished
    RETURNING 1
), forgotten AS (
    DELETE FROM saga_minute_counts WHERE minute < now() - $1 * interval '1 minute'
)
SELECT (SELECT count(*) FROM states) + (SELECT count(*) FROM minutes) AS n";

/// How far back the counts per minute go: the overview shows half an hour.
pub const MINUTES_KEPT: i32 = 2 * 24 * 60;

/// Started and finished per minute from `$1` on: folded plus not yet folded.
const MINUTE_COUNTS: &str = "
SELECT m.minute, coalesce(sum(c.started), 0)::bigint AS started,
       coalesce(sum(c.finished), 0)::bigint AS finished
FROM generate_series($1, $2, interval '1 minute') AS m(minute)
LEFT JOIN (
    SELECT minute, started, finished FROM saga_minute_counts WHERE minute >= $1
    UNION ALL
    SELECT minute, started, finished FROM saga_minute_count_changes WHERE minute >= $1
) AS c ON c.minute = m.minute
GROUP BY m.minute ORDER BY m.minute";

#[derive(QueryableByName)]
struct Changed {
    #[diesel(sql_type = BigInt)]
    n: i64,
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

/// Sagas started and finished in one minute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MinuteCounts {
    /// The start of the minute.
    pub minute: DateTime<Utc>,
    pub started: i64,
    pub finished: i64,
}

#[derive(QueryableByName)]
struct StateCount {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    sagas: i64,
}

impl Queries {
    /// How many sagas are in each state (states with none are left out).
    pub fn count_by_state(&self) -> Result<Vec<(SagaState, i64)>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<StateCount> = diesel::sql_query(STATE_COUNTS).load(&mut conn)?;
        rows.into_iter()
            .map(|r| {
                r.state
                    .parse::<SagaState>()
                    .map(|s| (s, r.sagas))
                    .map_err(StoreError::Corrupt)
            })
            .collect()
    }

    /// Sagas started and finished (reached a final state) per minute over the last `minutes`
    /// minutes, oldest first, with every minute present (zeros included).
    pub fn throughput(
        &self,
        minutes: i32,
        now: DateTime<Utc>,
    ) -> Result<Vec<MinuteCounts>, StoreError> {
        let last = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
        let first = last - TimeDelta::minutes(i64::from(minutes.clamp(1, MINUTES_KEPT) - 1));
        let mut conn = self.conn()?;
        let rows: Vec<MinuteRow> = diesel::sql_query(MINUTE_COUNTS)
            .bind::<Timestamptz, _>(first)
            .bind::<Timestamptz, _>(last)
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

    /// Folds the changes written since the last fold into the counts; answers how many counts
    /// (of a state or a minute) it changed.
    pub fn fold_counts(&self) -> Result<i64, StoreError> {
        let mut conn = self.conn()?;
        let changed: Changed = diesel::sql_query(FOLD)
            .bind::<Integer, _>(MINUTES_KEPT)
            .get_result(&mut conn)?;
        Ok(changed.n)
    }
}

#[cfg(test)]
#[path = "state_counts_tests.rs"]
mod tests;
