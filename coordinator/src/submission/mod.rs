//! Validation of a saga submission (`POST /api/v1/sagas`, contract sections 2 and 5) into a
//! [`SagaDefinition`].
//!
//! The whole body is checked and every broken rule is reported, not just the first, because the
//! HTTP layer answers `422` with one `errors` entry per broken rule and a client should be able to
//! fix its request in one round trip. Defaults are filled in here so that two identical submissions
//! yield equal definitions (that is how an idempotency key tells "same saga" from "conflict").
//!
//! Conventions: a JSON `null` counts as an absent optional field (clients that serialise `None` as
//! `null` must not be punished), and unknown fields are errors so typos are never silently ignored.
//!
//! The body is read through a cursor (`cursor.rs`) that carries the field path and the error list.
//! Each part of the body has a file: `saga_fields.rs` (the saga's own fields), `steps.rs` (steps
//! and their dependency graph), `retry.rs` (retry policies), `two_phase.rs` (mode and
//! check-back). Errors come in the order of those parts, and within a part in the order its
//! fields are read.

/// The pattern every name (saga, step, participant, action, compensation) matches; a macro so that
/// the error message can embed it at compile time.
macro_rules! name_pattern {
    () => {
        "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    };
}

mod cursor;
mod retry;
mod saga_fields;
mod steps;
mod two_phase;

#[cfg(test)]
mod fixtures;

use serde_json::Value;

use crate::saga::definition::SagaDefinition;
use cursor::Cursor;
use saga_fields::parse_saga_fields;
use steps::parse_steps;
use two_phase::parse_two_phase;
pub use two_phase::CheckBackHosts;

/// What every name matches (checked by hand in `cursor.rs`, published in the OpenAPI document).
pub const NAME_PATTERN: &str = name_pattern!();
/// Whether `s` is a name: [`NAME_PATTERN`], at most [`MAX_NAME_LEN`] characters.
pub fn is_name(s: &str) -> bool {
    cursor::is_valid_name(s)
}

/// Longest name (saga, step, participant, action, compensation), in characters.
pub const MAX_NAME_LEN: usize = 64;
/// Accepted range of a retry policy's `multiplier`.
pub const MULTIPLIER_RANGE: std::ops::RangeInclusive<f64> = 1.0..=100.0;
/// What a check-back URL matches: `http://` or `https://`, then a host and no whitespace or control
/// character (checked by hand in `two_phase.rs`, published in the OpenAPI document).
pub const CHECK_BACK_URL_PATTERN: &str = "^https?://[^\\s\\u0000-\\u001f\\u007f-\\u009f]+$";
pub use crate::saga::definition::MAX_STEPS;

/// Longest accepted `timeout_ms` / `prepare_timeout_ms`: 30 days. Anything longer is almost
/// certainly a unit mistake (seconds vs. milliseconds gone wrong the other way).
pub const MAX_TIMEOUT_MS: u64 = 2_592_000_000;
/// Longest accepted backoff between two attempts: one day.
pub const MAX_BACKOFF_MS: u64 = 86_400_000;
/// Most attempts a retry policy may ask for.
pub const MAX_ATTEMPTS: u64 = 1000;
/// Longest accepted idempotency `key`, in characters.
pub const MAX_KEY_CHARS: usize = 200;

const TOP_FIELDS: &[&str] = &[
    "name",
    "key",
    "payload",
    "timeout_ms",
    "steps",
    "mode",
    "check_back",
    "prepare_timeout_ms",
];

/// One broken rule: `field` is a path into the submitted body (`steps[1].after[0]`), empty for the
/// body itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Validates a submission and applies every default.
///
/// Every broken rule, one entry each (the HTTP layer answers 422 with all of them).
pub fn parse_submission(body: &Value) -> Result<SagaDefinition, Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut saga = Cursor::body(body, &mut errs);
    if !saga.object(TOP_FIELDS, "must be a JSON object") {
        return Err(errs);
    }
    if contract::holds_nul(body) {
        saga.error(
            "must not hold the NUL character (\\u0000) in any string: Postgres cannot store it",
        );
    }

    let fields = parse_saga_fields(&mut saga);
    let steps = parse_steps(saga.field("steps"));
    let two_phase = parse_two_phase(&mut saga);

    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(SagaDefinition {
        name: fields.name.unwrap_or_default(),
        key: fields.key,
        payload: fields.payload,
        timeout_ms: fields.timeout_ms,
        mode: two_phase.mode,
        check_back: two_phase.check_back,
        prepare_timeout_ms: two_phase.prepare_timeout_ms,
        check_back_retry: two_phase.check_back_retry,
        check_back_timeout_ms: two_phase.check_back_timeout_ms,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::fixtures::{errors, example, minimal, single_error, with, with_step};
    use super::*;
    use crate::saga::definition::{
        RetryPolicy, SubmissionMode, DEFAULT_PREPARE_TIMEOUT_MS, DEFAULT_STEP_TIMEOUT_MS,
    };

    #[test]
    fn a_nul_character_anywhere_is_refused() {
        let mut in_payload = example();
        in_payload["steps"][0]["payload"]["note"] = json!("gift\u{0}wrap");
        let mut in_key = example();
        in_key["key"] = json!("order\u{0}");
        for body in [in_payload, in_key] {
            let errors = parse_submission(&body).expect_err("refused");
            assert!(
                errors.iter().any(|e| e.message.contains("NUL")),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn contract_example_parses_with_defaults() {
        let def = parse_submission(&example()).expect("example is valid");
        assert_eq!(def.name, "place-order");
        assert_eq!(def.key.as_deref(), Some("order-8812"));
        assert_eq!(def.payload, json!({"order_id": 8812}));
        assert_eq!(def.timeout_ms, Some(60000));
        assert_eq!(def.mode, SubmissionMode::Run);
        assert_eq!(def.check_back, None);
        assert_eq!(def.prepare_timeout_ms, DEFAULT_PREPARE_TIMEOUT_MS);
        assert_eq!(def.steps.len(), 3);

        let reserve = &def.steps[0];
        assert_eq!(reserve.name, "reserve");
        assert_eq!(reserve.participant, "inventory");
        assert_eq!(reserve.action, "reserve");
        assert_eq!(reserve.compensation.as_deref(), Some("release"));
        assert_eq!(reserve.payload, json!({"sku": "A-1", "qty": 2}));
        assert_eq!(reserve.timeout_ms, 5000);
        assert_eq!(
            reserve.retry,
            RetryPolicy {
                max_attempts: 5,
                initial_backoff_ms: 100,
                max_backoff_ms: 10000,
                multiplier: 2.0
            }
        );
        assert_eq!(
            reserve.compensation_retry,
            RetryPolicy::compensation_default()
        );
        assert!(reserve.after.is_empty());

        let charge = &def.steps[1];
        assert_eq!(charge.compensation.as_deref(), Some("refund"));
        assert_eq!(charge.timeout_ms, DEFAULT_STEP_TIMEOUT_MS);
        assert_eq!(charge.retry, RetryPolicy::action_default());
        assert_eq!(charge.after, vec![0]);

        let notify = &def.steps[2];
        assert_eq!(notify.action, "send-confirmation");
        assert_eq!(notify.compensation, None);
        assert_eq!(notify.payload, Value::Null);
        assert_eq!(notify.after, vec![1]);
    }

    #[test]
    fn minimal_submission_gets_all_defaults() {
        let def = parse_submission(&minimal()).expect("valid");
        assert_eq!(def.key, None);
        assert_eq!(def.payload, Value::Null);
        assert_eq!(def.timeout_ms, None);
        assert_eq!(def.mode, SubmissionMode::Run);
        let s = &def.steps[0];
        assert_eq!(s.timeout_ms, DEFAULT_STEP_TIMEOUT_MS);
        assert_eq!(s.retry, RetryPolicy::action_default());
        assert_eq!(s.compensation_retry, RetryPolicy::compensation_default());
        assert!(s.after.is_empty());
    }

    #[test]
    fn identical_input_gives_equal_definitions() {
        let a = parse_submission(&example()).expect("valid");
        let b = parse_submission(&example()).expect("valid");
        assert_eq!(a, b);
        let c = parse_submission(&with(example(), "key", json!("other"))).expect("valid");
        assert_ne!(a, c);
    }

    #[test]
    fn explicit_defaults_equal_omitted_defaults() {
        let explicit = with_step(
            with_step(
                minimal(),
                0,
                "retry",
                json!({"max_attempts": 3, "initial_backoff_ms": 200, "max_backoff_ms": 30000, "multiplier": 2.0}),
            ),
            0,
            "timeout_ms",
            json!(30000),
        );
        assert_eq!(parse_submission(&explicit), parse_submission(&minimal()));
    }

    #[test]
    fn null_optional_fields_count_as_absent() {
        let body = json!({
            "name": "s", "key": null, "payload": null, "timeout_ms": null, "mode": null,
            "check_back": null, "prepare_timeout_ms": null,
            "steps": [{"name": "a", "participant": "p", "action": "do", "compensation": null,
                       "payload": null, "timeout_ms": null, "retry": null, "compensation_retry": null,
                       "after": null}]
        });
        assert_eq!(parse_submission(&body), parse_submission(&minimal()));
    }

    #[test]
    fn an_integer_may_be_written_with_a_zero_fraction_as_json_schema_allows() {
        let mut whole = with(minimal(), "timeout_ms", json!(5000.0));
        whole["steps"][0]["retry"] = json!({"max_attempts": 3.0, "initial_backoff_ms": 0.0});
        let def = parse_submission(&whole).expect("5000.0 is the integer 5000");
        assert_eq!(def.timeout_ms, Some(5000));
        assert_eq!(def.steps[0].retry.max_attempts, 3);
        assert_eq!(def.steps[0].retry.initial_backoff_ms, 0);
        assert_eq!(
            single_error(&with(minimal(), "timeout_ms", json!(5000.5)), "timeout_ms"),
            "must be a positive integer"
        );
        assert_eq!(
            single_error(&with(minimal(), "timeout_ms", json!(-5.0)), "timeout_ms"),
            "must be a positive integer"
        );
        assert_eq!(
            single_error(&with(minimal(), "timeout_ms", json!(1e300)), "timeout_ms"),
            "must be a positive integer"
        );
    }

    #[test]
    fn body_must_be_an_object() {
        for body in [json!([]), json!("x"), json!(1), Value::Null] {
            assert_eq!(single_error(&body, ""), "must be a JSON object");
        }
    }

    #[test]
    fn unknown_fields_are_reported() {
        assert_eq!(
            single_error(&with(minimal(), "steps_", json!([])), "steps_"),
            "unknown field"
        );
        assert_eq!(
            single_error(
                &with_step(minimal(), 0, "retires", json!({})),
                "steps[0].retires"
            ),
            "unknown field"
        );
        let retry = with_step(minimal(), 0, "retry", json!({"max_attempt": 3}));
        assert_eq!(
            single_error(&retry, "steps[0].retry.max_attempt"),
            "unknown field"
        );
        let comp = with_step(minimal(), 0, "compensation_retry", json!({"factor": 3}));
        single_error(&comp, "steps[0].compensation_retry.factor");
        let cb = json!({"name": "s", "mode": "prepare", "check_back": {"participant": "o", "uri": "x"},
                        "steps": [{"name": "a", "participant": "p", "action": "do"}]});
        assert_eq!(single_error(&cb, "check_back.uri"), "unknown field");
    }

    #[test]
    fn all_errors_are_reported() {
        let body = json!({
            "name": "-bad",
            "key": "",
            "timeout_ms": 0,
            "typo": 1,
            "check_back": {"url": "x"},
            "steps": [
                {"name": "a", "participant": "p"},
                {"name": "a", "participant": "p", "action": "do", "retry": {"max_attempts": 0, "multiplier": 0}},
                {"name": "c", "participant": "p", "action": "do", "after": ["zzz"]},
                7
            ]
        });
        let errs = errors(&body);
        let mut fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            vec![
                "check_back",
                "key",
                "name",
                "steps[0].action",
                "steps[1].name",
                "steps[1].retry.max_attempts",
                "steps[1].retry.multiplier",
                "steps[2].after[0]",
                "steps[3]",
                "timeout_ms",
                "typo",
            ],
            "{errs:?}"
        );
    }

    #[test]
    fn errors_come_in_the_order_of_the_parts() {
        // Clients see the errors in this order: the body's unknown fields, the saga's own fields,
        // each step in turn (its fields, then its retry policies), duplicate names, `after` lists,
        // then the two-phase fields.
        let body = json!({
            "name": "-bad",
            "key": "",
            "timeout_ms": 0,
            "typo": 1,
            "check_back": {"url": "x"},
            "steps": [
                {"name": "a", "participant": "p"},
                {"name": "a", "participant": "p", "action": "do", "retry": {"max_attempts": 0, "multiplier": 0}},
                {"name": "c", "participant": "p", "action": "do", "after": ["zzz"]},
                7
            ]
        });
        let errs = errors(&body);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "typo",
                "name",
                "key",
                "timeout_ms",
                "steps[0].action",
                "steps[1].retry.max_attempts",
                "steps[1].retry.multiplier",
                "steps[3]",
                "steps[1].name",
                "steps[2].after[0]",
                "check_back",
            ],
            "{errs:?}"
        );
    }

    #[test]
    fn field_error_serializes_as_contract_entry() {
        let e = FieldError {
            field: "steps[1].after[0]".into(),
            message: "unknown step \"charge\"".into(),
        };
        assert_eq!(
            serde_json::to_value(&e).expect("serializes"),
            json!({"field": "steps[1].after[0]", "message": "unknown step \"charge\""})
        );
    }
}
