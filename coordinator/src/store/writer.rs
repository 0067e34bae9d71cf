//! The write path: transitions of many sagas committed together (group commit).
//!
//! Saga actors hand their transitions to a few writer threads over a channel. A writer takes whatever
//! has queued up (at most [`MAX_BATCH`]) and commits it in one Postgres transaction, so under load the
//! cost of a commit is shared by many sagas, and with one saga in flight nothing waits for a batch to
//! fill: a transition waits at most for the commit already under way on each writer thread.
//!
//! A batch costs a handful of statements whatever its size: new sagas and their steps are inserted
//! with multi-row inserts, changed sagas and steps are updated from one `jsonb_to_recordset`
//! parameter each, and the event-log and outbox rows of every saga go in one insert each. Outbox rows
//! that RabbitMQ confirmed are deleted in the same transaction ([`Writer::forget_outbox`]), so the
//! relay adds no commits of its own under load. A transition whose saga changed elsewhere (stale
//! `version`) is answered with [`StoreError::Conflict`] while the rest of the batch commits. If a
//! batch fails, its transitions are retried one by one so that one bad saga cannot fail the others.
//! Diesel runs only on these threads, never on an actor's or HTTP worker's thread.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::Jsonb;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::rows::{to_i32, NewEvent, NewOutbox, SagaChange, SagaRow, StepChange, StepRow};
use super::schema::{outbox, saga_events, saga_steps, sagas};
use super::{Conn, Pool, StoreError};
use crate::outbox::OutboxMessage;
use crate::saga::machine::LogEntry;
use crate::saga::Saga;

/// Most transitions in one Postgres transaction.
pub const MAX_BATCH: usize = 256;

/// One transition to persist.
#[derive(Debug, Clone)]
pub struct Persist {
    /// The saga after the transition; `version` is still the one it was loaded with.
    pub saga: Saga,
    /// Positions of the steps whose progress changed.
    pub steps: Vec<usize>,
    pub log: Vec<LogEntry>,
    pub outbox: Vec<OutboxMessage>,
    /// A new saga: insert it, unless its idempotency key is taken.
    pub is_new: bool,
}

#[derive(Debug)]
pub enum Written {
    /// Committed: the saga's new version, and the outbox rows with their ids.
    Saved {
        version: i64,
        outbox: Vec<OutboxMessage>,
    },
    /// A new saga whose (name, key) an earlier saga already has; that saga is returned instead.
    Duplicate(Box<Saga>),
}

/// How long confirmed outbox rows wait for a batch of transitions to ride along with before the
/// writer commits their deletion on its own (only when no transition comes in that time).
const FORGET_RIDE_ALONG: Duration = Duration::from_millis(200);

/// Postgres takes at most this many parameters in one statement.
const MAX_PARAMETERS: usize = 65_535;

struct Job {
    persist: Persist,
    done: oneshot::Sender<Result<Written, StoreError>>,
}

/// What a writer thread is asked to do.
enum Work {
    Persist(Box<Job>),
    /// Commit the pending outbox deletions even without transitions to go with them.
    Flush,
}

/// Outbox rows RabbitMQ confirmed, to delete in the next transaction, and who waits for that.
type Forget = (Vec<i64>, oneshot::Sender<Result<(), StoreError>>);
type Forgets = Arc<Mutex<Vec<Forget>>>;

/// Handle to the writer threads.
#[derive(Clone)]
pub struct Writer {
    jobs: Sender<Work>,
    forgets: Forgets,
}

impl Writer {
    /// Starts `threads` writer threads on the pool. They stop when every `Writer` clone is dropped,
    /// after finishing what was queued: that is how a shutdown finishes in-flight writes.
    pub fn start(pool: Pool, threads: usize) -> (Writer, Vec<thread::JoinHandle<()>>) {
        let (jobs, queue) = mpsc::channel::<Work>();
        let queue = Arc::new(Mutex::new(queue));
        let forgets = Forgets::default();
        let handles = (0..threads.max(1))
            .filter_map(|n| {
                let queue = Arc::clone(&queue);
                let forgets = Arc::clone(&forgets);
                let pool = pool.clone();
                thread::Builder::new()
                    .name(format!("saga-writer-{n}"))
                    .spawn(move || run(&pool, &queue, &forgets))
                    .map_err(|e| log::error!("cannot start writer thread: {e}"))
                    .ok()
            })
            .collect();
        (Writer { jobs, forgets }, handles)
    }

    /// Commits one transition (possibly together with others) and answers when it is durable.
    pub async fn write(&self, persist: Persist) -> Result<Written, StoreError> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Work::Persist(Box::new(Job { persist, done })))
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer dropped the transition".into()))?
    }

    /// Deletes outbox rows RabbitMQ has confirmed, together with the next batch of transitions (or
    /// on their own after [`FORGET_RIDE_ALONG`] if none comes).
    pub async fn forget_outbox(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (done, mut answer) = oneshot::channel();
        self.forgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ids, done));
        let dropped = || StoreError::Unavailable("the writer dropped the deletion".into());
        match tokio::time::timeout(FORGET_RIDE_ALONG, &mut answer).await {
            Ok(answered) => answered.map_err(|_| dropped())?,
            Err(_) => {
                self.jobs
                    .send(Work::Flush)
                    .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
                answer.await.map_err(|_| dropped())?
            }
        }
    }
}

fn run(pool: &Pool, queue: &Mutex<Receiver<Work>>, forgets: &Forgets) {
    // The writer keeps its connection between batches (checking one out of the pool costs a
    // validation query); it takes a fresh one after a failure.
    let mut held: Option<Conn> = None;
    loop {
        let batch = {
            let Ok(queue) = queue.lock() else { return };
            let Ok(first) = queue.recv() else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(work) => batch.push(work),
                    Err(_) => break,
                }
            }
            batch
        };
        let forgets = std::mem::take(&mut *forgets.lock().unwrap_or_else(|e| e.into_inner()));
        let jobs: Vec<Job> = batch
            .into_iter()
            .filter_map(|work| match work {
                Work::Persist(job) => Some(*job),
                Work::Flush => None,
            })
            .collect();
        if jobs.is_empty() && forgets.is_empty() {
            continue;
        }
        let conn = match held.take() {
            Some(conn) => Ok(conn),
            None => pool.get(),
        };
        held = commit(conn, jobs, forgets);
    }
}

/// Commits one batch; answers the connection if it is still good for the next one.
fn commit(conn: Result<Conn, r2d2::Error>, jobs: Vec<Job>, forgets: Vec<Forget>) -> Option<Conn> {
    let ids: Vec<i64> = forgets
        .iter()
        .flat_map(|(ids, _)| ids.iter().copied())
        .collect();
    let mut conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            for job in jobs {
                let _ = job.done.send(Err(StoreError::Unavailable(e.to_string())));
            }
            for (_, done) in forgets {
                let _ = done.send(Err(StoreError::Unavailable(e.to_string())));
            }
            return None;
        }
    };
    let together = conn.transaction(|c| {
        let results = write_batch(c, &jobs)?;
        delete_outbox(c, &ids)?;
        Ok::<_, StoreError>(results)
    });
    match together {
        Ok(results) => {
            for (job, result) in jobs.into_iter().zip(results) {
                let _ = job.done.send(result);
            }
            for (_, done) in forgets {
                let _ = done.send(Ok(()));
            }
            Some(conn)
        }
        Err(e) if jobs.len() == 1 && forgets.is_empty() => {
            if let Some(job) = jobs.into_iter().next() {
                let _ = job.done.send(Err(e));
            }
            None
        }
        Err(e) if jobs.is_empty() => {
            let reason = e.to_string();
            for (_, done) in forgets {
                let _ = done.send(Err(StoreError::Unavailable(reason.clone())));
            }
            None
        }
        Err(_) => {
            for job in jobs {
                let result = conn.transaction(|c| write_one(c, &job.persist));
                let _ = job.done.send(result);
            }
            for (ids, done) in forgets {
                let _ = done.send(conn.transaction(|c| delete_outbox(c, &ids)));
            }
            None
        }
    }
}

fn delete_outbox(conn: &mut PgConnection, ids: &[i64]) -> Result<(), StoreError> {
    if !ids.is_empty() {
        diesel::delete(outbox::table.filter(outbox::id.eq_any(ids))).execute(conn)?;
    }
    Ok(())
}

/// Rows per multi-row insert of a table with `columns` columns.
fn rows_per_insert(columns: usize) -> usize {
    (MAX_PARAMETERS / columns.max(1)).max(1)
}

/// Timestamps for `jsonb_to_recordset`, at the microsecond precision Postgres keeps.
fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn timestamp_or_null(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |at| Value::String(timestamp(at)))
}

#[derive(QueryableByName)]
struct UpdatedId {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

/// Changed sagas, with the optimistic lock: only rows still at the version the actor loaded.
const UPDATE_SAGAS: &str = "
UPDATE sagas AS s
SET state = v.state, deadline = v.deadline, check_back_at = v.check_back_at,
    check_back_purpose = v.check_back_purpose, check_attempts = v.check_attempts,
    check_attempt_limit = v.check_attempt_limit,
    updated_at = v.updated_at, version = v.version + 1
FROM jsonb_to_recordset($1) AS v(id uuid, version bigint, state text, deadline timestamptz,
                                 check_back_at timestamptz, check_back_purpose text,
                                 check_attempts integer, check_attempt_limit integer,
                                 updated_at timestamptz)
WHERE s.id = v.id AND s.version = v.version
RETURNING s.id";

/// Changed steps. A JSON `null` becomes SQL NULL in a recordset, so `has_output` tells a step whose
/// output is the JSON value `null` from one without output.
const UPDATE_STEPS: &str = r#"
UPDATE saga_steps AS t
SET state = v.state, attempts = v.attempts, compensation_attempts = v.compensation_attempts,
    compensation_attempt_limit = v.compensation_attempt_limit,
    output = CASE WHEN v.has_output THEN coalesce(v.output, 'null'::jsonb) END,
    error = v.error, timer_due_at = v.timer_due_at, timer_purpose = v.timer_purpose,
    refused = v.refused
FROM jsonb_to_recordset($1) AS v(saga_id uuid, "position" integer, state text, attempts integer,
                                 compensation_attempts integer, compensation_attempt_limit integer,
                                 has_output boolean, output jsonb, error text,
                                 timer_due_at timestamptz, timer_purpose text, refused boolean)
WHERE t.saga_id = v.saga_id AND t.position = v."position""#;

/// Writes a batch of transitions of distinct sagas with a few statements for the whole batch.
/// The outer error aborts the transaction; an inner one (a conflict, a duplicate) is that
/// transition's answer while the others commit.
fn write_batch(
    conn: &mut PgConnection,
    jobs: &[Job],
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    let persists: Vec<&Persist> = jobs.iter().map(|j| &j.persist).collect();
    let mut seen = HashSet::with_capacity(persists.len());
    if !persists.iter().all(|p| seen.insert(p.saga.id)) {
        // Two transitions of one saga in a batch cannot happen (an actor waits for its write), but
        // if they did, their order matters: write them one after the other.
        return persists
            .iter()
            .map(|p| write_one(conn, p).map(Ok))
            .collect();
    }
    let mut answers: Vec<Option<Result<Written, StoreError>>> =
        persists.iter().map(|_| None).collect();
    let mut versions = vec![0i64; persists.len()];

    // New sagas: insert unless their idempotency key is taken, then the steps of those inserted.
    let fresh: Vec<usize> = (0..persists.len())
        .filter(|&i| persists[i].is_new)
        .collect();
    if !fresh.is_empty() {
        let rows = fresh
            .iter()
            .map(|&i| SagaRow::from_saga(&persists[i].saga))
            .collect::<Result<Vec<_>, _>>()?;
        let mut inserted: HashSet<Uuid> = HashSet::with_capacity(rows.len());
        for chunk in rows.chunks(rows_per_insert(14)) {
            let ids: Vec<Uuid> = diesel::insert_into(sagas::table)
                .values(chunk)
                .on_conflict_do_nothing()
                .returning(sagas::id)
                .get_results(conn)?;
            inserted.extend(ids);
        }
        let mut steps = Vec::new();
        for &i in &fresh {
            let saga = &persists[i].saga;
            if inserted.contains(&saga.id) {
                versions[i] = saga.version;
                steps.extend((0..saga.steps.len()).map(|n| StepRow::from_step(saga, n)));
            } else {
                answers[i] = Some(Ok(duplicate_of(conn, saga)?));
            }
        }
        for chunk in steps.chunks(rows_per_insert(12)) {
            diesel::insert_into(saga_steps::table)
                .values(chunk)
                .execute(conn)?;
        }
    }

    // Changed sagas, then the changed steps of those whose version still matched.
    let changed: Vec<usize> = (0..persists.len())
        .filter(|&i| !persists[i].is_new)
        .collect();
    if !changed.is_empty() {
        let records: Vec<Value> = changed
            .iter()
            .map(|&i| {
                let saga = &persists[i].saga;
                json!({
                    "id": saga.id,
                    "version": saga.version,
                    "state": saga.state.as_str(),
                    "deadline": timestamp_or_null(saga.deadline),
                    "check_back_at": timestamp_or_null(saga.check_back.timer.map(|t| t.due_at)),
                    "check_back_purpose": saga.check_back.timer.map(|t| t.purpose.as_str()),
                    "check_attempts": to_i32(saga.check_back.attempts),
                    "check_attempt_limit": to_i32(saga.check_back.attempt_limit),
                    "updated_at": timestamp(saga.updated_at),
                })
            })
            .collect();
        let updated: HashSet<Uuid> = diesel::sql_query(UPDATE_SAGAS)
            .bind::<Jsonb, _>(Value::Array(records))
            .load::<UpdatedId>(conn)?
            .into_iter()
            .map(|row| row.id)
            .collect();
        let mut steps = Vec::new();
        for &i in &changed {
            let p = persists[i];
            if !updated.contains(&p.saga.id) {
                answers[i] = Some(Err(StoreError::Conflict(p.saga.id)));
                continue;
            }
            versions[i] = p.saga.version + 1;
            for &position in &p.steps {
                let s = &p.saga.steps[position];
                steps.push(json!({
                    "saga_id": p.saga.id,
                    "position": position,
                    "state": s.state.as_str(),
                    "attempts": to_i32(s.attempts),
                    "compensation_attempts": to_i32(s.compensation_attempts),
                    "compensation_attempt_limit": to_i32(s.compensation_attempt_limit),
                    "has_output": s.output.is_some(),
                    "output": s.output,
                    "error": s.error,
                    "timer_due_at": timestamp_or_null(s.timer.map(|t| t.due_at)),
                    "timer_purpose": s.timer.map(|t| t.purpose.as_str()),
                    "refused": s.refused,
                }));
            }
        }
        if !steps.is_empty() {
            diesel::sql_query(UPDATE_STEPS)
                .bind::<Jsonb, _>(Value::Array(steps))
                .execute(conn)?;
        }
    }

    // The event log and the outbox of every transition that is going through.
    let going: Vec<usize> = (0..persists.len())
        .filter(|&i| answers[i].is_none())
        .collect();
    let events: Vec<NewEvent> = going
        .iter()
        .flat_map(|&i| new_events(persists[i]))
        .collect();
    for chunk in events.chunks(rows_per_insert(6)) {
        diesel::insert_into(saga_events::table)
            .values(chunk)
            .execute(conn)?;
    }
    let rows: Vec<NewOutbox> = going
        .iter()
        .flat_map(|&i| persists[i].outbox.iter().map(new_outbox))
        .collect();
    let mut ids: HashMap<Uuid, i64> = HashMap::with_capacity(rows.len());
    for chunk in rows.chunks(rows_per_insert(7)) {
        let inserted: Vec<(i64, Uuid)> = diesel::insert_into(outbox::table)
            .values(chunk)
            .returning((outbox::id, outbox::message_id))
            .get_results(conn)?;
        ids.extend(inserted.into_iter().map(|(id, message)| (message, id)));
    }
    for &i in &going {
        let mut outbox = persists[i].outbox.clone();
        for message in &mut outbox {
            message.id = ids.get(&message.message_id).copied().ok_or_else(|| {
                StoreError::Corrupt(format!("outbox row {} not inserted", message.message_id))
            })?;
        }
        answers[i] = Some(Ok(Written::Saved {
            version: versions[i],
            outbox,
        }));
    }
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(StoreError::Corrupt("no answer".into()))))
        .collect())
}

fn new_events(p: &Persist) -> impl Iterator<Item = NewEvent<'_>> {
    let saga = &p.saga;
    p.log.iter().map(move |e| NewEvent {
        saga_id: saga.id,
        at: saga.updated_at,
        kind: e.kind,
        step: e.step.map(|i| saga.definition.steps[i].name.as_str()),
        attempt: e.attempt.map(to_i32),
        detail: &e.detail,
    })
}

fn new_outbox(m: &OutboxMessage) -> NewOutbox<'_> {
    NewOutbox {
        saga_id: m.saga_id,
        message_id: m.message_id,
        participant: &m.participant,
        kind: m.kind.as_str(),
        body: &m.body,
        traceparent: m.traceparent.as_deref(),
        created_at: m.created_at,
    }
}

fn write_one(conn: &mut PgConnection, p: &Persist) -> Result<Written, StoreError> {
    let saga = &p.saga;
    let version = if p.is_new {
        let inserted = diesel::insert_into(sagas::table)
            .values(SagaRow::from_saga(saga)?)
            .on_conflict_do_nothing()
            .execute(conn)?;
        if inserted == 0 {
            return duplicate_of(conn, saga);
        }
        let steps: Vec<StepRow> = (0..saga.steps.len())
            .map(|i| StepRow::from_step(saga, i))
            .collect();
        diesel::insert_into(saga_steps::table)
            .values(&steps)
            .execute(conn)?;
        saga.version
    } else {
        let next = saga.version + 1;
        let updated = diesel::update(
            sagas::table
                .filter(sagas::id.eq(saga.id))
                .filter(sagas::version.eq(saga.version)),
        )
        .set(SagaChange::from_saga(saga, next))
        .execute(conn)?;
        if updated == 0 {
            return Err(StoreError::Conflict(saga.id));
        }
        for &position in &p.steps {
            diesel::update(saga_steps::table.find((saga.id, position as i32)))
                .set(StepChange::from_step(&saga.steps[position]))
                .execute(conn)?;
        }
        next
    };
    if !p.log.is_empty() {
        let events: Vec<NewEvent> = new_events(p).collect();
        diesel::insert_into(saga_events::table)
            .values(&events)
            .execute(conn)?;
    }
    let mut written = p.outbox.clone();
    if !written.is_empty() {
        let rows: Vec<NewOutbox> = p.outbox.iter().map(new_outbox).collect();
        let ids: Vec<i64> = diesel::insert_into(outbox::table)
            .values(&rows)
            .returning(outbox::id)
            .get_results(conn)?;
        for (message, id) in written.iter_mut().zip(ids) {
            message.id = id;
        }
    }
    Ok(Written::Saved {
        version,
        outbox: written,
    })
}

fn duplicate_of(conn: &mut PgConnection, saga: &Saga) -> Result<Written, StoreError> {
    let row: SagaRow = sagas::table
        .filter(sagas::name.eq(&saga.definition.name))
        .filter(sagas::idempotency_key.eq(&saga.definition.key))
        .select(SagaRow::as_select())
        .first(conn)?;
    let steps: Vec<StepRow> = saga_steps::table
        .filter(saga_steps::saga_id.eq(row.id))
        .order(saga_steps::position)
        .select(StepRow::as_select())
        .load(conn)?;
    Ok(Written::Duplicate(Box::new(row.into_saga(steps)?)))
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
