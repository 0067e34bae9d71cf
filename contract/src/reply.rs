//! The reply body, participant to coordinator (contract, section 4), and the checks a reply must pass
//! before the coordinator acts on it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{CommandKind, Outcome};

/// A reply's JSON body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyBody {
    pub saga_id: Uuid,
    /// The command's step; `None` (sent as `null`) for a check-back, which has no step.
    #[serde(default)]
    pub step: Option<String>,
    pub kind: CommandKind,
    /// The attempt answered.
    pub attempt: u32,
    pub outcome: Outcome,
    /// On `success`: any JSON, stored and passed to later steps.
    #[serde(default)]
    pub output: Option<Value>,
    /// On `failure` and `retry`: why.
    #[serde(default)]
    pub error: Option<String>,
}

impl ReplyBody {
    /// Parses a reply body; anything that is not a well-formed reply is an error (the coordinator
    /// dead-letters it).
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let reply: ReplyBody = serde_json::from_slice(body).map_err(|e| e.to_string())?;
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
            let refused = ReplyBody::parse(body.as_bytes());
            assert!(
                refused.as_ref().is_err_and(|e| e.contains("NUL")),
                "{body}: {refused:?}"
            );
        }
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
            assert!(ReplyBody::parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_check_back_answer_needs_no_step() {
        let body = br#"{"saga_id": "0193a0a0-0000-7000-8000-000000000000", "step": null, "kind": "check", "attempt": 1, "outcome": "pending", "output": null, "error": null}"#;
        let reply = ReplyBody::parse(body).expect("valid reply");
        assert_eq!(reply.outcome, Outcome::Pending);
        assert_eq!(reply.step, None);
    }

    #[test]
    fn serializes_every_field() {
        let reply = ReplyBody {
            saga_id: Uuid::nil(),
            step: None,
            kind: CommandKind::Check,
            attempt: 1,
            outcome: Outcome::Committed,
            output: None,
            error: None,
        };
        assert_eq!(
            serde_json::to_value(&reply).expect("serializes"),
            serde_json::json!({"saga_id": Uuid::nil(), "step": null, "kind": "check", "attempt": 1,
                "outcome": "committed", "output": null, "error": null})
        );
    }
}
