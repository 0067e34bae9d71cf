//! Tests of the pure state machine: examples for each rule, and property tests over random event
//! sequences for the invariants the contract promises.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use uuid::Uuid;

use super::definition::{CheckBack, RetryPolicy, SagaDefinition, StepDefinition, SubmissionMode};
use super::event_log::LogEntry;
use super::machine::{handle, Command, Context, Decision, Event, Sending, Transition};
use super::reply::{Outcome, Reply};
use super::state::{CommandKind, PausedBy, Saga, SagaState, StepState, TimerPurpose};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0)
        .single()
        .expect("valid time")
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff_ms: 100,
        max_backoff_ms: 1_000,
        multiplier: 2.0,
    }
}

/// A definition from (name, has compensation, dependencies); `None` dependencies means sequential.
fn definition(steps: &[(&str, bool, Option<Vec<usize>>)]) -> SagaDefinition {
    SagaDefinition {
        name: "test".into(),
        key: None,
        payload: json!({}),
        timeout_ms: None,
        mode: SubmissionMode::Run,
        check_back: None,
        prepare_timeout_ms: 10_000,
        check_back_retry: policy(3),
        check_back_timeout_ms: 500,
        steps: steps
            .iter()
            .enumerate()
            .map(|(i, (name, compensated, after))| StepDefinition {
                name: (*name).into(),
                participant: format!("p{i}"),
                action: "do".into(),
                compensation: compensated.then(|| "undo".into()),
                payload: json!(null),
                timeout_ms: 1_000,
                retry: policy(3),
                compensation_retry: policy(2),
                after: after
                    .clone()
                    .unwrap_or_else(|| if i == 0 { vec![] } else { vec![i - 1] }),
            })
            .collect(),
    }
}

fn sequential(names: &[&str]) -> SagaDefinition {
    let steps: Vec<_> = names.iter().map(|n| (*n, true, None)).collect();
    definition(&steps)
}

/// Drives one saga through events, keeping the clock and the jitter source.
struct Harness {
    saga: Saga,
    now: DateTime<Utc>,
    rng: StdRng,
    /// What the runtime reports of commands on their way, when timers fire.
    sending: Sending,
}

impl Harness {
    fn new(def: SagaDefinition) -> Self {
        Harness {
            saga: Saga::new(Uuid::nil(), def, None, t0()),
            now: t0(),
            rng: StdRng::seed_from_u64(7),
            sending: Sending::default(),
        }
    }

    fn decide(&mut self, event: Event) -> Decision {
        let mut ctx = Context {
            now: self.now,
            rng: &mut self.rng,
            sending: self.sending.clone(),
        };
        handle(&self.saga, event, &mut ctx)
    }

    /// Applies an event that must change the saga; returns the commands it issued.
    fn apply(&mut self, event: Event) -> Vec<Command> {
        match self.decide(event.clone()) {
            Decision::Apply(Transition { saga, commands, .. }) => {
                self.saga = saga;
                commands
            }
            other => panic!("{event:?} should apply, got {other:?}"),
        }
    }

    fn reply(&mut self, step: &str, kind: CommandKind, attempt: u32, outcome: Outcome) -> Decision {
        let decision = self.decide(reply(step, kind, attempt, outcome));
        if let Decision::Apply(t) = &decision {
            self.saga = t.saga.clone();
        }
        decision
    }

    /// Advances the clock to the next due time and fires the timers.
    fn fire_next_timer(&mut self) -> Vec<Command> {
        let due = self.saga.next_due().expect("a timer is due");
        self.now = self.now.max(due);
        self.apply(Event::TimerFired)
    }

    fn clone_harness(&self) -> Harness {
        Harness {
            saga: self.saga.clone(),
            now: self.now,
            rng: self.rng.clone(),
            sending: self.sending.clone(),
        }
    }

    fn step_state(&self, name: &str) -> StepState {
        let i = self.saga.definition.step_index(name).expect("known step");
        self.saga.steps[i].state
    }
}

fn reply(step: &str, kind: CommandKind, attempt: u32, outcome: Outcome) -> Event {
    Event::Reply(Reply {
        step: Some(step.into()),
        kind,
        attempt,
        outcome,
        output: Some(json!({"from": step})),
        error: None,
    })
}

fn names(h: &Harness, commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .map(|c| {
            let step = c
                .step
                .map(|i| h.saga.definition.steps[i].name.as_str())
                .unwrap_or("-");
            format!("{step}:{}:{}", c.kind, c.attempt)
        })
        .collect()
}

use CommandKind::{Action, Compensation};

#[test]
fn sequential_steps_run_one_after_another_and_commit() {
    let mut h = Harness::new(sequential(&["reserve", "charge", "notify"]));
    let first = h.apply(Event::Start);
    assert_eq!(names(&h, &first), ["reserve:action:1"]);
    assert_eq!(h.saga.state, SagaState::Running);
    let Decision::Apply(t) = h.reply("reserve", Action, 1, Outcome::Success) else {
        panic!("success applies")
    };
    assert_eq!(names(&h, &t.commands), ["charge:action:1"]);
    h.reply("charge", Action, 1, Outcome::Success);
    let Decision::Apply(t) = h.reply("notify", Action, 1, Outcome::Success) else {
        panic!("success applies")
    };
    assert!(t.commands.is_empty());
    assert_eq!(h.saga.state, SagaState::Committed);
    assert_eq!(h.saga.next_due(), None);
    assert_eq!(h.saga.steps[0].output, Some(json!({"from": "reserve"})));
}

#[test]
fn business_failure_compensates_earlier_steps_in_reverse_order() {
    let mut h = Harness::new(sequential(&["a", "b", "c"]));
    h.apply(Event::Start);
    h.reply("a", Action, 1, Outcome::Success);
    h.reply("b", Action, 1, Outcome::Success);
    let Decision::Apply(t) = h.reply("c", Action, 1, Outcome::Failure) else {
        panic!("failure applies")
    };
    assert_eq!(h.saga.state, SagaState::Compensating);
    assert_eq!(names(&h, &t.commands), ["b:compensation:1"]);
    assert_eq!(h.step_state("c"), StepState::Failed);
    let Decision::Apply(t) = h.reply("b", Compensation, 1, Outcome::Success) else {
        panic!("compensation success applies")
    };
    assert_eq!(names(&h, &t.commands), ["a:compensation:1"]);
    h.reply("a", Compensation, 1, Outcome::Success);
    assert_eq!(h.saga.state, SagaState::Compensated);
    assert_eq!(
        h.step_state("c"),
        StepState::Failed,
        "a refused step is never compensated"
    );
}

#[test]
fn retry_replies_back_off_then_succeed() {
    let mut h = Harness::new(sequential(&["a"]));
    h.apply(Event::Start);
    let Decision::Apply(t) = h.reply("a", Action, 1, Outcome::Retry) else {
        panic!("retry applies")
    };
    assert!(
        t.commands.is_empty(),
        "the next attempt waits for its backoff"
    );
    let due = h.saga.next_due().expect("backoff timer");
    let backoff = due - h.now;
    assert!(backoff >= Duration::milliseconds(50) && backoff <= Duration::milliseconds(100));
    assert!(
        matches!(h.decide(Event::TimerFired), Decision::Ignore(_)),
        "not due yet"
    );
    assert_eq!(
        {
            let c = h.fire_next_timer();
            names(&h, &c)
        },
        ["a:action:2"]
    );
    h.reply("a", Action, 2, Outcome::Success);
    assert_eq!(h.saga.state, SagaState::Committed);
    assert_eq!(h.saga.steps[0].attempts, 2);
}

#[test]
fn retry_now_sends_the_next_attempt_without_waiting_out_the_backoff() {
    let mut def = sequential(&["a", "b"]);
    def.steps[1].retry.initial_backoff_ms = 600_000;
    def.steps[1].retry.max_backoff_ms = 600_000;
    let mut h = Harness::new(def);
    h.apply(Event::Start);
    h.reply("a", Action, 1, Outcome::Success);
    assert!(
        matches!(h.decide(Event::RetryNow), Decision::Reject(_)),
        "an attempt is out, nothing waits: 409"
    );
    h.reply("b", Action, 1, Outcome::Retry);
    let due = h.saga.next_due().expect("backoff timer");
    assert!(due - h.now >= Duration::minutes(5), "a long backoff");

    let Decision::Apply(t) = h.decide(Event::RetryNow) else {
        panic!("retry now applies while a backoff waits")
    };
    assert_eq!(names(&h, &t.commands), ["b:action:2"]);
    assert_eq!(
        t.log.first(),
        Some(&LogEntry::RetryNowRequested),
        "the operator's request is in the log before what it caused"
    );
    h.saga = t.saga;
    assert_eq!(
        h.saga.steps[1].timer.map(|t| t.purpose),
        Some(TimerPurpose::ReplyTimeout),
        "the new attempt gets its full reply timeout"
    );
    assert!(
        matches!(h.decide(Event::RetryNow), Decision::Reject(_)),
        "repeating it finds nothing waiting"
    );
    h.reply("b", Action, 2, Outcome::Success);
    assert_eq!(h.saga.state, SagaState::Committed);
    assert!(matches!(h.decide(Event::RetryNow), Decision::Reject(_)));
}

#[test]
fn retry_now_fires_only_backoffs_not_reply_timeouts() {
    let def = definition(&[("a", true, Some(vec![])), ("b", true, Some(vec![]))]);
    let mut h = Harness::new(def);
    h.apply(Event::Start);
    h.reply("a", Action, 1, Outcome::Retry);
    let c = h.apply(Event::RetryNow);
    assert_eq!(names(&h, &c), ["a:action:2"], "b's attempt 1 is still out");
    assert_eq!(h.saga.steps[1].attempts, 1);
}

#[test]
fn retry_now_sends_every_parallel_branch_that_waits() {
    let def = definition(&[("a", true, Some(vec![])), ("b", true, Some(vec![]))]);
    let mut h = Harness::new(def);
    h.apply(Event::Start);
    h.reply("a", Action, 1, Outcome::Retry);
    h.reply("b", Action, 1, Outcome::Retry);
    let c = h.apply(Event::RetryNow);
    assert_eq!(names(&h, &c), ["a:action:2", "b:action:2"]);
}

#[test]
fn retry_now_asks_a_prepared_sagas_initiator_at_once() {
    let mut h = prepared(&["a"]);
    let asked = h.apply(Event::RetryNow);
    assert_eq!(
        names(&h, &asked),
        ["-:check:1"],
        "the prepare timeout is cut short"
    );
    assert!(
        matches!(h.decide(Event::RetryNow), Decision::Reject(_)),
        "the check-back is out"
    );
    h.apply(check_answer(1, Outcome::Pending));
    let again = h.apply(Event::RetryNow);
    assert_eq!(names(&h, &again), ["-:check:2"]);
}

#[test]
fn a_paused_saga_records_replies_but_dispatches_nothing_until_resumed() {
    let mut h = Harness::new(sequential(&["a", "b"]));
    h.apply(Event::Start);
    let Decision::Apply(t) = h.decide(Event::Pause {
        by: PausedBy::Operator,
    }) else {
        panic!("a running saga pauses")
    };
    assert_eq!(
        t.log,
        [LogEntry::Paused {
            by: PausedBy::Operator
        }]
    );
    h.saga = t.saga;
    assert_eq!(h.saga.next_due(), None, "no timer fires while paused");
    assert!(matches!(
        h.decide(Event::Pause {
            by: PausedBy::Operator
        }),
        Decision::Ignore(_)
    ));

    let Decision::Apply(t) = h.reply("a", Action, 1, Outcome::Success) else {
        panic!("the reply to the command already out is recorded")
    };
    assert!(t.commands.is_empty(), "b waits for the resume");
    assert_eq!(h.step_state("a"), StepState::Succeeded);
    assert_eq!(h.step_state("b"), StepState::Pending);
    h.now += Duration::hours(1);
    assert!(matches!(h.decide(Event::TimerFired), Decision::Ignore(_)));
    assert!(matches!(h.decide(Event::RetryNow), Decision::Reject(_)));

    let resumed = h.apply(Event::Resume {
        by: PausedBy::Operator,
    });
    assert_eq!(names(&h, &resumed), ["b:action:1"]);
    assert_eq!(h.saga.pause, None);
    assert!(
        matches!(
            h.decide(Event::Resume {
                by: PausedBy::Operator
            }),
            Decision::Ignore(_)
        ),
        "resuming a running saga changes nothing"
    );
    h.reply("b", Action, 1, Outcome::Success);
    assert_eq!(h.saga.state, SagaState::Committed);
    assert!(matches!(
        h.decide(Event::Pause {
            by: PausedBy::Operator
        }),
        Decision::Reject(_)
    ));
    assert!(matches!(
        h.decide(Event::Resume {
            by: PausedBy::Operator
        }),
        Decision::Reject(_)
    ));
}

#[test]
fn resume_gives_each_timer_the_wait_it_had_left() {
    let mut h = Harness::new(sequential(&["a"]));
    h.apply(Event::Start);
    // The reply timeout is 1 s; pause 400 ms in, so 600 ms are left.
    h.now += Duration::milliseconds(400);
    h.apply(Event::Pause {
        by: PausedBy::Operator,
    });
    h.now += Duration::minutes(30);
    assert!(h
        .apply(Event::Resume {
            by: PausedBy::Operator
        })
        .is_empty());
    assert_eq!(
        h.saga.next_due(),
        Some(h.now + Duration::milliseconds(600)),
        "the reply timeout did not run while paused"
    );

    // A backoff already due when the saga was paused (its timer had not fired yet) fires at once.
    let Decision::Apply(t) = h.reply("a", Action, 1, Outcome::Retry) else {
        panic!("retry applies")
    };
    h.saga = t.saga;
    h.now += Duration::seconds(1);
    h.apply(Event::Pause {
        by: PausedBy::Operator,
    });
    h.now += Duration::minutes(30);
    let again = h.apply(Event::Resume {
        by: PausedBy::Operator,
    });
    assert_eq!(names(&h, &again), ["a:action:2"]);
}

#[test]
fn a_names_resume_releases_only_what_the_names_pause_holds() {
    let name = PausedBy::Name;
    let operator = PausedBy::Operator;
    let mut h = Harness::new(sequential(&["a", "b"]));
    h.apply(Event::Start);
    h.apply(Event::Pause { by: name });
    assert!(matches!(
        h.decide(Event::Pause { by: name }),
        Decision::Ignore(_)
    ));
    // An operator pausing it too makes the hold the operator's.
    h.apply(Event::Pause { by: operator });
    assert_eq!(h.saga.pause.map(|p| p.by), Some(operator));
    assert!(matches!(
        h.decide(Event::Resume { by: name }),
        Decision::Ignore(_)
    ));
    h.apply(Event::Resume { by: operator });
    assert_eq!(h.saga.pause, None);

    // The operator's own pause is not the name's to take away, nor to take over.
    h.apply(Event::Pause { by: operator });
    assert!(matches!(
        h.decide(Event::Pause { by: name }),
        Decision::Ignore(_)
    ));
    assert!(matches!(
        h.decide(Event::Resume { by: name }),
        Decision::Ignore(_)
    ));
    h.apply(Event::Resume { by: operator });

    h.apply(Event::Pause { by: name });
    h.reply("a", Action, 1, Outcome::Success);
    let released = h.apply(Event::Resume { by: name });
    assert_eq!(names(&h, &released), ["b:action:1"]);
}

#[test]
fn a_saga_submitted_while_its_name_is_paused_starts_held() {
    let mut h = Harness::new(sequential(&["a"]));
    h.saga.pause = Some(super::state::Pause {
        since: h.now,
        by: PausedBy::Name,
    });
    let Decision::Apply(t) = h.decide(Event::Start) else {
        panic!("it starts")
    };
    assert!(t.commands.is_empty(), "held from the start");
    assert_eq!(
        t.log,
        [LogEntry::Started, LogEntry::Paused { by: PausedBy::Name }]
    );
    h.saga = t.saga;
    assert_eq!(h.saga.state, SagaState::Running);
    let started = h.apply(Event::Resume { by: PausedBy::Name });
    assert_eq!(names(&h, &started), ["a:action:1"]);
}

#[test]
fn an_abort_while_paused_compensates_on_resume() {
    let mut h = Harness::new(sequential(&["a", "b"]));
    h.apply(Event::Start);
    h.reply("a", Action, 1, Outcome::Success);
    h.apply(Event::Pause {
        by: PausedBy::Operator,
    });
    assert!(h.apply(Event::Abort).is_empty(), "held");
    assert_eq!(h.saga.state, SagaState::Compensating);
    let undo = h.apply(Event::Resume {
        by: PausedBy::Operator,
    });
    assert_eq!(names(&h, &undo), ["b:compensation:1"]);
}

#[test]
fn a_paused_prepared_saga_asks_nothing_until_resumed() {
    let mut h = prepared(&["a"]);
    h.apply(Event::Pause {
        by: PausedBy::Operator,
    });
    assert_eq!(h.saga.next_due(), None);
    assert!(
        h.apply(Event::Commit).is_empty(),
        "committed, but its steps wait"
    );
    assert_eq!(h.saga.state, SagaState::Running);
    let started = h.apply(Event::Resume {
        by: PausedBy::Operator,
    });
    assert_eq!(names(&h, &started), ["a:action:1"]);
}

#[test]
fn timeouts_exhaust_the_action_and_its_unknown_outcome_is_compensated() {
    let mut h = Harness::new(sequential(&["a", "b"]));
    h.apply(Event::Start);
    h.reply("a", Action, 1, Outcome::Success);
    // Three attempts of b, none answered: timeout, backoff, timeout, backoff, timeout.
    let mut sent = vec![];
    while h.saga.state == SagaState::Running {
        sent.extend({
            let c = h.fire_next_timer();
            names(&h, &c)
        });
    }
    assert_eq!(sent, ["b:action:2", "b:action:3", "b:compensation:1"]);
    assert_eq!(h.saga.state, SagaState::Compensating);
    assert_eq!(h.step_state("b"), StepState::Compensating);
    let Decision::Apply(t) = h.reply("b", Compensation, 1, Outcome::Success) else {
        panic!("applies")
    };
    assert_eq!(names(&h, &t.commands), ["a:compensation:1"]);
    h.reply("a", Compensation, 1, Outcome::Success);
    assert_eq!(h.saga.state, SagaState::Compensated);
}

/// Timeouts measure participants, not the coordinator's infrastructure (contract, section 4).
#[test]
fn an_attempt_whose_command_is_unconfirmed_cannot_time_out() {
    let mut h = Harness::new(sequential(&["a"]));
    h.apply(Event::Start);
    // The broker is away for a minute: the command waits in the outbox, unconfirmed.
    h.sending.unconfirmed = vec![(0, Action, 1)];
    for _ in 0..60 {
        h.fire_next_timer();
        assert_eq!(h.saga.steps[0].attempts, 1, "no retry while unconfirmed");
        assert_eq!(h.saga.state, SagaState::Running);
    }
    let timer = h.saga.steps[0].timer.expect("still waiting");
    assert_eq!(timer.purpose, TimerPurpose::ReplyTimeout);
    assert_eq!(timer.due_at, h.now + Duration::milliseconds(1_000));
    // The reply still counts.
    h.reply("a", Action, 1, Outcome::Success);
    assert_eq!(h.saga.state, SagaState::Committed);
}

#[test]
fn a_reply_timeout_runs_from_the_confirm() {
    let mut h = Harness::new(sequential(&["a"]));
    h.apply(Event::Start);
    // Confirmed 700 ms after the commit: the timeout is due 1000 ms after the confirm.
    let confirmed_at = t0() + Duration::milliseconds(700);
    h.sending.confirmed = vec![((0, Action, 1), confirmed_at)];
    h.fire_next_timer();
    assert_eq!(h.saga.steps[0].attempts, 1);
    let timer = h.saga.steps[0].timer.expect("postponed");
    assert_eq!(timer.due_at, confirmed_at + Duration::milliseconds(1_000));
    assert_eq!(timer.purpose, TimerPurpose::ReplyTimeout);
    // Then it times out like any other.
    h.fire_next_timer();
    let timer = h.saga.steps[0].timer.expect("backoff");
    assert_eq!(timer.purpose, TimerPurpose::Backoff);
    // A confirm of an older attempt says nothing of the current one.
    let commands = h.fire_next_timer();
    assert_eq!(names(&h, &commands), ["a:action:2"]);
    let due = h.saga.steps[0].timer.expect("sent").due_at;
    h.now = due;
    h.apply(Event::TimerFired);
    assert_eq!(
        h.saga.steps[0].timer.map(|t| t.purpose),
        Some(TimerPurpose::Backoff)
    );
}

#[test]
fn reply_timeouts_wait_for_the_replies_queue_but_the_saga_deadline_does_not() {
    let mut def = sequential(&["a", "b"]);
    def.timeout_ms = Some(5_000);
    let mut h = Harness::new(def);
    h.apply(Event::Start);
    // The replies queue could not be consumed: reply timeouts are held, without a retry.
    let held = t0() + Duration::milliseconds(4_000);
    h.sending.replies_held_until = Some(held);
    h.fire_next_timer();
    assert_eq!(h.saga.steps[0].timer.map(|t| t.due_at), Some(held));
    assert_eq!(h.saga.steps[0].attempts, 1);
    // A backoff is no reply timeout: it dispatches at once.
    h.sending.replies_held_until = None;
    h.fire_next_timer();
    assert_eq!(
        h.saga.steps[0].timer.map(|t| t.purpose),
        Some(TimerPurpose::Backoff)
    );
    h.sending.replies_held_until = Some(t0() + Duration::hours(1));
    h.sending.unconfirmed = vec![(0, Action, 2)];
    // The saga deadline is a business limit: it fires whatever the broker does.
    while h.saga.state == SagaState::Running {
        h.fire_next_timer();
    }
    assert_eq!(h.saga.state, SagaState::Compensating);
    assert!(h.now <= t0() + Duration::milliseconds(5_000));
}

#[test]
fn independent_steps_run_in_parallel_and_a_join_waits_for_both() {
    let def = definition(&[
        ("a", true, Some(vec![])),
        ("b", true, Some(vec![])),
        ("c", true, Some(vec![0, 1])),
    ]);
    let mut h = Harness::new(def);
    assert_eq!(
        {
            let c = h.apply(Event::Start);
            names(&h, &c)
        },
        ["a:action:1", "b:action:1"]
    );
    let Decision::Apply(t) = h.reply("b", Action, 1, Outcome::Success) else {
        panic!("applies")
    };
    assert!(t.commands.is_empty(), "c waits for a");
    let Decision::Apply(t) = h.reply("a", Action, 1, Outcome::Success) else {
        panic!("applies")
    };
    assert_eq!(names(&h, &t.commands), ["c:action:1"]);
}

#[test]
fn parallel_failure_compensates_the_in_flight_sibling_too() {
    let def = definition(&[("a", true, Some(vec![])), ("b", true, Some(vec![]))]);
    let mut h = Harness::new(def);
    h.apply(Event::Start);
    let Decision::Apply(t) = h.reply("a", Action, 1, Outcome::Failure) else {
        panic!("applies")
    };
    assert_eq!(names(&h, &t.commands), ["b:compensation:1"]);
    assert!(matches!(
        h.reply("b", Action, 1, Outcome::Success),
        Decision::Ignore(_)
    ));
}

#[test]
fn duplicate_stale_and_unknown_replies_change_nothing() {
    let mut h = Harness::new(sequential(&["a", "b"]));
    h.apply(Event::Start);
    h.reply("a", Action, 1, Outcome::Success);
    assert!(
        matches!(
            h.reply("a", Action, 1, Outcome::Success),
            Decision::Ignore(_)
        ),
        "duplicate"
    );
    assert!(
        matches!(
            h.reply("a", Action, 1, Outcome::Failure),
            Decision::Ignore(_)
        ),
        "late contradiction"
    );
    assert!(
        matches!(
            h.reply("b", Action, 2, Outcome::Success),
            Decision::Ignore(_)
        ),
        "attempt never sent"
    );
    assert!(
        matches!(
            h.reply("zz", Action, 1, Outcome::Success),
            Decision::Ignore(_)
        ),
        "unknown step"
    );
    assert!(
        matches!(
            h.reply("b", Compensation, 1, Outcome::Success),
            Decision::Ignore(_)
        ),
        "not compensating"
    );
    assert!(
        matches!(
            h.reply("b", Action, 1, Outcome::Pending),
            Decision::Ignore(_)
        ),
        "check outcome"
    );
}

#[test]
fn an_older_attempts_success_counts_but_its_retry_does_not() {
    let mut h = Harness::new(sequential(&["a"]));
    h.apply(Event::Start);
    h.fire_next_timer(); // attempt 1 times out
    h.fire_next_timer(); // attempt 2 goes out
    assert_eq!(h.saga.steps[0].attempts, 2);
    assert!(matches!(
        h.reply("a", Action, 1, Outcome::Retry),
        Decision::Ignore(_)
    ));
    h.reply("a", Action, 1, Outcome::Success);
    assert_eq!(h.saga.state, SagaState::Committed);
}

#[test]
fn dead_lettered_command_counts_as_retry() {
    let mut h = Harness::new(sequential(&["a"]));
    h.apply(Event::Start);
    let event = Event::DeadLettered {
        step: Some("a".into()),
        kind: Action,
        attempt: 1,
    };
    assert!(h.apply(event.clone()).is_empty());
    assert!(h.saga.steps[0].timer.is_some());
    assert!(
        matches!(h.decide(event), Decision::Ignore(_)),
        "twice is once"
    );
    assert_eq!(
        {
            let c = h.fire_next_timer();
            names(&h, &c)
        },
        ["a:action:2"]
    );
}

#[test]
fn a_compensation_that_keeps_failing_needs_an_operator() {
    let mut h = Harness::new(sequential(&["a", "b"]));
    h.apply(Event::Start);
    h.reply("a", Action, 1, Outcome::Success);
    h.reply("b", Action, 1, Outcome::Failure);
    h.reply("a", Compensation, 1, Outcome::Failure);
    assert_eq!(
        {
            let c = h.fire_next_timer();
            names(&h, &c)
        },
        ["a:compensation:2"]
    );
    h.reply("a", Compensation, 2, Outcome::Retry);
    assert_eq!(h.saga.state, SagaState::Failed);
    assert_eq!(h.step_state("a"), StepState::CompensationFailed);
    assert_eq!(h.saga.next_due(), None);
    assert!(matches!(h.decide(Event::Abort), Decision::Reject(_)));

    let resumed = h.apply(Event::Retry);
    assert_eq!(
        names(&h, &resumed),
        ["a:compensation:3"],
        "attempt numbers keep counting"
    );
    assert_eq!(h.saga.state, SagaState::Compensating);
    h.reply("a", Compensation, 3, Outcome::Success);
    assert_eq!(h.saga.state, SagaState::Compensated);
}

#[test]
fn resolve_closes_a_failed_saga_with_the_operators_note() {
    let mut h = Harness::new(sequential(&["a", "b"]));
    h.apply(Event::Start);
    h.reply("a", Action, 1, Outcome::Success);
    h.reply("b", Action, 1, Outcome::Failure);
    h.reply("a", Compensation, 1, Outcome::Retry);
    h.fire_next_timer();
    h.reply("a", Compensation, 2, Outcome::Retry);
    assert_eq!(h.saga.state, SagaState::Failed);
    let Decision::Apply(t) = h.decide(Event::Resolve {
        note: "refunded by hand".into(),
    }) else {
        panic!("resolve applies")
    };
    assert_eq!(t.saga.state, SagaState::Compensated);
    assert!(t.log.contains(&LogEntry::Resolved {
        note: "refunded by hand".into()
    }));
    assert!(matches!(
        h.decide(Event::Resolve {
            note: String::new()
        })
        .clone(),
        Decision::Apply(_)
    ));
}

#[test]
fn operator_requests_in_the_wrong_state_are_rejected() {
    let mut h = Harness::new(sequential(&["a"]));
    h.apply(Event::Start);
    assert!(matches!(h.decide(Event::Retry), Decision::Reject(_)));
    assert!(matches!(
        h.decide(Event::Resolve { note: "x".into() }),
        Decision::Reject(_)
    ));
    h.reply("a", Action, 1, Outcome::Success);
    assert!(matches!(h.decide(Event::Abort), Decision::Reject(_)));
}

#[test]
fn abort_compensates_a_running_saga() {
    let mut h = Harness::new(sequential(&["a", "b"]));
    h.apply(Event::Start);
    h.reply("a", Action, 1, Outcome::Success);
    let commands = h.apply(Event::Abort);
    assert_eq!(
        names(&h, &commands),
        ["b:compensation:1"],
        "b was in flight"
    );
    h.reply("b", Compensation, 1, Outcome::Success);
    h.reply("a", Compensation, 1, Outcome::Success);
    assert_eq!(h.saga.state, SagaState::Compensated);
}

#[test]
fn steps_without_compensation_are_skipped() {
    let def = definition(&[("a", true, None), ("mail", false, None), ("c", true, None)]);
    let mut h = Harness::new(def);
    h.apply(Event::Start);
    h.reply("a", Action, 1, Outcome::Success);
    h.reply("mail", Action, 1, Outcome::Success);
    let Decision::Apply(t) = h.reply("c", Action, 1, Outcome::Failure) else {
        panic!("applies")
    };
    assert_eq!(names(&h, &t.commands), ["a:compensation:1"]);
}

#[test]
fn a_saga_deadline_starts_compensation() {
    let mut def = sequential(&["a", "b"]);
    def.timeout_ms = Some(500);
    let mut h = Harness::new(def);
    h.apply(Event::Start);
    h.reply("a", Action, 1, Outcome::Success);
    assert_eq!(h.saga.next_due(), Some(t0() + Duration::milliseconds(500)));
    let commands = h.fire_next_timer();
    assert_eq!(h.saga.state, SagaState::Compensating);
    assert_eq!(names(&h, &commands), ["b:compensation:1"]);
}

fn prepared(steps: &[&str]) -> Harness {
    let mut def = sequential(steps);
    def.mode = SubmissionMode::Prepare;
    def.check_back = Some(CheckBack::Participant("orders".into()));
    let mut h = Harness::new(def);
    assert!(h.apply(Event::Start).is_empty(), "nothing is dispatched");
    assert_eq!(h.saga.state, SagaState::Prepared);
    h
}

fn check_answer(attempt: u32, outcome: Outcome) -> Event {
    Event::Reply(Reply {
        step: None,
        kind: CommandKind::Check,
        attempt,
        outcome,
        output: None,
        error: None,
    })
}

#[test]
fn prepared_sagas_wait_for_commit_or_abort() {
    let mut h = prepared(&["a"]);
    assert_eq!(
        {
            let c = h.apply(Event::Commit);
            names(&h, &c)
        },
        ["a:action:1"]
    );
    assert!(
        matches!(h.decide(Event::Commit), Decision::Ignore(_)),
        "commit is idempotent"
    );

    let mut h = prepared(&["a"]);
    assert!(h.apply(Event::Abort).is_empty());
    assert_eq!(h.saga.state, SagaState::Aborted);
    assert!(
        matches!(h.decide(Event::Abort), Decision::Ignore(_)),
        "abort is idempotent"
    );
    assert!(matches!(h.decide(Event::Commit), Decision::Reject(_)));

    let mut h = Harness::new(sequential(&["a"]));
    h.apply(Event::Start);
    assert!(
        matches!(h.decide(Event::Commit), Decision::Reject(_)),
        "only a two-phase saga can be committed"
    );
}

#[test]
fn past_the_prepare_timeout_the_initiator_is_asked_and_committed_starts_the_saga() {
    let mut h = prepared(&["a", "b"]);
    assert_eq!(
        h.saga.next_due(),
        Some(t0() + Duration::milliseconds(10_000))
    );
    let asked = h.fire_next_timer();
    assert_eq!(names(&h, &asked), ["-:check:1"]);
    assert_eq!(h.saga.state, SagaState::Prepared);
    let started = h.apply(check_answer(1, Outcome::Committed));
    assert_eq!(names(&h, &started), ["a:action:1"]);
    assert_eq!(h.saga.state, SagaState::Running);
}

#[test]
fn pending_asks_again_after_a_backoff_and_aborted_aborts() {
    let mut h = prepared(&["a"]);
    h.fire_next_timer();
    assert!(h.apply(check_answer(1, Outcome::Pending)).is_empty());
    let before = h.now;
    let again = h.fire_next_timer();
    assert_eq!(names(&h, &again), ["-:check:2"]);
    assert!(
        h.now > before,
        "the second check-back waits for its backoff"
    );
    assert!(h.apply(check_answer(2, Outcome::Aborted)).is_empty());
    assert_eq!(h.saga.state, SagaState::Aborted);
    assert_eq!(h.saga.next_due(), None);
}

#[test]
fn a_stale_pending_changes_nothing_but_a_stale_decision_still_counts() {
    let mut h = prepared(&["a"]);
    h.fire_next_timer();
    h.fire_next_timer(); // attempt 1 timed out: backoff
    let second = h.fire_next_timer();
    assert_eq!(names(&h, &second), ["-:check:2"]);
    assert!(matches!(
        h.decide(check_answer(1, Outcome::Pending)),
        Decision::Ignore(_)
    ));
    let started = h.apply(check_answer(1, Outcome::Committed));
    assert_eq!(names(&h, &started), ["a:action:1"]);
}

#[test]
fn unanswered_check_backs_leave_the_saga_failed_for_an_operator() {
    let mut h = prepared(&["a"]);
    // policy(3): three check-backs, each timing out.
    let mut asked = 0;
    while h.saga.state == SagaState::Prepared {
        asked += h
            .fire_next_timer()
            .iter()
            .filter(|c| c.kind == CommandKind::Check)
            .count();
    }
    assert_eq!(asked, 3);
    assert_eq!(h.saga.state, SagaState::Failed);
    assert_eq!(h.saga.next_due(), None, "nothing more happens by itself");

    // The operator asks again: a fresh budget, the next attempt at once.
    let mut retried = h.clone_harness();
    let asked = retried.apply(Event::Retry);
    assert_eq!(names(&retried, &asked), ["-:check:4"]);
    assert_eq!(retried.saga.state, SagaState::Prepared);

    // A late commit from the initiator still starts the saga...
    let mut late = h.clone_harness();
    let started = late.apply(Event::Commit);
    assert_eq!(names(&late, &started), ["a:action:1"]);
    // ...a late abort aborts it, and resolving it closes it as aborted.
    let mut aborted = h.clone_harness();
    aborted.apply(Event::Abort);
    assert_eq!(aborted.saga.state, SagaState::Aborted);
    h.apply(Event::Resolve {
        note: "asked the order service".into(),
    });
    assert_eq!(h.saga.state, SagaState::Aborted);
}

#[test]
fn a_dead_lettered_check_back_counts_as_unanswered() {
    let mut h = prepared(&["a"]);
    h.fire_next_timer();
    let event = Event::DeadLettered {
        step: None,
        kind: CommandKind::Check,
        attempt: 1,
    };
    assert!(h.apply(event).is_empty());
    let asked = h.fire_next_timer();
    assert_eq!(names(&h, &asked), ["-:check:2"]);
}

#[test]
fn backoff_is_capped_exponential() {
    let p = RetryPolicy {
        max_attempts: 10,
        initial_backoff_ms: 100,
        max_backoff_ms: 1_000,
        multiplier: 3.0,
    };
    let delays: Vec<u64> = (1..=5).map(|n| p.backoff_ms(n)).collect();
    assert_eq!(delays, [100, 300, 900, 1_000, 1_000]);
}

// ---- property tests ----------------------------------------------------------------------------

/// A random saga shape: up to 5 steps, each depending on a random subset of earlier ones (or the
/// sequential default), some without compensation, with small retry budgets so that exhaustion happens.
fn arb_definition() -> impl Strategy<Value = SagaDefinition> {
    (1usize..=5, any::<bool>(), any::<u64>()).prop_map(|(n, graph, seed)| {
        use rand::Rng;
        let mut rng = StdRng::seed_from_u64(seed);
        let steps = (0..n)
            .map(|i| StepDefinition {
                name: format!("s{i}"),
                participant: "p".into(),
                action: "do".into(),
                compensation: rng.random_bool(0.8).then(|| "undo".into()),
                payload: json!(null),
                timeout_ms: rng.random_range(10..1_000),
                retry: policy(rng.random_range(1..=3)),
                compensation_retry: policy(rng.random_range(1..=3)),
                after: if graph {
                    (0..i).filter(|_| rng.random_bool(0.4)).collect()
                } else if i == 0 {
                    vec![]
                } else {
                    vec![i - 1]
                },
            })
            .collect();
        SagaDefinition {
            steps,
            ..sequential(&["x"])
        }
    })
}

#[derive(Debug, Clone)]
enum Stimulus {
    /// A reply to a step; `attempt_back` picks an attempt counting back from the newest.
    Reply {
        step: usize,
        compensation: bool,
        attempt_back: u32,
        outcome: Outcome,
    },
    Timer,
    DeadLetter {
        step: usize,
        compensation: bool,
    },
    Abort,
    Retry,
    RetryNow,
    /// `true`: by name.
    Pause(bool),
    Resume(bool),
    Resolve,
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => Just(Outcome::Success),
        2 => Just(Outcome::Failure),
        2 => Just(Outcome::Retry),
        1 => Just(Outcome::Pending),
    ]
}

fn arb_stimulus() -> impl Strategy<Value = Stimulus> {
    prop_oneof![
        8 => (0usize..5, any::<bool>(), 0u32..3, arb_outcome()).prop_map(|(step, compensation, attempt_back, outcome)| {
            Stimulus::Reply { step, compensation, attempt_back, outcome }
        }),
        4 => Just(Stimulus::Timer),
        1 => (0usize..5, any::<bool>()).prop_map(|(step, compensation)| Stimulus::DeadLetter { step, compensation }),
        1 => Just(Stimulus::Abort),
        1 => Just(Stimulus::Retry),
        1 => Just(Stimulus::RetryNow),
        1 => any::<bool>().prop_map(Stimulus::Pause),
        1 => any::<bool>().prop_map(Stimulus::Resume),
        1 => Just(Stimulus::Resolve),
    ]
}

fn by(name: bool) -> PausedBy {
    if name {
        PausedBy::Name
    } else {
        PausedBy::Operator
    }
}

fn to_event(h: &Harness, stimulus: &Stimulus) -> Event {
    let n = h.saga.steps.len();
    match *stimulus {
        Stimulus::Reply {
            step,
            compensation,
            attempt_back,
            outcome,
        } => {
            let i = step % n;
            let s = &h.saga.steps[i];
            let (kind, newest) = if compensation {
                (Compensation, s.compensation_attempts)
            } else {
                (Action, s.attempts)
            };
            let attempt = newest.saturating_sub(attempt_back).max(1);
            reply(&format!("s{i}"), kind, attempt, outcome)
        }
        Stimulus::DeadLetter { step, compensation } => {
            let i = step % n;
            let s = &h.saga.steps[i];
            let (kind, attempt) = if compensation {
                (Compensation, s.compensation_attempts.max(1))
            } else {
                (Action, s.attempts.max(1))
            };
            Event::DeadLettered {
                step: Some(format!("s{i}")),
                kind,
                attempt,
            }
        }
        Stimulus::Timer => Event::TimerFired,
        Stimulus::Abort => Event::Abort,
        Stimulus::Retry => Event::Retry,
        Stimulus::RetryNow => Event::RetryNow,
        Stimulus::Pause(by_name) => Event::Pause { by: by(by_name) },
        Stimulus::Resume(by_name) => Event::Resume { by: by(by_name) },
        Stimulus::Resolve => Event::Resolve {
            note: "by hand".into(),
        },
    }
}

/// The invariants every single transition keeps.
fn check_transition(
    before: &Saga,
    after: &Saga,
    commands: &[Command],
) -> Result<(), TestCaseError> {
    let def = &after.definition;
    let may_need_undo = |s: &Saga, i: usize| {
        s.steps[i].attempts > 0 && !s.steps[i].refused && def.steps[i].compensation.is_some()
    };
    prop_assert!(!before.state.is_final(), "a final saga changed: {before:?}");
    if after.pause.is_some() {
        prop_assert!(commands.is_empty(), "a paused saga dispatched {commands:?}");
        prop_assert_eq!(after.next_due(), None, "a paused saga has a timer armed");
    }
    if after.state.is_final() || after.state == SagaState::Failed {
        prop_assert!(commands.is_empty(), "commands issued into {}", after.state);
        prop_assert_eq!(after.next_due(), None);
    }
    for c in commands {
        let i = c.step.expect("step commands only");
        match c.kind {
            Action => {
                for &d in &def.steps[i].after {
                    prop_assert_eq!(
                        after.steps[d].state,
                        StepState::Succeeded,
                        "{} ran before {}",
                        i,
                        d
                    );
                }
            }
            Compensation => {
                prop_assert!(
                    may_need_undo(after, i),
                    "compensated step {i} whose action never took effect"
                );
                for d in def.dependents(i) {
                    prop_assert!(
                        !may_need_undo(after, d) || after.steps[d].state == StepState::Compensated,
                        "step {i} compensated before its dependent {d}"
                    );
                }
            }
            CommandKind::Check => prop_assert!(false, "no check-backs without a prepared saga"),
        }
    }
    for (i, s) in after.steps.iter().enumerate() {
        if s.state == StepState::Compensated || s.compensation_attempts > 0 {
            prop_assert!(
                s.attempts > 0 && !s.refused,
                "step {i} compensated without effect"
            );
        }
        if s.state == StepState::Running {
            prop_assert_eq!(after.state, SagaState::Running);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever arrives in whatever order, every transition keeps the invariants.
    #[test]
    fn random_event_sequences_keep_the_invariants(
        def in arb_definition(),
        stimuli in proptest::collection::vec(arb_stimulus(), 0..60),
    ) {
        let mut h = Harness::new(def);
        h.apply(Event::Start);
        for stimulus in &stimuli {
            if let (Stimulus::Timer, Some(due)) = (stimulus, h.saga.next_due()) {
                h.now = h.now.max(due);
            }
            let event = to_event(&h, stimulus);
            match h.decide(event) {
                Decision::Apply(t) => {
                    check_transition(&h.saga, &t.saga, &t.commands)?;
                    h.saga = t.saga;
                }
                Decision::Ignore(_) | Decision::Reject(_) => {}
            }
        }
    }

    /// While no command is confirmed (the broker is away), no step times out, however long it lasts.
    #[test]
    fn unconfirmed_attempts_never_time_out(
        def in arb_definition(),
        waits in proptest::collection::vec(0i64..120_000, 1..40),
    ) {
        let mut def = def;
        def.timeout_ms = None;
        let mut h = Harness::new(def);
        h.apply(Event::Start);
        for wait in waits {
            h.sending.unconfirmed = h
                .saga
                .steps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.state == StepState::Running)
                .map(|(i, s)| (i, Action, s.attempts))
                .collect();
            h.now += Duration::milliseconds(wait);
            if let Decision::Apply(t) = h.decide(Event::TimerFired) {
                prop_assert!(
                    !t.log.iter().any(|e| matches!(e, LogEntry::TimedOut { .. })),
                    "an unconfirmed attempt timed out: {:?}", t.log
                );
                prop_assert_eq!(t.saga.state, SagaState::Running);
                h.saga = t.saga;
            }
        }
    }

    /// Participants that eventually answer (each answer random) always bring the saga to an end:
    /// a final state, or `failed` waiting for an operator, who can always close it.
    #[test]
    fn every_saga_ends(
        def in arb_definition(),
        seed in any::<u64>(),
        abort_at in proptest::option::of(0usize..10),
        pause_at in proptest::option::of(0usize..10),
    ) {
        use rand::Rng;
        let mut answers = StdRng::seed_from_u64(seed);
        let mut h = Harness::new(def);
        let mut outstanding = h.apply(Event::Start);
        for round in 0..1_000 {
            if h.saga.state.is_final() || h.saga.state == SagaState::Failed {
                break;
            }
            if abort_at == Some(round) && h.saga.state == SagaState::Running {
                outstanding.extend(h.apply(Event::Abort));
                continue;
            }
            if pause_at == Some(round) {
                // Held for an hour while the commands already out are answered, then resumed.
                if let Decision::Apply(t) = h.decide(Event::Pause { by: PausedBy::Operator }) {
                    h.saga = t.saga;
                }
            }
            if h.saga.pause.is_some() && outstanding.is_empty() {
                h.now += Duration::hours(1);
                let t = match h.decide(Event::Resume { by: PausedBy::Operator }) {
                    Decision::Apply(t) => t,
                    other => panic!("a paused saga resumes: {other:?}"),
                };
                check_transition(&h.saga, &t.saga, &t.commands)?;
                outstanding.extend(t.commands);
                h.saga = t.saga;
                continue;
            }
            let event = if let Some(c) = outstanding.pop() {
                let outcome = match answers.random_range(0..10) {
                    0..=5 => Outcome::Success,
                    6 => Outcome::Failure,
                    7 => Outcome::Retry,
                    _ => { continue; } // lost: the timeout will catch it
                };
                reply(&format!("s{}", c.step.unwrap_or(0)), c.kind, c.attempt, outcome)
            } else {
                let due = h.saga.next_due();
                prop_assert!(due.is_some(), "stuck with nothing outstanding: {:?}", h.saga);
                h.now = h.now.max(due.unwrap_or(h.now));
                Event::TimerFired
            };
            if let Decision::Apply(t) = h.decide(event) {
                check_transition(&h.saga, &t.saga, &t.commands)?;
                outstanding.extend(t.commands);
                h.saga = t.saga;
            }
        }
        if h.saga.state == SagaState::Failed {
            h.apply(Event::Resolve { note: "closed".into() });
        }
        prop_assert!(h.saga.state.is_final(), "did not end: {:?}", h.saga.state);
        if h.saga.state == SagaState::Committed {
            prop_assert!(h.saga.steps.iter().all(|s| s.state == StepState::Succeeded));
        }
    }

    /// A prepared saga whose initiator answers randomly (or not at all) always reaches a decision:
    /// running (then an end), aborted, or failed for an operator; nothing is dispatched before it.
    #[test]
    fn prepared_sagas_always_reach_a_decision(seed in any::<u64>(), commit_at in proptest::option::of(0usize..8)) {
        use rand::Rng;
        let mut answers = StdRng::seed_from_u64(seed);
        let mut h = prepared(&["a", "b"]);
        let mut outstanding: Vec<Command> = Vec::new();
        for round in 0..200 {
            if h.saga.state != SagaState::Prepared {
                break;
            }
            let event = if commit_at == Some(round) {
                Event::Commit
            } else if let Some(c) = outstanding.pop() {
                let outcome = match answers.random_range(0..10) {
                    0 => Outcome::Committed,
                    1 => Outcome::Aborted,
                    2..=5 => Outcome::Pending,
                    6 => Outcome::Retry,
                    _ => continue, // lost: the timeout will catch it
                };
                check_answer(c.attempt, outcome)
            } else {
                let due = h.saga.next_due();
                prop_assert!(due.is_some(), "a prepared saga with nothing due: {:?}", h.saga);
                h.now = h.now.max(due.unwrap_or(h.now));
                Event::TimerFired
            };
            if let Decision::Apply(t) = h.decide(event) {
                if t.saga.state == SagaState::Prepared || t.saga.state == SagaState::Aborted || t.saga.state == SagaState::Failed {
                    prop_assert!(t.commands.iter().all(|c| c.kind == CommandKind::Check && c.step.is_none()),
                        "a step command before the saga was committed: {:?}", t.commands);
                }
                if t.saga.state == SagaState::Running {
                    prop_assert!(t.commands.iter().all(|c| c.kind == Action));
                }
                outstanding.extend(t.commands);
                h.saga = t.saga;
            }
        }
        prop_assert!(
            matches!(h.saga.state, SagaState::Running | SagaState::Aborted | SagaState::Failed),
            "undecided: {:?}", h.saga.state
        );
        prop_assert!(h.saga.check_back.attempts <= h.saga.check_back.attempt_limit);
        if h.saga.state == SagaState::Failed {
            h.apply(Event::Resolve { note: "closed".into() });
            prop_assert_eq!(h.saga.state, SagaState::Aborted);
        }
    }
}
