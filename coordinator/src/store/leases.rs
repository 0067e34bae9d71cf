//! Partition leases and instance heartbeats: the database side of ownership (`runtime/ownership.rs`
//! decides what to take and give up; this only reads and writes).
//!
//! Every expiry is judged by this database's clock (`clock_timestamp()`), never by an instance's. A
//! lease changes owner only under the partition's exclusive advisory lock, which waits for every
//! batch statement under way on that partition (they hold it shared, see `saga_fence` in the
//! partitioning migration); each new owner gets the next epoch, which fences the previous owner's
//! writes.

use std::time::Duration;

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text};
use uuid::Uuid;

use super::rows::SagaRow;
use super::schema::sagas;
use super::{final_states, Queries, StoreError};
use crate::partition::Partitions;
use crate::saga::Saga;

/// The advisory lock class of partitions (the first key of `pg_advisory_xact_lock(int, int)`); the
/// same number is in `saga_fence`.
const PARTITION_LOCK_CLASS: i32 = 1_935_762_279;

/// How long a dead instance's row is kept (for operators to see it went away).
const FORGET_INSTANCES_AFTER_SECS: i64 = 3600;

/// A partition held with an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub partition: u32,
    pub epoch: i64,
}

/// Who owns a partition now, and where to reach them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOwner {
    pub partition: u32,
    pub owner: String,
    /// `None` when the owner has no live heartbeat (it cannot be asked).
    pub url: Option<String>,
}

#[derive(QueryableByName)]
struct LeaseRow {
    #[diesel(sql_type = Integer)]
    partition: i32,
    #[diesel(sql_type = BigInt)]
    epoch: i64,
}

impl LeaseRow {
    fn lease(&self) -> Lease {
        Lease {
            partition: u32::try_from(self.partition).unwrap_or(0),
            epoch: self.epoch,
        }
    }
}

#[derive(QueryableByName)]
struct OwnerRow {
    #[diesel(sql_type = Integer)]
    partition: i32,
    #[diesel(sql_type = Text)]
    owner: String,
    #[diesel(sql_type = Nullable<Text>)]
    url: Option<String>,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

fn partition_ids(leases: &[Lease]) -> (Vec<i32>, Vec<i64>) {
    leases
        .iter()
        .map(|l| (i32::try_from(l.partition).unwrap_or(i32::MAX), l.epoch))
        .unzip()
}

impl Queries {
    /// The database's partition count. `wanted` (`SAGA_PARTITIONS`) may set it while the database
    /// has no saga yet; afterwards a different count is refused, because every saga's partition and
    /// every command's reply queue follow from it.
    pub fn settle_partitions(&self, wanted: Option<u32>) -> Result<Partitions, StoreError> {
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            diesel::sql_query("LOCK TABLE partition_leases IN EXCLUSIVE MODE").execute(conn)?;
            let count: Count =
                diesel::sql_query("SELECT count(*) AS n FROM partition_leases").get_result(conn)?;
            let have = u32::try_from(count.n).unwrap_or(0);
            let Some(wanted) = wanted.filter(|&w| w != have) else {
                return Partitions::new(have).ok_or_else(|| {
                    StoreError::Corrupt(format!("the database has {have} partitions"))
                });
            };
            let partitions = Partitions::new(wanted).ok_or_else(|| {
                StoreError::Refused(format!(
                    "SAGA_PARTITIONS={wanted} is out of range (1 to {})",
                    crate::partition::MAX_PARTITIONS
                ))
            })?;
            let used: Count = diesel::sql_query(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM sagas) OR EXISTS (SELECT 1 FROM \
                 partition_leases WHERE owner IS NOT NULL) THEN 1 ELSE 0 END::int8 AS n",
            )
            .get_result(conn)?;
            if used.n != 0 {
                return Err(StoreError::Refused(format!(
                    "SAGA_PARTITIONS={wanted}, but this database has {have} partitions: the count \
                     is fixed when a database is first used, because every saga's partition and \
                     reply queue follow from it. Unset SAGA_PARTITIONS or set it to {have}"
                )));
            }
            diesel::sql_query("DELETE FROM partition_leases").execute(conn)?;
            diesel::sql_query(
                "INSERT INTO partition_leases (partition) SELECT generate_series(0, $1 - 1)",
            )
            .bind::<Integer, _>(i32::try_from(wanted).unwrap_or(i32::MAX))
            .execute(conn)?;
            log::info!("this database has {wanted} partitions");
            Ok(partitions)
        })
    }

    /// Records that `instance` is alive (reachable at `url`) until `ttl` from now, and answers how
    /// many instances are alive, itself included.
    pub fn heartbeat(&self, instance: &str, url: &str, ttl: Duration) -> Result<u32, StoreError> {
        let mut conn = self.conn()?;
        diesel::sql_query(
            "INSERT INTO coordinator_instances (id, url, heartbeat_at, expires_at)
             VALUES ($1, $2, clock_timestamp(), clock_timestamp() + $3 * interval '1 millisecond')
             ON CONFLICT (id) DO UPDATE
             SET url = excluded.url, heartbeat_at = excluded.heartbeat_at,
                 expires_at = excluded.expires_at",
        )
        .bind::<Text, _>(instance)
        .bind::<Text, _>(url)
        .bind::<BigInt, _>(millis(ttl))
        .execute(&mut conn)?;
        diesel::sql_query(
            "DELETE FROM coordinator_instances
             WHERE expires_at < clock_timestamp() - $1 * interval '1 second'",
        )
        .bind::<BigInt, _>(FORGET_INSTANCES_AFTER_SECS)
        .execute(&mut conn)?;
        let live: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM coordinator_instances WHERE expires_at > clock_timestamp()",
        )
        .get_result(&mut conn)?;
        Ok(u32::try_from(live.n).unwrap_or(1).max(1))
    }

    /// Ends `instance`'s heartbeat (a graceful stop), so the others rebalance without waiting.
    pub fn leave(&self, instance: &str) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        diesel::sql_query("DELETE FROM coordinator_instances WHERE id = $1")
            .bind::<Text, _>(instance)
            .execute(&mut conn)?;
        Ok(())
    }

    /// Extends the leases `instance` still holds with the epoch it believes; answers those. A lease
    /// missing from the answer was taken by another instance (or released). One that expired but
    /// was not taken is renewed: nobody else wrote under it meanwhile (a new owner would have a new
    /// epoch), and this instance's own writes were refused while it was expired, so what this
    /// instance holds in memory is still what Postgres has. A taker and a renewal of one lease
    /// update the same row, so one of them sees the other's change and does nothing.
    pub fn renew_leases(
        &self,
        instance: &str,
        held: &[Lease],
        ttl: Duration,
    ) -> Result<Vec<Lease>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let (parts, epochs) = partition_ids(held);
        let mut conn = self.conn()?;
        let rows: Vec<LeaseRow> = diesel::sql_query(
            "UPDATE partition_leases l
             SET expires_at = clock_timestamp() + $4 * interval '1 millisecond'
             FROM unnest($2::integer[], $3::bigint[]) AS held(partition, epoch)
             WHERE l.partition = held.partition AND l.epoch = held.epoch AND l.owner = $1
             RETURNING l.partition, l.epoch",
        )
        .bind::<Text, _>(instance)
        .bind::<Array<Integer>, _>(&parts)
        .bind::<Array<BigInt>, _>(&epochs)
        .bind::<BigInt, _>(millis(ttl))
        .load(&mut conn)?;
        Ok(rows.iter().map(LeaseRow::lease).collect())
    }

    /// Takes up to `want` partitions that nobody holds (free, or expired), each with the next epoch,
    /// and every partition still recorded as `instance`'s own that it does not hold (`held`): those
    /// are a previous run's of the same instance, which is gone. Answers what was taken.
    pub fn take_leases(
        &self,
        instance: &str,
        held: &[Lease],
        want: u32,
        ttl: Duration,
    ) -> Result<Vec<Lease>, StoreError> {
        let (held_parts, _) = partition_ids(held);
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            #[derive(QueryableByName)]
            struct Candidate {
                #[diesel(sql_type = Integer)]
                partition: i32,
            }
            let candidates: Vec<Candidate> = diesel::sql_query(
                "(SELECT partition FROM partition_leases
                  WHERE owner = $1 AND NOT (partition = ANY($2::integer[])))
                 UNION
                 (SELECT partition FROM partition_leases
                  WHERE (owner IS NULL OR expires_at IS NULL OR expires_at <= clock_timestamp())
                    AND NOT (partition = ANY($2::integer[]))
                  ORDER BY partition LIMIT $3)",
            )
            .bind::<Text, _>(instance)
            .bind::<Array<Integer>, _>(&held_parts)
            .bind::<BigInt, _>(i64::from(want))
            .load(conn)?;
            if candidates.is_empty() {
                return Ok(Vec::new());
            }
            let mut parts: Vec<i32> = candidates.iter().map(|c| c.partition).collect();
            parts.sort_unstable();
            lock_partitions(conn, &parts)?;
            let rows: Vec<LeaseRow> = diesel::sql_query(
                "UPDATE partition_leases
                 SET owner = $1, epoch = epoch + 1,
                     expires_at = clock_timestamp() + $3 * interval '1 millisecond'
                 WHERE partition = ANY($2::integer[])
                   AND (owner IS NULL OR owner = $1 OR expires_at IS NULL
                        OR expires_at <= clock_timestamp())
                 RETURNING partition, epoch",
            )
            .bind::<Text, _>(instance)
            .bind::<Array<Integer>, _>(&parts)
            .bind::<BigInt, _>(millis(ttl))
            .load(conn)?;
            Ok(rows.iter().map(LeaseRow::lease).collect())
        })
    }

    /// Gives up leases `instance` holds (a handover): once this returns, nothing written under them
    /// is still under way, and the next owner may take them at once.
    pub fn release_leases(&self, instance: &str, leases: &[Lease]) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let (parts, epochs) = partition_ids(leases);
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            let mut sorted = parts.clone();
            sorted.sort_unstable();
            lock_partitions(conn, &sorted)?;
            diesel::sql_query(
                "UPDATE partition_leases l SET owner = NULL, expires_at = NULL
                 FROM unnest($2::integer[], $3::bigint[]) AS held(partition, epoch)
                 WHERE l.partition = held.partition AND l.epoch = held.epoch AND l.owner = $1",
            )
            .bind::<Text, _>(instance)
            .bind::<Array<Integer>, _>(&parts)
            .bind::<Array<BigInt>, _>(&epochs)
            .execute(conn)?;
            Ok(())
        })
    }

    /// The owner of every partition with an unexpired lease, with its URL if its heartbeat is live.
    pub fn partition_owners(&self) -> Result<Vec<PartitionOwner>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<OwnerRow> = diesel::sql_query(
            "SELECT l.partition, l.owner, i.url
             FROM partition_leases l
             LEFT JOIN coordinator_instances i
                    ON i.id = l.owner AND i.expires_at > clock_timestamp()
             WHERE l.owner IS NOT NULL AND l.expires_at > clock_timestamp()",
        )
        .load(&mut conn)?;
        Ok(rows
            .into_iter()
            .map(|r| PartitionOwner {
                partition: u32::try_from(r.partition).unwrap_or(0),
                owner: r.owner,
                url: r.url,
            })
            .collect())
    }

    /// Every unfinished saga of `partition`, for its new owner.
    pub fn load_unfinished_in(&self, partition: u32) -> Result<Vec<Saga>, StoreError> {
        const BATCH: i64 = 2_000;
        let finals = final_states();
        let partition = i32::try_from(partition).unwrap_or(i32::MAX);
        let mut conn = self.conn()?;
        let mut out = Vec::new();
        let mut after = Uuid::nil();
        loop {
            let batch: Vec<SagaRow> = sagas::table
                .filter(sagas::partition.eq(partition))
                .filter(sagas::state.ne_all(&finals))
                .filter(sagas::id.gt(after))
                .order(sagas::id.asc())
                .limit(BATCH)
                .select(SagaRow::as_select())
                .load(&mut conn)?;
            let Some(last) = batch.last() else { break };
            after = last.id;
            let full = batch.len() as i64 == BATCH;
            out.extend(self.assemble(&mut conn, batch)?);
            if !full {
                break;
            }
        }
        Ok(out)
    }
}

/// Takes the partitions' advisory locks exclusively until the transaction ends, in order (so two
/// instances never wait on each other in a circle).
fn lock_partitions(conn: &mut PgConnection, sorted: &[i32]) -> Result<(), StoreError> {
    diesel::sql_query(
        "SELECT count(pg_advisory_xact_lock($1, p))::int8 AS n
         FROM (SELECT unnest($2::integer[]) AS p ORDER BY 1) AS parts",
    )
    .bind::<Integer, _>(PARTITION_LOCK_CLASS)
    .bind::<Array<Integer>, _>(sorted)
    .get_result::<Count>(conn)?;
    Ok(())
}

#[cfg(test)]
#[path = "leases_tests.rs"]
mod tests;
