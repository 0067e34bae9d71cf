//! Two-phase submission tied to a local transaction ("half message", as in RocketMQ's transactional
//! messages).
//!
//! 1. [`prepare`]: the saga is submitted with `"mode": "prepare"`; the coordinator stores it and
//!    dispatches nothing.
//! 2. [`run_local`]: the caller's local diesel transaction runs, and inserts the marker row
//!    `saga_initiations(saga_id, 'committed')` first, so that the row is locked for the whole
//!    transaction and committed with it or not at all.
//! 3. [`decide`]: commit the saga if the transaction committed, abort it if not.
//!
//! [`start`] does all three. If the initiator dies between 2 and 3, the coordinator's check-back
//! reaches [`check_back_answer`], which inserts `(saga_id, 'aborted')` unless a row exists: while
//! the local transaction is still open that insert waits on its row lock, so the answer is never a
//! guess. Once the check-back has written `aborted`, a late local transaction fails on the marker
//! and rolls back, so the business change and the saga still agree.
//!
//! ## Cleanup
//!
//! A marker answers the coordinator's check-backs, which come while the saga is prepared and again
//! whenever an operator asks again for a saga that became `failed` waiting for an answer. A marker
//! deleted while that can still happen turns a committed local transaction into an `aborted`
//! answer. [`purge`] deletes markers by age with the barrier's floor and advice
//! ([`MIN_RETENTION`](crate::barrier::MIN_RETENTION), one day;
//! [`RECOMMENDED_RETENTION`](crate::barrier::RECOMMENDED_RETENTION), 30 days): choose more than the
//! longest prepare window (`prepare_timeout_ms` plus the check-back's retries), and decide `failed`
//! prepared sagas within that time.

use std::time::Duration;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_query;
use diesel::sql_types::{BigInt, Double, Text, Uuid as SqlUuid};
use uuid::Uuid;

use crate::cleanup::{check_retention, in_batches, PurgeError};
use crate::client::{CheckBack, Client, ClientError, Saga, SagaRequest};

/// A pool of connections to the initiator's own database.
pub type PgPool = Pool<ConnectionManager<PgConnection>>;

/// How long [`check_back_answer`] waits for an open local transaction before answering `pending`.
pub const DEFAULT_CHECK_WAIT: Duration = Duration::from_secs(2);

pub use crate::outcome::CheckBackAnswer;

/// What went wrong starting a saga with [`start`].
#[derive(Debug, thiserror::Error)]
pub enum HalfMessageError<E> {
    /// The coordinator did not take the prepared saga; nothing happened locally.
    #[error("preparing the saga: {0}")]
    Prepare(#[from] ClientError),
    /// The local transaction failed and was rolled back; the saga was (or will be) aborted.
    #[error("the local transaction failed: {0}")]
    Local(E),
    /// The check-back already answered `aborted` for this saga (the local transaction came too
    /// late); it was rolled back.
    #[error("the saga was aborted by a check-back before the local transaction committed")]
    AlreadyAborted,
    /// No connection to the local database.
    #[error("no connection to the local database: {0}")]
    Pool(String),
}

/// A saga started together with a committed local transaction.
#[derive(Debug)]
pub struct Started<T> {
    /// The saga as the coordinator answered the commit, or the prepared one if the commit could not
    /// be delivered (the check-back will start it).
    pub saga: Saga,
    /// What the local transaction returned.
    pub value: T,
    /// Whether the coordinator confirmed the commit (false: it will learn by check-back).
    pub commit_confirmed: bool,
}

/// Step 1: submits `request` as a prepared saga with `check_back` as the place to ask.
pub async fn prepare(
    client: &Client,
    request: SagaRequest,
    check_back: CheckBack,
) -> Result<Saga, ClientError> {
    client.submit(&request.prepare(check_back)).await
}

/// Step 2: runs `local` in one transaction together with the marker row of `saga_id`. Blocking
/// (diesel): call it from `spawn_blocking` or use [`start`].
pub fn run_local<T, E>(
    conn: &mut PgConnection,
    saga_id: Uuid,
    local: impl FnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<T, HalfMessageError<E>>
where
    E: From<DieselError>,
{
    let outcome = conn.transaction::<T, LocalError<E>, _>(|conn| {
        // First, so that the marker's row lock covers the whole transaction.
        sql_query("INSERT INTO saga_initiations (saga_id, outcome) VALUES ($1, 'committed')")
            .bind::<SqlUuid, _>(saga_id)
            .execute(conn)
            .map_err(|e| match e {
                DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                    LocalError::AlreadyDecided
                }
                other => LocalError::Caller(E::from(other)),
            })?;
        local(conn).map_err(LocalError::Caller)
    });
    match outcome {
        Ok(value) => Ok(value),
        Err(LocalError::AlreadyDecided) => Err(HalfMessageError::AlreadyAborted),
        Err(LocalError::Caller(e)) => Err(HalfMessageError::Local(e)),
    }
}

/// The transaction's own error type: the caller's, or the marker saying it was decided already.
enum LocalError<E> {
    AlreadyDecided,
    Caller(E),
}

impl<E: From<DieselError>> From<DieselError> for LocalError<E> {
    fn from(e: DieselError) -> Self {
        LocalError::Caller(E::from(e))
    }
}

/// Step 3: tells the coordinator how the local transaction ended. A failure to deliver is not fatal:
/// the check-back finds out from the marker row.
pub async fn decide(client: &Client, saga_id: Uuid, committed: bool) -> Result<Saga, ClientError> {
    if committed {
        client.commit(saga_id).await
    } else {
        client.abort(saga_id).await
    }
}

/// Prepares the saga, runs `local` with the marker row in one local transaction, then commits or
/// aborts the saga by the transaction's result.
pub async fn start<T, E, F>(
    client: &Client,
    pool: &PgPool,
    request: SagaRequest,
    check_back: CheckBack,
    local: F,
) -> Result<Started<T>, HalfMessageError<E>>
where
    T: Send + 'static,
    E: From<DieselError> + Send + 'static,
    F: FnOnce(&mut PgConnection, &Saga) -> Result<T, E> + Send + 'static,
{
    let prepared = prepare(client, request, check_back).await?;
    let saga_id = prepared.id;
    let pool = pool.clone();
    let for_local = prepared.clone();
    let ran = tokio::task::spawn_blocking(move || {
        let mut conn = pool
            .get()
            .map_err(|e| HalfMessageError::Pool(e.to_string()))?;
        run_local(&mut conn, saga_id, |conn| local(conn, &for_local))
    })
    .await
    .unwrap_or_else(|e| {
        Err(HalfMessageError::Pool(format!(
            "the local transaction panicked: {e}"
        )))
    });
    match ran {
        Ok(value) => match decide(client, saga_id, true).await {
            Ok(saga) => Ok(Started {
                saga,
                value,
                commit_confirmed: true,
            }),
            Err(e) => {
                log::warn!(
                    saga_id:% = saga_id,
                    saga = prepared.name.as_str();
                    "saga {saga_id}: commit not delivered ({e}); the check-back will start it"
                );
                Ok(Started {
                    saga: prepared,
                    value,
                    commit_confirmed: false,
                })
            }
        },
        Err(e) => {
            if let Err(abort) = decide(client, saga_id, false).await {
                log::warn!(
                    saga_id:% = saga_id,
                    saga = prepared.name.as_str();
                    "saga {saga_id}: abort not delivered ({abort}); the check-back will abort it"
                );
            }
            Err(e)
        }
    }
}

/// Answers a check-back about `saga_id` from the marker row (blocking; diesel).
///
/// Inserts `(saga_id, 'aborted')` unless a marker exists. An open local transaction holds the
/// marker's row lock, so the insert waits for it (up to `wait`, then `pending`): committed, the
/// answer is `committed`; rolled back, the insert goes through and the answer is `aborted` for good.
pub fn check_back_answer(
    conn: &mut PgConnection,
    saga_id: Uuid,
    wait: Duration,
) -> QueryResult<CheckBackAnswer> {
    let answered = conn.transaction::<Option<String>, DieselError, _>(|conn| {
        sql_query(format!(
            "SET LOCAL lock_timeout = {}",
            wait.as_millis().max(1)
        ))
        .execute(conn)?;
        sql_query(
            "INSERT INTO saga_initiations (saga_id, outcome) VALUES ($1, 'aborted')
             ON CONFLICT (saga_id) DO NOTHING",
        )
        .bind::<SqlUuid, _>(saga_id)
        .execute(conn)?;
        let row: MarkerRow = sql_query("SELECT outcome FROM saga_initiations WHERE saga_id = $1")
            .bind::<SqlUuid, _>(saga_id)
            .get_result(conn)?;
        Ok(Some(row.outcome))
    });
    match answered {
        Ok(Some(outcome)) if outcome == "committed" => Ok(CheckBackAnswer::Committed),
        Ok(_) => Ok(CheckBackAnswer::Aborted),
        Err(DieselError::DatabaseError(_, info)) if info.message().contains("lock timeout") => {
            Ok(CheckBackAnswer::Pending)
        }
        Err(e) => Err(e),
    }
}

/// Deletes the markers recorded more than `older_than` ago, oldest first, at most `batch` per
/// statement, and returns how many went. `older_than` below the floor is refused
/// ([`PurgeError::TooRecent`]) and nothing is deleted; see the module docs ("Cleanup").
///
/// Call it outside a transaction: each batch then commits by itself. A marker still locked by an
/// open local transaction is skipped.
pub fn purge(conn: &mut PgConnection, older_than: Duration, batch: i64) -> Result<u64, PurgeError> {
    check_retention(older_than)?;
    in_batches(conn, batch, |conn| {
        sql_query(
            "DELETE FROM saga_initiations WHERE saga_id IN (
                SELECT saga_id FROM saga_initiations
                WHERE recorded_at < now() - make_interval(secs => $1)
                ORDER BY recorded_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED)",
        )
        .bind::<Double, _>(older_than.as_secs_f64())
        .bind::<BigInt, _>(batch)
        .execute(conn)
    })
}

#[derive(QueryableByName)]
struct MarkerRow {
    #[diesel(sql_type = Text)]
    outcome: String,
}

/// A ready handler for `ParticipantBuilder::check_back`: answers each `check` command with
/// [`check_back_answer`] on a connection from `pool`, waiting up to `wait` for an open local
/// transaction.
pub fn check_back_handler(
    pool: PgPool,
    wait: Duration,
) -> impl Fn(
    crate::Command<serde_json::Value>,
) -> futures_util::future::BoxFuture<'static, Result<CheckBackAnswer, crate::BoxError>>
       + Send
       + Sync
       + 'static {
    use futures_util::FutureExt;
    move |command| {
        let pool = pool.clone();
        async move {
            let answer = tokio::task::spawn_blocking(move || {
                let mut conn = pool.get()?;
                Ok::<_, crate::BoxError>(check_back_answer(&mut conn, command.saga_id, wait)?)
            })
            .await??;
            Ok(answer)
        }
        .boxed()
    }
}
