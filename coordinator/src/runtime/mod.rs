//! Runs sagas: the registry of saga actors, and the outbox relay.
//!
//! The registry starts one [`actor::SagaActor`] per unfinished saga (at submission, and at start-up
//! for every unfinished saga in Postgres), routes replies and operator requests to it, and forgets it
//! when the saga is final. Actors live on the main arbiter (or on `SAGA_ACTOR_THREADS` arbiters of their
//! own), away from the HTTP workers.

pub mod actor;
pub mod changes;
pub mod check_back;
pub mod relay;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::amqp::Settlement;
use crate::metrics::Metrics;
use crate::outbox::OutboxMessage;
use crate::saga::machine::Event;
use crate::saga::Saga;
use crate::store::{Store, StoreError, Writer};
use actor::{Deliver, SagaActor};

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
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => EngineError::Unavailable(m),
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
}

/// Shared handle to the running sagas.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    pub fn new(
        arbiters: Vec<ArbiterHandle>,
        writer: Writer,
        store: Store,
        relay: mpsc::UnboundedSender<Vec<OutboxMessage>>,
        metrics: Arc<Metrics>,
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
                changes: changes::Changes::default(),
                metrics,
            }),
        }
    }

    pub fn writer(&self) -> &Writer {
        &self.inner.writer
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The feed of committed saga changes (for live views).
    pub fn changes(&self) -> &changes::Changes {
        &self.inner.changes
    }

    /// This coordinator's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Hands committed outbox rows to the relay for publishing.
    pub fn publish(&self, outbox: Vec<OutboxMessage>) {
        if !outbox.is_empty() && self.inner.relay.send(outbox).is_err() {
            // The relay is gone (shutting down): the rows stay in Postgres and go out after a restart.
            log::warn!("outbox relay stopped; commands will be published after a restart");
        }
    }

    /// Asks a check-back URL in the background and delivers its answer to the saga.
    pub fn check_back_over_http(
        &self,
        saga_id: Uuid,
        url: String,
        attempt: u32,
        timeout: Duration,
    ) {
        let registry = self.clone();
        actix_rt::spawn(async move {
            let asker = registry.inner.http_check_back.clone();
            let reply = asker.ask(&url, saga_id, attempt, timeout).await;
            if let Err(e) = registry.operate(saga_id, Event::Reply(reply)).await {
                // The attempt's reply timeout is durable: the machine asks again when it fires.
                log::warn!("saga {saga_id}: check-back answer not applied: {e}");
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
    /// stays in Postgres and is resumed by the next start).
    pub fn adopt(&self, saga: Saga) -> Option<Addr<SagaActor>> {
        let id = saga.id;
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

    /// Drops a finished (or reloading) saga's actor from the map.
    pub fn forget(&self, id: Uuid) {
        self.actors().remove(&id);
    }

    /// Reloads a saga from Postgres after `delay` and starts its actor again if it is unfinished.
    pub fn revive_later(&self, id: Uuid, delay: Duration) {
        let registry = self.clone();
        actix_rt::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = registry.find(id).await {
                log::error!("saga {id}: cannot reload it: {e}");
            }
        });
    }

    /// The saga's actor, starting one from Postgres if the saga is unfinished but has none.
    async fn find(&self, id: Uuid) -> Result<Option<Addr<SagaActor>>, EngineError> {
        if let Some(addr) = self.actors().get(&id).filter(|a| a.connected()) {
            return Ok(Some(addr.clone()));
        }
        let store = self.inner.store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load(id))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??;
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
                    })
                    .await;
            }
            Ok(None) => {
                log::info!("ignored a message for saga {saga_id}: unknown or already finished");
                let _ = settle.send(Settlement::Ack);
            }
            Err(e) => {
                log::warn!("cannot route a message for saga {saga_id}: {e}");
                let _ = settle.send(Settlement::Requeue);
            }
        }
    }

    /// Runs an operator's or initiator's request and answers with the saga afterwards.
    pub async fn operate(&self, saga_id: Uuid, event: Event) -> Result<Saga, EngineError> {
        // The actor may stop between being found and receiving the request (its saga just
        // finished, or it is reloading after a conflict): look again before giving up.
        for _ in 0..5 {
            let Some(addr) = self.find(saga_id).await? else {
                return self.answer_without_actor(saga_id, event).await;
            };
            match addr
                .send(Deliver {
                    event: event.clone(),
                    settle: None,
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
    /// do for a final saga).
    async fn answer_without_actor(&self, saga_id: Uuid, event: Event) -> Result<Saga, EngineError> {
        let store = self.inner.store.clone();
        let saga = tokio::task::spawn_blocking(move || store.load(saga_id))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??
            .ok_or(EngineError::NotFound(saga_id))?;
        let mut rng = rand::rng();
        let mut ctx = crate::saga::machine::Context {
            now: chrono::Utc::now(),
            rng: &mut rng,
        };
        match crate::saga::machine::handle(&saga, event, &mut ctx) {
            crate::saga::machine::Decision::Reject(reason) => Err(EngineError::Conflict(reason)),
            _ => Ok(saga),
        }
    }
}
