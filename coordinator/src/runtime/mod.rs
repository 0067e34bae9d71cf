//! Runs sagas: the registry of saga actors, and the outbox relay.
//!
//! The registry starts one [`actor::SagaActor`] per unfinished saga (at submission, and at start-up
//! for every unfinished saga in Postgres), routes replies and operator requests to it, and forgets it
//! when the saga is final. Actors live on the main arbiter (or on `SAGA_ACTOR_THREADS` arbiters of their
//! own), away from the HTTP workers. Every transition, whoever asks for it, is committed by
//! [`commit`]; the web edge only calls [`Registry::submit`] and [`Registry::operate`].

pub mod actor;
pub mod alerts;
pub mod bulk_actions;
pub mod change_feed;
pub mod changes;
pub mod check_back;
mod commit;
pub mod keeper;
pub mod name_pauses;
pub mod ownership;
pub mod pace;
pub mod relay;
pub mod retention;
pub mod sending;
mod spans;
pub mod state_counts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::amqp::Settlement;
use crate::metrics::Metrics;
use crate::outbox::OutboxMessage;
use crate::saga::definition::SagaDefinition;
use crate::saga::machine::{Decision, Event};
use crate::saga::{Pause, PausedBy, Saga};
use crate::store::{Store, StoreError, Writer};
use actor::{Deliver, SagaActor};
use commit::{Commit, NotCommitted};

/// What running a saga event can end in, besides success.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no saga {0}")]
    NotFound(Uuid),
    /// The saga's state does not allow the request (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// The saga's partition (`None`: any partition, for a new saga) is not this instance's: the
    /// request belongs to its owner.
    #[error("not owned by this coordinator")]
    NotOwner(Option<u32>),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What became of a submission.
#[derive(Debug)]
pub enum Submitted {
    /// Committed, and running (or prepared) unless its first transition finished it.
    Started(Saga),
    /// Its idempotency key was used before with the same definition: that saga.
    Existing(Box<Saga>),
    /// Its idempotency key was used before with a different definition: that saga.
    KeyTaken(Box<Saga>),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => EngineError::Unavailable(m),
            StoreError::Fenced(partition) => EngineError::NotOwner(Some(partition)),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

struct Inner {
    actors: Mutex<HashMap<Uuid, Addr<SagaActor>>>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    /// Set at shutdown: no actor starts any more (it would keep the writer alive).
    stopping: AtomicBool,
    writer: Writer,
    store: Store,
    relay: mpsc::UnboundedSender<Vec<OutboxMessage>>,
    http_check_back: check_back::HttpCheckBack,
    changes: changes::Changes,
    metrics: Arc<Metrics>,
    sendings: sending::Sendings,
    paused_names: name_pauses::PausedNames,
    bulk_wake: bulk_actions::BulkWake,
    ownership: ownership::Ownership,
    /// What the spans of the sagas driven here need (empty unless spans are exported).
    traces: spans::Traces,
}

/// Shared handle to the running sagas.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    /// `changes` hears of every committed transition; `metrics` observes each one. Only sagas of
    /// partitions `ownership` holds are run here.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        arbiters: Vec<ArbiterHandle>,
        writer: Writer,
        store: Store,
        relay: mpsc::UnboundedSender<Vec<OutboxMessage>>,
        changes: changes::Changes,
        metrics: Arc<Metrics>,
        sendings: sending::Sendings,
        ownership: ownership::Ownership,
    ) -> Self {
        Registry {
            inner: Arc::new(Inner {
                actors: Mutex::new(HashMap::new()),
                arbiters,
                next_arbiter: AtomicUsize::new(0),
                stopping: AtomicBool::new(false),
                writer,
                store,
                relay,
                http_check_back: check_back::HttpCheckBack::new(),
                changes,
                metrics,
                sendings,
                paused_names: name_pauses::PausedNames::default(),
                bulk_wake: bulk_actions::BulkWake::default(),
                ownership,
                traces: spans::Traces::default(),
            }),
        }
    }

    /// Wakes this coordinator's bulk action worker (a bulk action was created here).
    pub fn bulk_wake(&self) -> bulk_actions::BulkWake {
        self.inner.bulk_wake.clone()
    }

    /// The saga names held as this coordinator knows them.
    pub fn paused_names(&self) -> name_pauses::PausedNames {
        self.inner.paused_names.clone()
    }

    /// Hands committed outbox rows to the relay for publishing.
    fn publish(&self, outbox: Vec<OutboxMessage>) {
        self.inner.sendings.unconfirmed(&outbox);
        if !outbox.is_empty() && self.inner.relay.send(outbox).is_err() {
            // The relay is gone (shutting down): the rows stay in Postgres and go out after a restart.
            log::warn!("outbox relay stopped; commands will be published after a restart");
        }
    }

    /// Asks a check-back URL in the background and delivers its answer to the saga.
    fn check_back_over_http(&self, saga: &Saga, url: String, attempt: u32, timeout: Duration) {
        let registry = self.clone();
        let saga_id = saga.id;
        // What the log line needs, since the saga itself stays with its actor.
        let name = saga.definition.name.clone();
        let trace_id = logfmt::trace_id(saga.traceparent.as_deref()).map(str::to_owned);
        let traceparent = crate::telemetry::attempt_traceparent(
            saga,
            None,
            crate::saga::CommandKind::Check,
            attempt,
        );
        let tracestate = saga.tracestate.clone();
        actix_rt::spawn(async move {
            let asker = registry.inner.http_check_back.clone();
            let trace = check_back::TraceHeaders {
                traceparent: traceparent.as_deref(),
                tracestate: tracestate.as_deref(),
            };
            let reply = asker.ask(&url, saga_id, attempt, timeout, trace).await;
            if let Err(e) = registry.operate(saga_id, Event::Reply(reply)).await {
                // The attempt's reply timeout is durable: the machine asks again when it fires.
                log::warn!(
                    saga_id:% = saga_id,
                    saga = name.as_str(),
                    trace_id = trace_id.as_deref(),
                    attempt = attempt;
                    "saga {saga_id}: check-back answer not applied: {e}"
                );
            }
        });
    }

    fn actors(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Addr<SagaActor>>> {
        // A poisoned map is still a consistent map: entries are only inserted or removed whole.
        self.inner
            .actors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of sagas with a live actor.
    pub fn in_flight(&self) -> usize {
        self.actors().len()
    }

    /// Starts an actor for an unfinished saga, unless one runs already; none once stopping (the saga
    /// stays in Postgres and is resumed by the next start) or if its partition is not held here.
    pub fn adopt(&self, saga: Saga) -> Option<Addr<SagaActor>> {
        let id = saga.id;
        if !self.inner.ownership.owns(id) {
            return None;
        }
        let mut actors = self.actors();
        if let Some(addr) = actors.get(&id).filter(|a| a.connected()) {
            return Some(addr.clone());
        }
        if self.inner.stopping.load(Ordering::SeqCst) {
            return None;
        }
        let n = self.inner.next_arbiter.fetch_add(1, Ordering::Relaxed);
        let registry = self.clone();
        let addr = match self
            .inner
            .arbiters
            .get(n % self.inner.arbiters.len().max(1))
        {
            Some(arbiter) => {
                SagaActor::start_in_arbiter(arbiter, move |_| SagaActor::new(saga, registry))
            }
            None => SagaActor::new(saga, registry).start(),
        };
        actors.insert(id, addr.clone());
        Some(addr)
    }

    /// Shutdown: every actor stops once the event it is handling is written. Their registry handles
    /// (and with them the writer's) go with them, which lets the writer threads finish.
    pub fn stop_actors(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let actors: Vec<Addr<SagaActor>> = self.actors().drain().map(|(_, a)| a).collect();
        for addr in actors {
            addr.do_send(actor::Stop);
        }
    }

    /// Starts every unfinished saga of a partition just taken.
    pub async fn adopt_partition(&self, partition: u32) -> Result<(), EngineError> {
        let sagas = self
            .inner
            .store
            .interact(move |db| db.load_unfinished_in(partition))
            .await?;
        self.inner.sendings.taken_over(Utc::now());
        if !sagas.is_empty() {
            log::info!(
                "resuming {} unfinished saga(s) of partition {partition}",
                sagas.len()
            );
        }
        for saga in sagas {
            self.adopt(saga);
        }
        Ok(())
    }

    /// Stops the actors of a partition given up or lost (each after the event it is handling,
    /// whose write the fence refuses).
    pub fn drop_partition(&self, partition: u32) {
        let ownership = &self.inner.ownership;
        let stopping: Vec<(Uuid, Addr<SagaActor>)> = {
            let mut actors = self.actors();
            let ids: Vec<Uuid> = actors
                .keys()
                .filter(|id| ownership.partition_of(**id) == partition)
                .copied()
                .collect();
            ids.into_iter()
                .filter_map(|id| actors.remove(&id).map(|addr| (id, addr)))
                .collect()
        };
        for (id, addr) in stopping {
            self.inner.sendings.forget(id);
            self.inner.traces.forget(id);
            addr.do_send(actor::Stop);
        }
    }

    /// Drops a finished (or reloading, or fenced) saga's actor from the map, unless another actor
    /// has taken its place (its partition was given up and taken again meanwhile).
    fn forget(&self, id: Uuid, actor: &Addr<SagaActor>) {
        let mut actors = self.actors();
        if actors.get(&id) == Some(actor) {
            actors.remove(&id);
        }
    }

    /// Reloads a saga from Postgres after `delay` and starts its actor again if it is unfinished.
    fn revive_later(&self, id: Uuid, delay: Duration) {
        let registry = self.clone();
        actix_rt::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = registry.find(id).await {
                log::error!(saga_id:% = id; "saga {id}: cannot reload it: {e}");
            }
        });
    }

    /// The saga's actor, starting one from Postgres if the saga is unfinished but has none.
    /// [`EngineError::NotOwner`] if its partition is not held here.
    async fn find(&self, id: Uuid) -> Result<Option<Addr<SagaActor>>, EngineError> {
        if let Some(addr) = self.actors().get(&id).filter(|a| a.connected()) {
            return Ok(Some(addr.clone()));
        }
        if !self.inner.ownership.owns(id) {
            return Err(EngineError::NotOwner(Some(
                self.inner.ownership.partition_of(id),
            )));
        }
        let loaded = self.inner.store.interact(move |db| db.load(id)).await?;
        Ok(match loaded {
            Some(saga) if !saga.state.is_final() => self.adopt(saga),
            _ => None,
        })
    }

    /// Delivers an event from RabbitMQ; the delivery is settled once its effect is durable.
    pub async fn deliver(&self, saga_id: Uuid, event: Event, settle: oneshot::Sender<Settlement>) {
        match self.find(saga_id).await {
            Ok(Some(addr)) => {
                // If the actor dies before answering, the dropped `settle` requeues the delivery.
                let _ = addr
                    .send(Deliver {
                        event,
                        settle: Some(settle),
                        bulk_action: None,
                    })
                    .await;
            }
            Ok(None) => {
                // No saga to name: only what the message itself says.
                let (step, attempt) = attempt_of(&event);
                log::info!(
                    saga_id:% = saga_id,
                    step = step,
                    attempt = attempt;
                    "ignored a message for saga {saga_id}: unknown or already finished"
                );
                let _ = settle.send(Settlement::Ack);
            }
            Err(EngineError::NotOwner(Some(partition))) => {
                // Another instance owns the saga: its partition's queue reaches the owner.
                let _ = settle.send(Settlement::Forward(partition));
            }
            Err(e) => {
                let (step, attempt) = attempt_of(&event);
                log::warn!(
                    saga_id:% = saga_id,
                    step = step,
                    attempt = attempt;
                    "cannot route a message for saga {saga_id}: {e}"
                );
                let _ = settle.send(Settlement::Requeue);
            }
        }
    }

    /// A new saga: its first transition is committed, then its actor started (before its first
    /// commands go out, so that a reply finds it).
    ///
    /// The saga gets an id in a partition this instance holds, so it runs here; if that partition
    /// was lost meanwhile (the write was fenced), it tries another. [`EngineError::NotOwner`] with
    /// `None` if this instance holds no partition.
    pub async fn submit(
        &self,
        definition: SagaDefinition,
        traceparent: Option<String>,
        tracestate: Option<String>,
    ) -> Result<Submitted, EngineError> {
        const TRIES: usize = 3;
        let new_id = || {
            self.inner
                .ownership
                .new_saga_id()
                .ok_or(EngineError::NotOwner(None))
        };
        // A retry changes only the id: the partition it falls in.
        let mut saga = Saga::new(new_id()?, definition, None, Utc::now());
        saga.tracestate =
            crate::telemetry::saga_tracestate(traceparent.as_deref(), tracestate.as_deref());
        if self.inner.paused_names.contains(&saga.definition.name) {
            saga.pause = Some(Pause {
                since: saga.created_at,
                by: PausedBy::Name,
            });
        }
        for _ in 0..TRIES {
            let now = Utc::now();
            saga.id = new_id()?;
            // The saga's trace: the caller's, or a new one rooted at the saga span (whose id
            // is derived from the saga id, hence set with it).
            saga.traceparent = Some(crate::telemetry::saga_traceparent(
                traceparent.as_deref(),
                saga.id,
            ));
            let Some(Decision::Apply(start)) =
                commit::decide(&saga, Event::Start, now, Default::default())
            else {
                return Err(EngineError::Internal("a new saga did not start".into()));
            };
            return match self.commit(&saga, Commit::start(start, now)).await {
                Ok(started) => Ok(Submitted::Started(started)),
                Err(NotCommitted::Duplicate(existing))
                    if existing.definition == saga.definition =>
                {
                    Ok(Submitted::Existing(existing))
                }
                Err(NotCommitted::Duplicate(existing)) => Ok(Submitted::KeyTaken(existing)),
                Err(NotCommitted::Failed(StoreError::Fenced(_))) => continue,
                Err(NotCommitted::Failed(e)) => Err(e.into()),
            };
        }
        Err(EngineError::Unavailable(
            "this coordinator is handing its partitions over; try again".into(),
        ))
    }

    /// Commits a transition of `before` and makes it take effect (see [`commit`]); answers the
    /// saga as committed.
    async fn commit(&self, before: &Saga, commit: Commit) -> Result<Saga, NotCommitted> {
        Ok(commit.write(self).await?.take_effect(self, before))
    }

    /// Runs an operator's or initiator's request and answers with the saga afterwards.
    pub async fn operate(&self, saga_id: Uuid, event: Event) -> Result<Saga, EngineError> {
        self.operate_for(saga_id, event, None).await
    }

    /// [`Registry::operate`], for bulk action `bulk_action` if given: the write of the transition
    /// marks the saga `applied` there, so the action is applied to it once whatever crashes.
    pub async fn operate_for(
        &self,
        saga_id: Uuid,
        event: Event,
        bulk_action: Option<Uuid>,
    ) -> Result<Saga, EngineError> {
        // The actor may stop between being found and receiving the request (its saga just
        // finished, or it is reloading after a conflict): look again before giving up.
        for _ in 0..5 {
            let found = match self.find(saga_id).await {
                // A final or unknown saga needs no owner to be answered.
                Err(EngineError::NotOwner(partition)) => {
                    match self.answer_without_actor(saga_id, event.clone()).await {
                        Err(EngineError::NotOwner(_)) => {
                            return Err(EngineError::NotOwner(partition))
                        }
                        answer => return answer,
                    }
                }
                found => found?,
            };
            let Some(addr) = found else {
                return self.answer_without_actor(saga_id, event).await;
            };
            match addr
                .send(Deliver {
                    event: event.clone(),
                    settle: None,
                    bulk_action,
                })
                .await
            {
                Ok(answer) => return answer,
                Err(MailboxError::Closed) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return Err(EngineError::Unavailable(e.to_string())),
            }
        }
        Err(EngineError::Unavailable(
            "the saga is being reloaded; try again".into(),
        ))
    }

    /// A final or unknown saga: run the machine only to get its answer (a rejection, or nothing to
    /// do for a final saga). Nothing is committed without an actor: once the registry is stopping,
    /// an unfinished saga is left as it is for the next start.
    async fn answer_without_actor(&self, saga_id: Uuid, event: Event) -> Result<Saga, EngineError> {
        let saga = self
            .inner
            .store
            .interact(move |db| db.load(saga_id))
            .await?
            .ok_or(EngineError::NotFound(saga_id))?;
        if !saga.state.is_final() && !self.inner.ownership.owns(saga_id) {
            return Err(EngineError::NotOwner(Some(
                self.inner.ownership.partition_of(saga_id),
            )));
        }
        match commit::decide(&saga, event, Utc::now(), Default::default()) {
            Some(Decision::Reject(reason)) => Err(EngineError::Conflict(reason)),
            Some(_) => Ok(saga),
            None => Err(EngineError::Internal(
                "the state machine failed on this event".into(),
            )),
        }
    }
}

/// The step and attempt an event from a participant answers, for the log lines about it.
fn attempt_of(event: &Event) -> (Option<&str>, Option<u32>) {
    match event {
        Event::Reply(reply) => (reply.step.as_deref(), Some(reply.attempt)),
        Event::DeadLettered { step, attempt, .. } => (step.as_deref(), Some(*attempt)),
        _ => (None, None),
    }
}
