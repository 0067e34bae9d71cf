//! The examples of `docs/contract.md`, section 4, parse as the bodies they illustrate.
//!
//! The examples are copied here verbatim (the page abbreviates ids as `0193...`, which [`fill`]
//! completes), and the test checks that the page still shows them, so neither side can drift alone.

use chrono::{TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::{CommandBody, CommandKind, Outcome, ReplyBody};

const CONTRACT: &str = include_str!("../../docs/contract.md");

const COMMAND_EXAMPLE: &str = r#"{"saga_id": "0193...", "saga_name": "place-order", "step": "charge", "kind": "action",
 "command": "charge", "attempt": 2, "idempotency_key": "0193...:charge:action",
 "deadline": "2026-11-21T10:00:05Z",
 "payload": {"amount_cents": 4200}, "saga_payload": {"order_id": 8812},
 "outputs": {"reserve": {"reservation": "r-77"}}}"#;

const REPLY_EXAMPLE: &str = r#"{"saga_id": "0193...", "step": "charge", "kind": "action", "attempt": 2,
 "outcome": "success", "output": {"payment": "p-9"}, "error": null}"#;

const SAGA_ID: &str = "0193a0a0-0000-7000-8000-000000000000";

/// The example with its abbreviated saga id written out.
fn fill(example: &str) -> String {
    example.replace("0193...", SAGA_ID)
}

fn saga_id() -> Uuid {
    Uuid::parse_str(SAGA_ID).expect("a valid uuid")
}

#[test]
fn the_contract_still_shows_these_examples() {
    for example in [COMMAND_EXAMPLE, REPLY_EXAMPLE] {
        assert!(
            CONTRACT.contains(example),
            "docs/contract.md no longer shows\n{example}"
        );
    }
}

#[test]
fn parses_the_contract_example_command() {
    let command: CommandBody = serde_json::from_str(&fill(COMMAND_EXAMPLE)).expect("a command");
    assert_eq!(
        command,
        CommandBody {
            saga_id: saga_id(),
            saga_name: "place-order".into(),
            step: Some("charge".into()),
            kind: CommandKind::Action,
            command: "charge".into(),
            attempt: 2,
            idempotency_key: crate::idempotency_key(saga_id(), Some("charge"), CommandKind::Action),
            deadline: Utc
                .with_ymd_and_hms(2026, 11, 21, 10, 0, 5)
                .single()
                .expect("a valid time"),
            payload: json!({"amount_cents": 4200}),
            saga_payload: json!({"order_id": 8812}),
            outputs: json!({"reserve": {"reservation": "r-77"}})
                .as_object()
                .cloned()
                .expect("an object"),
            action_output: None,
        }
    );
}

#[test]
fn parses_the_contract_example_reply() {
    let reply = ReplyBody::parse(fill(REPLY_EXAMPLE).as_bytes()).expect("a valid reply");
    assert_eq!(
        reply,
        ReplyBody {
            saga_id: saga_id(),
            step: Some("charge".into()),
            kind: CommandKind::Action,
            attempt: 2,
            outcome: Outcome::Success,
            output: Some(json!({"payment": "p-9"})),
            error: None,
        }
    );
}
