//! The one way a transition takes effect: from the machine's decision to a committed transition,
//! and everything its commit sets off.
//!
//! Every transition goes this way, a submission's first as much as an actor's: its commands become
//! outbox rows (a check-back to a URL is an HTTP request instead, made after the commit), the
//! transition and its rows go to the writer as one [`Persist`], and only once they are durable does
//! anything leave the saga: the change notice, the metrics, a new saga's actor, the commands handed
//! to the relay and the check-backs. The types keep that order: only a [`Committed`], which the
//! writer's `Saved` answer makes, can [`Committed::take_effect`].
//!
//! The actor awaits the write as an actix future, which cannot borrow the actor across the wait; so
//! [`Commit::write`] borrows nothing, and the saga before the transition (for the metrics) is passed
//! to [`Committed::take_effect`] once the commit is known. [`super::Registry::commit`] is the same
//! two calls for a caller that holds its saga itself.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Registry;
use crate::logging::saga_log;
use crate::outbox::{command_message, OutboxMessage};
use crate::saga::machine::{self, Decision, Event, Transition};
use crate::saga::LogEntry;
use crate::saga::{CheckBack, CommandKind, Saga, SagaState};
use crate::store::leases::Lease;
use crate::store::{render_event, Persist, StoreError, Written};

/// Asks the state machine what `event` means for `saga`, with the runtime's clock and jitter.
/// `None`: the machine panicked. A bug in it must not take other sagas down, so the caller keeps
/// the saga's last durable state.
pub(super) fn decide(
    saga: &Saga,
    event: Event,
    now: DateTime<Utc>,
    sending: machine::Sending,
) -> Option<Decision> {
    let mut rng = rand::rng();
    let mut ctx = machine::Context {
        now,
        rng: &mut rng,
        sending,
    };
    catch_unwind(AssertUnwindSafe(|| machine::handle(saga, event, &mut ctx))).ok()
}

/// A transition the machine decided, ready for the writer.
pub(super) struct Commit {
    persist: Persist,
    then: AfterCommit,
}

/// What is done once the transition is durable.
struct AfterCommit {
    /// The saga after the transition (the writer takes the other copy).
    saga: Saga,
    log: Vec<LogEntry>,
    now: DateTime<Utc>,
    /// Attempts of the check-backs to ask over HTTP: the saga's check-back is a URL.
    http_checks: Vec<u32>,
    is_new: bool,
}

/// Why a transition was not committed.
pub(super) enum NotCommitted {
    /// A new saga whose idempotency key an earlier saga has: that saga.
    Duplicate(Box<Saga>),
    /// Nothing was written: the saga changed elsewhere ([`StoreError::Conflict`]), or Postgres.
    Failed(StoreError),
}

/// A durable transition whose effects are still to happen.
#[must_use = "a committed transition must take effect: its commands wait for it"]
pub(super) struct Committed {
    then: AfterCommit,
    /// The outbox rows as inserted (with their ids).
    outbox: Vec<OutboxMessage>,
}

impl Commit {
    /// The first transition of a submitted saga: it inserts the saga and every step.
    pub(super) fn start(transition: Transition, now: DateTime<Utc>) -> Commit {
        let steps = (0..transition.saga.steps.len()).collect();
        let state = transition.saga.state;
        Commit::new(transition, steps, now, true, state)
    }

    /// A transition of a stored saga: only the steps whose progress changed are written.
    pub(super) fn change(before: &Saga, transition: Transition, now: DateTime<Utc>) -> Commit {
        let steps = (0..transition.saga.steps.len())
            .filter(|&i| transition.saga.steps[i] != before.steps[i])
            .collect();
        Commit::new(transition, steps, now, false, before.state)
    }

    /// The transition is bulk action `id`'s: its write marks the saga `applied` there.
    pub(super) fn for_bulk_action(mut self, id: Option<Uuid>) -> Commit {
        self.persist.bulk_action = id;
        self
    }

    fn new(
        transition: Transition,
        steps: Vec<usize>,
        now: DateTime<Utc>,
        is_new: bool,
        state_before: SagaState,
    ) -> Self {
        let Transition {
            saga,
            commands,
            log,
        } = transition;
        // A check-back to a URL is an HTTP request made after the commit, not an outbox row.
        let over_http = matches!(saga.definition.check_back, Some(CheckBack::Url(_)));
        let mut http_checks = Vec::new();
        let mut outbox = Vec::with_capacity(commands.len());
        for command in &commands {
            if over_http && command.kind == CommandKind::Check {
                http_checks.push(command.attempt);
            } else {
                outbox.push(command_message(&saga, command, now));
            }
        }
        let then = AfterCommit {
            saga: saga.clone(),
            log: log.clone(),
            now,
            http_checks,
            is_new,
        };
        Commit {
            persist: Persist {
                saga,
                steps,
                log,
                outbox,
                is_new,
                state_before,
                // Set by `write` from the lease this instance holds.
                fence: Lease {
                    partition: 0,
                    epoch: 0,
                },
                bulk_action: None,
            },
            then,
        }
    }

    /// Hands the transition to the writer (at once) and answers once it is durable, or why not.
    /// The answer borrows nothing, so an actor can await it as its own future. A saga whose
    /// partition this instance does not hold is not even handed over ([`StoreError::Fenced`]); the
    /// writer checks the lease again in the statement that writes.
    pub(super) fn write(
        self,
        registry: &Registry,
    ) -> impl Future<Output = Result<Committed, NotCommitted>> + 'static {
        let Commit {
            mut persist,
            mut then,
        } = self;
        let ownership = &registry.inner.ownership;
        let written = match ownership.fence(persist.saga.id) {
            Some(fence) => {
                persist.fence = fence;
                Ok(registry.inner.writer.write(persist))
            }
            None => Err(StoreError::Fenced(ownership.partition_of(persist.saga.id))),
        };
        let metrics = std::sync::Arc::clone(&registry.inner.metrics);
        async move {
            let written = match written {
                Ok(written) => written.await,
                Err(fenced) => Err(fenced),
            };
            if let Err(StoreError::Fenced(_)) = &written {
                metrics.observe_fenced_write();
            }
            match written {
                Ok(Written::Saved { version, outbox }) => {
                    then.saga.version = version;
                    Ok(Committed { then, outbox })
                }
                Ok(Written::Duplicate(existing)) => Err(NotCommitted::Duplicate(existing)),
                Err(e) => Err(NotCommitted::Failed(e)),
            }
        }
    }
}

impl Committed {
    /// Everything a commit sets off, in this order: the change notice and the metrics (`before` is
    /// the saga as it was before the transition); a new saga's actor, started before its first
    /// command goes out so that a reply finds it; the commands, to the relay; the check-backs over
    /// HTTP. Answers the saga as committed (with its new version).
    pub(super) fn take_effect(self, registry: &Registry, before: &Saga) -> Saga {
        let Committed { then, outbox } = self;
        let AfterCommit {
            saga,
            log,
            now,
            http_checks,
            is_new,
        } = then;
        registry.inner.changes.send(&saga);
        registry
            .inner
            .metrics
            .observe_transition(before, &saga, &log, now);
        log_entries(&saga, &log);
        super::spans::observe(registry, before.state, &saga, &log, now, is_new);
        if is_new && !saga.state.is_final() {
            registry.adopt(saga.clone());
        }
        registry.publish(outbox);
        if let Some(CheckBack::Url(url)) = &saga.definition.check_back {
            let timeout = Duration::from_millis(saga.definition.check_back_timeout_ms);
            for attempt in http_checks {
                registry.check_back_over_http(&saga, url.clone(), attempt, timeout);
            }
        }
        saga
    }
}

/// One debug line per committed event-log entry, spelled as the events API spells it: what a
/// person following one saga in the logs wants (each attempt, its answer, the saga's end), with
/// the step and attempt as fields.
fn log_entries(saga: &Saga, log: &[LogEntry]) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    for entry in log {
        let event = render_event(entry, &saga.definition);
        let detail = match &event.detail {
            serde_json::Value::Object(fields) if fields.is_empty() => String::new(),
            detail => format!(" {detail}"),
        };
        saga_log!(
            log::Level::Debug,
            saga,
            event = event.kind,
            step = event.step,
            attempt = event.attempt;
            "saga {}: {}{detail}",
            saga.id,
            event.kind
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn submitted(body: serde_json::Value, now: DateTime<Utc>) -> Saga {
        let definition = crate::submission::parse_submission(&body).expect("a valid submission");
        Saga::new(Uuid::now_v7(), definition, None, now)
    }

    fn applied(saga: &Saga, event: Event, now: DateTime<Utc>) -> Transition {
        match decide(saga, event, now, Default::default()) {
            Some(Decision::Apply(t)) => t,
            other => panic!("expected a transition, got {other:?}"),
        }
    }

    /// A prepared saga past its prepare timeout, and the transition that asks the initiator.
    fn first_check_back(check_back: serde_json::Value) -> (Saga, Transition, DateTime<Utc>) {
        let now = Utc::now();
        let saga = submitted(
            json!({"name": "n", "mode": "prepare", "prepare_timeout_ms": 1000,
                   "check_back": check_back,
                   "steps": [{"name": "a", "participant": "p", "action": "x"}]}),
            now,
        );
        let prepared = applied(&saga, Event::Start, now).saga;
        let later = now + chrono::Duration::seconds(2);
        let asking = applied(&prepared, Event::TimerFired, later);
        (prepared, asking, later)
    }

    #[test]
    fn a_check_back_to_a_url_is_asked_over_http_after_the_commit_not_through_the_outbox() {
        let (prepared, asking, now) = first_check_back(json!({"url": "http://initiator/check"}));
        let commit = Commit::change(&prepared, asking, now);
        assert!(commit.persist.outbox.is_empty());
        assert_eq!(commit.then.http_checks, vec![1]);
    }

    #[test]
    fn a_check_back_to_a_participant_is_an_outbox_row() {
        let (prepared, asking, now) = first_check_back(json!({"participant": "initiator"}));
        let commit = Commit::change(&prepared, asking, now);
        assert_eq!(commit.persist.outbox.len(), 1);
        assert!(commit.then.http_checks.is_empty());
    }

    #[test]
    fn a_start_inserts_every_step_and_a_change_writes_only_the_changed_ones() {
        let now = Utc::now();
        let saga = submitted(
            json!({"name": "n", "steps": [
                {"name": "a", "participant": "p", "action": "x", "compensation": "y"},
                {"name": "b", "participant": "p", "action": "x"}]}),
            now,
        );
        let start = Commit::start(applied(&saga, Event::Start, now), now);
        assert!(start.persist.is_new);
        assert_eq!(start.persist.steps, vec![0, 1]);
        assert_eq!(start.persist.outbox.len(), 1, "step a is dispatched");
        assert_eq!(start.then.saga, start.persist.saga);

        let running = start.persist.saga;
        let abort = Commit::change(&running, applied(&running, Event::Abort, now), now);
        assert!(!abort.persist.is_new);
        assert_eq!(abort.persist.steps, vec![0], "b was never dispatched");
        assert_eq!(abort.then.log, abort.persist.log);
    }
}
