//! The transactional outbox for initiators: the saga submission is written to the initiator's own
//! database in the same local transaction as the business change, and a relay submits it.
//!
//! - [`enqueue`] inserts the submission into `saga_outbox` on the caller's connection, inside the
//!   caller's transaction: the business change and the saga request commit together or not at all.
//! - [`OutboxRelay`] submits pending rows to the coordinator in row order and marks them sent. Each
//!   row is submitted with an idempotency key that is a function of the row (the request's own
//!   `key`, or `{relay name}:{row id}`), so a relay that dies after the coordinator accepted a row but
//!   before marking it sent submits it again and gets the same saga back: exactly one saga per row.
//!
//! Only one relay per outbox table works at a time (a session advisory lock), which keeps the rows in
//! order; others wait as standbys. While the coordinator is unreachable (or answers 5xx) the relay
//! retries the same row with exponential backoff; a row the coordinator refuses for good (a 4xx such
//! as 422) is marked refused with the reason and the relay moves on.
//!
//! The table keeps every row until [`purge`] deletes the ones sent or refused more than a given age
//! ago; a pending row is never deleted. The relay never reads a row again once it is sent or
//! refused, and row ids are never reused (the key `{relay name}:{row id}` stays unique), so any age
//! is safe for the relay. Keep rows as long as you look at them: the row holds the saga id the
//! coordinator gave the request (`saga_id`) and why a request was refused (`last_error`); copy
//! what you need into your own tables if you keep it longer. We suggest 30 days.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use diesel::prelude::*;
use diesel::sql_query;
use diesel::sql_types::{BigInt, Bool, Double, Jsonb, Nullable, Text, Uuid as SqlUuid};
use opentelemetry::context::FutureExt as _;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::cleanup::{in_batches, PurgeError};
use crate::client::{Client, ClientError, SagaRequest};

/// Inserts `request` into the outbox on `conn` (call it inside your transaction); returns the row id.
/// The row keeps the caller's current OpenTelemetry context (`traceparent`, if it has a span), and
/// the relay submits the saga in it: the saga joins the trace of the request that enqueued it. On a
/// blocking thread (diesel), the current context is the one you attached there.
pub fn enqueue(conn: &mut PgConnection, request: &SagaRequest) -> QueryResult<i64> {
    let body = serde_json::to_value(request)
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    let row: IdRow =
        sql_query("INSERT INTO saga_outbox (request, traceparent) VALUES ($1, $2) RETURNING id")
            .bind::<Jsonb, _>(body)
            .bind::<Nullable<Text>, _>(crate::telemetry::current_traceparent())
            .get_result(conn)?;
    Ok(row.id)
}

/// One outbox row as the relay and tests see it.
#[derive(Debug, Clone, QueryableByName)]
pub struct OutboxRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Jsonb)]
    pub request: Value,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub saga_id: Option<Uuid>,
    #[diesel(sql_type = Bool)]
    pub sent: bool,
    #[diesel(sql_type = Bool)]
    pub refused: bool,
}

/// Every row of the outbox, oldest first (for reports and tests).
pub fn rows(conn: &mut PgConnection) -> QueryResult<Vec<OutboxRow>> {
    sql_query(
        "SELECT id, request, attempts, last_error, saga_id,
                sent_at IS NOT NULL AS sent, refused_at IS NOT NULL AS refused
         FROM saga_outbox ORDER BY id",
    )
    .load(conn)
}

/// Deletes the rows sent or refused more than `older_than` ago, those done longest ago first, at
/// most `batch` rows per statement, and returns how many went. Pending rows stay, however old.
///
/// Call it outside a transaction: each batch then commits by itself, holding its row locks only
/// that long.
pub fn purge(conn: &mut PgConnection, older_than: Duration, batch: i64) -> Result<u64, PurgeError> {
    in_batches(conn, batch, |conn| {
        // A pending row has neither time set: its COALESCE is NULL, never below the cutoff.
        sql_query(
            "DELETE FROM saga_outbox WHERE id IN (
                SELECT id FROM saga_outbox
                WHERE COALESCE(sent_at, refused_at) < now() - make_interval(secs => $1)
                ORDER BY COALESCE(sent_at, refused_at)
                LIMIT $2
                FOR UPDATE SKIP LOCKED)",
        )
        .bind::<Double, _>(older_than.as_secs_f64())
        .bind::<BigInt, _>(batch)
        .execute(conn)
    })
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Settings of an [`OutboxRelay`].
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Names the outbox in idempotency keys (`{name}:{row id}`); unique per initiating service.
    pub name: String,
    /// How often to look for new rows when nobody calls [`RelayHandle::wake`].
    pub poll: Duration,
    /// First and longest wait between attempts while the coordinator is unreachable.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl RelaySettings {
    pub fn new(name: impl Into<String>) -> RelaySettings {
        RelaySettings {
            name: name.into(),
            poll: Duration::from_millis(500),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Wakes a running relay at once (e.g. right after your transaction that enqueued a row committed).
#[derive(Clone, Default)]
pub struct RelayHandle {
    notify: Arc<Notify>,
}

impl RelayHandle {
    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

/// Submits the outbox's pending rows to the coordinator, in order.
pub struct OutboxRelay {
    client: Client,
    database_url: String,
    settings: RelaySettings,
    handle: RelayHandle,
}

/// Why a relay stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the outbox database: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("connecting to the outbox database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("the relay's blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What happened to one row.
enum Delivery {
    Sent,
    Refused,
    /// Try the same row again after a backoff.
    Later,
}

impl OutboxRelay {
    /// A relay for the outbox in `database_url` (the initiator's database; [`super::install`] must
    /// have run) submitting to `client`'s coordinator.
    pub fn new(client: Client, database_url: impl Into<String>, settings: RelaySettings) -> Self {
        OutboxRelay {
            client,
            database_url: database_url.into(),
            settings,
            handle: RelayHandle::default(),
        }
    }

    /// A handle to wake the relay when a row was enqueued.
    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown` completes: takes the outbox's advisory lock (waiting while another relay
    /// holds it), then delivers rows as they appear. Database errors are logged and retried.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut connection_backoff = self.backoff();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                result = self.serve() => {
                    if let Err(e) = result {
                        let wait = connection_backoff.next().unwrap_or(self.settings.max_backoff);
                        log::warn!("outbox relay {}: {e}; retrying in {wait:?}", self.settings.name);
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }

    /// Holds the lock and delivers rows until an error; never returns `Ok`.
    async fn serve(&self) -> Result<(), RelayError> {
        let conn = Arc::new(Mutex::new(self.connect_as_leader().await?));
        let mut backoff = self.backoff();
        loop {
            let Some(row) = on(&conn, next_pending).await?? else {
                backoff = self.backoff();
                let _ =
                    tokio::time::timeout(self.settings.poll, self.handle.notify.notified()).await;
                continue;
            };
            let (delivery, update) = self.deliver(&row).await;
            on(&conn, move |c| update.apply(c)).await??;
            match delivery {
                Delivery::Sent | Delivery::Refused => backoff = self.backoff(),
                Delivery::Later => {
                    let wait = backoff.next().unwrap_or(self.settings.max_backoff);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// A connection holding the outbox's session advisory lock: only its holder relays, so rows
    /// go out in order. Waits (polling) while another relay holds it.
    async fn connect_as_leader(&self) -> Result<PgConnection, RelayError> {
        let url = self.database_url.clone();
        let lock_key = advisory_key(&self.settings.name);
        loop {
            let url = url.clone();
            let (conn, locked) = tokio::task::spawn_blocking(move || {
                let mut conn = PgConnection::establish(&url)?;
                let locked: Locked = sql_query("SELECT pg_try_advisory_lock($1) AS locked")
                    .bind::<BigInt, _>(lock_key)
                    .get_result(&mut conn)?;
                Ok::<_, RelayError>((conn, locked.locked))
            })
            .await??;
            if locked {
                return Ok(conn);
            }
            drop(conn);
            tokio::time::sleep(self.settings.poll).await;
        }
    }

    /// Submits one row; says what to write back.
    async fn deliver(&self, row: &PendingRow) -> (Delivery, RowUpdate) {
        let request = match serde_json::from_value::<SagaRequest>(row.request.clone()) {
            Ok(mut request) => {
                if request.key.is_none() {
                    request.key = Some(format!("{}:{}", self.settings.name, row.id));
                }
                request
            }
            Err(e) => {
                let error = format!("not a saga submission: {e}");
                log::error!("outbox row {}: refused: {error}", row.id);
                return (Delivery::Refused, RowUpdate::refused(row.id, error));
            }
        };
        // In the context of the request that enqueued it.
        let context = crate::telemetry::continued(row.traceparent.as_deref(), None);
        match self.client.submit(&request).with_context(context).await {
            Ok(saga) => (Delivery::Sent, RowUpdate::sent(row.id, saga.id)),
            Err(e) if is_permanent(&e) => {
                log::error!(
                    "outbox row {}: the coordinator refused the saga for good: {e}",
                    row.id
                );
                (Delivery::Refused, RowUpdate::refused(row.id, e.to_string()))
            }
            Err(e) => {
                log::warn!("outbox row {}: not delivered yet: {e}", row.id);
                (Delivery::Later, RowUpdate::attempted(row.id, e.to_string()))
            }
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.settings.min_backoff)
            .with_max_delay(self.settings.max_backoff)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Runs `f` on the leader's connection on a blocking thread (diesel is synchronous).
async fn on<T: Send + 'static>(
    conn: &Arc<Mutex<PgConnection>>,
    f: impl FnOnce(&mut PgConnection) -> T + Send + 'static,
) -> Result<T, RelayError> {
    let conn = Arc::clone(conn);
    Ok(tokio::task::spawn_blocking(move || {
        // A poisoned lock only means an earlier query panicked; the connection is still usable.
        let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut conn)
    })
    .await?)
}

/// 4xx answers other than timeouts and throttling will not change by retrying.
fn is_permanent(e: &ClientError) -> bool {
    match e.status() {
        Some(s) => {
            s.is_client_error()
                && s != StatusCode::REQUEST_TIMEOUT
                && s != StatusCode::TOO_MANY_REQUESTS
        }
        None => false,
    }
}

/// A stable 64-bit key for the outbox's advisory lock (FNV-1a of the relay name).
fn advisory_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("saga_outbox:{name}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

#[derive(QueryableByName)]
struct PendingRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Jsonb)]
    request: Value,
    #[diesel(sql_type = Nullable<Text>)]
    traceparent: Option<String>,
}

fn next_pending(conn: &mut PgConnection) -> Result<Option<PendingRow>, RelayError> {
    Ok(sql_query(
        "SELECT id, request, traceparent FROM saga_outbox
         WHERE sent_at IS NULL AND refused_at IS NULL ORDER BY id LIMIT 1",
    )
    .get_result(conn)
    .optional()?)
}

/// What to record about a row after an attempt.
struct RowUpdate {
    id: i64,
    saga_id: Option<Uuid>,
    error: Option<String>,
    sent: bool,
    refused: bool,
}

impl RowUpdate {
    fn sent(id: i64, saga_id: Uuid) -> Self {
        RowUpdate {
            id,
            saga_id: Some(saga_id),
            error: None,
            sent: true,
            refused: false,
        }
    }

    fn refused(id: i64, error: String) -> Self {
        RowUpdate {
            id,
            saga_id: None,
            error: Some(error),
            sent: false,
            refused: true,
        }
    }

    fn attempted(id: i64, error: String) -> Self {
        RowUpdate {
            id,
            saga_id: None,
            error: Some(error),
            sent: false,
            refused: false,
        }
    }

    fn apply(&self, conn: &mut PgConnection) -> Result<(), RelayError> {
        sql_query(
            "UPDATE saga_outbox SET
                attempts = attempts + 1,
                last_error = $2,
                saga_id = COALESCE($3, saga_id),
                sent_at = CASE WHEN $4 THEN now() ELSE sent_at END,
                refused_at = CASE WHEN $5 THEN now() ELSE refused_at END
             WHERE id = $1",
        )
        .bind::<BigInt, _>(self.id)
        .bind::<Nullable<Text>, _>(self.error.as_deref())
        .bind::<Nullable<SqlUuid>, _>(self.saga_id)
        .bind::<Bool, _>(self.sent)
        .bind::<Bool, _>(self.refused)
        .execute(conn)?;
        Ok(())
    }
}
