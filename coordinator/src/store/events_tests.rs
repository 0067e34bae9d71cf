//! Every log entry's stored form, pinned: these rows are what the API's event list returns.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{render, StoredEvent};
use crate::saga::event_log::{CommandAttempt, CompensationReason, DecidedBy, FailureReason};
use crate::saga::Outcome;
use crate::saga::{CommandKind, LogEntry, PausedBy, SagaDefinition};
use crate::submission::parse_submission;

fn definition() -> SagaDefinition {
    parse_submission(&json!({"name": "order", "steps": [
        {"name": "reserve", "participant": "inventory", "action": "reserve"},
        {"name": "pay", "participant": "payments", "action": "charge", "compensation": "refund"}
    ]}))
    .expect("a valid submission")
}

/// An entry and its stored `type`, `step`, `attempt` and `detail`.
type Pinned = (
    LogEntry,
    &'static str,
    Option<&'static str>,
    Option<i32>,
    Value,
);

/// Each entry with its stored form, as the machine's string-typed log wrote it before entries were
/// typed (captured from the machine's tests).
fn pinned() -> Vec<Pinned> {
    use CommandKind::{Action, Compensation};
    let pay = Some("pay");
    vec![
        (LogEntry::Prepared, "prepared", None, None, json!({})),
        (LogEntry::Started, "started", None, None, json!({})),
        (
            LogEntry::Commit {
                by: DecidedBy::Initiator,
            },
            "commit",
            None,
            None,
            json!({"by": "initiator"}),
        ),
        (
            LogEntry::Commit {
                by: DecidedBy::CheckBack,
            },
            "commit",
            None,
            None,
            json!({"by": "check_back"}),
        ),
        (
            LogEntry::Aborted { by: DecidedBy::Api },
            "aborted",
            None,
            None,
            json!({"reason": "aborted before commit", "by": "api"}),
        ),
        (
            LogEntry::Aborted {
                by: DecidedBy::CheckBack,
            },
            "aborted",
            None,
            None,
            json!({"reason": "aborted before commit", "by": "check_back"}),
        ),
        (
            LogEntry::RetryRequested,
            "retry_requested",
            None,
            None,
            json!({}),
        ),
        (
            LogEntry::RetryNowRequested,
            "retry_now_requested",
            None,
            None,
            json!({}),
        ),
        (
            LogEntry::Paused {
                by: PausedBy::Operator,
            },
            "paused",
            None,
            None,
            json!({"by": "operator"}),
        ),
        (
            LogEntry::Resumed { by: PausedBy::Name },
            "resumed",
            None,
            None,
            json!({"by": "name"}),
        ),
        (
            LogEntry::Resolved {
                note: "refunded by hand".into(),
            },
            "resolved",
            None,
            None,
            json!({"note": "refunded by hand"}),
        ),
        (
            LogEntry::Dispatched {
                command: CommandAttempt::step(1, Action, 1),
            },
            "dispatched",
            pay,
            Some(1),
            json!({"kind": "action"}),
        ),
        (
            LogEntry::Dispatched {
                command: CommandAttempt::check_back(2),
            },
            "dispatched",
            None,
            Some(2),
            json!({"kind": "check"}),
        ),
        (
            LogEntry::Reply {
                command: CommandAttempt::step(1, Action, 2),
                outcome: Outcome::Retry,
                error: Some("card declined".into()),
            },
            "reply",
            pay,
            Some(2),
            json!({"kind": "action", "outcome": "retry", "error": "card declined"}),
        ),
        (
            LogEntry::Reply {
                command: CommandAttempt::step(1, Compensation, 1),
                outcome: Outcome::Success,
                error: None,
            },
            "reply",
            pay,
            Some(1),
            json!({"kind": "compensation", "outcome": "success", "error": null}),
        ),
        (
            LogEntry::Reply {
                command: CommandAttempt::check_back(1),
                outcome: Outcome::Committed,
                error: None,
            },
            "reply",
            None,
            Some(1),
            json!({"kind": "check", "outcome": "committed", "error": null}),
        ),
        (
            LogEntry::TimedOut {
                command: CommandAttempt::step(0, Action, 3),
            },
            "timed_out",
            Some("reserve"),
            Some(3),
            json!({"kind": "action"}),
        ),
        (
            LogEntry::TimedOut {
                command: CommandAttempt::check_back(1),
            },
            "timed_out",
            None,
            Some(1),
            json!({"kind": "check"}),
        ),
        (
            LogEntry::DeadLettered {
                command: CommandAttempt::step(1, Compensation, 2),
            },
            "dead_lettered",
            pay,
            Some(2),
            json!({"kind": "compensation"}),
        ),
        (
            LogEntry::DeadLettered {
                command: CommandAttempt::check_back(3),
            },
            "dead_lettered",
            None,
            Some(3),
            json!({"kind": "check"}),
        ),
        (
            LogEntry::RetryScheduled {
                command: CommandAttempt::step(1, Action, 1),
                error: "participant asked to retry".into(),
                backoff_ms: 150,
            },
            "retry_scheduled",
            pay,
            Some(1),
            json!({"kind": "action", "error": "participant asked to retry", "backoff_ms": 150}),
        ),
        (
            LogEntry::RetryScheduled {
                command: CommandAttempt::check_back(1),
                error: "the initiator answered pending".into(),
                backoff_ms: 1000,
            },
            "retry_scheduled",
            None,
            Some(1),
            json!({"kind": "check", "error": "the initiator answered pending", "backoff_ms": 1000}),
        ),
        (
            LogEntry::GaveUp {
                command: CommandAttempt::step(1, Compensation, 3),
                error: "gave up after 3 attempts: no reply within 500 ms".into(),
            },
            "gave_up",
            pay,
            Some(3),
            json!({"kind": "compensation",
                   "error": "gave up after 3 attempts: no reply within 500 ms"}),
        ),
        (
            LogEntry::GaveUp {
                command: CommandAttempt::check_back(5),
                error: "gave up after 5 check-backs: no answer within 100 ms".into(),
            },
            "gave_up",
            None,
            Some(5),
            json!({"kind": "check",
                   "error": "gave up after 5 check-backs: no answer within 100 ms"}),
        ),
        (
            LogEntry::Compensating {
                reason: CompensationReason::Aborted,
            },
            "compensating",
            None,
            None,
            json!({"reason": "aborted"}),
        ),
        (
            LogEntry::Compensating {
                reason: CompensationReason::TimedOut,
            },
            "compensating",
            None,
            None,
            json!({"reason": "saga timed out"}),
        ),
        (
            LogEntry::Compensating {
                reason: CompensationReason::StepFailed { step: "pay".into() },
            },
            "compensating",
            None,
            None,
            json!({"reason": "step pay failed"}),
        ),
        (
            LogEntry::Compensating {
                reason: CompensationReason::StepGaveUp { step: "pay".into() },
            },
            "compensating",
            None,
            None,
            json!({"reason": "step pay ran out of attempts"}),
        ),
        (LogEntry::Compensated, "compensated", None, None, json!({})),
        (LogEntry::Committed, "committed", None, None, json!({})),
        (
            LogEntry::Failed {
                reason: FailureReason::CompensationGaveUp,
            },
            "failed",
            None,
            None,
            json!({"reason": "a compensation ran out of attempts: retry or resolve"}),
        ),
        (
            LogEntry::Failed {
                reason: FailureReason::CheckBackGaveUp,
            },
            "failed",
            None,
            None,
            json!({"reason": "no check-back answer: commit, abort, retry (ask again) or resolve"}),
        ),
    ]
}

#[test]
fn every_entry_renders_to_its_stored_type_and_detail() {
    let definition = definition();
    for (entry, kind, step, attempt, detail) in pinned() {
        assert_eq!(
            render(&entry, &definition),
            StoredEvent {
                kind,
                step,
                attempt,
                detail,
            },
            "{entry:?}"
        );
    }
}

/// A new variant fails to compile here until it is added to [`pinned`], and fails the test until it is.
#[test]
fn every_variant_is_pinned() {
    fn variant(entry: &LogEntry) -> usize {
        match entry {
            LogEntry::Prepared => 0,
            LogEntry::Started => 1,
            LogEntry::Commit { .. } => 2,
            LogEntry::Aborted { .. } => 3,
            LogEntry::RetryRequested => 4,
            LogEntry::Resolved { .. } => 5,
            LogEntry::Dispatched { .. } => 6,
            LogEntry::Reply { .. } => 7,
            LogEntry::TimedOut { .. } => 8,
            LogEntry::DeadLettered { .. } => 9,
            LogEntry::RetryScheduled { .. } => 10,
            LogEntry::GaveUp { .. } => 11,
            LogEntry::Compensating { .. } => 12,
            LogEntry::Compensated => 13,
            LogEntry::Committed => 14,
            LogEntry::Failed { .. } => 15,
            LogEntry::RetryNowRequested => 16,
            LogEntry::Paused { .. } => 17,
            LogEntry::Resumed { .. } => 18,
        }
    }
    let pinned: BTreeSet<usize> = pinned().iter().map(|(e, ..)| variant(e)).collect();
    assert_eq!(pinned, (0..19).collect());
}
