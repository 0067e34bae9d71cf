//! The spans of committed transitions: which attempts a transition ended, and whether it stopped
//! the saga, read from the log entries the machine produced (see [`crate::telemetry`]).
//!
//! An attempt's span needs its dispatch time, and the saga span the events of the saga's whole log.
//! Both are kept here ([`Traces`]) from the transitions this instance committed, so that a saga
//! started here is exported without reading anything back. A saga that began before a restart or
//! at another coordinator is not whole here: what is missing is read from its stored event log,
//! once, when an attempt or the saga ends. Nothing here runs unless spans are exported.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Registry;
use crate::saga::event_log::CommandAttempt;
use crate::saga::{LogEntry, Saga, SagaState};
use crate::store::{render_event, EventRecord};
use crate::telemetry::{self, spans::AttemptSpan, spans::SpanEvent};

/// What this instance saw of one saga's trace.
#[derive(Default)]
struct SagaTrace {
    /// The attempts out, with their dispatch times.
    out: Vec<(CommandAttempt, DateTime<Utc>)>,
    /// Every transition since the saga began was committed here: `events` and `failed` are whole.
    whole: bool,
    /// The saga span's events so far (when `whole`).
    events: Vec<SpanEvent>,
    /// The saga has been `failed` before (its span ended then).
    failed: bool,
}

/// The traces of the sagas this instance drives.
#[derive(Default)]
pub(super) struct Traces(Mutex<HashMap<Uuid, SagaTrace>>);

impl Traces {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, SagaTrace>> {
        // Entries are changed whole under the lock: a poisoned map is still consistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A saga that stopped here or went to another coordinator: its attempts out end elsewhere.
    pub(super) fn forget(&self, saga: Uuid) {
        if telemetry::exporting().is_some() {
            self.map().remove(&saga);
        }
    }
}

/// What one committed transition ends, decided under the lock and exported after it.
struct Ended {
    /// Attempts whose dispatch time is known.
    attempts: Vec<AttemptSpan>,
    /// Attempts whose dispatch was not seen here: read from the event log.
    unknown: Vec<AttemptSpan>,
    /// The saga stopped: its span's events, or `None` when they must be read from the event log.
    stopped: Option<Option<Vec<SpanEvent>>>,
}

/// Exports the spans that committed transition `log` of `saga` (previously in `before`; `is_new`
/// for its first) ended.
pub(super) fn observe(
    registry: &Registry,
    before: SagaState,
    saga: &Saga,
    log: &[LogEntry],
    now: DateTime<Utc>,
    is_new: bool,
) {
    if telemetry::exporting().is_none() {
        return;
    }
    let ended = follow(&registry.inner.traces, before, saga, log, now, is_new);
    for span in ended.attempts {
        telemetry::spans::attempt_ended(saga, span);
    }
    let stopped = match ended.stopped {
        Some(Some(events)) => {
            telemetry::spans::saga_stopped(saga, now, events);
            false
        }
        Some(None) => true,
        None => false,
    };
    if ended.unknown.is_empty() && !stopped {
        return;
    }
    let store = registry.inner.store.clone();
    let saga = saga.clone();
    let unknown = ended.unknown;
    actix_rt::spawn(async move {
        let id = saga.id;
        let records = match store.interact(move |db| db.events(id)).await {
            Ok(records) => records,
            Err(e) => {
                log::warn!(saga_id:% = id; "saga {id}: spans not exported, its event log unread: {e}");
                return;
            }
        };
        for span in unknown {
            if let Some(at) = dispatched_at(&saga, &span, &records) {
                telemetry::spans::attempt_ended(
                    &saga,
                    AttemptSpan {
                        dispatched_at: at,
                        ..span
                    },
                );
            }
        }
        if stopped && first_stop(saga.state, &records) {
            let events = records.iter().filter_map(record_event).collect();
            telemetry::spans::saga_stopped(&saga, now, events);
        }
    });
}

/// Records the transition in the saga's trace and answers what it ended.
fn follow(
    traces: &Traces,
    before: SagaState,
    saga: &Saga,
    log: &[LogEntry],
    now: DateTime<Utc>,
    is_new: bool,
) -> Ended {
    let mut map = traces.map();
    let trace = map.entry(saga.id).or_insert_with(|| SagaTrace {
        whole: is_new,
        ..SagaTrace::default()
    });
    let mut ended = Ended {
        attempts: Vec::new(),
        unknown: Vec::new(),
        stopped: None,
    };
    for entry in log {
        if let LogEntry::Dispatched { command } = entry {
            trace.out.push((*command, now));
        }
        if trace.whole {
            trace.events.extend(saga_event(entry, saga, now));
        }
    }
    for entry in log {
        let (command, outcome, error) = match entry {
            LogEntry::Reply {
                command,
                outcome,
                error,
            } => (command, outcome_name(outcome), error.clone()),
            LogEntry::TimedOut { command } => (command, "timed_out".to_owned(), None),
            LogEntry::DeadLettered { command } => (command, "dead_lettered".to_owned(), None),
            _ => continue,
        };
        // What this end led to, recorded in the same transition.
        let events = log
            .iter()
            .filter(|e| matches!(e, LogEntry::RetryScheduled { .. } | LogEntry::GaveUp { .. }))
            .filter(|e| e.command() == Some(command))
            .map(|e| entry_event(e, saga, now))
            .collect();
        let span = AttemptSpan {
            step: command.step,
            kind: command.kind,
            attempt: command.attempt,
            dispatched_at: now,
            ended_at: now,
            outcome,
            error,
            events,
        };
        match trace.out.iter().position(|(c, _)| c == command) {
            Some(i) => ended.attempts.push(AttemptSpan {
                dispatched_at: trace.out.swap_remove(i).1,
                ..span
            }),
            None => ended.unknown.push(span),
        }
    }
    let stops = saga.state != before && (saga.state.is_final() || saga.state == SagaState::Failed);
    if stops {
        // The span ends at the first stop: a `failed`, or the final state if it never failed.
        ended.stopped = match (trace.whole, trace.failed) {
            (true, false) => Some(Some(trace.events.clone())),
            (true, true) => None,
            (false, _) => Some(None),
        };
        if saga.state == SagaState::Failed {
            trace.failed = true;
        }
    }
    if saga.state.is_final() {
        map.remove(&saga.id);
    }
    ended
}

/// A log entry as an event of the saga span; dispatches and replies are attempt spans already.
fn saga_event(entry: &LogEntry, saga: &Saga, now: DateTime<Utc>) -> Option<SpanEvent> {
    let stored = render_event(entry, &saga.definition);
    if matches!(stored.kind, "dispatched" | "reply") {
        return None;
    }
    Some(SpanEvent {
        name: stored.kind.to_owned(),
        at: now,
        attributes: attributes(stored.step, stored.attempt, &stored.detail),
    })
}

/// Whether the saga stops now for the first time: its span ends at its first `failed`, or at its
/// final state if it never failed (a span is exported once, and its end is the first stop).
fn first_stop(state: SagaState, records: &[EventRecord]) -> bool {
    let failures = records.iter().filter(|r| r.kind == "failed").count();
    match state {
        SagaState::Failed => failures == 1,
        _ => failures == 0,
    }
}

/// The dispatch of `span`'s attempt, from the stored event log.
fn dispatched_at(
    saga: &Saga,
    span: &AttemptSpan,
    records: &[EventRecord],
) -> Option<DateTime<Utc>> {
    let step = span
        .step
        .and_then(|i| saga.definition.steps.get(i))
        .map(|s| s.name.as_str());
    records
        .iter()
        .rev()
        .find(|r| {
            r.kind == "dispatched"
                && r.step.as_deref() == step
                && r.attempt == i32::try_from(span.attempt).ok()
                && r.detail.get("kind").and_then(|k| k.as_str()) == Some(span.kind.as_str())
        })
        .map(|r| r.at)
}

/// A stored event as an event of the saga span; dispatches and replies are attempt spans already.
fn record_event(record: &EventRecord) -> Option<SpanEvent> {
    if matches!(record.kind.as_str(), "dispatched" | "reply") {
        return None;
    }
    Some(SpanEvent {
        name: record.kind.clone(),
        at: record.at,
        attributes: attributes(record.step.as_deref(), record.attempt, &record.detail),
    })
}

fn entry_event(entry: &LogEntry, saga: &Saga, now: DateTime<Utc>) -> SpanEvent {
    let stored = render_event(entry, &saga.definition);
    SpanEvent {
        name: stored.kind.to_owned(),
        at: now,
        attributes: attributes(stored.step, stored.attempt, &stored.detail),
    }
}

fn attributes(
    step: Option<&str>,
    attempt: Option<i32>,
    detail: &serde_json::Value,
) -> Vec<(String, String)> {
    let mut attributes = Vec::new();
    if let Some(step) = step {
        attributes.push(("saga.step".to_owned(), step.to_owned()));
    }
    if let Some(attempt) = attempt {
        attributes.push(("saga.attempt".to_owned(), attempt.to_string()));
    }
    if let serde_json::Value::Object(fields) = detail {
        for (key, value) in fields {
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            // `kind` is the command's kind; the rest as the event log names them.
            let key = match key.as_str() {
                "kind" => "saga.command.kind".to_owned(),
                key => format!("saga.{key}"),
            };
            attributes.push((key, value));
        }
    }
    attributes
}

fn outcome_name(outcome: &crate::saga::Outcome) -> String {
    serde_json::to_value(outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The `seq`th event, at `seq` seconds past 2026-01-01.
    fn record(
        seq: i64,
        kind: &str,
        step: Option<&str>,
        attempt: Option<i32>,
        detail: serde_json::Value,
    ) -> EventRecord {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").map(|t| t.to_utc());
        EventRecord {
            seq,
            at: start.expect("a time") + chrono::Duration::seconds(seq),
            kind: kind.to_owned(),
            step: step.map(str::to_owned),
            attempt,
            detail,
        }
    }

    fn saga_of_one_step() -> Saga {
        let definition = crate::submission::parse_submission(&json!({"name": "n", "steps": [
            {"name": "a", "participant": "p", "action": "x", "compensation": "y"}]}))
        .expect("a valid submission");
        Saga::new(Uuid::now_v7(), definition, None, Utc::now())
    }

    fn action(attempt: u32) -> CommandAttempt {
        CommandAttempt {
            step: Some(0),
            kind: crate::saga::CommandKind::Action,
            attempt,
        }
    }

    #[test]
    fn a_saga_started_here_is_traced_from_memory_without_reading_its_log() {
        let traces = Traces::default();
        let mut saga = saga_of_one_step();
        let t0 = saga.created_at;
        let t1 = t0 + chrono::Duration::milliseconds(40);
        saga.state = SagaState::Running;
        let start = [
            LogEntry::Started,
            LogEntry::Dispatched { command: action(1) },
        ];
        let ended = follow(&traces, SagaState::Running, &saga, &start, t0, true);
        assert!(ended.attempts.is_empty() && ended.unknown.is_empty() && ended.stopped.is_none());

        saga.state = SagaState::Committed;
        let reply = [
            LogEntry::Reply {
                command: action(1),
                outcome: crate::saga::Outcome::Success,
                error: None,
            },
            LogEntry::Committed,
        ];
        let ended = follow(&traces, SagaState::Running, &saga, &reply, t1, false);
        assert!(ended.unknown.is_empty());
        assert_eq!(ended.attempts.len(), 1);
        assert_eq!(
            (ended.attempts[0].dispatched_at, ended.attempts[0].ended_at),
            (t0, t1)
        );
        let events = ended.stopped.flatten().expect("the saga span, from memory");
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["started", "committed"]);
        assert!(traces.map().is_empty(), "a final saga is forgotten");
    }

    #[test]
    fn a_saga_adopted_midway_reads_what_it_missed_and_ends_its_span_once() {
        let traces = Traces::default();
        let mut saga = saga_of_one_step();
        let now = saga.created_at;
        // Adopted after a restart: the attempt out and the saga's earlier events are not here.
        saga.state = SagaState::Failed;
        let failed = [
            LogEntry::Reply {
                command: action(1),
                outcome: crate::saga::Outcome::Failure,
                error: Some("declined".into()),
            },
            LogEntry::Failed {
                reason: crate::saga::event_log::FailureReason::CompensationGaveUp,
            },
        ];
        let ended = follow(&traces, SagaState::Compensating, &saga, &failed, now, false);
        assert_eq!(ended.unknown.len(), 1, "its dispatch is in the stored log");
        assert!(
            matches!(ended.stopped, Some(None)),
            "its events are read back"
        );

        // Started here, failed, then resolved: the span ended at the failure, not again.
        let traces = Traces::default();
        saga.state = SagaState::Running;
        follow(
            &traces,
            SagaState::Running,
            &saga,
            &[LogEntry::Started],
            now,
            true,
        );
        saga.state = SagaState::Failed;
        let first = follow(
            &traces,
            SagaState::Compensating,
            &saga,
            &failed[1..],
            now,
            false,
        );
        assert!(matches!(first.stopped, Some(Some(_))));
        saga.state = SagaState::Compensated;
        let resolved = [LogEntry::Resolved {
            note: "by hand".into(),
        }];
        let again = follow(&traces, SagaState::Failed, &saga, &resolved, now, false);
        assert!(again.stopped.is_none());
    }

    #[test]
    fn the_saga_span_ends_once_at_the_first_stop() {
        let failed = record(1, "failed", None, None, json!({}));
        // Never failed: it ends at the final state.
        assert!(first_stop(SagaState::Compensated, &[]));
        // Failed now for the first time: it ends here, and not again when the operator finishes it.
        assert!(first_stop(SagaState::Failed, std::slice::from_ref(&failed)));
        assert!(!first_stop(
            SagaState::Compensated,
            std::slice::from_ref(&failed)
        ));
        assert!(!first_stop(SagaState::Failed, &[failed.clone(), failed]));
    }

    #[test]
    fn a_dispatch_from_before_a_restart_is_found_in_the_event_log_by_step_kind_and_attempt() {
        let definition = crate::submission::parse_submission(&json!({"name": "n", "steps": [
            {"name": "a", "participant": "p", "action": "x", "compensation": "y"}]}))
        .expect("a valid submission");
        let saga = Saga::new(Uuid::now_v7(), definition, None, Utc::now());
        let span = |kind, attempt| AttemptSpan {
            step: Some(0),
            kind,
            attempt,
            dispatched_at: Utc::now(),
            ended_at: Utc::now(),
            outcome: "success".to_owned(),
            error: None,
            events: Vec::new(),
        };
        let first = record(
            1,
            "dispatched",
            Some("a"),
            Some(1),
            json!({"kind": "action"}),
        );
        let second = record(
            2,
            "dispatched",
            Some("a"),
            Some(2),
            json!({"kind": "action"}),
        );
        let undo = record(
            3,
            "dispatched",
            Some("a"),
            Some(1),
            json!({"kind": "compensation"}),
        );
        let records = [first, second.clone(), undo.clone()];
        let found = |kind, attempt| dispatched_at(&saga, &span(kind, attempt), &records);
        assert_eq!(found(crate::saga::CommandKind::Action, 2), Some(second.at));
        assert_eq!(
            found(crate::saga::CommandKind::Compensation, 1),
            Some(undo.at)
        );
        assert_eq!(found(crate::saga::CommandKind::Action, 3), None);
    }
}
