//! # participants: write saga participants in a few lines
//!
//! A participant is a service that runs the steps of sagas: the coordinator sends it commands over
//! RabbitMQ (an *action* to do a step, a *compensation* to undo it) and waits for its reply
//! (contract, sections 3 and 4). This crate turns that contract into handler code:
//!
//! - [`Participant`]: declare a name and the handlers of its commands; [`Participant::run_until`]
//!   declares the queue `{ns}.participant.{name}`, consumes it, runs each command's handler,
//!   publishes the reply with a publisher confirm and only then acknowledges the command, and
//!   reconnects (with backoff) when the broker goes away, to the next node when
//!   [`Settings::amqp_url`] lists a cluster's. The queue is declared with the coordinator's
//!   [`QueueType`] ([`Settings::queue_type`], `SAGA_QUEUE_TYPE`): `Quorum` in a cluster that must
//!   survive losing a node. A handler that returns an error or panics
//!   answers `retry`; an unknown command or an undecodable body is rejected to the dead-letter queue
//!   with a log line.
//! - [`Command`] and [`Outcome`]: what a handler receives (typed payload) and answers.
//! - [`barrier`]: the idempotency barrier in the participant's own Postgres (diesel), so that a
//!   command's effect happens once however often it arrives, a compensation without its action is a
//!   no-op ("null compensation"), and an action arriving after its compensation is refused.
//! - [`client`]: a typed client for the coordinator's HTTP API.
//! - [`initiator`]: starting a saga atomically with a change in your own database (two-phase
//!   submission or a transactional outbox).
//! - [`telemetry`]: OpenTelemetry. Each handler runs in a span that continues the command's
//!   `traceparent` (the coordinator's span of that attempt), so your own spans nest under it; the
//!   reply carries it back; the client and the outbox send the caller's context.
//!   [`telemetry::install`] exports spans over OTLP when the standard `OTEL_*` variables ask.
//! - [`init_logging`]: the coordinator's log lines for your binary: `SAGA_LOG_FORMAT=text` (the
//!   default) or `json` (one object per line), filtered by `RUST_LOG`. The SDK's lines about a
//!   command carry `saga_id`, `saga`, `step`, `attempt` and, when the command has a
//!   `traceparent`, `trace_id` as fields; so do yours with [`command_log!`].
//!
//! ## Keeping the tables small
//!
//! The barrier's table (`saga_barrier`) and the outbox's (`saga_outbox`) grow by a row per command
//! and per saga started, forever, unless you delete old rows: [`barrier::purge`] and
//! [`initiator::outbox::purge`] delete rows older than an age, in batches that commit one by one.
//! The outbox's are safe to delete once sent or refused (pending rows are never deleted). A barrier
//! row is what refuses a duplicate, so it may go only when no command of its step can arrive any
//! more: not before the longest a saga of yours may run after its first command reached you (its
//! deadline, or its steps' timeouts, retries and backoffs; the time it may stay paused or `failed`
//! until an operator acts) plus the longest a command may wait in your queue.
//! [`barrier::purge`] refuses less than [`barrier::MIN_RETENTION`] (one day); we recommend
//! [`barrier::RECOMMENDED_RETENTION`] (30 days). The [`barrier`] module docs ("Cleanup") say why.
//! Call them from time to time, e.g. hourly, from every process or one (concurrent purges skip each
//! other's rows):
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use diesel::prelude::*;
//! use participants::barrier;
//! use participants::initiator::outbox;
//!
//! async fn clean_up_hourly(database_url: String) {
//!     let mut hourly = tokio::time::interval(Duration::from_secs(3600));
//!     loop {
//!         hourly.tick().await;
//!         let url = database_url.clone();
//!         let purged = tokio::task::spawn_blocking(move || {
//!             let mut conn = PgConnection::establish(&url)?;
//!             let barrier_rows = barrier::purge(&mut conn, barrier::RECOMMENDED_RETENTION, 1000)?;
//!             // Only in an initiator's database (`initiator::install` made the outbox).
//!             let outbox_rows = outbox::purge(&mut conn, Duration::from_secs(30 * 86_400), 1000)?;
//!             Ok::<_, Box<dyn std::error::Error + Send + Sync>>((barrier_rows, outbox_rows))
//!         })
//!         .await;
//!         match purged {
//!             Ok(Ok((barrier_rows, outbox_rows))) => {
//!                 log::info!("purged {barrier_rows} barrier and {outbox_rows} outbox rows")
//!             }
//!             Ok(Err(e)) => log::warn!("purge: {e}"),
//!             Err(e) => log::warn!("purge task: {e}"),
//!         }
//!     }
//! }
//! ```
//!
//! The example shop in `participants/shop` (its own crate) is a complete use of all of the above.
//!
//! ## Example
//!
//! An inventory service that reserves stock, once per command, in its own database:
//!
//! ```no_run
//! use diesel::prelude::*;
//! use diesel::sql_types::{BigInt, Text};
//! use participants::barrier::{self, Barrier};
//! use participants::{Command, Outcome, Participant, Settings};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Reserve {
//!     sku: String,
//!     qty: i64,
//! }
//!
//! const DB: &str = "postgres://postgres@127.0.0.1:5432/inventory";
//!
//! // Business code runs inside the barrier's transaction: it commits with the barrier row or not at all.
//! fn reserve(conn: &mut PgConnection, r: &Reserve) -> QueryResult<Outcome> {
//!     let taken = diesel::sql_query(
//!         "UPDATE stock SET available = available - $2 WHERE sku = $1 AND available >= $2",
//!     )
//!     .bind::<Text, _>(&r.sku)
//!     .bind::<BigInt, _>(r.qty)
//!     .execute(conn)?;
//!     Ok(if taken == 1 {
//!         Outcome::success_with(serde_json::json!({"sku": r.sku, "qty": r.qty}))
//!     } else {
//!         Outcome::failure(format!("{} is out of stock", r.sku))
//!     })
//! }
//!
//! fn release(conn: &mut PgConnection, r: &Reserve) -> QueryResult<Outcome> {
//!     diesel::sql_query("UPDATE stock SET available = available + $2 WHERE sku = $1")
//!         .bind::<Text, _>(&r.sku)
//!         .bind::<BigInt, _>(r.qty)
//!         .execute(conn)?;
//!     Ok(Outcome::success())
//! }
//!
//! /// Runs `business` behind the barrier on a blocking thread (diesel is synchronous).
//! async fn guarded(
//!     cmd: Command<Reserve>,
//!     business: fn(&mut PgConnection, &Reserve) -> QueryResult<Outcome>,
//! ) -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
//!     tokio::task::spawn_blocking(move || {
//!         let mut conn = PgConnection::establish(DB)?; // use a pool in real code
//!         let guarded = Barrier::new(&cmd).run(&mut conn, |conn| business(conn, &cmd.payload))?;
//!         Ok(guarded.outcome)
//!     })
//!     .await?
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     barrier::install(&mut PgConnection::establish(DB)?)?;
//!     Participant::builder("inventory")
//!         .settings(Settings::from_env()?)
//!         .action("reserve", |cmd: Command<Reserve>| guarded(cmd, reserve))
//!         .compensation("release", |cmd: Command<Reserve>| guarded(cmd, release))
//!         .build()?
//!         .run_until(async {
//!             let _ = tokio::signal::ctrl_c().await;
//!         })
//!         .await;
//!     Ok(())
//! }
//! ```

pub mod barrier;
mod cleanup;
pub mod client;
mod command;
pub mod initiator;
mod logging;
mod outcome;
mod participant;
pub mod telemetry;

pub use cleanup::PurgeError;
pub use command::{Command, CommandKind};
pub use contract::names::QueueType;
pub use outcome::{CheckBackAnswer, Outcome};
pub use participant::{BoxError, Participant, ParticipantBuilder, ParticipantHandle, Settings};

/// The shared log setup, so a participant's lines look like the coordinator's: installs the logger
/// in the format `SAGA_LOG_FORMAT` names (`text` by default, or `json`), filtered by `RUST_LOG` or
/// else `default_filter` (e.g. `"info"`). A logger installed already is kept. Fails, naming the
/// variable and its values, if `SAGA_LOG_FORMAT` is anything else.
pub use logfmt::init as init_logging;
pub use logfmt::{FormatError as LogFormatError, LogFormat};

/// What [`command_log!`] expands to names, reachable from a participant's crate.
#[doc(hidden)]
pub mod __private {
    pub use log;
    pub use logfmt;
}

/// A participant that cannot be built or configured.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The declaration is invalid (bad name, duplicate or missing handlers).
    #[error("invalid participant: {0}")]
    Declaration(String),
    /// A setting is invalid.
    #[error("invalid setting: {0}")]
    Settings(String),
}
