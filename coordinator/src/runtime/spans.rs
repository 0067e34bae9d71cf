//! The spans of committed transitions: which attempts a transition ended, and whether it stopped
//! the saga, read from the log entries the machine produced (see [`crate::telemetry`]).
//!
//! An attempt's span needs its dispatch time. The transition that dispatched it was seen here
//! (kept in [`Dispatches`] until the attempt ends), unless it was committed before a restart or by
//! another coordinator: then it is read from the saga's event log, as are the saga span's events
//! when the saga stops. Nothing here runs unless spans are exported.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Registry;
use crate::saga::event_log::CommandAttempt;
use crate::saga::{LogEntry, Saga, SagaState};
use crate::store::{render_event, EventRecord};
use crate::telemetry::{self, spans::AttemptSpan, spans::SpanEvent};

/// The attempts of one saga that are out, with their dispatch times.
type Out = Vec<(CommandAttempt, DateTime<Utc>)>;

/// When each attempt out was dispatched, by saga.
#[derive(Default)]
pub(super) struct Dispatches(Mutex<HashMap<Uuid, Out>>);

impl Dispatches {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Out>> {
        // Entries are pushed and removed whole: a poisoned map is still consistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, saga: Uuid, command: CommandAttempt, at: DateTime<Utc>) {
        self.map().entry(saga).or_default().push((command, at));
    }

    fn take(&self, saga: Uuid, command: &CommandAttempt) -> Option<DateTime<Utc>> {
        let mut map = self.map();
        let attempts = map.get_mut(&saga)?;
        let at = attempts
            .iter()
            .position(|(c, _)| c == command)
            .map(|i| attempts.swap_remove(i).1);
        if attempts.is_empty() {
            map.remove(&saga);
        }
        at
    }

    /// A saga that stopped here or went to another coordinator: its attempts out end elsewhere.
    pub(super) fn forget(&self, saga: Uuid) {
        if telemetry::exporting().is_some() {
            self.map().remove(&saga);
        }
    }
}

/// Exports the spans that committed transition `log` of `saga` (previously in `before`) ended.
pub(super) fn observe(
    registry: &Registry,
    before: SagaState,
    saga: &Saga,
    log: &[LogEntry],
    now: DateTime<Utc>,
) {
    if telemetry::exporting().is_none() {
        return;
    }
    let dispatches = &registry.inner.dispatches;
    let mut unknown = Vec::new();
    for entry in log {
        if let LogEntry::Dispatched { command } = entry {
            dispatches.record(saga.id, *command, now);
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
        match dispatches.take(saga.id, command) {
            Some(at) => telemetry::spans::attempt_ended(
                saga,
                AttemptSpan {
                    dispatched_at: at,
                    ..span
                },
            ),
            None => unknown.push(span),
        }
    }
    let stopped =
        saga.state != before && (saga.state.is_final() || saga.state == SagaState::Failed);
    if saga.state.is_final() {
        dispatches.forget(saga.id);
    }
    if unknown.is_empty() && !stopped {
        return;
    }
    let store = registry.inner.store.clone();
    let saga = saga.clone();
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
