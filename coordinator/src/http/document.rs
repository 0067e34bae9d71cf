//! The saga document of the API (contract, section 2 "Read").

use serde_json::{json, Value};

use crate::saga::Saga;

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
            })
        })
        .collect();
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
    })
}
