//! The stored form of the saga event log: each [`LogEntry`] as the `type`, `step`, `attempt` and
//! `detail` of a `saga_events` row.
//!
//! These strings and JSON shapes are part of the HTTP contract (`GET /api/v1/sagas/{id}/events`
//! returns them as stored, the dashboard shows them, clients read them), so they are spelled here
//! only, and the tests below pin every variant.

use serde_json::{json, Value};

use super::rows::to_i32;
use crate::saga::event_log::{CompensationReason, DecidedBy, FailureReason};
use crate::saga::{LogEntry, SagaDefinition};

/// One `saga_events` row's columns, less the saga and the time. The runtime's debug lines use it
/// too, so a log line names an event as the events API does.
#[derive(Debug, PartialEq)]
pub struct StoredEvent<'a> {
    pub kind: &'static str,
    pub step: Option<&'a str>,
    pub attempt: Option<i32>,
    pub detail: Value,
}

/// Renders `entry` of a saga with `definition` (step positions become step names).
pub fn render<'a>(entry: &LogEntry, definition: &'a SagaDefinition) -> StoredEvent<'a> {
    let command = entry.command();
    StoredEvent {
        kind: kind(entry),
        step: command
            .and_then(|c| c.step)
            .and_then(|i| definition.steps.get(i))
            .map(|s| s.name.as_str()),
        attempt: command.map(|c| to_i32(c.attempt)),
        detail: detail(entry),
    }
}

fn kind(entry: &LogEntry) -> &'static str {
    match entry {
        LogEntry::Prepared => "prepared",
        LogEntry::Started => "started",
        LogEntry::Commit { .. } => "commit",
        LogEntry::Aborted { .. } => "aborted",
        LogEntry::RetryRequested => "retry_requested",
        LogEntry::RetryNowRequested => "retry_now_requested",
        LogEntry::Paused { .. } => "paused",
        LogEntry::Resumed { .. } => "resumed",
        LogEntry::Resolved { .. } => "resolved",
        LogEntry::Dispatched { .. } => "dispatched",
        LogEntry::Reply { .. } => "reply",
        LogEntry::TimedOut { .. } => "timed_out",
        LogEntry::DeadLettered { .. } => "dead_lettered",
        LogEntry::RetryScheduled { .. } => "retry_scheduled",
        LogEntry::GaveUp { .. } => "gave_up",
        LogEntry::Compensating { .. } => "compensating",
        LogEntry::Compensated => "compensated",
        LogEntry::Committed => "committed",
        LogEntry::Failed { .. } => "failed",
    }
}

fn detail(entry: &LogEntry) -> Value {
    match entry {
        LogEntry::Prepared
        | LogEntry::Started
        | LogEntry::RetryRequested
        | LogEntry::RetryNowRequested
        | LogEntry::Compensated
        | LogEntry::Committed => json!({}),
        LogEntry::Commit { by } => json!({"by": decided_by(*by)}),
        LogEntry::Aborted { by } => {
            json!({"reason": "aborted before commit", "by": decided_by(*by)})
        }
        LogEntry::Resolved { note } => json!({"note": note}),
        LogEntry::Paused { by } | LogEntry::Resumed { by } => json!({"by": by}),
        LogEntry::Dispatched { command }
        | LogEntry::TimedOut { command }
        | LogEntry::DeadLettered { command } => json!({"kind": command.kind}),
        LogEntry::Reply {
            command,
            outcome,
            error,
        } => json!({"kind": command.kind, "outcome": outcome, "error": error}),
        LogEntry::RetryScheduled {
            command,
            error,
            backoff_ms,
        } => json!({"kind": command.kind, "error": error, "backoff_ms": backoff_ms}),
        LogEntry::GaveUp { command, error } => json!({"kind": command.kind, "error": error}),
        LogEntry::Compensating { reason } => json!({"reason": compensation_reason(reason)}),
        LogEntry::Failed { reason } => json!({"reason": failure_reason(*reason)}),
    }
}

fn decided_by(by: DecidedBy) -> &'static str {
    match by {
        DecidedBy::Initiator => "initiator",
        DecidedBy::Api => "api",
        DecidedBy::CheckBack => "check_back",
    }
}

/// The domain's wording: the same text is the error of each step the compensation abandoned.
fn compensation_reason(reason: &CompensationReason) -> String {
    reason.to_string()
}

fn failure_reason(reason: FailureReason) -> &'static str {
    match reason {
        FailureReason::CompensationGaveUp => "a compensation ran out of attempts: retry or resolve",
        FailureReason::CheckBackGaveUp => {
            "no check-back answer: commit, abort, retry (ask again) or resolve"
        }
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
