//! Bodies and assertions the tests of every part of the submission share.

use serde_json::{json, Value};

use super::{parse_submission, FieldError};

/// The contract's example submission (section 2).
pub(super) fn example() -> Value {
    json!({
      "name": "place-order",
      "key": "order-8812",
      "payload": {"order_id": 8812},
      "timeout_ms": 60000,
      "steps": [
        {"name": "reserve", "participant": "inventory", "action": "reserve", "compensation": "release",
         "payload": {"sku": "A-1", "qty": 2}, "timeout_ms": 5000,
         "retry": {"max_attempts": 5, "initial_backoff_ms": 100, "max_backoff_ms": 10000, "multiplier": 2.0}},
        {"name": "charge", "participant": "payments", "action": "charge", "compensation": "refund",
         "payload": {"amount_cents": 4200}},
        {"name": "notify", "participant": "mailer", "action": "send-confirmation"}
      ]
    })
}

pub(super) fn minimal() -> Value {
    json!({"name": "s", "steps": [{"name": "a", "participant": "p", "action": "do"}]})
}

pub(super) fn errors(body: &Value) -> Vec<FieldError> {
    match parse_submission(body) {
        Ok(def) => panic!("expected errors, got {def:?}"),
        Err(errs) => errs,
    }
}

/// Asserts the body fails with exactly one error, on `field`, and returns its message.
pub(super) fn single_error(body: &Value, field: &str) -> String {
    let errs = errors(body);
    assert_eq!(
        errs.len(),
        1,
        "expected one error on {field:?}, got {errs:?}"
    );
    assert_eq!(errs[0].field, field, "{errs:?}");
    errs[0].message.clone()
}

pub(super) fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

pub(super) fn with_step(mut body: Value, step: usize, key: &str, value: Value) -> Value {
    body["steps"][step][key] = value;
    body
}

pub(super) fn graph(steps: Value) -> Value {
    json!({"name": "g", "steps": steps})
}

pub(super) fn step(name: &str, after: Value) -> Value {
    let mut s = json!({"name": name, "participant": "p", "action": "do"});
    if !after.is_null() {
        s["after"] = after;
    }
    s
}
