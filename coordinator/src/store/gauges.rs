//! Aggregate reads for the metrics endpoint: cheap counts, taken when Prometheus scrapes.

use chrono::{DateTime, Utc};
use diesel::dsl::{count_star, min};
use diesel::prelude::*;

use super::schema::{outbox, sagas};
use super::{final_states, Queries, StoreError};
use crate::saga::SagaState;

impl Queries {
    /// Unfinished sagas per (name, state).
    pub fn in_flight_counts(&self) -> Result<Vec<(String, SagaState, i64)>, StoreError> {
        let finals = final_states();
        let mut conn = self.conn()?;
        let rows: Vec<(String, String, i64)> = sagas::table
            .filter(sagas::state.ne_all(&finals))
            .group_by((sagas::name, sagas::state))
            .select((sagas::name, sagas::state, count_star()))
            .load(&mut conn)?;
        rows.into_iter()
            .map(|(name, state, n)| {
                let state = state.parse().map_err(StoreError::Corrupt)?;
                Ok((name, state, n))
            })
            .collect()
    }

    /// Outbox rows not yet confirmed, and when the oldest was written.
    pub fn outbox_backlog(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let mut conn = self.conn()?;
        Ok(outbox::table
            .select((count_star(), min(outbox::created_at)))
            .first(&mut conn)?)
    }
}
