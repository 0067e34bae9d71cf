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

/// A participant `flaky` whose first attempt of anything asks for a retry and later ones succeed.
pub async fn flaky_participant(app: &TestApp) -> FakeParticipant {
    FakeParticipant::start(&app.ns, "flaky", |cmd| match cmd.attempt() {
        1 => Behaviour::retry("the bank is down"),
        _ => Behaviour::success(),
    })
    .await
}

/// A saga `name` of one step at [`flaky_participant`] whose retry waits ten minutes: it sits in
/// its backoff until someone says `retry-now`.
pub fn patient_saga(name: &str) -> Value {
    let ten_minutes = json!({"max_attempts": 3, "initial_backoff_ms": 600_000,
                             "max_backoff_ms": 600_000, "multiplier": 1.0});
    saga(
        name,
        vec![step_with("charge", "flaky", json!({"retry": ten_minutes}))],
    )
}

/// A participant `name` that holds every command until the returned sender says `true`, then
/// answers success.
pub async fn gated_participant(
    app: &TestApp,
    name: &str,
) -> (FakeParticipant, tokio::sync::watch::Sender<bool>) {
    let (release, released) = tokio::sync::watch::channel(false);
    let participant = FakeParticipant::start(&app.ns, name, move |_| {
        let mut released = released.clone();
        Behaviour::after(
            async move {
                let _ = released.wait_for(|r| *r).await;
            },
            Behaviour::success(),
        )
    })
    .await;
    (participant, release)
}
