//! How many sagas are in each state, without counting the table (issue 15).
//!
//! Postgres' own triggers (migration `state_counts`) append every statement's net change per state
//! to `saga_state_count_changes`, whoever wrote it; [`Queries::fold_state_counts`] moves them into
//! `saga_state_counts` now and then. A count is the folded count plus the changes not yet folded:
//! one snapshot of two small tables, exact and instant at any table size.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

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

/// Takes the changes and adds them to the counts in one statement. Two coordinators folding at
/// once cannot count a change twice: the second waits for the rows the first deletes and then
/// skips them. Rows in state order, so that two folds lock the counts in the same order.
const FOLD: &str = "
WITH taken AS (
    DELETE FROM saga_state_count_changes RETURNING state, sagas
)
INSERT INTO saga_state_counts (state, sagas)
SELECT state, sum(sagas) FROM taken GROUP BY state ORDER BY state
ON CONFLICT (state) DO UPDATE SET sagas = saga_state_counts.sagas + excluded.sagas";

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

    /// Folds the changes written since the last fold into the counts; answers how many states'
    /// counts it changed.
    pub fn fold_state_counts(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        Ok(diesel::sql_query(FOLD).execute(&mut conn)?)
    }
}

#[cfg(test)]
#[path = "state_counts_tests.rs"]
mod tests;
