//! The command body, coordinator to participant (contract, section 4).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::CommandKind;

/// A command's JSON body, exactly as the coordinator sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandBody {
    pub saga_id: Uuid,
    /// The saga's kind, e.g. `place-order`.
    pub saga_name: String,
    /// Absent for `check` commands, which concern the whole saga.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub kind: CommandKind,
    /// The command's name: the step's `action` or `compensation` (`check` for a check-back).
    pub command: String,
    /// 1 for the first attempt; retries and timeouts count up.
    pub attempt: u32,
    /// Shared by every attempt of this command (see [`idempotency_key`](crate::idempotency_key)).
    pub idempotency_key: String,
    /// When the coordinator stops waiting for this attempt's reply.
    pub deadline: DateTime<Utc>,
    /// The step's payload.
    #[serde(default)]
    pub payload: Value,
    /// The saga-level payload.
    #[serde(default)]
    pub saga_payload: Value,
    /// The `output` of every step that has succeeded so far, by step name.
    #[serde(default)]
    pub outputs: Map<String, Value>,
    /// Only on compensations, and there always: the output of the action being undone (`null` if it
    /// had none). `Some(Value::Null)` is sent as `"action_output": null`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency_key;

    fn compensation() -> CommandBody {
        CommandBody {
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
        }
    }

    #[test]
    fn compensation_carries_a_null_action_output() {
        let msg = compensation();
        let json = serde_json::to_value(&msg).expect("serializes");
        assert_eq!(json["action_output"], Value::Null);
        assert!(json
            .as_object()
            .is_some_and(|o| o.contains_key("action_output")));
        let back: CommandBody = serde_json::from_value(json).expect("parses");
        assert_eq!(back, msg);
    }

    #[test]
    fn an_action_has_no_action_output_and_a_check_no_step() {
        let mut msg = compensation();
        msg.kind = CommandKind::Check;
        msg.step = None;
        msg.action_output = None;
        let json = serde_json::to_value(&msg).expect("serializes");
        let fields = json.as_object().expect("an object");
        assert!(!fields.contains_key("action_output"));
        assert!(!fields.contains_key("step"));
        let back: CommandBody = serde_json::from_value(json).expect("parses");
        assert_eq!(back, msg);
    }
}
