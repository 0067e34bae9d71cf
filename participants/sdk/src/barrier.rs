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

use diesel::prelude::*;
use diesel::sql_types::{Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel::{sql_query, PgConnection};
use serde_json::Value;
use uuid::Uuid;

use crate::command::{Command, CommandKind};
use crate::outcome::Outcome;

/// The barrier table's name.
pub const TABLE: &str = "saga_barrier";

/// Creates the barrier table if it does not exist (safe to call from several processes at once).
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
        Ok(())
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
