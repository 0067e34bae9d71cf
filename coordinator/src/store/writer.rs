//! The write path: transitions of many sagas committed together (group commit).
//!
//! Saga actors hand their transitions to a few writer threads over a channel. A writer takes whatever
//! has queued up (at most [`MAX_BATCH`]) and commits it in one Postgres transaction, so under load the
//! cost of a commit is shared by many sagas, and with one saga in flight nothing waits for a batch to
//! fill. If a batch fails, its transitions are retried one by one so that one bad saga cannot fail
//! the others. Diesel runs only on these threads, never on an actor's or HTTP worker's thread.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use diesel::pg::PgConnection;
use diesel::prelude::*;
use tokio::sync::oneshot;

use super::rows::{to_i32, NewEvent, NewOutbox, SagaChange, SagaRow, StepChange, StepRow};
use super::schema::{outbox, saga_events, saga_steps, sagas};
use super::{Pool, StoreError};
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

struct Job {
    persist: Persist,
    done: oneshot::Sender<Result<Written, StoreError>>,
}

/// Handle to the writer threads.
#[derive(Clone)]
pub struct Writer {
    jobs: Sender<Job>,
}

impl Writer {
    /// Starts `threads` writer threads on the pool. They stop when every `Writer` clone is dropped,
    /// after finishing what was queued: that is how a shutdown finishes in-flight writes.
    pub fn start(pool: Pool, threads: usize) -> (Writer, Vec<thread::JoinHandle<()>>) {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let handles = (0..threads.max(1))
            .filter_map(|n| {
                let queue = Arc::clone(&queue);
                let pool = pool.clone();
                thread::Builder::new()
                    .name(format!("saga-writer-{n}"))
                    .spawn(move || run(&pool, &queue))
                    .map_err(|e| log::error!("cannot start writer thread: {e}"))
                    .ok()
            })
            .collect();
        (Writer { jobs }, handles)
    }

    /// Commits one transition (possibly together with others) and answers when it is durable.
    pub async fn write(&self, persist: Persist) -> Result<Written, StoreError> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { persist, done })
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer dropped the transition".into()))?
    }
}

fn run(pool: &Pool, queue: &Mutex<Receiver<Job>>) {
    loop {
        let batch = {
            let Ok(queue) = queue.lock() else { return };
            let Ok(first) = queue.recv() else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        commit(pool, batch);
    }
}

fn commit(pool: &Pool, batch: Vec<Job>) {
    let mut conn = match pool.get() {
        Ok(conn) => conn,
        Err(e) => {
            for job in batch {
                let _ = job.done.send(Err(StoreError::Unavailable(e.to_string())));
            }
            return;
        }
    };
    let together = conn.transaction(|c| {
        batch
            .iter()
            .map(|job| write_one(c, &job.persist))
            .collect::<Result<Vec<_>, StoreError>>()
    });
    match together {
        Ok(results) => {
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.done.send(Ok(result));
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(job) = batch.into_iter().next() {
                let _ = job.done.send(Err(e));
            }
        }
        Err(_) => {
            for job in batch {
                let result = conn.transaction(|c| write_one(c, &job.persist));
                let _ = job.done.send(result);
            }
        }
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
        let events: Vec<NewEvent> = p
            .log
            .iter()
            .map(|e| NewEvent {
                saga_id: saga.id,
                at: saga.updated_at,
                kind: e.kind,
                step: e.step.map(|i| saga.definition.steps[i].name.as_str()),
                attempt: e.attempt.map(to_i32),
                detail: &e.detail,
            })
            .collect();
        diesel::insert_into(saga_events::table)
            .values(&events)
            .execute(conn)?;
    }
    let mut written = p.outbox.clone();
    if !written.is_empty() {
        let rows: Vec<NewOutbox> = written
            .iter()
            .map(|m| NewOutbox {
                saga_id: m.saga_id,
                message_id: m.message_id,
                participant: &m.participant,
                kind: m.kind.as_str(),
                body: &m.body,
                traceparent: m.traceparent.as_deref(),
                created_at: m.created_at,
            })
            .collect();
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
