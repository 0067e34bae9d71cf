//! The write path: transitions of many sagas committed together (group commit).
//!
//! Saga actors hand their transitions to a few writer threads over a channel. A writer takes whatever
//! has queued up (at most [`MAX_BATCH`]) and commits it in one Postgres transaction, so under load the
//! cost of a commit is shared by many sagas, and with one saga in flight nothing waits for a batch to
//! fill: a transition waits at most for the commit already under way on each writer thread.
//!
//! A batch is one SQL statement whatever its size ([`super::batch`]). Outbox rows that RabbitMQ
//! confirmed are deleted by the same statement ([`Writer::forget_outbox`]), so the relay adds no
//! commits of its own under load. A transition whose saga changed elsewhere (stale `version`) is
//! answered with [`StoreError::Conflict`] while the rest of the batch commits. If a batch fails, its
//! transitions are retried one by one so that one bad saga cannot fail the others. Every batch is
//! reported to the metrics (`saga_store_batch_size`, `saga_store_write_seconds`): how well group
//! commit is working is the first thing to look at when latency grows under load.
//! Diesel runs only on these threads, never on an actor's or HTTP worker's thread.

use std::collections::HashSet;
use std::future::Future;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use diesel::pg::PgConnection;
use diesel::prelude::*;
use tokio::sync::oneshot;

use super::persist::{Persist, Written};
use super::rows::{SagaRow, StepRow};
use super::schema::{saga_steps, sagas};
use super::{Conn, Pool, StoreError};
use crate::metrics::Metrics;
use crate::saga::Saga;

/// Most transitions in one Postgres transaction.
pub const MAX_BATCH: usize = 256;

/// How long confirmed outbox rows wait for a batch of transitions to ride along with before the
/// writer commits their deletion on its own (only when no transition comes in that time).
const FORGET_RIDE_ALONG: Duration = Duration::from_millis(200);

struct Job {
    persist: Persist,
    /// When the transition was handed over, for `saga_store_write_seconds`.
    queued: Instant,
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
    /// `instance` is who writes: every write is fenced by its leases (see `batch`).
    pub fn start(
        pool: Pool,
        threads: usize,
        metrics: Arc<Metrics>,
        instance: &str,
    ) -> (Writer, Vec<thread::JoinHandle<()>>) {
        let instance: Arc<str> = Arc::from(instance);
        let (jobs, queue) = mpsc::channel::<Work>();
        let queue = Arc::new(Mutex::new(queue));
        let forgets = Forgets::default();
        let handles = (0..threads.max(1))
            .filter_map(|n| {
                let queue = Arc::clone(&queue);
                let forgets = Arc::clone(&forgets);
                let pool = pool.clone();
                let metrics = Arc::clone(&metrics);
                let instance = Arc::clone(&instance);
                thread::Builder::new()
                    .name(format!("saga-writer-{n}"))
                    .spawn(move || run(&pool, &queue, &forgets, &metrics, &instance))
                    .map_err(|e| log::error!("cannot start writer thread: {e}"))
                    .ok()
            })
            .collect();
        (Writer { jobs, forgets }, handles)
    }

    /// Commits one transition (possibly together with others) and answers when it is durable.
    ///
    /// The transition is queued at once; the answer borrows nothing, so an actor need not hold a
    /// handle of its own to the writer while it waits.
    pub fn write(
        &self,
        persist: Persist,
    ) -> impl Future<Output = Result<Written, StoreError>> + 'static {
        let (done, answer) = oneshot::channel();
        let queued = self
            .jobs
            .send(Work::Persist(Box::new(Job {
                persist,
                queued: Instant::now(),
                done,
            })))
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()));
        async move {
            queued?;
            answer
                .await
                .map_err(|_| StoreError::Unavailable("the writer dropped the transition".into()))?
        }
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

fn run(
    pool: &Pool,
    queue: &Mutex<Receiver<Work>>,
    forgets: &Forgets,
    metrics: &Metrics,
    instance: &str,
) {
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
        let queued: Vec<Instant> = jobs.iter().map(|j| j.queued).collect();
        held = commit(conn, instance, jobs, forgets);
        metrics.observe_batch(queued.iter().map(|q| q.elapsed()));
    }
}

/// Commits one batch; answers the connection if it is still good for the next one.
fn commit(
    conn: Result<Conn, r2d2::Error>,
    instance: &str,
    jobs: Vec<Job>,
    forgets: Vec<Forget>,
) -> Option<Conn> {
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
    let persists: Vec<&Persist> = jobs.iter().map(|j| &j.persist).collect();
    let together = write_batch(&mut conn, instance, &persists, &ids);
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
                let result = conn.transaction(|c| write_one(c, instance, &job.persist));
                let _ = job.done.send(result);
            }
            for (ids, done) in forgets {
                let _ = done.send(conn.transaction(|c| delete_outbox(c, instance, &ids)));
            }
            None
        }
    }
}

/// Deletes confirmed outbox rows on their own (the batch statement without transitions).
fn delete_outbox(conn: &mut PgConnection, instance: &str, ids: &[i64]) -> Result<(), StoreError> {
    if !ids.is_empty() {
        super::batch::write(conn, instance, &[], ids)?;
    }
    Ok(())
}

/// Writes a batch and deletes the confirmed outbox rows `forget`: one statement, or (if the batch
/// holds two transitions of one saga, whose order matters, or one partition under two epochs, which
/// one fence cannot tell apart) one transaction writing them in order, each fenced on its own.
/// The outer error means nothing was written; an inner one (a conflict, a fenced write, a failed
/// duplicate lookup) is that transition's answer while the others are committed.
fn write_batch(
    conn: &mut PgConnection,
    instance: &str,
    persists: &[&Persist],
    forget: &[i64],
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    let mut seen = HashSet::with_capacity(persists.len());
    let mut epochs = std::collections::HashMap::with_capacity(persists.len());
    let distinct_sagas = persists.iter().all(|p| seen.insert(p.saga.id));
    let one_epoch_each = persists
        .iter()
        .all(|p| *epochs.entry(p.fence.partition).or_insert(p.fence.epoch) == p.fence.epoch);
    if !distinct_sagas || !one_epoch_each {
        // An actor waits for its write, and an epoch changes only when a partition is taken
        // again: rare, and then order matters.
        return conn.transaction(|c| {
            let results = persists
                .iter()
                .map(|p| match write_one(c, instance, p) {
                    Err(StoreError::Fenced(partition)) => Ok(Err(StoreError::Fenced(partition))),
                    other => other.map(Ok),
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            delete_outbox(c, instance, forget)?;
            Ok(results)
        });
    }
    let outcomes = super::batch::write(conn, instance, persists, forget)?;
    Ok(outcomes
        .into_iter()
        .zip(persists)
        .map(|(outcome, p)| answer(conn, p, outcome))
        .collect())
}

/// Writes one transition on its own: the batch statement with a single saga, so the fallback
/// writes exactly what a batch would.
fn write_one(conn: &mut PgConnection, instance: &str, p: &Persist) -> Result<Written, StoreError> {
    let outcome = super::batch::write(conn, instance, &[p], &[])?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("the batch statement answered nothing".into()))?;
    answer(conn, p, outcome)
}

/// A transition's answer from what the batch statement did with it.
fn answer(
    conn: &mut PgConnection,
    p: &Persist,
    outcome: super::batch::Outcome,
) -> Result<Written, StoreError> {
    match outcome {
        super::batch::Outcome::Saved(written) => Ok(written),
        super::batch::Outcome::Conflict => Err(StoreError::Conflict(p.saga.id)),
        super::batch::Outcome::Fenced => Err(StoreError::Fenced(p.fence.partition)),
        super::batch::Outcome::Duplicate => duplicate_of(conn, &p.saga),
    }
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
