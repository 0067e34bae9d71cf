//! Pausing every saga of a name (issue 16): the names held, and the sagas a name's pause must hold
//! or release. The holding and releasing themselves are transitions like any other (the machine's
//! `Pause` and `Resume` by name), made by each partition's owner (`runtime/name_pauses.rs`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::{paused_saga_names, sagas};
use super::{Queries, StoreError};
use crate::saga::{PausedBy, SagaState};

/// At most this many sagas per look: the next look takes the rest.
const BATCH: i64 = 500;

fn in_flight() -> [&'static str; 3] {
    SagaState::IN_FLIGHT.map(SagaState::as_str)
}

impl Queries {
    /// The names held, with since when, by name.
    pub fn paused_names(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let mut conn = self.conn()?;
        Ok(paused_saga_names::table
            .order(paused_saga_names::name.asc())
            .select((paused_saga_names::name, paused_saga_names::paused_at))
            .load(&mut conn)?)
    }

    /// Holds `name` (again: the first pause's time stays); answers since when.
    pub fn pause_name(&self, name: &str) -> Result<DateTime<Utc>, StoreError> {
        let mut conn = self.conn()?;
        diesel::insert_into(paused_saga_names::table)
            .values(paused_saga_names::name.eq(name))
            .on_conflict_do_nothing()
            .execute(&mut conn)?;
        Ok(paused_saga_names::table
            .find(name)
            .select(paused_saga_names::paused_at)
            .first(&mut conn)?)
    }

    /// Releases `name`; answers whether it was held.
    pub fn resume_name(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let removed = diesel::delete(paused_saga_names::table.find(name)).execute(&mut conn)?;
        Ok(removed > 0)
    }

    /// Whether saga `id`'s name is held (an operator's resume of that saga would be undone).
    pub fn name_paused_for(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let held: i64 = sagas::table
            .inner_join(paused_saga_names::table.on(paused_saga_names::name.eq(sagas::name)))
            .filter(sagas::id.eq(id))
            .count()
            .get_result(&mut conn)?;
        Ok(held > 0)
    }

    /// In-flight sagas of the held `names` in `partitions` that nothing holds yet.
    pub fn sagas_to_hold(
        &self,
        names: &[String],
        partitions: &[i32],
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut conn = self.conn()?;
        Ok(sagas::table
            .filter(sagas::name.eq_any(names))
            .filter(sagas::state.eq_any(in_flight()))
            .filter(sagas::paused_at.is_null())
            .filter(sagas::partition.eq_any(partitions))
            .select(sagas::id)
            .limit(BATCH)
            .load(&mut conn)?)
    }

    /// Sagas in `partitions` that a name's pause holds although their name is no longer in
    /// `names` (the held names).
    pub fn sagas_to_release(
        &self,
        names: &[String],
        partitions: &[i32],
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut conn = self.conn()?;
        Ok(sagas::table
            .filter(sagas::paused_by.eq(PausedBy::Name.as_str()))
            .filter(sagas::partition.eq_any(partitions))
            .filter(diesel::dsl::not(sagas::name.eq_any(names)))
            .filter(sagas::state.eq_any(in_flight()))
            .select(sagas::id)
            .limit(BATCH)
            .load(&mut conn)?)
    }
}
