//! The two-phase part of a submission (contract section 5): `mode`, `check_back` and
//! `prepare_timeout_ms`, checked together because each one's validity depends on the mode.

use serde_json::Value;

use super::cursor::{Cursor, Reported};
use super::retry::parse_retry;
use super::MAX_TIMEOUT_MS;
use crate::saga::definition::{
    CheckBack, RetryPolicy, SubmissionMode, DEFAULT_CHECK_BACK_TIMEOUT_MS,
    DEFAULT_PREPARE_TIMEOUT_MS,
};

const CHECK_BACK_FIELDS: &[&str] = &["participant", "url", "timeout_ms", "retry"];

/// The two-phase fields of a submission, defaults applied.
pub(super) struct TwoPhase {
    pub mode: SubmissionMode,
    pub check_back: Option<CheckBack>,
    pub prepare_timeout_ms: u64,
    pub check_back_retry: RetryPolicy,
    pub check_back_timeout_ms: u64,
}

impl TwoPhase {
    fn run() -> Self {
        TwoPhase {
            mode: SubmissionMode::Run,
            check_back: None,
            prepare_timeout_ms: DEFAULT_PREPARE_TIMEOUT_MS,
            check_back_retry: RetryPolicy::check_back_default(),
            check_back_timeout_ms: DEFAULT_CHECK_BACK_TIMEOUT_MS,
        }
    }
}

pub(super) fn parse_two_phase(saga: &mut Cursor<'_, '_>) -> TwoPhase {
    let mut mode_field = saga.field("mode");
    let mode = match mode_field.value() {
        None => Ok(SubmissionMode::Run),
        Some(Value::String(s)) if s == "run" => Ok(SubmissionMode::Run),
        Some(Value::String(s)) if s == "prepare" => Ok(SubmissionMode::Prepare),
        Some(_) => {
            mode_field.error("must be \"run\" or \"prepare\"");
            Err(Reported)
        }
    };
    let has_check_back = saga.field("check_back").value().is_some();
    let has_prepare_timeout = saga.field("prepare_timeout_ms").value().is_some();

    // In run mode the two-phase fields are meaningless: reporting their presence is enough, their
    // shape does not matter.
    if mode == Ok(SubmissionMode::Run) {
        let only_prepare = "only allowed when \"mode\" is \"prepare\"";
        if has_check_back {
            saga.field("check_back").error(only_prepare);
        }
        if has_prepare_timeout {
            saga.field("prepare_timeout_ms").error(only_prepare);
        }
        return TwoPhase::run();
    }

    let mut two_phase = TwoPhase {
        mode: SubmissionMode::Prepare,
        ..TwoPhase::run()
    };
    if has_check_back {
        parse_check_back(saga.field("check_back"), &mut two_phase);
    } else if mode.is_ok() {
        saga.field("check_back")
            .error("is required when \"mode\" is \"prepare\"");
    }
    two_phase.prepare_timeout_ms = saga
        .field("prepare_timeout_ms")
        .u64_or(1..=MAX_TIMEOUT_MS, DEFAULT_PREPARE_TIMEOUT_MS);
    two_phase
}

/// `check_back`: where to ask (`participant` or `url`) and, optionally, how patiently
/// (`timeout_ms` per attempt, `retry` policy).
fn parse_check_back(mut check_back: Cursor<'_, '_>, two_phase: &mut TwoPhase) {
    if !check_back.object(
        CHECK_BACK_FIELDS,
        "must be an object with \"participant\" or \"url\"",
    ) {
        return;
    }
    let has_participant = check_back.field("participant").value().is_some();
    let has_url = check_back.field("url").value().is_some();
    two_phase.check_back = match (has_participant, has_url) {
        (true, false) => check_back
            .field("participant")
            .name()
            .map(CheckBack::Participant),
        (false, true) => parse_url(check_back.field("url")).map(CheckBack::Url),
        (true, true) => {
            check_back.error("must have exactly one of \"participant\" or \"url\", not both");
            None
        }
        (false, false) => {
            check_back.error("must have \"participant\" or \"url\"");
            None
        }
    };
    two_phase.check_back_timeout_ms = check_back
        .field("timeout_ms")
        .u64_or(1..=MAX_TIMEOUT_MS, DEFAULT_CHECK_BACK_TIMEOUT_MS);
    two_phase.check_back_retry =
        parse_retry(check_back.field("retry"), RetryPolicy::check_back_default());
}

/// The check-back URL is fetched by the coordinator later, when nobody is around to read an error,
/// so obviously unusable URLs are refused now.
fn parse_url(mut url: Cursor<'_, '_>) -> Option<String> {
    let value = url.value()?;
    let Some(text) = value.as_str() else {
        url.error("must be a string");
        return None;
    };
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"));
    match rest {
        None => {
            url.error("must start with http:// or https://");
            None
        }
        Some("") => {
            url.error("must name a host after the scheme");
            None
        }
        Some(_) if text.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            url.error("must not contain whitespace or control characters");
            None
        }
        Some(_) => Some(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::saga::definition::{
        CheckBack, RetryPolicy, SubmissionMode, DEFAULT_CHECK_BACK_TIMEOUT_MS,
        DEFAULT_PREPARE_TIMEOUT_MS,
    };
    use crate::submission::fixtures::{minimal, single_error, with};
    use crate::submission::parse_submission;

    #[test]
    fn mode_rules() {
        assert_eq!(
            single_error(&with(minimal(), "mode", json!("later")), "mode"),
            "must be \"run\" or \"prepare\""
        );
        single_error(&with(minimal(), "mode", json!(1)), "mode");
        let run = parse_submission(&with(minimal(), "mode", json!("run"))).expect("valid");
        assert_eq!(run, parse_submission(&minimal()).expect("valid"));

        // check_back is required in prepare mode...
        let prepare = with(minimal(), "mode", json!("prepare"));
        assert_eq!(
            single_error(&prepare, "check_back"),
            "is required when \"mode\" is \"prepare\""
        );
        // ...and refused in run mode, explicit or default, as is prepare_timeout_ms.
        let cb = json!({"participant": "orders"});
        for body in [
            with(minimal(), "check_back", cb.clone()),
            with(with(minimal(), "mode", json!("run")), "check_back", cb),
        ] {
            single_error(&body, "check_back");
        }
        single_error(
            &with(minimal(), "prepare_timeout_ms", json!(5000)),
            "prepare_timeout_ms",
        );
    }

    #[test]
    fn prepare_mode_parses() {
        let body = with(
            with(minimal(), "mode", json!("prepare")),
            "check_back",
            json!({"participant": "orders"}),
        );
        let def = parse_submission(&body).expect("valid");
        assert_eq!(def.mode, SubmissionMode::Prepare);
        assert_eq!(
            def.check_back,
            Some(CheckBack::Participant("orders".into()))
        );
        assert_eq!(def.prepare_timeout_ms, DEFAULT_PREPARE_TIMEOUT_MS);

        let body = with(
            with(
                body,
                "check_back",
                json!({"url": "http://orders:8080/saga-check"}),
            ),
            "prepare_timeout_ms",
            json!(2500),
        );
        let def = parse_submission(&body).expect("valid");
        assert_eq!(
            def.check_back,
            Some(CheckBack::Url("http://orders:8080/saga-check".into()))
        );
        assert_eq!(def.prepare_timeout_ms, 2500);
    }

    #[test]
    fn check_back_rules() {
        let prepare = |cb: Value| with(with(minimal(), "mode", json!("prepare")), "check_back", cb);
        single_error(&prepare(json!("orders")), "check_back");
        assert!(single_error(&prepare(json!({})), "check_back").contains("participant"));
        assert!(single_error(
            &prepare(json!({"participant": "o", "url": "http://o"})),
            "check_back"
        )
        .contains("exactly one"));
        let msg = single_error(
            &prepare(json!({"participant": "o rders"})),
            "check_back.participant",
        );
        assert!(msg.starts_with("must match"));
        for bad in ["ftp://o", "orders", "http://", "https://a b", "HTTP:/x"] {
            single_error(&prepare(json!({"url": bad})), "check_back.url");
        }
        assert_eq!(
            single_error(&prepare(json!({"url": 8080})), "check_back.url"),
            "must be a string"
        );
        assert!(parse_submission(&prepare(json!({"url": "https://o/c"}))).is_ok());

        let bad_timeout = with(
            prepare(json!({"participant": "orders"})),
            "prepare_timeout_ms",
            json!(0),
        );
        single_error(&bad_timeout, "prepare_timeout_ms");
    }

    #[test]
    fn check_back_patience_has_defaults_and_can_be_set() {
        let prepare = |cb: Value| with(with(minimal(), "mode", json!("prepare")), "check_back", cb);
        let def = parse_submission(&prepare(json!({"participant": "orders"}))).expect("valid");
        assert_eq!(def.check_back_retry, RetryPolicy::check_back_default());
        assert_eq!(def.check_back_timeout_ms, DEFAULT_CHECK_BACK_TIMEOUT_MS);

        let def = parse_submission(&prepare(json!({
            "url": "http://orders/check", "timeout_ms": 250, "retry": {"max_attempts": 2}
        })))
        .expect("valid");
        assert_eq!(def.check_back_timeout_ms, 250);
        assert_eq!(def.check_back_retry.max_attempts, 2);
        assert_eq!(
            def.check_back_retry.initial_backoff_ms,
            RetryPolicy::check_back_default().initial_backoff_ms,
            "fields left out keep the check-back default"
        );

        single_error(
            &prepare(json!({"participant": "o", "timeout_ms": 0})),
            "check_back.timeout_ms",
        );
        single_error(
            &prepare(json!({"participant": "o", "retry": {"max_attempts": 0}})),
            "check_back.retry.max_attempts",
        );
    }
}
