//! The saga's own fields (contract section 2): `name`, `key`, `payload`, `timeout_ms`.

use serde_json::Value;

use super::cursor::Cursor;
use super::{MAX_KEY_CHARS, MAX_TIMEOUT_MS};

/// The saga-level fields of a submission, defaults applied.
pub(super) struct SagaFields {
    /// `None` when missing or broken (reported).
    pub name: Option<String>,
    pub key: Option<String>,
    pub payload: Value,
    pub timeout_ms: Option<u64>,
}

pub(super) fn parse_saga_fields(saga: &mut Cursor<'_, '_>) -> SagaFields {
    SagaFields {
        name: saga.field("name").required_name(),
        key: parse_key(saga.field("key")),
        payload: saga
            .field("payload")
            .value()
            .cloned()
            .unwrap_or(Value::Null),
        timeout_ms: saga
            .field("timeout_ms")
            .u64_in(1..=MAX_TIMEOUT_MS)
            .ok()
            .flatten(),
    }
}

/// The idempotency key: any non-empty text up to [`MAX_KEY_CHARS`] characters.
fn parse_key(mut key: Cursor<'_, '_>) -> Option<String> {
    let value = key.value()?;
    let Some(text) = value.as_str() else {
        key.error("must be a string");
        return None;
    };
    let chars = text.chars().count();
    if chars == 0 {
        key.error("must not be empty");
        None
    } else if chars > MAX_KEY_CHARS {
        key.error(format!("must be at most {MAX_KEY_CHARS} characters"));
        None
    } else {
        Some(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::submission::fixtures::{minimal, single_error, with, with_step};
    use crate::submission::parse_submission;

    #[test]
    fn name_is_required_and_checked() {
        let mut body = minimal();
        body.as_object_mut().map(|o| o.remove("name"));
        assert_eq!(single_error(&body, "name"), "is required");
        assert_eq!(
            single_error(&with(minimal(), "name", json!(5)), "name"),
            "must be a string"
        );
        for bad in ["", "-x", ".x", "_x", "a b", "a/b", "é", &"a".repeat(65)] {
            let msg = single_error(&with(minimal(), "name", json!(bad)), "name");
            assert!(msg.starts_with("must match"), "{bad:?}: {msg}");
        }
        for good in ["a", "A.b_c-d", "0", &"a".repeat(64)] {
            assert!(
                parse_submission(&with(minimal(), "name", json!(good))).is_ok(),
                "{good:?}"
            );
        }
    }

    #[test]
    fn key_rules() {
        assert_eq!(
            single_error(&with(minimal(), "key", json!(12)), "key"),
            "must be a string"
        );
        assert_eq!(
            single_error(&with(minimal(), "key", json!("")), "key"),
            "must not be empty"
        );
        single_error(&with(minimal(), "key", json!("k".repeat(201))), "key");
        // Counted in characters, not bytes.
        let def = parse_submission(&with(minimal(), "key", json!("é".repeat(200)))).expect("valid");
        assert_eq!(def.key, Some("é".repeat(200)));
    }

    #[test]
    fn payload_can_be_any_json() {
        for payload in [
            json!(1),
            json!("s"),
            json!([1, 2]),
            json!({"a": {"b": null}}),
            json!(true),
        ] {
            let def = parse_submission(&with_step(
                with(minimal(), "payload", payload.clone()),
                0,
                "payload",
                payload.clone(),
            ))
            .expect("valid");
            assert_eq!(def.payload, payload);
            assert_eq!(def.steps[0].payload, payload);
        }
    }

    #[test]
    fn timeouts_are_positive_and_bounded() {
        for (value, message) in [
            (json!(0), "must be between 1 and 2592000000"),
            (json!(2_592_000_001u64), "must be between 1 and 2592000000"),
            (json!(-5), "must be a positive integer"),
            (json!(1.5), "must be a positive integer"),
            (json!("100"), "must be a positive integer"),
        ] {
            assert_eq!(
                single_error(&with(minimal(), "timeout_ms", value.clone()), "timeout_ms"),
                message
            );
            assert_eq!(
                single_error(
                    &with_step(minimal(), 0, "timeout_ms", value.clone()),
                    "steps[0].timeout_ms"
                ),
                message
            );
        }
        let def = parse_submission(&with_step(
            with(minimal(), "timeout_ms", json!(2_592_000_000u64)),
            0,
            "timeout_ms",
            json!(1),
        ))
        .expect("valid");
        assert_eq!(def.timeout_ms, Some(2_592_000_000));
        assert_eq!(def.steps[0].timeout_ms, 1);
    }
}
