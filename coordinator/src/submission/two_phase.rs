//! The two-phase part of a submission (contract section 5): `mode`, `check_back` and
//! `prepare_timeout_ms`, checked together because each one's validity depends on the mode.

use serde_json::Value;

use super::cursor::{Cursor, Reported};
use super::retry::parse_retry;
use super::{FieldError, MAX_TIMEOUT_MS};
use crate::saga::definition::{
    CheckBack, RetryPolicy, SagaDefinition, SubmissionMode, DEFAULT_CHECK_BACK_TIMEOUT_MS,
    DEFAULT_PREPARE_TIMEOUT_MS,
};

/// The hosts HTTP check-backs may be sent to (`SAGA_CHECK_BACK_HOSTS`); empty admits every host.
/// A check-back URL is a request the coordinator makes on a client's behalf, so an operator may
/// confine it to the initiators' hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckBackHosts(Vec<ListedHost>);

/// `host` (any port) or `host:port`, the host as the URL parser normalises it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListedHost {
    host: String,
    port: Option<u16>,
}

impl CheckBackHosts {
    /// Reads `host` and `host:port` entries (IPv6 in brackets); blank entries are skipped.
    pub fn parse(entries: &[String]) -> Result<CheckBackHosts, String> {
        let mut listed = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let wrong = || format!("check-back host {entry:?} is not `host` or `host:port`");
            let (host, port) = match entry.rsplit_once(':') {
                Some((host, port))
                    if !port.is_empty()
                        && port.chars().all(|c| c.is_ascii_digit())
                        && (!host.starts_with('[') || host.ends_with(']')) =>
                {
                    (host, Some(port.parse::<u16>().map_err(|_| wrong())?))
                }
                _ => (entry, None),
            };
            // The same parser as the check-back request's, so both read the host alike.
            let parsed = url::Url::parse(&format!("http://{host}/")).map_err(|_| wrong())?;
            match parsed.host_str() {
                Some(normal) if parsed.path() == "/" && parsed.username().is_empty() => {
                    listed.push(ListedHost {
                        host: normal.to_owned(),
                        port,
                    });
                }
                _ => return Err(wrong()),
            }
        }
        Ok(CheckBackHosts(listed))
    }

    /// Whether check-backs may be sent to `url`: always when no host is listed.
    pub fn admits(&self, url: &str) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Ok(parsed) = url::Url::parse(url) else {
            return false;
        };
        let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
            return false;
        };
        self.0
            .iter()
            .any(|listed| listed.host == host && listed.port.is_none_or(|p| p == port))
    }

    /// The broken rule of a definition whose check-back URL is not admitted, if it is not.
    pub fn refusal(&self, definition: &SagaDefinition) -> Option<FieldError> {
        match &definition.check_back {
            Some(CheckBack::Url(url)) if !self.admits(url) => Some(FieldError {
                field: "check_back.url".into(),
                message: "names a host the coordinator does not send check-backs to \
                          (SAGA_CHECK_BACK_HOSTS)"
                    .into(),
            }),
            _ => None,
        }
    }
}

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
    use crate::submission::{parse_submission, CheckBackHosts};

    fn hosts(entries: &[&str]) -> CheckBackHosts {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        CheckBackHosts::parse(&entries).expect("valid entries")
    }

    #[test]
    fn listed_check_back_hosts_admit_only_their_urls() {
        let none = hosts(&[]);
        assert!(
            none.admits("http://anywhere:1/x"),
            "no list admits every host"
        );
        assert_eq!(hosts(&["", " "]), none);

        let listed = hosts(&["Orders", "billing:8080", "[::1]:9000", "10.0.0.5"]);
        for admitted in [
            "http://orders/check",
            "https://ORDERS:8443/check?x=1",
            "http://billing:8080/check",
            "http://[::1]:9000/c",
            "http://10.0.0.5:7/c",
        ] {
            assert!(listed.admits(admitted), "{admitted}");
        }
        for refused in [
            "http://billing/check",
            "http://billing:8081/check",
            "http://evil/check",
            "http://orders.evil/check",
            "http://orders@evil/check",
            "http://evil\\@orders/check",
            "http://[::1]:9001/c",
            "not a url",
        ] {
            assert!(!listed.admits(refused), "{refused}");
        }
        // An explicit default port still names that port only.
        let port_80 = hosts(&["web:80"]);
        assert!(port_80.admits("http://web/c"));
        assert!(!port_80.admits("https://web/c"));

        for wrong in [
            "http://orders",
            "orders/check",
            "a b",
            "host:99999",
            "user@host",
        ] {
            let entries = vec![wrong.to_string()];
            assert!(CheckBackHosts::parse(&entries).is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn an_unlisted_check_back_url_is_refused_on_its_field() {
        let listed = hosts(&["orders:8080"]);
        let submit = |check_back: Value| {
            let body = with(
                with(minimal(), "mode", json!("prepare")),
                "check_back",
                check_back,
            );
            parse_submission(&body).expect("valid")
        };
        let refused = listed
            .refusal(&submit(json!({"url": "http://evil:8080/check"})))
            .expect("refused");
        assert_eq!(refused.field, "check_back.url");
        assert!(
            refused.message.contains("SAGA_CHECK_BACK_HOSTS"),
            "{}",
            refused.message
        );
        assert_eq!(
            listed.refusal(&submit(json!({"url": "http://orders:8080/c"}))),
            None
        );
        assert_eq!(
            listed.refusal(&submit(json!({"participant": "orders"}))),
            None
        );
        assert_eq!(
            listed.refusal(&parse_submission(&minimal()).expect("valid")),
            None
        );
    }

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

    proptest::proptest! {
        /// The URL pattern the OpenAPI document publishes accepts exactly what the parser does.
        #[test]
        fn the_published_url_pattern_is_the_rule(
            url in "(https?://|http:/|ftp://)?[a-z:/.\u{0}\u{1f}\u{7f}\u{85}\u{a0} \t]{0,12}"
        ) {
            let published = regex::Regex::new(crate::submission::CHECK_BACK_URL_PATTERN)
                .expect("a regex");
            let body = with(with(minimal(), "mode", json!("prepare")), "check_back", json!({"url": url}));
            proptest::prop_assert_eq!(
                published.is_match(&url),
                parse_submission(&body).is_ok(),
                "{:?}",
                url
            );
        }
    }
}
