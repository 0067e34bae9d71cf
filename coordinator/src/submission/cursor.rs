//! A cursor into the submitted body: the value at one place, that place's field path
//! (`steps[2].retry.max_attempts`), and the error list every part of the submission reports into.
//!
//! The parts read the body only through it (`step.field("timeout_ms").u64_or(1..=MAX, default)`),
//! so each error names the field it is about without a part spelling paths out, and the rules every
//! part shares (`null` is absent, unknown fields are errors, what a name is) live once, here.

use std::ops::RangeInclusive;

use serde_json::Value;

use super::FieldError;

use super::MAX_NAME_LEN;

const NAME_RULE: &str = concat!(
    "must match ",
    name_pattern!(),
    " (1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit)"
);

/// Marks a value that was present but invalid; its error has already been recorded. Lets callers
/// tell "absent, use the default" from "broken" without reporting twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reported;

/// One place in the body. Moving to a field or item borrows the cursor, so every cursor reports
/// into the one error list; parsing goes on after an error so that all of them are reported.
pub(super) struct Cursor<'a, 'e> {
    /// The value here; `None` when absent. A field that is `null` counts as absent (clients that
    /// serialise `None` as `null` must not be punished), an array item or the body itself does not.
    value: Option<&'a Value>,
    /// Path from the body, empty for the body itself.
    path: String,
    errs: &'e mut Vec<FieldError>,
}

impl<'a, 'e> Cursor<'a, 'e> {
    /// The whole body.
    pub(super) fn body(body: &'a Value, errs: &'e mut Vec<FieldError>) -> Self {
        Cursor {
            value: Some(body),
            path: String::new(),
            errs,
        }
    }

    pub(super) fn value(&self) -> Option<&'a Value> {
        self.value
    }

    /// Records a broken rule about the value here.
    pub(super) fn error(&mut self, message: impl Into<String>) {
        self.errs.push(FieldError {
            field: self.path.clone(),
            message: message.into(),
        });
    }

    /// Field `key` of the object here; absent if this is no object.
    pub(super) fn field(&mut self, key: &str) -> Cursor<'a, '_> {
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        Cursor {
            value: self
                .value
                .and_then(Value::as_object)
                .and_then(|obj| obj.get(key))
                .filter(|v| !v.is_null()),
            path,
            errs: self.errs,
        }
    }

    /// Item `index` of the array here; absent if this is no array or too short.
    pub(super) fn item(&mut self, index: usize) -> Cursor<'a, '_> {
        Cursor {
            value: self
                .value
                .and_then(Value::as_array)
                .and_then(|items| items.get(index)),
            path: format!("{}[{index}]", self.path),
            errs: self.errs,
        }
    }

    /// Whether the value here is an object. A present value that is not is reported as
    /// `not_object`; each of an object's fields that is not in `known` is reported as unknown, so a
    /// typo is never silently ignored.
    pub(super) fn object(&mut self, known: &[&str], not_object: &str) -> bool {
        let Some(value) = self.value else {
            return false;
        };
        let Some(obj) = value.as_object() else {
            self.error(not_object);
            return false;
        };
        for key in obj.keys() {
            if !known.contains(&key.as_str()) {
                self.field(key).error("unknown field");
            }
        }
        true
    }

    /// A name that must be there.
    pub(super) fn required_name(&mut self) -> Option<String> {
        if self.value.is_none() {
            self.error("is required");
            return None;
        }
        self.name()
    }

    /// A name, or `None` when absent or broken (reported).
    pub(super) fn name(&mut self) -> Option<String> {
        match self.value?.as_str() {
            Some(s) if is_valid_name(s) => Some(s.to_string()),
            Some(_) => {
                self.error(NAME_RULE);
                None
            }
            None => {
                self.error("must be a string");
                None
            }
        }
    }

    /// An integer within `range`; `Ok(None)` when absent.
    pub(super) fn u64_in(&mut self, range: RangeInclusive<u64>) -> Result<Option<u64>, Reported> {
        let Some(value) = self.value else {
            return Ok(None);
        };
        // JSON Schema's integer is any number without a fraction: `5.0` is 5, as the OpenAPI
        // document says (well within f64's exact integers for every range used here).
        let whole = value.as_u64().or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=MAX_EXACT_F64).contains(f))
                .map(|f| f as u64)
        });
        match whole {
            Some(n) if range.contains(&n) => Ok(Some(n)),
            Some(_) => {
                self.error(format!(
                    "must be between {} and {}",
                    range.start(),
                    range.end()
                ));
                Err(Reported)
            }
            None => {
                self.error(if *range.start() >= 1 {
                    "must be a positive integer"
                } else {
                    "must be a non-negative integer"
                });
                Err(Reported)
            }
        }
    }

    /// An integer within `range`, `default` when absent or broken (reported).
    pub(super) fn u64_or(&mut self, range: RangeInclusive<u64>, default: u64) -> u64 {
        self.u64_in(range).ok().flatten().unwrap_or(default)
    }
}

/// The largest integer an f64 holds exactly (2^53).
const MAX_EXACT_F64: f64 = 9_007_199_254_740_992.0;

/// Hand-written `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`: names end up in AMQP routing keys, queue
/// names and idempotency keys, so they are kept to a small, unambiguous alphabet.
pub(super) fn is_valid_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_NAME_LEN
                && first.is_ascii_alphanumeric()
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn name_pattern_matches_by_hand() {
        assert!(is_valid_name("place-order"));
        assert!(is_valid_name("9"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a\n"));
        assert!(!is_valid_name("a:b"));
        assert!(is_valid_name(&"z".repeat(64)));
        assert!(!is_valid_name(&"z".repeat(65)));
    }

    #[test]
    fn paths_name_fields_and_items() {
        let body = json!({"steps": [{"retry": {"max_attempts": "x"}}], "gone": null});
        let mut errs = Vec::new();
        let mut cursor = Cursor::body(&body, &mut errs);
        cursor.error("whole body");
        cursor
            .field("steps")
            .item(0)
            .field("retry")
            .field("max_attempts")
            .error("deep");
        assert_eq!(cursor.field("gone").value(), None, "null is absent");
        assert_eq!(cursor.field("steps").item(1).value(), None);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["", "steps[0].retry.max_attempts"]);
    }

    proptest! {
        /// The pattern the OpenAPI document publishes is the rule the hand-written check applies.
        #[test]
        fn the_published_name_pattern_is_the_rule(name in "[A-Za-z0-9._:\\- \n\u{e9}]{0,70}") {
            let published = regex::Regex::new(super::super::NAME_PATTERN).expect("a regex");
            prop_assert_eq!(published.is_match(&name), is_valid_name(&name), "{:?}", name);
        }
    }
}
