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

/// The steps of the fault tests, in order: `s1`, `s2`, `s3` at participants `p1`, `p2`, `p3`.
pub const QUICK_STEPS: [(&str, &str); 3] = [("s1", "p1"), ("s2", "p2"), ("s3", "p3")];

/// A saga of [`QUICK_STEPS`], each with a reply timeout of `timeout_ms` and three quick attempts: a
/// command lost to a fault shows up as a second attempt one timeout later.
pub fn three_quick_steps(name: &str, timeout_ms: u64) -> Value {
    let limits = json!({
        "timeout_ms": timeout_ms,
        "retry": {"max_attempts": 3, "initial_backoff_ms": 100, "max_backoff_ms": 200, "multiplier": 2.0},
    });
    saga(
        name,
        QUICK_STEPS
            .iter()
            .map(|(s, p)| step_with(s, p, limits.clone()))
            .collect(),
    )
}
