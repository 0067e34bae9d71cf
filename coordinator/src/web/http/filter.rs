//! The saga filters of a query string, parsed once for every read that selects sagas: the list
//! (`GET /api/v1/sagas`) takes all of them, the export the ones [`shared`] parses.

use chrono::{DateTime, Utc};

use super::page::field_error;
use crate::saga::SagaState;
use crate::store::SagaFilter;
use crate::submission::{is_name, FieldError, MAX_KEY_CHARS, NAME_PATTERN};

/// Longest `error` text searched for, in characters.
pub(super) const MAX_ERROR_TEXT: usize = 200;

/// What a `key` and an `error` text match (as the OpenAPI document says): no NUL, which Postgres
/// text cannot hold.
pub(super) const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";

/// The filters the list and the export share: `state` (repeatable), `name`, `finished_after` and
/// `finished_before`. Answers whether `key` was one of them.
pub(super) fn shared(
    key: &str,
    value: &str,
    filter: &mut SagaFilter,
    errors: &mut Vec<FieldError>,
) -> bool {
    match key {
        "state" => match value.parse::<SagaState>() {
            Ok(s) => filter.states.push(s),
            Err(_) => errors.push(field_error("state", format!("unknown state {value:?}"))),
        },
        "name" => filter.name = name(key, value, "saga", errors),
        "finished_after" => filter.finished_after = timestamp(key, value, errors),
        "finished_before" => filter.finished_before = timestamp(key, value, errors),
        _ => return false,
    }
    true
}

/// The list's further filters: `key`, `created_after`, `created_before`, `participant`, `step`
/// and `error`. Answers whether `key` was one of them.
pub(super) fn search(
    key: &str,
    value: &str,
    filter: &mut SagaFilter,
    errors: &mut Vec<FieldError>,
) -> bool {
    match key {
        // No saga has an empty or longer key, nor one with a NUL (which Postgres would not even
        // compare).
        "key" if is_text(value, MAX_KEY_CHARS) => filter.key = Some(value.to_owned()),
        "key" => errors.push(field_error(
            "key",
            format!("not a saga key (1 to {MAX_KEY_CHARS} characters, no NUL)"),
        )),
        "created_after" => filter.created_after = timestamp(key, value, errors),
        "created_before" => filter.created_before = timestamp(key, value, errors),
        "participant" => filter.participant = name(key, value, "participant", errors),
        "step" => filter.step = name(key, value, "step", errors),
        "error" if is_text(value, MAX_ERROR_TEXT) => filter.error = Some(value.to_owned()),
        "error" => errors.push(field_error(
            "error",
            format!("search for 1 to {MAX_ERROR_TEXT} characters, without NUL"),
        )),
        _ => return false,
    }
    true
}

/// 1 to `max` characters, no NUL.
fn is_text(value: &str, max: usize) -> bool {
    !value.is_empty() && value.chars().count() <= max && !value.contains('\0')
}

/// A saga, step or participant name (`of` says which): no saga has another, and one with a NUL
/// Postgres would not even compare.
fn name(key: &str, value: &str, of: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    if is_name(value) {
        return Some(value.to_owned());
    }
    errors.push(field_error(
        key,
        format!("not a {of} name (it matches {NAME_PATTERN})"),
    ));
    None
}

/// An RFC 3339 date-time (what the OpenAPI document's `format: date-time` says): `T` between date
/// and time (either case), seconds, and `Z` or a `±hh:mm` offset. chrono alone would also take a
/// space for the `T`, which the document's readers would not expect to work.
fn timestamp(key: &str, value: &str, errors: &mut Vec<FieldError>) -> Option<DateTime<Utc>> {
    let parsed = is_rfc3339_shape(value)
        .then(|| DateTime::parse_from_rfc3339(value).ok())
        .flatten();
    if parsed.is_none() {
        errors.push(field_error(
            key,
            "not an RFC 3339 timestamp (e.g. 2026-01-31T00:00:00Z)",
        ));
    }
    parsed.map(|at| at.with_timezone(&Utc))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` by its characters; the calendar is chrono's to check.
fn is_rfc3339_shape(value: &str) -> bool {
    let b = value.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(digits(0..4)
        && at(4, b"-")
        && digits(5..7)
        && at(7, b"-")
        && digits(8..10)
        && at(10, b"Tt")
        && digits(11..13)
        && at(13, b":")
        && digits(14..16)
        && at(16, b":")
        && digits(17..19))
    {
        return false;
    }
    let mut i = 19;
    if at(i, b".") {
        let start = i + 1;
        i = start;
        while at(i, b"0123456789") {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            digits(i + 1..i + 3) && at(i + 3, b":") && digits(i + 4..i + 6) && i + 6 == b.len()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> (SagaFilter, Vec<String>) {
        let mut filter = SagaFilter::default();
        let mut errors = Vec::new();
        for (key, value) in pairs {
            assert!(
                shared(key, value, &mut filter, &mut errors)
                    || search(key, value, &mut filter, &mut errors),
                "{key} is a filter"
            );
        }
        (filter, errors.into_iter().map(|e| e.field).collect())
    }

    #[test]
    fn every_filter_is_read_and_every_bad_value_named() {
        let (filter, errors) = parse(&[
            ("key", "order-1"),
            ("created_after", "2026-01-01T00:00:00Z"),
            ("created_before", "2026-01-02T00:00:00+01:00"),
            ("participant", "payments"),
            ("step", "charge"),
            ("error", "Card 50%_off \\ declined"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(filter.key.as_deref(), Some("order-1"));
        assert_eq!(
            filter.created_before.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-01-01T23:00:00+00:00")
        );
        assert!(filter.created_after.is_some());
        assert_eq!(filter.participant.as_deref(), Some("payments"));
        assert_eq!(filter.step.as_deref(), Some("charge"));
        assert_eq!(filter.error.as_deref(), Some("Card 50%_off \\ declined"));

        let long_error = "é".repeat(MAX_ERROR_TEXT + 1);
        let long_key = "k".repeat(MAX_KEY_CHARS + 1);
        let (_, errors) = parse(&[
            ("key", ""),
            ("key", &long_key),
            ("key", "a\0b"),
            ("created_after", "2026-01-01"),
            ("created_before", "now"),
            ("participant", "-payments"),
            ("step", "a b"),
            ("error", ""),
            ("error", &long_error),
            ("error", "\0"),
        ]);
        assert_eq!(
            errors,
            [
                "key",
                "key",
                "key",
                "created_after",
                "created_before",
                "participant",
                "step",
                "error",
                "error",
                "error"
            ]
        );
        let (filter, errors) = parse(&[("error", &"é".repeat(MAX_ERROR_TEXT))]);
        assert!(errors.is_empty() && filter.error.is_some());
    }

    #[test]
    fn the_published_text_pattern_is_the_rule_the_server_applies() {
        let pattern = regex::Regex::new(NO_NUL_PATTERN).expect("a regex");
        for text in ["x", "a b", "\u{1}", "\0", "a\0", "é"] {
            assert_eq!(pattern.is_match(text), is_text(text, 10), "{text:?}");
        }
    }

    #[test]
    fn only_rfc_3339_date_times_are_timestamps() {
        for good in [
            "2026-01-31T00:00:00Z",
            "2026-01-31t23:59:59z",
            "2026-01-31T23:59:59.123456789-05:30",
            "0001-01-01T00:00:00+00:00",
        ] {
            assert!(timestamp("t", good, &mut Vec::new()).is_some(), "{good}");
        }
        for bad in [
            "",
            "2026-01-31",
            "2026-01-31T00:00Z",
            "2026-01-31 00:00:00Z",
            "2026-01-31T00:00:00",
            "2026-01-31T00:00:00.Z",
            "2026-02-30T00:00:00Z",
            "2026-01-31T24:00:00Z",
            "2026-01-31T00:00:00+0100",
            "2026-01-31T00:00:00Z ",
            "+2026-01-31T00:00:00Z",
            "1769817600",
        ] {
            assert!(timestamp("t", bad, &mut Vec::new()).is_none(), "{bad}");
        }
    }
}
