//! Postgres persistence: the only module that knows diesel.
//!
//! Sagas are stored as a row of `sagas` (definition and saga state), one row per step in `saga_steps`
//! (progress and durable timers), an append-only `saga_events` log, and `outbox` rows for commands
//! that RabbitMQ has not confirmed yet. A transition and the commands it produces are written in one
//! transaction (see [`writer`]), which is what makes "state first, then message" hold across crashes.

pub mod alerts;
mod batch;
pub mod bulk_actions;
pub mod dashboard;
mod events;
pub mod export;
mod gauges;
pub mod leases;
mod migrations;
pub mod notices;
mod paused_names;
mod persist;
pub mod retention;
mod rows;
pub mod schema;
pub mod search;
mod state_counts;
#[cfg(test)]
pub(crate) mod test_db;
pub mod writer;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool as R2d2Pool, PooledConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use serde_json::Value;
use uuid::Uuid;

use crate::outbox::OutboxMessage;
use crate::partition::Partitions;
use crate::saga::{Saga, SagaState};
use rows::{EventRow, OutboxRow, SagaRow, StepRow};
use schema::{outbox, saga_events, saga_steps, sagas};

pub use events::{render as render_event, StoredEvent};
pub use migrations::{prepare, PrepareError, MIGRATION_LOCK_KEY};
pub use persist::{Persist, Written};
pub use search::{Cursor, ListFilter, SagaFilter};
pub use state_counts::MINUTES_KEPT;
pub use writer::Writer;

/// The schema, embedded from `schema/migrations`; public for the test databases of the e2e harness.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../schema/migrations");

pub type Pool = R2d2Pool<ConnectionManager<PgConnection>>;
type Conn = PooledConnection<ConnectionManager<PgConnection>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    /// Another writer changed the saga since it was loaded.
    #[error("saga {0} was changed by another writer")]
    Conflict(Uuid),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The transition's partition is not (or no longer) this instance's: nothing was written.
    #[error("partition {0} is not owned by this coordinator")]
    Fenced(u32),
    /// A setting contradicts what the database holds.
    #[error("{0}")]
    Refused(String),
    /// The blocking task running a query panicked or was cancelled.
    #[error("the query did not finish: {0}")]
    Interrupted(String),
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Creates the database if it is missing and applies pending migrations, at once or not at all
/// (the `migrate` command; `serve` waits for Postgres around [`prepare`]).
pub fn migrate(database_url: &str) -> anyhow::Result<()> {
    prepare(database_url)?;
    Ok(())
}

/// Connections for everything but the writer: reads (the API, the dashboard, searches) and the
/// background work.
///
/// Each statement is planned for its own parameters. After five runs of a prepared statement
/// Postgres may switch to a generic plan, one made without the values; for a search that is a plan
/// that cannot know whether a filter is rare, and it took a search by error text in a time window
/// from 3 ms to 400 ms at a million sagas. Planning these statements costs far less than that.
///
/// JIT compilation is off: these statements read a few hundred rows by index, and Postgres,
/// judging by cost estimates that grow with the table, compiled a search in a time window at ten
/// million sagas for 13 ms of its 39.
pub fn pool(database_url: &str, size: u32) -> Result<Pool, StoreError> {
    #[derive(Debug)]
    struct CustomPlans;
    impl r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for CustomPlans {
        fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
            conn.batch_execute("SET plan_cache_mode = force_custom_plan; SET jit = off")
                .map_err(diesel::r2d2::Error::QueryError)
        }
    }
    R2d2Pool::builder()
        .max_size(size)
        .connection_timeout(std::time::Duration::from_secs(5))
        .connection_customizer(Box::new(CustomPlans))
        .build(ConnectionManager::new(database_url))
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// Connections for the writer threads only (see [`Writer`]).
///
/// Every statement the writer runs finds its rows by primary key, but the planner, guessing from
/// small tables and its fixed estimates for set-returning functions, would often scan and hash a
/// whole table for a batch instead, reading it again on every commit. On these connections it
/// is told to use the indexes, and to plan each prepared statement once (its generic plan) rather
/// than for every batch: the batch statement costs more to plan than to run.
pub fn writer_pool(database_url: &str, size: u32) -> Result<Pool, StoreError> {
    #[derive(Debug)]
    struct KeyLookups;
    impl r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for KeyLookups {
        fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
            conn.batch_execute("SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan")
                .map_err(diesel::r2d2::Error::QueryError)
        }
    }
    R2d2Pool::builder()
        .max_size(size)
        .connection_timeout(std::time::Duration::from_secs(5))
        .connection_customizer(Box::new(KeyLookups))
        .build(ConnectionManager::new(database_url))
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// The stored names of the final states, for `state <> ALL(...)` filters.
fn final_states() -> Vec<&'static str> {
    SagaState::ALL
        .iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str())
        .collect()
}

/// One entry of a saga's event log, as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRecord {
    pub seq: i64,
    pub at: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind: String,
    pub step: Option<String>,
    pub attempt: Option<i32>,
    pub detail: Value,
}

impl From<EventRow> for EventRecord {
    fn from(r: EventRow) -> Self {
        EventRecord {
            seq: r.seq,
            at: r.at,
            kind: r.kind,
            step: r.step,
            attempt: r.attempt,
            detail: r.detail,
        }
    }
}

/// The store's async face: every query runs on tokio's blocking pool, through [`Store::interact`].
///
/// The blocking [`Queries`] exist only inside its closure, so no async thread (an actor's, the
/// relay's, an HTTP worker's) can call diesel by accident: it does not compile.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl Store {
    pub fn new(pool: Pool) -> Self {
        Store { pool }
    }

    /// Runs `query` on the blocking pool and answers what it answered; a query whose task panicked
    /// or was cancelled is [`StoreError::Interrupted`].
    pub async fn interact<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Queries) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let queries = Queries::new(self.pool.clone());
        tokio::task::spawn_blocking(move || query(&queries))
            .await
            .map_err(|e| StoreError::Interrupted(e.to_string()))?
    }
}

/// Blocking queries: only [`Store::interact`] (and the store's own tests) can make one.
pub struct Queries {
    pool: Pool,
}

impl Queries {
    fn new(pool: Pool) -> Self {
        Queries { pool }
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        Ok(self.pool.get()?)
    }

    pub fn ping(&self) -> bool {
        self.conn()
            .and_then(|mut c| c.batch_execute("SELECT 1").map_err(StoreError::from))
            .is_ok()
    }

    pub fn load(&self, id: Uuid) -> Result<Option<Saga>, StoreError> {
        let mut conn = self.conn()?;
        let found: Option<SagaRow> = sagas::table
            .find(id)
            .select(SagaRow::as_select())
            .first(&mut conn)
            .optional()?;
        match found {
            None => Ok(None),
            Some(row) => Ok(self.assemble(&mut conn, vec![row])?.pop()),
        }
    }

    pub fn events(&self, id: Uuid) -> Result<Vec<EventRecord>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<EventRow> = saga_events::table
            .filter(saga_events::saga_id.eq(id))
            .order(saga_events::seq.asc())
            .select(EventRow::as_select())
            .load(&mut conn)?;
        Ok(rows.into_iter().map(EventRecord::from).collect())
    }

    /// Outbox rows not yet confirmed, oldest first, created before `created_before` (younger ones are
    /// still on their way through the relay's fast path).
    /// Only rows of sagas in the `owned` partitions (of `partitions`) are read: the others are
    /// their owners' to send.
    pub fn pending_outbox(
        &self,
        created_before: DateTime<Utc>,
        limit: i64,
        partitions: Partitions,
        owned: Vec<u32>,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        use diesel::sql_types::{Array, Bool, Integer};
        let owned: Vec<i32> = owned
            .into_iter()
            .filter_map(|p| i32::try_from(p).ok())
            .collect();
        let count = i32::try_from(partitions.count()).unwrap_or(i32::MAX);
        // The partition of the row's saga, by the formula of `Partitions::of`.
        let in_owned = diesel::dsl::sql::<Bool>(
            "(get_byte(uuid_send(saga_id), 14) * 256 + get_byte(uuid_send(saga_id), 15)) % ",
        )
        .bind::<Integer, _>(count)
        .sql(" = ANY(")
        .bind::<Array<Integer>, _>(owned)
        .sql(")");
        let mut conn = self.conn()?;
        let rows: Vec<OutboxRow> = outbox::table
            .filter(outbox::created_at.lt(created_before))
            .filter(in_owned)
            .order(outbox::id.asc())
            .limit(limit)
            .select(OutboxRow::as_select())
            .load(&mut conn)?;
        rows.into_iter().map(OutboxRow::into_message).collect()
    }

    /// Joins saga rows with their steps (one query for the whole batch).
    fn assemble(
        &self,
        conn: &mut PgConnection,
        rows: Vec<SagaRow>,
    ) -> Result<Vec<Saga>, StoreError> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let steps: Vec<StepRow> = saga_steps::table
            .filter(saga_steps::saga_id.eq_any(&ids))
            .order((saga_steps::saga_id, saga_steps::position))
            .select(StepRow::as_select())
            .load(conn)?;
        let mut by_saga: HashMap<Uuid, Vec<StepRow>> = HashMap::new();
        for step in steps {
            by_saga.entry(step.saga_id).or_default().push(step);
        }
        rows.into_iter()
            .map(|row| {
                let steps = by_saga.remove(&row.id).unwrap_or_default();
                row.into_saga(steps)
            })
            .collect()
    }
}
