//! Scenarios several test files share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::defs::{saga, step, step_with};
use crate::{Behaviour, FakeParticipant, TestApp};

/// A participant `shop` whose compensations fail until `fixed` is set; action `s2` fails.
pub async fn broken_compensation_shop(app: &TestApp, fixed: Arc<AtomicBool>) -> FakeParticipant {
    FakeParticipant::start(&app.ns, "shop", move |cmd| match (cmd.step(), cmd.kind()) {
        ("s2", "action") => Behaviour::failure("card declined"),
        (_, "action") => Behaviour::success_with(json!({"reserved": true})),
        _ if fixed.load(Ordering::SeqCst) => Behaviour::success(),
        _ => Behaviour::failure("the undo is broken"),
    })
    .await
}

/// The saga that [`broken_compensation_shop`] leaves `failed`: `s2` fails, `s1`'s compensation runs
/// out of its two attempts.
pub fn broken_compensation_saga() -> Value {
    saga(
        "hard-to-undo",
        vec![
            step_with(
                "s1",
                "shop",
                json!({"compensation_retry": {"max_attempts": 2, "initial_backoff_ms": 10}}),
            ),
            step("s2", "shop"),
        ],
    )
}
