//! The idempotency barrier: at most one effect per command, in the participant's own Postgres.
//!
//! A table keyed by the command's idempotency key records what each command answered. The business
//! writes of a handler run in the same local transaction as its barrier row, so either both are
//! committed or neither is. That gives, for a participant using [`Barrier::run`]:
//!
//! - **Duplicates**: a command delivered again (a retry after a timeout, a redelivery after a crash
//!   between commit and reply) returns the recorded outcome; the business code does not run again.
//! - **Null compensation**: a compensation that arrives for an action that never ran records that the
//!   action is now barred and succeeds without running the compensation's business code.
//! - **Hanging action**: an action that arrives after its compensation is refused with `failure`.
//!
//! Races between an action and its compensation are settled by the table's primary key: both insert
//! the action's row, and the second waits for the first to commit.
//!
//! Only `success` and an action's `failure` are recorded. A `retry` (or an error) rolls the whole
//! transaction back, so the next attempt runs afresh; a business `failure` rolls back the business
//! writes (they run in a savepoint) but keeps the barrier row, so duplicates get the same refusal and
//! a later compensation knows the action had no effect. A compensation's `failure` is not recorded:
//! the coordinator retries it.
//!
//! The table is created by [`install`]; the barrier takes any [`PgConnection`], e.g. one from the
//! participant's own pool, inside `tokio::task::spawn_blocking`.
//!
//! ## Cleanup: when a row may go
//!
//! The table gets a row per command handled (and one more when a compensation comes before its
//! action) and keeps it until [`purge`] deletes it. A row may go only once no command of its step can
//! arrive any more: the saga is final (`committed`, `compensated` or `aborted`; a `failed` saga is
//! not, an operator's `retry` sends its compensations again) and no attempt can still wait in a
//! queue. A row deleted too early is forgotten: a late duplicate of an action runs it twice, a
//! compensation finds no action row and passes for a null compensation (the effect stays), and an
//! action arriving after its compensation runs instead of being refused.
//!
//! The barrier does not know when a saga is final, so [`purge`] goes by age: it deletes a row when
//! both rows of its step (the action's and the compensation's) were recorded more than `older_than`
//! ago. Choose `older_than` no shorter than the longest a saga of yours may stay unfinished after its
//! first command reached you, plus the longest a command may wait in your queue. That is the sum of:
//!
//! - how long the saga may run forward: its deadline (`timeout_ms`) if it has one, else each step's
//!   attempts times (its timeout plus its longest backoff); then its compensations, counted the same
//!   way (the coordinator accepts timeouts up to 30 days, backoffs up to a day and 1000 attempts);
//! - how long a saga may stay paused (a pause holds every timer, the deadline too) or `failed` until
//!   an operator retries or resolves it;
//! - how long your participant may be down or behind while its commands wait in
//!   `{ns}.participant.{name}`, and how long commands may wait in the coordinator's outbox while
//!   RabbitMQ is away.
//!
//! A prepared (two-phase) saga sends no command before it is committed: its check-backs do not count.
//!
//! [`purge`] refuses an age below [`MIN_RETENTION`] (one day): shorter cannot cover a saga that
//! waits for an operator overnight, and is most likely a unit mistake. We recommend
//! [`RECOMMENDED_RETENTION`] (30 days): with the default retry policies a saga is over within
//! minutes, so 30 days leaves weeks for pauses, sagas `failed` until an operator acts, and outages,
//! at the price of a month of rows on disk. Resolve `failed` and paused sagas within that time (the
//! coordinator's `failed` alert and `saga_sagas_in_flight{state="failed"}` say which), and choose
//! more if your sagas' own timeouts and retries may run longer.

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel::{sql_query, PgConnection};
use serde_json::Value;
use uuid::Uuid;

use crate::cleanup::{check_retention, in_batches, PurgeError};
/// The shortest `older_than` [`purge`] accepts (one day) and the one we recommend (30 days): module
/// docs, "Cleanup".
pub use crate::cleanup::{MIN_RETENTION, RECOMMENDED_RETENTION};
use crate::command::{Command, CommandKind};
use crate::outcome::Outcome;

/// The barrier table's name.
pub const TABLE: &str = "saga_barrier";

/// Creates the barrier table and its index if they do not exist (safe to call from several
/// processes at once, and on a table an older version of this crate created).
///
/// The index on `recorded_at` (for [`purge`]) is built under a lock that holds back the barrier's
/// writes meanwhile. On a big existing table, build it first without that lock:
/// `CREATE INDEX CONCURRENTLY IF NOT EXISTS saga_barrier_recorded_at ON saga_barrier (recorded_at)`.
pub fn install(conn: &mut PgConnection) -> QueryResult<()> {
    conn.transaction(|conn| {
        // Concurrent `CREATE TABLE IF NOT EXISTS` can still collide in the catalog.
        sql_query("SELECT pg_advisory_xact_lock(7462519377451)").execute(conn)?;
        sql_query(
            "CREATE TABLE IF NOT EXISTS saga_barrier (
                idempotency_key text PRIMARY KEY,
                saga_id uuid NOT NULL,
                step text NOT NULL,
                kind text NOT NULL,
                -- 'ran': the handler ran; 'barred': written by a compensation that came first
                -- (the action never ran); 'null': a compensation that had nothing to undo.
                origin text NOT NULL,
                outcome text NOT NULL,
                output jsonb,
                error text,
                recorded_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .execute(conn)?;
        // Without it each purge scans the whole table (years of rows) for the old ones. It costs
        // one entry per row and no update: `recorded_at` is written in the row's own transaction,
        // where `now()` does not move, so the update that records the outcome leaves it unchanged.
        sql_query(
            "CREATE INDEX IF NOT EXISTS saga_barrier_recorded_at ON saga_barrier (recorded_at)",
        )
        .execute(conn)?;
        Ok(())
    })
}

/// Deletes the rows of every step whose rows were all recorded more than `older_than` ago, oldest
/// first, at most `batch` rows per statement, and returns how many went.
///
/// Call it outside a transaction: each batch then commits by itself, holding its row locks only
/// that long. `older_than` below [`MIN_RETENTION`] is refused ([`PurgeError::TooRecent`]) and
/// nothing is deleted; see the module docs ("Cleanup") for how to choose it.
pub fn purge(conn: &mut PgConnection, older_than: Duration, batch: i64) -> Result<u64, PurgeError> {
    check_retention(older_than)?;
    in_batches(conn, batch, |conn| {
        // A step's rows go together: a row stays while the other row of its step (keys
        // `{saga_id}:{step}:action` and `:compensation`, contract section 1) is recent, since its
        // saga was then still sending commands. SKIP LOCKED: two purgers split the work.
        sql_query(
            "DELETE FROM saga_barrier WHERE idempotency_key IN (
                SELECT b.idempotency_key FROM saga_barrier b
                WHERE b.recorded_at < now() - make_interval(secs => $1)
                  AND NOT EXISTS (
                      SELECT 1 FROM saga_barrier s
                      WHERE s.idempotency_key IN (b.saga_id::text || ':' || b.step || ':action',
                                                  b.saga_id::text || ':' || b.step || ':compensation')
                        AND s.recorded_at >= now() - make_interval(secs => $1))
                ORDER BY b.recorded_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED)",
        )
        .bind::<Double, _>(older_than.as_secs_f64())
        .bind::<BigInt, _>(batch)
        .execute(conn)
    })
}

/// What the barrier made of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time: the business code ran (and its writes are committed if the outcome is success,
    /// or an action's failure).
    Ran,
    /// Seen before: the recorded outcome, the business code did not run.
    Duplicate,
    /// A compensation whose action never ran (or had no effect): success without running.
    NullCompensation,
    /// An action that arrived after its compensation: refused with `failure`, not run.
    Hanging,
}

/// The outcome to reply with, and how it came about.
#[derive(Debug, Clone, PartialEq)]
pub struct Guarded {
    /// What to reply.
    pub outcome: Outcome,
    /// Whether the business code ran, and if not, why.
    pub verdict: Verdict,
}

/// The barrier for one command: what identifies it and its action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barrier {
    saga_id: Uuid,
    step: String,
    kind: CommandKind,
    key: String,
}

#[derive(QueryableByName)]
struct Recorded {
    #[diesel(sql_type = Text)]
    origin: String,
    #[diesel(sql_type = Text)]
    outcome: String,
    #[diesel(sql_type = Nullable<Jsonb>)]
    output: Option<Value>,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
}

impl Recorded {
    fn outcome(&self) -> Outcome {
        match self.outcome.as_str() {
            "success" => Outcome::Success(self.output.clone()),
            _ => Outcome::Failure(self.error.clone().unwrap_or_default()),
        }
    }
}

/// Why a guarded transaction was rolled back.
enum Rollback<E> {
    /// The business code asked for a retry: nothing is recorded.
    Retry(String),
    /// An error: nothing is recorded, the caller gets it.
    Error(E),
}

impl<E: From<diesel::result::Error>> From<diesel::result::Error> for Rollback<E> {
    fn from(e: diesel::result::Error) -> Self {
        Rollback::Error(E::from(e))
    }
}

/// The business code's failure, rolled back to its savepoint.
enum Inner<E> {
    Failure(String),
    Retry(String),
    Error(E),
}

impl<E: From<diesel::result::Error>> From<diesel::result::Error> for Inner<E> {
    fn from(e: diesel::result::Error) -> Self {
        Inner::Error(E::from(e))
    }
}

impl Barrier {
    /// The barrier of `command`.
    pub fn new<P>(command: &Command<P>) -> Barrier {
        Barrier {
            saga_id: command.saga_id,
            step: command.step.clone(),
            kind: command.kind,
            key: command.idempotency_key.clone(),
        }
    }

    /// The key of this step's action row: `{saga_id}:{step}:action` (contract, section 1).
    fn action_key(&self) -> String {
        contract::idempotency_key(self.saga_id, Some(&self.step), CommandKind::Action)
    }

    /// Runs `business` at most once for this command, in one transaction with the barrier row, and
    /// returns the outcome to reply with. `business` gets the connection, inside the transaction:
    /// every write it makes there commits or rolls back with the barrier row.
    pub fn run<E>(
        &self,
        conn: &mut PgConnection,
        business: impl FnOnce(&mut PgConnection) -> Result<Outcome, E>,
    ) -> Result<Guarded, E>
    where
        E: From<diesel::result::Error>,
    {
        let result = conn.transaction::<Guarded, Rollback<E>, _>(|conn| match self.kind {
            CommandKind::Compensation => self.compensate(conn, business),
            _ => self.act(conn, business),
        });
        match result {
            Ok(guarded) => Ok(guarded),
            Err(Rollback::Retry(message)) => Ok(Guarded {
                outcome: Outcome::Retry(message),
                verdict: Verdict::Ran,
            }),
            Err(Rollback::Error(e)) => Err(e),
        }
    }

    fn act<E: From<diesel::result::Error>>(
        &self,
        conn: &mut PgConnection,
        business: impl FnOnce(&mut PgConnection) -> Result<Outcome, E>,
    ) -> Result<Guarded, Rollback<E>> {
        if !self.claim(conn, &self.key, "ran")? {
            let recorded = self.recorded(conn, &self.key)?;
            return Ok(if recorded.origin == "barred" {
                Guarded {
                    outcome: Outcome::failure(
                        "refused: this action arrived after its compensation",
                    ),
                    verdict: Verdict::Hanging,
                }
            } else {
                Guarded {
                    outcome: recorded.outcome(),
                    verdict: Verdict::Duplicate,
                }
            });
        }
        let outcome = run_business(conn, business)?;
        self.record(conn, &self.key, &outcome)?;
        Ok(Guarded {
            outcome,
            verdict: Verdict::Ran,
        })
    }

    fn compensate<E: From<diesel::result::Error>>(
        &self,
        conn: &mut PgConnection,
        business: impl FnOnce(&mut PgConnection) -> Result<Outcome, E>,
    ) -> Result<Guarded, Rollback<E>> {
        if !self.claim(conn, &self.key, "ran")? {
            let recorded = self.recorded(conn, &self.key)?;
            return Ok(Guarded {
                outcome: recorded.outcome(),
                verdict: Verdict::Duplicate,
            });
        }
        // Bar the action: if its row did not exist, it never ran and never will.
        let action_key = self.action_key();
        let null = if self.claim_as(conn, &action_key, CommandKind::Action, "barred")? {
            self.record(
                conn,
                &action_key,
                &Outcome::failure("barred by its compensation"),
            )?;
            true
        } else {
            // The action ran: undo it, unless it was a business refusal (which had no effect).
            !self.recorded(conn, &action_key)?.outcome().is_success()
        };
        if null {
            let outcome = Outcome::success();
            self.record_null(conn)?;
            return Ok(Guarded {
                outcome,
                verdict: Verdict::NullCompensation,
            });
        }
        let outcome = run_business(conn, business)?;
        match outcome {
            Outcome::Success(_) => {
                self.record(conn, &self.key, &outcome)?;
                Ok(Guarded {
                    outcome,
                    verdict: Verdict::Ran,
                })
            }
            // A compensation must eventually succeed: keep nothing, let the coordinator retry.
            Outcome::Failure(message) | Outcome::Retry(message) => Err(Rollback::Retry(message)),
            // Turned into a retry by `run_business` already.
            Outcome::CheckBack(answer) => Err(Rollback::Retry(answer.as_str().to_string())),
        }
    }

    /// Inserts this command's row if it does not exist; `false` if it did (or a concurrent
    /// transaction inserted it first and committed).
    fn claim(&self, conn: &mut PgConnection, key: &str, origin: &str) -> QueryResult<bool> {
        self.claim_as(conn, key, self.kind, origin)
    }

    fn claim_as(
        &self,
        conn: &mut PgConnection,
        key: &str,
        kind: CommandKind,
        origin: &str,
    ) -> QueryResult<bool> {
        let inserted = sql_query(
            "INSERT INTO saga_barrier (idempotency_key, saga_id, step, kind, origin, outcome)
             VALUES ($1, $2, $3, $4, $5, 'pending')
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind::<Text, _>(key)
        .bind::<SqlUuid, _>(self.saga_id)
        .bind::<Text, _>(&self.step)
        .bind::<Text, _>(kind.as_str())
        .bind::<Text, _>(origin)
        .execute(conn)?;
        Ok(inserted == 1)
    }

    fn recorded(&self, conn: &mut PgConnection, key: &str) -> QueryResult<Recorded> {
        sql_query(
            "SELECT origin, outcome, output, error FROM saga_barrier WHERE idempotency_key = $1",
        )
        .bind::<Text, _>(key)
        .get_result(conn)
    }

    fn record(&self, conn: &mut PgConnection, key: &str, outcome: &Outcome) -> QueryResult<()> {
        sql_query(
            "UPDATE saga_barrier SET outcome = $2, output = $3, error = $4, recorded_at = now()
             WHERE idempotency_key = $1",
        )
        .bind::<Text, _>(key)
        .bind::<Text, _>(outcome.label())
        .bind::<Nullable<Jsonb>, _>(outcome.output().cloned())
        .bind::<Nullable<Text>, _>(outcome.error())
        .execute(conn)?;
        Ok(())
    }

    fn record_null(&self, conn: &mut PgConnection) -> QueryResult<()> {
        sql_query(
            "UPDATE saga_barrier SET origin = 'null', outcome = 'success', recorded_at = now()
             WHERE idempotency_key = $1",
        )
        .bind::<Text, _>(&self.key)
        .execute(conn)?;
        Ok(())
    }
}

/// Runs the business code in a savepoint: a `failure` rolls its writes back but not the barrier row;
/// a `retry` or an error rolls back everything.
fn run_business<E: From<diesel::result::Error>>(
    conn: &mut PgConnection,
    business: impl FnOnce(&mut PgConnection) -> Result<Outcome, E>,
) -> Result<Outcome, Rollback<E>> {
    let result = conn.transaction::<Outcome, Inner<E>, _>(|conn| match business(conn) {
        Ok(Outcome::Failure(message)) => Err(Inner::Failure(message)),
        Ok(Outcome::Retry(message)) => Err(Inner::Retry(message)),
        Ok(Outcome::CheckBack(answer)) => Err(Inner::Retry(format!(
            "{} is only an answer to a check-back",
            answer.as_str()
        ))),
        Ok(success) => Ok(success),
        Err(e) => Err(Inner::Error(e)),
    });
    match result {
        Ok(outcome) => Ok(outcome),
        Err(Inner::Failure(message)) => Ok(Outcome::Failure(message)),
        Err(Inner::Retry(message)) => Err(Rollback::Retry(message)),
        Err(Inner::Error(e)) => Err(Rollback::Error(e)),
    }
}

/// Reads what the barrier recorded for an idempotency key: `(origin, outcome)`, e.g. for tests and
/// reports. `None` if the key is unknown.
pub fn recorded(conn: &mut PgConnection, key: &str) -> QueryResult<Option<(String, Outcome)>> {
    let rows: Vec<Recorded> = sql_query(
        "SELECT origin, outcome, output, error FROM saga_barrier WHERE idempotency_key = $1",
    )
    .bind::<Text, _>(key)
    .load(conn)?;
    Ok(rows.into_iter().next().map(|r| {
        let outcome = r.outcome();
        (r.origin, outcome)
    }))
}
