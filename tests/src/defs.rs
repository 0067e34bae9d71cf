//! Small builders for saga definitions (plain JSON, as a client would send).

use serde_json::{json, Value};

/// A step `name` at `participant` with action `do-{name}` and compensation `undo-{name}`.
pub fn step(name: &str, participant: &str) -> Value {
    json!({
        "name": name,
        "participant": participant,
        "action": format!("do-{name}"),
        "compensation": format!("undo-{name}"),
    })
}

/// `step` with extra members merged in (e.g. `{"timeout_ms": 300}`).
pub fn step_with(name: &str, participant: &str, extra: Value) -> Value {
    let mut s = step(name, participant);
    merge(&mut s, extra);
    s
}

/// A saga `name` with these steps.
pub fn saga(name: &str, steps: Vec<Value>) -> Value {
    json!({ "name": name, "steps": steps })
}

/// Copies the members of `extra` (an object) into `target` (an object).
pub fn merge(target: &mut Value, extra: Value) {
    if let (Some(t), Value::Object(e)) = (target.as_object_mut(), extra) {
        for (k, v) in e {
            t.insert(k, v);
        }
    }
}

/// A retry policy that retries fast (for tests that exhaust retries).
pub fn fast_retry(max_attempts: u32) -> Value {
    json!({"max_attempts": max_attempts, "initial_backoff_ms": 10, "max_backoff_ms": 50, "multiplier": 2.0})
}
