//! Starting a saga atomically with a change in the initiator's own database (contract, section 5).
//!
//! A service that must write its own row (an order, say) and start a saga must never end up with one
//! without the other. Two answers, each backed by a table in the initiator's Postgres:
//!
//! - [`half_message`]: two-phase submission. The saga is submitted `prepared` (nothing runs), the
//!   local transaction runs with a marker row, then the saga is committed or aborted by the
//!   transaction's result. If the initiator dies in between, the coordinator asks back, and
//!   [`half_message::check_back_answer`] answers from the marker row, waiting on its row lock while
//!   the local transaction may still commit.
//! - [`outbox`]: the transactional outbox. The local transaction also inserts the saga submission
//!   into an outbox table; an [`outbox::OutboxRelay`] submits pending rows in order, with an
//!   idempotency key derived from the row, and marks them sent. [`outbox::purge`] deletes the rows
//!   sent or refused long ago.
//!
//! Which to choose: the outbox needs no check-back endpoint and tolerates the coordinator being down
//! when the business change happens (the saga starts when it is back); the half-message style tells
//! the caller at once that the coordinator accepted the saga (its id, validation errors before the
//! local change is made) at the price of answering check-backs.
//!
//! [`install`] creates both tables; it is safe to call from several processes at once.

pub mod half_message;
pub mod outbox;

use diesel::prelude::*;
use diesel::sql_query;

/// Creates the marker and outbox tables and their indexes if they do not exist (also on tables an
/// older version of this crate created). On a big existing outbox, build the index
/// [`outbox::purge`] uses first, without holding back the outbox's writes:
/// `CREATE INDEX CONCURRENTLY IF NOT EXISTS saga_outbox_done ON saga_outbox ((COALESCE(sent_at, refused_at)))`.
pub fn install(conn: &mut PgConnection) -> QueryResult<()> {
    conn.transaction(|conn| {
        // Concurrent `CREATE TABLE IF NOT EXISTS` can still collide in the catalog.
        sql_query("SELECT pg_advisory_xact_lock(7462519377452)").execute(conn)?;
        sql_query(
            "CREATE TABLE IF NOT EXISTS saga_initiations (
                saga_id uuid PRIMARY KEY,
                -- 'committed': written by the initiator's local transaction;
                -- 'aborted': written by a check-back that found no committed transaction.
                outcome text NOT NULL,
                recorded_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .execute(conn)?;
        sql_query(
            "CREATE TABLE IF NOT EXISTS saga_outbox (
                id bigserial PRIMARY KEY,
                request jsonb NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                attempts integer NOT NULL DEFAULT 0,
                last_error text,
                -- Set once: the coordinator accepted the saga, or refused it for good.
                sent_at timestamptz,
                saga_id uuid,
                refused_at timestamptz
            )",
        )
        .execute(conn)?;
        // The enqueuing caller's trace context (added after the table's first version), so that a
        // saga submitted later still joins the trace of the request that enqueued it.
        sql_query("ALTER TABLE saga_outbox ADD COLUMN IF NOT EXISTS traceparent text")
            .execute(conn)?;
        sql_query(
            "CREATE INDEX IF NOT EXISTS saga_outbox_pending ON saga_outbox (id)
                WHERE sent_at IS NULL AND refused_at IS NULL",
        )
        .execute(conn)?;
        // For `half_message::purge`: the oldest markers without a scan of every one kept.
        sql_query(
            "CREATE INDEX IF NOT EXISTS saga_initiations_recorded_at
                ON saga_initiations (recorded_at)",
        )
        .execute(conn)?;
        // For `outbox::purge`, which deletes the rows done longest ago: without it each purge scans
        // every row kept. Pending rows are NULL here; the relay's one update per row sets it.
        sql_query(
            "CREATE INDEX IF NOT EXISTS saga_outbox_done ON saga_outbox
                ((COALESCE(sent_at, refused_at)))",
        )
        .execute(conn)?;
        Ok(())
    })
}
