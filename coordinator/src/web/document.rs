//! The saga document of the API (contract, section 2 "Read").

use serde_json::{json, Value};

use crate::saga::{CheckBack, Saga, SubmissionMode, TimerPurpose};

/// The full document, with steps.
pub fn saga_document(saga: &Saga) -> Value {
    let mut doc = saga_summary(saga);
    doc["steps"] = saga
        .definition
        .steps
        .iter()
        .zip(&saga.steps)
        .enumerate()
        .map(|(i, (def, progress))| {
            json!({
                "name": def.name,
                "participant": def.participant,
                "action": def.action,
                "compensation": def.compensation,
                "state": progress.state,
                "attempts": progress.attempts,
                "compensation_attempts": progress.compensation_attempts,
                "output": progress.output,
                "error": progress.error,
                "after": saga.after_names(i),
                "retry_at": progress
                    .timer
                    .filter(|t| t.purpose == TimerPurpose::Backoff)
                    .map(|t| t.due_at),
            })
        })
        .collect();
    if saga.definition.mode == SubmissionMode::Prepare {
        doc["mode"] = json!("prepare");
        doc["check_back"] = check_back_document(saga);
    }
    doc
}

/// Two-phase sagas: where and how often the coordinator asked (or will ask) the initiator.
fn check_back_document(saga: &Saga) -> Value {
    let mut doc = match &saga.definition.check_back {
        Some(CheckBack::Participant(p)) => json!({"participant": p}),
        Some(CheckBack::Url(u)) => json!({"url": u}),
        None => json!({}),
    };
    doc["attempts"] = json!(saga.check_back.attempts);
    doc["max_attempts"] = json!(saga.check_back.attempt_limit);
    doc["next_at"] = json!(saga.check_back.timer.map(|t| t.due_at));
    doc
}

/// The document without steps, as the list shows it.
pub fn saga_summary(saga: &Saga) -> Value {
    json!({
        "id": saga.id,
        "name": saga.definition.name,
        "key": saga.definition.key,
        "state": saga.state,
        "payload": saga.definition.payload,
        "created_at": saga.created_at,
        "updated_at": saga.updated_at,
        "deadline": saga.deadline,
        "paused_at": saga.pause.map(|p| p.since),
        "paused_by": saga.pause.map(|p| p.by),
    })
}
