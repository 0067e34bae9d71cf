//! History retention (issue 15): finished sagas past their state's retention are deleted, with
//! their steps, event log and alerts, in small batches
//! (`runtime/retention.rs` decides when). Only sagas of partitions the caller leases at that moment
//! are taken (checked by the statement, against Postgres' clock), so with several coordinators each
//! saga is purged by one of them. A final saga is never written again, so a purge cannot race a
//! transition: a saga that becomes final while a batch runs has just finished and is not old
//! enough to match.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamptz, Uuid as SqlUuid};
use uuid::Uuid;

use super::{Queries, StoreError};

/// One batch: the oldest matching sagas first (by id, which is creation order), locked so that two
/// purgers never wait on each other. The `id` bound lets the `(state, id)` index find them without
/// visiting younger sagas; `finished_at` is what decides.
const PURGE_BATCH: &str = "
WITH doomed AS (
    SELECT id FROM sagas
    WHERE state = $1 AND id < $2 AND finished_at < $3
      AND partition IN (SELECT partition FROM partition_leases
                        WHERE owner = $4 AND expires_at > clock_timestamp())
    ORDER BY id
    LIMIT $5
    FOR UPDATE SKIP LOCKED
), steps AS (
    DELETE FROM saga_steps WHERE saga_id IN (SELECT id FROM doomed)
), events AS (
    DELETE FROM saga_events WHERE saga_id IN (SELECT id FROM doomed)
), alerts AS (
    DELETE FROM saga_alerts WHERE saga_id IN (SELECT id FROM doomed)
), purged AS (
    DELETE FROM sagas WHERE id IN (SELECT id FROM doomed) RETURNING 1
), counted AS (
    -- Every writer of `sagas` counts its own changes (`state_counts.rs`).
    INSERT INTO saga_state_count_changes (state, sagas)
    SELECT $1, -count(*) FROM purged HAVING count(*) > 0
)
SELECT count(*) AS n FROM purged";

/// Commands of sagas that are gone. The relay deletes a command once RabbitMQ confirms it, so
/// such a row is rare (a command the broker kept refusing); the outbox has no index on `saga_id`
/// to find it by, and a scan of its heap, which the write path's churn keeps large (45 MB after a
/// benchmark), in every purge batch cost more than the batch. A command is written in the same
/// transaction as its saga, so one whose saga is not there was purged with it.
const PURGE_ORPHANED_COMMANDS: &str = "
DELETE FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM sagas s WHERE s.id = o.saga_id)";

impl Queries {
    /// Deletes the commands left in the outbox by sagas that were purged; answers how many.
    pub fn purge_orphaned_commands(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        Ok(diesel::sql_query(PURGE_ORPHANED_COMMANDS).execute(&mut conn)?)
    }

    /// Deletes up to `batch` sagas in final state `state` that finished before `finished_before`,
    /// among the partitions `owner` holds; answers how many went.
    pub fn purge_finished(
        &self,
        owner: &str,
        state: &str,
        finished_before: DateTime<Utc>,
        batch: i64,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let purged: Purged = diesel::sql_query(PURGE_BATCH)
            .bind::<Text, _>(state)
            .bind::<SqlUuid, _>(first_id_after(finished_before))
            .bind::<Timestamptz, _>(finished_before)
            .bind::<Text, _>(owner)
            .bind::<BigInt, _>(batch)
            .get_result(&mut conn)?;
        Ok(usize::try_from(purged.n).unwrap_or(0))
    }
}

#[derive(QueryableByName)]
struct Purged {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The smallest UUIDv7 of the millisecond after `at`: every saga created at or before `at` has a
/// smaller id (saga ids are UUIDv7, `runtime/ownership.rs`).
pub fn first_id_after(at: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0) + 1;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
#[path = "retention_tests.rs"]
mod tests;
