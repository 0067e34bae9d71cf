//! Retry policies (`retry` and `compensation_retry` of a step, `retry` of a check-back): each field
//! the client leaves out keeps the default of the policy's kind.

use super::cursor::Cursor;
use super::{MAX_ATTEMPTS, MAX_BACKOFF_MS, MULTIPLIER_RANGE};
use crate::saga::definition::RetryPolicy;

const RETRY_FIELDS: &[&str] = &[
    "max_attempts",
    "initial_backoff_ms",
    "max_backoff_ms",
    "multiplier",
];

/// A retry policy; fields the client leaves out keep the value of `default`.
pub(super) fn parse_retry(mut retry: Cursor<'_, '_>, default: RetryPolicy) -> RetryPolicy {
    if !retry.object(RETRY_FIELDS, "must be an object") {
        return default;
    }

    let max_attempts = retry.field("max_attempts").u64_in(1..=MAX_ATTEMPTS);
    let initial = retry.field("initial_backoff_ms").u64_in(0..=MAX_BACKOFF_MS);
    let max = retry.field("max_backoff_ms").u64_in(0..=MAX_BACKOFF_MS);
    let multiplier = parse_multiplier(retry.field("multiplier")).unwrap_or(default.multiplier);

    let policy = RetryPolicy {
        max_attempts: max_attempts
            .ok()
            .flatten()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(default.max_attempts),
        initial_backoff_ms: initial.ok().flatten().unwrap_or(default.initial_backoff_ms),
        max_backoff_ms: max.ok().flatten().unwrap_or(default.max_backoff_ms),
        multiplier,
    };
    // The cap must not undercut the start, or the "exponential" backoff would be flat from the
    // first retry. Blame the field the client actually wrote: with only `initial_backoff_ms` given,
    // it is the one clashing with the default cap.
    if let (Ok(initial), Ok(max)) = (initial, max) {
        if policy.max_backoff_ms < policy.initial_backoff_ms {
            if max.is_some() {
                retry.field("max_backoff_ms").error(format!(
                    "must be at least initial_backoff_ms ({})",
                    policy.initial_backoff_ms
                ));
            } else if initial.is_some() {
                retry.field("initial_backoff_ms").error(format!(
                    "must not exceed max_backoff_ms (default {})",
                    policy.max_backoff_ms
                ));
            }
        }
    }
    policy
}

/// `None` when absent or broken (reported).
fn parse_multiplier(mut multiplier: Cursor<'_, '_>) -> Option<f64> {
    match multiplier.value()?.as_f64() {
        Some(m) if MULTIPLIER_RANGE.contains(&m) => Some(m),
        Some(_) => {
            multiplier.error(format!(
                "must be between {:.1} and {:.1}",
                MULTIPLIER_RANGE.start(),
                MULTIPLIER_RANGE.end()
            ));
            None
        }
        None => {
            multiplier.error("must be a number");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::saga::definition::RetryPolicy;
    use crate::submission::fixtures::{minimal, single_error, with_step};
    use crate::submission::parse_submission;

    #[test]
    fn retry_fields_are_checked() {
        let cases = [
            (json!({"max_attempts": 0}), "max_attempts"),
            (json!({"max_attempts": 1001}), "max_attempts"),
            (json!({"max_attempts": 2.5}), "max_attempts"),
            (json!({"initial_backoff_ms": -1}), "initial_backoff_ms"),
            (
                json!({"initial_backoff_ms": 86_400_001}),
                "initial_backoff_ms",
            ),
            (json!({"max_backoff_ms": 86_400_001}), "max_backoff_ms"),
            (
                json!({"initial_backoff_ms": 500, "max_backoff_ms": 499}),
                "max_backoff_ms",
            ),
            (json!({"max_backoff_ms": 100}), "max_backoff_ms"),
            (json!({"initial_backoff_ms": 40000}), "initial_backoff_ms"),
            (json!({"multiplier": 0.5}), "multiplier"),
            (json!({"multiplier": 100.5}), "multiplier"),
            (json!({"multiplier": "2"}), "multiplier"),
        ];
        for (retry, field) in cases {
            for which in ["retry", "compensation_retry"] {
                let body = with_step(minimal(), 0, which, retry.clone());
                single_error(&body, &format!("steps[0].{which}.{field}"));
            }
        }
        assert_eq!(
            single_error(
                &with_step(minimal(), 0, "retry", json!({"initial_backoff_ms": "1"})),
                "steps[0].retry.initial_backoff_ms"
            ),
            "must be a non-negative integer"
        );
        assert_eq!(
            single_error(
                &with_step(minimal(), 0, "retry", json!({"multiplier": true})),
                "steps[0].retry.multiplier"
            ),
            "must be a number"
        );
        assert_eq!(
            single_error(
                &with_step(minimal(), 0, "retry", json!(3)),
                "steps[0].retry"
            ),
            "must be an object"
        );
    }

    #[test]
    fn retry_bounds_are_inclusive_and_partial_policies_merge_defaults() {
        let body = with_step(
            with_step(
                minimal(),
                0,
                "retry",
                json!({"max_attempts": 1000, "initial_backoff_ms": 0, "multiplier": 1}),
            ),
            0,
            "compensation_retry",
            json!({"max_backoff_ms": 86_400_000, "initial_backoff_ms": 86_400_000, "multiplier": 100.0}),
        );
        let def = parse_submission(&body).expect("valid");
        let s = &def.steps[0];
        assert_eq!(
            s.retry,
            RetryPolicy {
                max_attempts: 1000,
                initial_backoff_ms: 0,
                multiplier: 1.0,
                ..RetryPolicy::action_default()
            }
        );
        assert_eq!(
            s.compensation_retry,
            RetryPolicy {
                max_attempts: 10,
                initial_backoff_ms: 86_400_000,
                max_backoff_ms: 86_400_000,
                multiplier: 100.0,
            }
        );
        let only_attempts = with_step(
            minimal(),
            0,
            "compensation_retry",
            json!({"max_attempts": 4}),
        );
        let def = parse_submission(&only_attempts).expect("valid");
        assert_eq!(
            def.steps[0].compensation_retry,
            RetryPolicy {
                max_attempts: 4,
                ..RetryPolicy::compensation_default()
            }
        );
    }
}
