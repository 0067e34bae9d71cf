//! The saga state machine: a pure function from (saga, event) to (saga, commands, log entries).
//!
//! Modelled on Erlang's `gen_statem`: `handle` decides, the caller executes. It never performs I/O, reads
//! no clock and draws no randomness of its own: the time and the jitter source come in through
//! [`Context`], so every decision can be replayed in a test. Timers are not armed here either: they are
//! due times stored in the saga (see [`Saga::next_due`]); when one passes, the caller delivers
//! [`Event::TimerFired`].
//!
//! The rules are the contract's (section 4, "Rules the coordinator keeps"):
//! - steps run when every dependency has succeeded; the saga commits when every step has succeeded;
//! - `retry` replies and timeouts retry with capped exponential backoff and jitter until the policy's
//!   attempts run out; an action that runs out fails its step and the saga compensates;
//! - a step is compensated when its action was dispatched and did not answer `failure`, in reverse
//!   dependency order; a compensation that runs out of attempts leaves the saga `failed` for an operator;
//! - a reply that is not awaited (duplicate, stale, unknown step) changes nothing;
//! - a prepared saga (two-phase submission, section 5) waits for `commit` or `abort`; past its
//!   prepare timeout it asks the initiator (check-back) with backoff until it hears `committed` or
//!   `aborted`; when the check-back policy runs out it becomes `failed` for an operator, who may
//!   still commit, abort, retry (ask again) or resolve it;
//! - timeouts measure participants, not the coordinator's infrastructure: a step's reply timeout runs
//!   from RabbitMQ's confirm of its command, an attempt whose command is unconfirmed cannot time out,
//!   and no reply timeout fires while replies may still wait in a queue the coordinator could not
//!   consume ([`Sending`]); the saga deadline is a business limit and fires regardless.

use chrono::{DateTime, Duration, Utc};
use rand::Rng;

use super::event_log::{CommandAttempt, CompensationReason, DecidedBy, FailureReason, LogEntry};
use super::reply::{Outcome, Reply};
use super::state::{CommandKind, Pause, PausedBy, Saga, SagaState, StepState, Timer, TimerPurpose};

/// What the machine needs from the outside world, passed in so that it stays pure.
pub struct Context<'a, R: Rng> {
    pub now: DateTime<Utc>,
    /// Source of backoff jitter.
    pub rng: &'a mut R,
    /// What the runtime knows of the saga's commands on their way (read by reply timeouts only).
    pub sending: Sending,
}

/// A step command, by position: (step, kind, attempt).
pub type Attempt = (usize, CommandKind, u32);

/// What the runtime knows of the saga's commands and of the replies queue when its timers fire.
/// A step's reply timeout counts only time during which the participant could have answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sending {
    /// Attempts whose command waits in the outbox, not yet confirmed by RabbitMQ: they cannot
    /// time out yet.
    pub unconfirmed: Vec<Attempt>,
    /// Attempts RabbitMQ confirmed, and when: each times out no earlier than its confirm plus the
    /// step's `timeout_ms`. Attempts in neither list (confirmed before a restart) keep their due time.
    pub confirmed: Vec<(Attempt, DateTime<Utc>)>,
    /// No reply timeout fires before this: a reply may be waiting in a queue the coordinator could
    /// not consume until shortly before.
    pub replies_held_until: Option<DateTime<Utc>>,
}

impl Sending {
    /// When a reply timeout that fell due may really fire, if later than `now`.
    fn postponed(
        &self,
        attempt: Attempt,
        timeout: Duration,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let own = if self.unconfirmed.contains(&attempt) {
            Some(now + timeout)
        } else {
            self.confirmed
                .iter()
                .find(|(a, _)| *a == attempt)
                .map(|(_, confirmed_at)| *confirmed_at + timeout)
        };
        let held = self.replies_held_until;
        [own, held]
            .into_iter()
            .flatten()
            .max()
            .filter(|due| *due > now)
    }
}

/// Something that happened to a saga.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The saga was just submitted: dispatch the first steps (or wait for commit, if prepared).
    Start,
    /// A participant answered.
    Reply(Reply),
    /// A participant rejected a command without requeue: counts as `retry` at once.
    DeadLettered {
        step: Option<String>,
        kind: CommandKind,
        attempt: u32,
    },
    /// The time in [`Context::now`] has reached [`Saga::next_due`] (earlier deliveries are harmless).
    TimerFired,
    /// Operator or initiator: stop dispatching actions and compensate (a prepared saga just aborts).
    Abort,
    /// Operator: give exhausted compensations a fresh set of attempts.
    Retry,
    /// Operator: the saga was repaired by hand.
    Resolve { note: String },
    /// Initiator of a two-phase submission: start running.
    Commit,
    /// Operator: what waits out a backoff (a step's next attempt, a prepared saga's next
    /// check-back) goes now, because the dependency it waited for has recovered.
    RetryNow,
    /// Operator: hold the saga (nothing dispatched, no timer fires) until `Resume`; `by` says
    /// whether this saga was paused or every saga of its name.
    Pause { by: PausedBy },
    /// Operator: continue a paused saga where it stood. By name, only what the name's pause holds.
    Resume { by: PausedBy },
}

/// A command to send, described by position; the caller turns it into a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// `None` for the saga-level `check` command.
    pub step: Option<usize>,
    pub kind: CommandKind,
    pub attempt: u32,
    /// When this attempt counts as timed out.
    pub deadline: DateTime<Utc>,
}

/// The saga after an event, and what must happen because of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub saga: Saga,
    pub commands: Vec<Command>,
    pub log: Vec<LogEntry>,
}

/// The machine's answer to an event.
// Most answers are `Apply`, each moved once to the commit path: boxing it would add an
// allocation to every transition to shrink the rare `Ignore` and `Reject`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Persist this transition, then send its commands.
    Apply(Transition),
    /// Nothing changes (a duplicate or stale reply, a timer that is not due); the reason is for the log.
    Ignore(String),
    /// An operator request the saga's state does not allow (the API answers 409).
    Reject(String),
}

/// Decides what `event` does to `saga`.
pub fn handle<R: Rng>(saga: &Saga, event: Event, ctx: &mut Context<'_, R>) -> Decision {
    let mut run = Run {
        saga: saga.clone(),
        commands: Vec::new(),
        log: Vec::new(),
        now: ctx.now,
    };
    let verdict = match event {
        Event::Start => run.start(),
        Event::Reply(reply) => run.reply(reply, ctx),
        Event::DeadLettered {
            step,
            kind,
            attempt,
        } => run.dead_lettered(step, kind, attempt, ctx),
        Event::TimerFired => run.timers(ctx),
        Event::Abort => run.abort(DecidedBy::Api),
        Event::Retry => run.operator_retry(),
        Event::Resolve { note } => run.resolve(note),
        Event::Commit => run.commit(DecidedBy::Initiator),
        Event::RetryNow => run.retry_now(ctx),
        Event::Pause { by } => run.pause(by),
        Event::Resume { by } => run.resume(by, ctx),
    };
    match verdict {
        Verdict::Changed => {
            run.saga.updated_at = ctx.now;
            if run.saga.state.is_final() || run.saga.state == SagaState::Failed {
                for step in &mut run.saga.steps {
                    step.timer = None;
                }
                // Nothing is left to hold: a saga that ended while paused is simply over.
                run.saga.pause = None;
            }
            if run.saga.state != SagaState::Prepared {
                run.saga.check_back.timer = None;
            }
            Decision::Apply(Transition {
                saga: run.saga,
                commands: run.commands,
                log: run.log,
            })
        }
        Verdict::Ignore(reason) => Decision::Ignore(reason),
        Verdict::Reject(reason) => Decision::Reject(reason),
    }
}

enum Verdict {
    Changed,
    Ignore(String),
    Reject(String),
}

/// Working state of one `handle` call.
struct Run {
    saga: Saga,
    commands: Vec<Command>,
    log: Vec<LogEntry>,
    now: DateTime<Utc>,
}

impl Run {
    fn record(&mut self, entry: LogEntry) {
        self.log.push(entry);
    }

    fn step_name(&self, step: usize) -> &str {
        &self.saga.definition.steps[step].name
    }

    fn start(&mut self) -> Verdict {
        let untouched = self
            .saga
            .steps
            .iter()
            .all(|s| s.state == StepState::Pending && s.attempts == 0);
        if !untouched || self.saga.state.is_final() {
            return Verdict::Ignore("the saga has already started".into());
        }
        if self.saga.definition.mode == super::SubmissionMode::Prepare {
            self.saga.state = SagaState::Prepared;
            let wait = Duration::milliseconds(self.saga.definition.prepare_timeout_ms as i64);
            // The first check-back is "due to be asked" once the prepare timeout has passed.
            self.saga.check_back.timer = Some(Timer {
                due_at: self.now + wait,
                purpose: TimerPurpose::Backoff,
            });
            self.record(LogEntry::Prepared);
            self.record_held();
            return Verdict::Changed;
        }
        self.saga.state = SagaState::Running;
        self.record(LogEntry::Started);
        self.record_held();
        self.advance();
        Verdict::Changed
    }

    /// A saga submitted while its name is paused starts held: the log says so beside its start.
    fn record_held(&mut self) {
        if let Some(held) = self.saga.pause {
            self.record(LogEntry::Paused { by: held.by });
        }
    }

    /// A prepared saga that never dispatched anything and is waiting for (or gave up waiting for)
    /// its initiator's decision: `commit` and `abort` still decide it, even after check-backs ran out.
    fn undecided(&self) -> bool {
        self.saga.definition.mode == super::SubmissionMode::Prepare
            && match self.saga.state {
                SagaState::Prepared => true,
                SagaState::Failed => self.saga.steps.iter().all(|s| s.attempts == 0),
                _ => false,
            }
    }

    /// `commit` from the initiator or a check-back answer.
    fn commit(&mut self, by: DecidedBy) -> Verdict {
        if self.saga.definition.mode != super::SubmissionMode::Prepare {
            return Verdict::Reject(
                "only a two-phase (\"mode\": \"prepare\") saga can be committed".into(),
            );
        }
        if self.undecided() {
            self.saga.state = SagaState::Running;
            self.record(LogEntry::Commit { by });
            self.record(LogEntry::Started);
            self.advance();
            return Verdict::Changed;
        }
        match self.saga.state {
            SagaState::Aborted => Verdict::Reject("the saga was aborted".into()),
            state => Verdict::Ignore(format!("the saga was already committed; it is {state}")),
        }
    }

    /// `abort` from an operator or the initiator (`by`), or a check-back answer.
    fn abort(&mut self, by: DecidedBy) -> Verdict {
        if self.undecided() {
            self.saga.state = SagaState::Aborted;
            self.record(LogEntry::Aborted { by });
            return Verdict::Changed;
        }
        match self.saga.state {
            SagaState::Running => {
                self.begin_compensation(CompensationReason::Aborted);
                Verdict::Changed
            }
            // Repeating an abort that already took a prepared saga to `aborted` is harmless.
            SagaState::Aborted => Verdict::Ignore("the saga is already aborted".into()),
            state => Verdict::Reject(format!(
                "only a running or prepared saga can be aborted; this one is {state}"
            )),
        }
    }

    fn operator_retry(&mut self) -> Verdict {
        if self.saga.state != SagaState::Failed {
            return Verdict::Reject(format!(
                "only a failed saga can be retried; this one is {}",
                self.saga.state
            ));
        }
        if self.undecided() {
            // The check-backs ran out: ask the initiator again with a fresh budget.
            self.saga.state = SagaState::Prepared;
            self.record(LogEntry::RetryRequested);
            let check = &mut self.saga.check_back;
            check.attempt_limit = check
                .attempts
                .saturating_add(self.saga.definition.check_back_retry.max_attempts);
            self.dispatch_check();
            return Verdict::Changed;
        }
        self.saga.state = SagaState::Compensating;
        self.record(LogEntry::RetryRequested);
        let exhausted: Vec<usize> = (0..self.saga.steps.len())
            .filter(|&i| self.saga.steps[i].state == StepState::CompensationFailed)
            .collect();
        for i in exhausted {
            let budget = self.saga.definition.steps[i]
                .compensation_retry
                .max_attempts;
            let step = &mut self.saga.steps[i];
            step.compensation_attempt_limit = step.compensation_attempts.saturating_add(budget);
            self.dispatch(i, CommandKind::Compensation);
        }
        self.advance();
        Verdict::Changed
    }

    /// Brings every backoff that is waiting forward to now and fires it. Only backoffs: a reply
    /// timeout still gives the participant its full time, and a saga waiting for nothing is a 409.
    fn retry_now<R: Rng>(&mut self, ctx: &mut Context<'_, R>) -> Verdict {
        if self.saga.pause.is_some() {
            return Verdict::Reject("the saga is paused: resume it first".into());
        }
        let now = self.now;
        let bring_forward = |timer: &mut Option<Timer>| match timer {
            Some(t) if t.purpose == TimerPurpose::Backoff => {
                t.due_at = t.due_at.min(now);
                true
            }
            _ => false,
        };
        let waiting = match self.saga.state {
            SagaState::Prepared => bring_forward(&mut self.saga.check_back.timer),
            SagaState::Running | SagaState::Compensating => {
                // Every step, not only the first: parallel branches may each wait.
                let mut brought = 0;
                for s in &mut self.saga.steps {
                    brought += usize::from(bring_forward(&mut s.timer));
                }
                brought > 0
            }
            _ => false,
        };
        if !waiting {
            return Verdict::Reject(format!(
                "nothing of this saga waits out a backoff; it is {}",
                self.saga.state
            ));
        }
        self.record(LogEntry::RetryNowRequested);
        self.timers(ctx);
        Verdict::Changed
    }

    /// Holds an in-flight saga. Replies to commands already out are still recorded; what they
    /// would start waits for `resume`. Pausing a paused saga changes nothing, except that an
    /// operator's pause of a saga its name's pause holds makes it the operator's: resuming the
    /// name then leaves it paused.
    fn pause(&mut self, by: PausedBy) -> Verdict {
        if !self.saga.state.in_flight() {
            return Verdict::Reject(format!(
                "only a running, compensating or prepared saga can be paused; this one is {}",
                self.saga.state
            ));
        }
        match &mut self.saga.pause {
            Some(held) if held.by == PausedBy::Name && by == PausedBy::Operator => {
                held.by = PausedBy::Operator;
            }
            Some(_) => return Verdict::Ignore("the saga is already paused".into()),
            None => {
                self.saga.pause = Some(Pause {
                    since: self.now,
                    by,
                })
            }
        }
        self.record(LogEntry::Paused { by });
        Verdict::Changed
    }

    /// Continues a paused saga: each timer gets back the wait it had left when paused, counted
    /// from now; what became ready meanwhile is dispatched, and what is due fires at once.
    fn resume<R: Rng>(&mut self, by: PausedBy, ctx: &mut Context<'_, R>) -> Verdict {
        let Some(held) = self.saga.pause else {
            return if self.saga.state.in_flight() {
                Verdict::Ignore("the saga is not paused".into())
            } else {
                Verdict::Reject(format!(
                    "only a paused saga can be resumed; this one is {}",
                    self.saga.state
                ))
            };
        };
        if by == PausedBy::Name && held.by == PausedBy::Operator {
            return Verdict::Ignore("an operator paused this saga, not its name's pause".into());
        }
        let now = self.now;
        let rearm = |timer: &mut Option<Timer>| {
            if let Some(t) = timer {
                t.due_at = now + (t.due_at - held.since).max(Duration::zero());
            }
        };
        for s in &mut self.saga.steps {
            rearm(&mut s.timer);
        }
        rearm(&mut self.saga.check_back.timer);
        self.saga.pause = None;
        self.record(LogEntry::Resumed { by });
        self.advance();
        if self.saga.next_due().is_some_and(|due| due <= now) {
            self.timers(ctx);
        }
        Verdict::Changed
    }

    fn resolve(&mut self, note: String) -> Verdict {
        if self.saga.state != SagaState::Failed {
            return Verdict::Reject(format!(
                "only a failed saga can be resolved; this one is {}",
                self.saga.state
            ));
        }
        let dispatched = self.saga.steps.iter().any(|s| s.attempts > 0);
        self.saga.state = if dispatched {
            SagaState::Compensated
        } else {
            SagaState::Aborted
        };
        self.record(LogEntry::Resolved { note });
        Verdict::Changed
    }

    fn reply<R: Rng>(&mut self, reply: Reply, ctx: &mut Context<'_, R>) -> Verdict {
        if reply.kind == CommandKind::Check {
            return self.check_reply(reply, ctx);
        }
        let Some(step) = reply
            .step
            .as_deref()
            .and_then(|name| self.saga.definition.step_index(name))
        else {
            return Verdict::Ignore(format!("no step {:?} in this saga", reply.step));
        };
        if !self.awaits(step, reply.kind, reply.attempt) {
            return Verdict::Ignore(format!(
                "{} of step {} attempt {} is not awaited",
                reply.kind,
                self.step_name(step),
                reply.attempt
            ));
        }
        self.record(LogEntry::Reply {
            command: CommandAttempt::step(step, reply.kind, reply.attempt),
            outcome: reply.outcome,
            error: reply.error.clone(),
        });
        match (reply.kind, reply.outcome) {
            (CommandKind::Action, Outcome::Success) => {
                let s = &mut self.saga.steps[step];
                s.state = StepState::Succeeded;
                s.output = reply.output;
                s.error = None;
                s.timer = None;
                self.advance();
                Verdict::Changed
            }
            (CommandKind::Action, Outcome::Failure) => {
                let s = &mut self.saga.steps[step];
                s.state = StepState::Failed;
                s.refused = true;
                s.timer = None;
                s.error = Some(
                    reply
                        .error
                        .unwrap_or_else(|| "refused by the participant".into()),
                );
                let step = self.step_name(step).to_owned();
                self.begin_compensation(CompensationReason::StepFailed { step });
                Verdict::Changed
            }
            (CommandKind::Compensation, Outcome::Success) => {
                let s = &mut self.saga.steps[step];
                s.state = StepState::Compensated;
                s.timer = None;
                s.error = None;
                self.advance();
                Verdict::Changed
            }
            (kind, Outcome::Retry) | (kind @ CommandKind::Compensation, Outcome::Failure) => {
                // Only the newest attempt may ask for another one: a `retry` from an older attempt
                // would otherwise start a second round of attempts beside the one already out.
                let s = &self.saga.steps[step];
                let latest = match kind {
                    CommandKind::Action => s.attempts,
                    _ => s.compensation_attempts,
                };
                let waiting = s.timer.map(|t| t.purpose) == Some(TimerPurpose::ReplyTimeout);
                if reply.attempt != latest || !waiting {
                    self.log.clear();
                    return Verdict::Ignore(format!(
                        "retry from attempt {} of step {} while attempt {latest} is current",
                        reply.attempt,
                        self.step_name(step)
                    ));
                }
                let error = reply
                    .error
                    .unwrap_or_else(|| "participant asked to retry".into());
                self.attempt_failed(step, kind, error, ctx);
                Verdict::Changed
            }
            (kind, outcome) => {
                self.log.clear();
                Verdict::Ignore(format!(
                    "outcome {outcome:?} is not an answer to a {kind} command"
                ))
            }
        }
    }

    /// An answer to a check-back. `committed` and `aborted` decide the saga whichever attempt they
    /// answer (the initiator's decision is never lost); `pending` (or a failed HTTP check, which the
    /// runtime reports as `retry`) only counts from the attempt currently out.
    fn check_reply<R: Rng>(&mut self, reply: Reply, ctx: &mut Context<'_, R>) -> Verdict {
        if !self.undecided() {
            return Verdict::Ignore(format!(
                "check-back answer for a saga that is {}",
                self.saga.state
            ));
        }
        let answer = LogEntry::Reply {
            command: CommandAttempt::check_back(reply.attempt),
            outcome: reply.outcome,
            error: reply.error.clone(),
        };
        match reply.outcome {
            Outcome::Committed => {
                self.record(answer);
                self.commit(DecidedBy::CheckBack)
            }
            Outcome::Aborted => {
                self.record(answer);
                self.abort(DecidedBy::CheckBack)
            }
            Outcome::Pending | Outcome::Retry | Outcome::Failure => {
                if !self.awaits_check(reply.attempt) {
                    return Verdict::Ignore(format!(
                        "check-back answer {:?} from attempt {} is not awaited",
                        reply.outcome, reply.attempt
                    ));
                }
                self.record(answer);
                let error = match reply.outcome {
                    Outcome::Pending => "the initiator answered pending".to_string(),
                    _ => reply
                        .error
                        .unwrap_or_else(|| "the check-back got no answer".into()),
                };
                self.check_failed(error, ctx);
                Verdict::Changed
            }
            Outcome::Success => Verdict::Ignore("success is not an answer to a check-back".into()),
        }
    }

    /// Whether `attempt` is the check-back currently out and waiting for its answer.
    fn awaits_check(&self, attempt: u32) -> bool {
        let check = &self.saga.check_back;
        self.saga.state == SagaState::Prepared
            && attempt == check.attempts
            && check.timer.map(|t| t.purpose) == Some(TimerPurpose::ReplyTimeout)
    }

    /// Asks the initiator whether its local transaction committed.
    fn dispatch_check(&mut self) {
        let timeout = Duration::milliseconds(self.saga.definition.check_back_timeout_ms as i64);
        let deadline = self.now + timeout;
        let check = &mut self.saga.check_back;
        check.attempts += 1;
        check.timer = Some(Timer {
            due_at: deadline,
            purpose: TimerPurpose::ReplyTimeout,
        });
        let attempt = check.attempts;
        self.commands.push(Command {
            step: None,
            kind: CommandKind::Check,
            attempt,
            deadline,
        });
        self.record(LogEntry::Dispatched {
            command: CommandAttempt::check_back(attempt),
        });
    }

    /// The current check-back got no decisive answer: ask again after a backoff, or hand the saga
    /// to an operator when the policy has run out.
    fn check_failed<R: Rng>(&mut self, error: String, ctx: &mut Context<'_, R>) {
        let attempts = self.saga.check_back.attempts;
        if attempts >= self.saga.check_back.attempt_limit {
            let error = format!("gave up after {attempts} check-backs: {error}");
            self.record(LogEntry::GaveUp {
                command: CommandAttempt::check_back(attempts),
                error,
            });
            self.saga.state = SagaState::Failed;
            self.saga.check_back.timer = None;
            self.record(LogEntry::Failed {
                reason: FailureReason::CheckBackGaveUp,
            });
            return;
        }
        let delay = backoff_with_jitter(&self.saga.definition.check_back_retry, attempts, ctx);
        self.record(LogEntry::RetryScheduled {
            command: CommandAttempt::check_back(attempts),
            error,
            backoff_ms: delay,
        });
        self.saga.check_back.timer = Some(Timer {
            due_at: self.now + Duration::milliseconds(delay as i64),
            purpose: TimerPurpose::Backoff,
        });
    }

    fn check_back_timer<R: Rng>(&mut self, ctx: &mut Context<'_, R>) -> Verdict {
        let Some(timer) = self.saga.check_back.timer.filter(|t| t.due_at <= self.now) else {
            return Verdict::Ignore("no timer is due".into());
        };
        match timer.purpose {
            TimerPurpose::Backoff => self.dispatch_check(),
            TimerPurpose::ReplyTimeout => {
                let attempt = self.saga.check_back.attempts;
                self.record(LogEntry::TimedOut {
                    command: CommandAttempt::check_back(attempt),
                });
                let error = format!(
                    "no answer within {} ms",
                    self.saga.definition.check_back_timeout_ms
                );
                self.check_failed(error, ctx);
            }
        }
        Verdict::Changed
    }

    fn dead_lettered<R: Rng>(
        &mut self,
        step: Option<String>,
        kind: CommandKind,
        attempt: u32,
        ctx: &mut Context<'_, R>,
    ) -> Verdict {
        if kind == CommandKind::Check {
            if !self.awaits_check(attempt) {
                return Verdict::Ignore(format!(
                    "dead-lettered check-back attempt {attempt} is not current"
                ));
            }
            self.record(LogEntry::DeadLettered {
                command: CommandAttempt::check_back(attempt),
            });
            self.check_failed("the initiator rejected the check-back".into(), ctx);
            return Verdict::Changed;
        }
        let Some(i) = step
            .as_deref()
            .and_then(|name| self.saga.definition.step_index(name))
        else {
            return Verdict::Ignore("dead-lettered command of no known step".into());
        };
        let s = &self.saga.steps[i];
        let latest = match kind {
            CommandKind::Action => s.attempts,
            _ => s.compensation_attempts,
        };
        let waiting = s.timer.map(|t| t.purpose) == Some(TimerPurpose::ReplyTimeout);
        if !self.awaits(i, kind, attempt) || attempt != latest || !waiting {
            return Verdict::Ignore(format!(
                "dead-lettered {kind} attempt {attempt} is not current"
            ));
        }
        self.record(LogEntry::DeadLettered {
            command: CommandAttempt::step(i, kind, attempt),
        });
        self.attempt_failed(i, kind, "the participant rejected the command".into(), ctx);
        Verdict::Changed
    }

    fn timers<R: Rng>(&mut self, ctx: &mut Context<'_, R>) -> Verdict {
        if self.saga.pause.is_some() {
            return Verdict::Ignore("the saga is paused".into());
        }
        if self.saga.state == SagaState::Prepared {
            return self.check_back_timer(ctx);
        }
        let now = self.now;
        let mut changed = false;
        if self.saga.state == SagaState::Running && self.saga.deadline.is_some_and(|d| d <= now) {
            self.begin_compensation(CompensationReason::TimedOut);
            changed = true;
        }
        for i in 0..self.saga.steps.len() {
            let s = &self.saga.steps[i];
            let Some(timer) = s.timer.filter(|t| t.due_at <= now) else {
                continue;
            };
            let kind = match (self.saga.state, s.state) {
                (SagaState::Running, StepState::Running) => CommandKind::Action,
                (SagaState::Compensating, StepState::Compensating) => CommandKind::Compensation,
                _ => {
                    // A timer left behind by a state change that did not clear it: drop it.
                    self.saga.steps[i].timer = None;
                    changed = true;
                    continue;
                }
            };
            changed = true;
            match timer.purpose {
                TimerPurpose::ReplyTimeout => {
                    let attempt = match kind {
                        CommandKind::Action => s.attempts,
                        _ => s.compensation_attempts,
                    };
                    let timeout =
                        Duration::milliseconds(self.saga.definition.steps[i].timeout_ms as i64);
                    if let Some(due_at) = ctx.sending.postponed((i, kind, attempt), timeout, now) {
                        // The participant has not had its full timeout yet: wait, do not count it.
                        self.saga.steps[i].timer = Some(Timer { due_at, ..timer });
                        continue;
                    }
                    self.record(LogEntry::TimedOut {
                        command: CommandAttempt::step(i, kind, attempt),
                    });
                    let error = format!(
                        "no reply within {} ms",
                        self.saga.definition.steps[i].timeout_ms
                    );
                    self.attempt_failed(i, kind, error, ctx);
                }
                TimerPurpose::Backoff => self.dispatch(i, kind),
            }
        }
        if changed {
            Verdict::Changed
        } else {
            Verdict::Ignore("no timer is due".into())
        }
    }

    /// Whether a reply for this step, kind and attempt is one the saga is waiting for. Any attempt
    /// counts, since all attempts share one idempotency key; attempts never sent do not.
    fn awaits(&self, step: usize, kind: CommandKind, attempt: u32) -> bool {
        let s = &self.saga.steps[step];
        match kind {
            CommandKind::Action => {
                self.saga.state == SagaState::Running
                    && s.state == StepState::Running
                    && attempt <= s.attempts
            }
            CommandKind::Compensation => {
                self.saga.state == SagaState::Compensating
                    && s.state == StepState::Compensating
                    && attempt <= s.compensation_attempts
            }
            CommandKind::Check => false,
        }
    }

    /// The current attempt ended without success: back off and try again, or give up.
    fn attempt_failed<R: Rng>(
        &mut self,
        step: usize,
        kind: CommandKind,
        error: String,
        ctx: &mut Context<'_, R>,
    ) {
        let def = &self.saga.definition.steps[step];
        let s = &self.saga.steps[step];
        let (attempts, limit, policy) = match kind {
            CommandKind::Action => (s.attempts, def.retry.max_attempts, &def.retry),
            _ => (
                s.compensation_attempts,
                s.compensation_attempt_limit,
                &def.compensation_retry,
            ),
        };
        if attempts >= limit {
            let error = format!("gave up after {attempts} attempts: {error}");
            self.record(LogEntry::GaveUp {
                command: CommandAttempt::step(step, kind, attempts),
                error: error.clone(),
            });
            let s = &mut self.saga.steps[step];
            s.timer = None;
            s.error = Some(error);
            match kind {
                CommandKind::Action => {
                    // Outcome unknown: the step is compensated like any other that was dispatched.
                    s.state = StepState::Failed;
                    let step = self.step_name(step).to_owned();
                    self.begin_compensation(CompensationReason::StepGaveUp { step });
                }
                _ => {
                    s.state = StepState::CompensationFailed;
                    self.advance();
                }
            }
            return;
        }
        let delay = backoff_with_jitter(policy, attempts, ctx);
        let due_at = self.now + Duration::milliseconds(delay as i64);
        self.record(LogEntry::RetryScheduled {
            command: CommandAttempt::step(step, kind, attempts),
            error: error.clone(),
            backoff_ms: delay,
        });
        let s = &mut self.saga.steps[step];
        s.error = Some(error);
        s.timer = Some(Timer {
            due_at,
            purpose: TimerPurpose::Backoff,
        });
    }

    /// Sends the next attempt of a step's action or compensation.
    fn dispatch(&mut self, step: usize, kind: CommandKind) {
        let timeout = Duration::milliseconds(self.saga.definition.steps[step].timeout_ms as i64);
        let deadline = self.now + timeout;
        let s = &mut self.saga.steps[step];
        let attempt = match kind {
            CommandKind::Action => {
                s.state = StepState::Running;
                s.attempts += 1;
                s.attempts
            }
            _ => {
                s.state = StepState::Compensating;
                s.compensation_attempts += 1;
                s.compensation_attempts
            }
        };
        s.timer = Some(Timer {
            due_at: deadline,
            purpose: TimerPurpose::ReplyTimeout,
        });
        self.commands.push(Command {
            step: Some(step),
            kind,
            attempt,
            deadline,
        });
        self.record(LogEntry::Dispatched {
            command: CommandAttempt::step(step, kind, attempt),
        });
    }

    /// Stops dispatching actions and starts undoing what may have taken effect.
    fn begin_compensation(&mut self, reason: CompensationReason) {
        self.saga.state = SagaState::Compensating;
        for s in &mut self.saga.steps {
            if s.state == StepState::Running {
                // In flight: it may or may not take effect, so it is compensated like a failed step.
                s.state = StepState::Failed;
                s.timer = None;
                s.error = Some(format!("abandoned with its outcome unknown: {reason}"));
            }
        }
        self.record(LogEntry::Compensating { reason });
        self.advance();
    }

    /// Whether a step's action may have taken effect and has a compensation to undo it.
    fn needs_compensation(&self, step: usize) -> bool {
        let s = &self.saga.steps[step];
        s.attempts > 0 && !s.refused && self.saga.definition.steps[step].compensation.is_some()
    }

    /// Dispatches everything that may go now and detects the end of the saga.
    fn advance(&mut self) {
        match self.saga.state {
            SagaState::Running => {
                if self
                    .saga
                    .steps
                    .iter()
                    .all(|s| s.state == StepState::Succeeded)
                {
                    self.saga.state = SagaState::Committed;
                    self.record(LogEntry::Committed);
                    return;
                }
                if self.saga.pause.is_some() {
                    // Held: the ready steps go out on resume.
                    return;
                }
                let ready: Vec<usize> = (0..self.saga.steps.len())
                    .filter(|&i| {
                        self.saga.steps[i].state == StepState::Pending
                            && self.saga.definition.steps[i]
                                .after
                                .iter()
                                .all(|&d| self.saga.steps[d].state == StepState::Succeeded)
                    })
                    .collect();
                for i in ready {
                    self.dispatch(i, CommandKind::Action);
                }
            }
            SagaState::Compensating => {
                // Reverse dependency order: a step's compensation waits for those of its dependents.
                let ready: Vec<usize> = (0..self.saga.steps.len())
                    .filter(|&i| {
                        self.needs_compensation(i)
                            && matches!(
                                self.saga.steps[i].state,
                                StepState::Succeeded | StepState::Failed
                            )
                            && self.saga.definition.dependents(i).all(|d| {
                                !self.needs_compensation(d)
                                    || self.saga.steps[d].state == StepState::Compensated
                            })
                    })
                    .collect();
                if self.saga.pause.is_some() && !ready.is_empty() {
                    // Held: the ready compensations go out on resume, and only then can the
                    // saga be judged compensated or failed.
                    return;
                }
                for i in ready {
                    self.dispatch(i, CommandKind::Compensation);
                }
                let in_flight = self
                    .saga
                    .steps
                    .iter()
                    .any(|s| s.state == StepState::Compensating);
                if in_flight {
                    return;
                }
                let all_undone = (0..self.saga.steps.len()).all(|i| {
                    !self.needs_compensation(i)
                        || self.saga.steps[i].state == StepState::Compensated
                });
                if all_undone {
                    self.saga.state = SagaState::Compensated;
                    self.record(LogEntry::Compensated);
                } else {
                    self.saga.state = SagaState::Failed;
                    self.record(LogEntry::Failed {
                        reason: FailureReason::CompensationGaveUp,
                    });
                }
            }
            _ => {}
        }
    }
}

/// The wait before attempt `failed_attempts + 1`, with equal jitter: at least half the capped
/// exponential backoff, so retries never bunch up at zero.
fn backoff_with_jitter<R: Rng>(
    policy: &super::RetryPolicy,
    failed_attempts: u32,
    ctx: &mut Context<'_, R>,
) -> u64 {
    let base = policy.backoff_ms(failed_attempts);
    base / 2 + ctx.rng.random_range(0..=base - base / 2)
}
