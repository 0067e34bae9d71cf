//! The AMQP message bodies of the contract (section 4), as serde types.
//!
//! These are the wire format participants in any language integrate against: field names and
//! optionality here are part of the product. Nothing in this module knows how messages travel.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use chrono::{DateTime, Utc};

use crate::saga::CommandKind;

/// A command, coordinator to participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandMessage {
    pub saga_id: Uuid,
    pub saga_name: String,
    /// Absent for `check` commands, which concern the whole saga.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub kind: CommandKind,
    pub command: String,
    pub attempt: u32,
    pub idempotency_key: String,
    pub deadline: DateTime<Utc>,
    #[serde(default)]
    pub payload: Value,
    #[serde(default)]
    pub saga_payload: Value,
    #[serde(default)]
    pub outputs: Map<String, Value>,
    /// Only on compensations: the output of the action being undone (`null` if it had none).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_even_if_null"
    )]
    pub action_output: Option<Value>,
}

/// Distinguishes `"action_output": null` (present) from a missing field.
fn present_even_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// What a participant says about a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    /// A business refusal with no effect.
    Failure,
    /// A transient error: try again later.
    Retry,
    /// Check-back answers (contract, section 5).
    Committed,
    Aborted,
    Pending,
}

/// A reply, participant to coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyMessage {
    pub saga_id: Uuid,
    #[serde(default)]
    pub step: Option<String>,
    pub kind: CommandKind,
    pub attempt: u32,
    pub outcome: Outcome,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
}

impl ReplyMessage {
    /// Parses a reply body; anything that is not a well-formed reply is an error to dead-letter.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let reply: ReplyMessage = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if reply.attempt == 0 {
            return Err("attempt numbers start at 1".into());
        }
        let output_has_nul = reply.output.as_ref().is_some_and(holds_nul);
        if output_has_nul
            || [&reply.step, &reply.error]
                .iter()
                .any(|s| s.as_deref().is_some_and(|s| s.contains('\0')))
        {
            // Postgres stores neither in text nor in jsonb; written, it would fail its saga's batch
            // on every redelivery.
            return Err(
                "the reply holds the NUL character (\\u0000), which cannot be stored".into(),
            );
        }
        match (reply.kind, &reply.step) {
            (CommandKind::Check, _) => Ok(reply),
            (_, None) => Err(format!("a {} reply needs a step", reply.kind)),
            _ => Ok(reply),
        }
    }
}

/// Whether any string in `value` (keys included) holds the NUL character, which Postgres cannot store.
pub fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(fields) => fields.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// The idempotency key all attempts of one command share (contract, section 1).
pub fn idempotency_key(saga_id: Uuid, step: Option<&str>, kind: CommandKind) -> String {
    format!("{saga_id}:{}:{kind}", step.unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_holding_a_nul_character_is_malformed() {
        for body in [
            r#"{"saga_id": "0193a0a0-0000-7000-8000-000000000000", "step": "charge", "kind": "action", "attempt": 1, "outcome": "failure", "error": "card\u0000declined"}"#,
            r#"{"saga_id": "0193a0a0-0000-7000-8000-000000000000", "step": "charge", "kind": "action", "attempt": 1, "outcome": "success", "output": {"ids": ["p\u0000"]}}"#,
            r#"{"saga_id": "0193a0a0-0000-7000-8000-000000000000", "step": "charge", "kind": "action", "attempt": 1, "outcome": "success", "output": {"\u0000": 1}}"#,
        ] {
            let refused = ReplyMessage::parse(body.as_bytes());
            assert!(
                refused.as_ref().is_err_and(|e| e.contains("NUL")),
                "{body}: {refused:?}"
            );
        }
    }

    #[test]
    fn parses_the_contract_example_reply() {
        let body = br#"{"saga_id": "0193a0a0-0000-7000-8000-000000000000", "step": "charge", "kind": "action", "attempt": 2,
 "outcome": "success", "output": {"payment": "p-9"}, "error": null}"#;
        let reply = ReplyMessage::parse(body).expect("valid reply");
        assert_eq!(reply.outcome, Outcome::Success);
        assert_eq!(reply.step.as_deref(), Some("charge"));
    }

    #[test]
    fn rejects_malformed_replies() {
        for body in [
            &b"not json"[..],
            br#"{"saga_id": "x", "kind": "action", "attempt": 1, "outcome": "success"}"#,
            br#"{"saga_id": "0193a0a0-0000-7000-8000-000000000000", "kind": "action", "attempt": 1, "outcome": "success"}"#,
            br#"{"saga_id": "0193a0a0-0000-7000-8000-000000000000", "step": "a", "kind": "action", "attempt": 0, "outcome": "success"}"#,
            br#"{"saga_id": "0193a0a0-0000-7000-8000-000000000000", "step": "a", "kind": "action", "attempt": 1, "outcome": "maybe"}"#,
        ] {
            assert!(ReplyMessage::parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn compensation_carries_a_null_action_output() {
        let msg = CommandMessage {
            saga_id: Uuid::nil(),
            saga_name: "s".into(),
            step: Some("a".into()),
            kind: CommandKind::Compensation,
            command: "undo".into(),
            attempt: 1,
            idempotency_key: idempotency_key(Uuid::nil(), Some("a"), CommandKind::Compensation),
            deadline: Utc::now(),
            payload: Value::Null,
            saga_payload: Value::Null,
            outputs: Map::new(),
            action_output: Some(Value::Null),
        };
        let json = serde_json::to_value(&msg).expect("serializes");
        assert_eq!(json["action_output"], Value::Null);
        assert!(json
            .as_object()
            .is_some_and(|o| o.contains_key("action_output")));
        let back: CommandMessage = serde_json::from_value(json).expect("parses");
        assert_eq!(back, msg);
    }
}
