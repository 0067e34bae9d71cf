//! One actix actor per in-flight saga: it feeds events to the state machine and executes the decision.
//!
//! Executing means, in this order: commit the transition and let it take effect ([`super::commit`]:
//! persist it with its commands, then the change notice, the metrics and the publishes), then adopt
//! the new state, settle the RabbitMQ delivery that caused it, and re-arm the one clock the saga
//! needs (or stop when it is final). Each event is processed atomically (`AtomicResponse`): the next
//! one waits until the previous transition is durable.

use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::commit::{self, Commit, NotCommitted};
use super::{EngineError, Registry};
use crate::amqp::Settlement;
use crate::logging::saga_log;
use crate::saga::machine::{Decision, Event};
use crate::saga::{Saga, SagaState};
use crate::store::StoreError;

/// How long to wait before trying again after the database refused a transition.
const PERSIST_RETRY: Duration = Duration::from_secs(1);

pub struct SagaActor {
    saga: Saga,
    registry: Registry,
    clock: Option<SpawnHandle>,
}

/// An event for the saga, with the RabbitMQ delivery to settle once it is handled (if it came from one).
#[derive(Message)]
#[rtype(result = "Result<Saga, EngineError>")]
pub struct Deliver {
    pub event: Event,
    pub settle: Option<oneshot::Sender<Settlement>>,
    /// The event is a bulk action's (an operator's action): its write marks the saga done there.
    pub bulk_action: Option<Uuid>,
}

/// Stop after the event under way (a shutdown): its write finishes first.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// The saga's clock went off.
#[derive(Message)]
#[rtype(result = "()")]
struct ClockFired;

impl SagaActor {
    pub fn new(saga: Saga, registry: Registry) -> Self {
        SagaActor {
            saga,
            registry,
            clock: None,
        }
    }

    /// Arms one timer for the earliest due time of the saga.
    fn arm_clock(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.clock.take() {
            ctx.cancel_future(handle);
        }
        if let Some(due) = self.saga.next_due() {
            let wait =
                (due - Utc::now()).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(1);
            self.clock = Some(ctx.notify_later(ClockFired, wait));
        }
    }

    fn process(
        &mut self,
        event: Event,
        settle: Option<oneshot::Sender<Settlement>>,
        bulk_action: Option<Uuid>,
    ) -> ResponseActFuture<Self, Result<Saga, EngineError>> {
        let now = Utc::now();
        // Only timers read it: a reply timeout waits for its command's confirm and the replies queue.
        let sending = match event {
            Event::TimerFired => self.registry.inner.sendings.for_saga(&self.saga, now),
            _ => Default::default(),
        };
        // The attempt an answer is about, for the line that says it was ignored (a late reply).
        let (step, attempt) = super::attempt_of(&event);
        let step = step.map(str::to_owned);
        let transition = match commit::decide(&self.saga, event, now, sending) {
            Some(Decision::Apply(t)) => t,
            Some(Decision::Ignore(reason)) => {
                saga_log!(
                    log::Level::Info,
                    self.saga,
                    step = step.as_deref(),
                    attempt = attempt;
                    "saga {}: ignored: {reason}",
                    self.saga.id
                );
                settle_with(settle, Settlement::Ack);
                return Box::pin(fut::ready(Ok(self.saga.clone())));
            }
            Some(Decision::Reject(reason)) => {
                settle_with(settle, Settlement::Ack);
                return Box::pin(fut::ready(Err(EngineError::Conflict(reason))));
            }
            None => {
                // This saga keeps its last durable state and the event is dropped (a reply will
                // be retried by its timeout).
                saga_log!(
                    log::Level::Error,
                    self.saga,
                    step = step.as_deref(),
                    attempt = attempt;
                    "saga {}: the state machine panicked; event dropped",
                    self.saga.id
                );
                settle_with(settle, Settlement::Ack);
                return Box::pin(fut::ready(Err(EngineError::Internal(
                    "the state machine failed on this event".into(),
                ))));
            }
        };
        let written = Commit::change(&self.saga, transition, now)
            .for_bulk_action(bulk_action)
            .write(&self.registry);
        Box::pin(
            written
                .into_actor(self)
                .map(move |written, act, ctx| match written {
                    Ok(committed) => {
                        act.saga = committed.take_effect(&act.registry, &act.saga);
                        settle_with(settle, Settlement::Ack);
                        if act.saga.state.is_final() {
                            act.registry.forget(act.saga.id, &ctx.address());
                            act.registry.inner.sendings.forget(act.saga.id);
                            ctx.stop();
                        } else {
                            act.arm_clock(ctx);
                        }
                        Ok(act.saga.clone())
                    }
                    Err(NotCommitted::Duplicate(_)) => {
                        settle_with(settle, Settlement::Requeue);
                        Err(EngineError::Internal(
                            "an existing saga was inserted again".into(),
                        ))
                    }
                    Err(NotCommitted::Failed(StoreError::Conflict(id))) => {
                        // Someone else wrote this saga (or our last commit went through although its
                        // answer was lost): start over from what Postgres has.
                        saga_log!(log::Level::Warn, act.saga; "saga {id}: changed elsewhere; reloading it");
                        settle_with(settle, Settlement::Requeue);
                        act.registry.forget(id, &ctx.address());
                        act.registry.revive_later(id, Duration::ZERO);
                        ctx.stop();
                        Err(EngineError::Unavailable(
                            "the saga was reloaded; try again".into(),
                        ))
                    }
                    Err(NotCommitted::Failed(StoreError::Fenced(partition))) => {
                        // The partition went to another instance: so does this saga, and the
                        // reply goes to the partition's queue, which its new owner consumes.
                        saga_log!(
                            log::Level::Info,
                            act.saga;
                            "saga {}: partition {partition} is no longer ours; stopping here",
                            act.saga.id
                        );
                        settle_with(settle, Settlement::Forward(partition));
                        act.registry.forget(act.saga.id, &ctx.address());
                        act.registry.inner.sendings.forget(act.saga.id);
                        ctx.stop();
                        Err(EngineError::NotOwner(Some(partition)))
                    }
                    Err(NotCommitted::Failed(e)) => {
                        saga_log!(
                            log::Level::Error,
                            act.saga;
                            "saga {}: cannot persist a transition: {e}",
                            act.saga.id
                        );
                        act.registry.inner.sendings.store_failed(Utc::now());
                        settle_with(settle, Settlement::Requeue);
                        // Timers are still due: try again soon rather than at the next due time.
                        if let Some(handle) = act.clock.take() {
                            ctx.cancel_future(handle);
                        }
                        act.clock = Some(ctx.notify_later(ClockFired, PERSIST_RETRY));
                        Err(EngineError::Unavailable(e.to_string()))
                    }
                }),
        )
    }
}

fn settle_with(settle: Option<oneshot::Sender<Settlement>>, how: Settlement) {
    if let Some(settle) = settle {
        let _ = settle.send(how);
    }
}

impl Actor for SagaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Many thousands of replies may be queued for a busy saga; the mailbox only needs to hold
        // what the broker's prefetch lets through.
        ctx.set_mailbox_capacity(1024);
        self.arm_clock(ctx);
    }
}

impl Handler<Deliver> for SagaActor {
    type Result = AtomicResponse<Self, Result<Saga, EngineError>>;

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) -> Self::Result {
        AtomicResponse::new(self.process(msg.event, msg.settle, msg.bulk_action))
    }
}

impl Handler<Stop> for SagaActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<ClockFired> for SagaActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: ClockFired, _: &mut Self::Context) -> Self::Result {
        self.clock = None;
        if self.saga.state.is_final() || self.saga.state == SagaState::Failed {
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        AtomicResponse::new(Box::pin(self.process(Event::TimerFired, None, None).map(
            |_, act, ctx| {
                // An ignored tick (the clock ran a little early) must not leave the saga unclocked.
                if act.clock.is_none() && !act.saga.state.is_final() {
                    act.arm_clock(ctx);
                }
            },
        )))
    }
}
