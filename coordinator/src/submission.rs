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

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::saga::definition::{
    CheckBack, RetryPolicy, SagaDefinition, StepDefinition, SubmissionMode,
    DEFAULT_CHECK_BACK_TIMEOUT_MS, DEFAULT_PREPARE_TIMEOUT_MS, DEFAULT_STEP_TIMEOUT_MS, MAX_STEPS,
};

/// Longest accepted `timeout_ms` / `prepare_timeout_ms`: 30 days. Anything longer is almost
/// certainly a unit mistake (seconds vs. milliseconds gone wrong the other way).
pub const MAX_TIMEOUT_MS: u64 = 2_592_000_000;
/// Longest accepted backoff between two attempts: one day.
pub const MAX_BACKOFF_MS: u64 = 86_400_000;
/// Most attempts a retry policy may ask for.
pub const MAX_ATTEMPTS: u64 = 1000;
/// Longest accepted idempotency `key`, in characters.
pub const MAX_KEY_CHARS: usize = 200;
/// Accepted range of a retry policy's `multiplier`.
const MULTIPLIER_RANGE: std::ops::RangeInclusive<f64> = 1.0..=100.0;
/// Longest name (saga, step, participant, action, compensation).
const MAX_NAME_LEN: usize = 64;

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
const STEP_FIELDS: &[&str] = &[
    "name",
    "participant",
    "action",
    "compensation",
    "payload",
    "timeout_ms",
    "retry",
    "compensation_retry",
    "after",
];
const RETRY_FIELDS: &[&str] = &[
    "max_attempts",
    "initial_backoff_ms",
    "max_backoff_ms",
    "multiplier",
];
const CHECK_BACK_FIELDS: &[&str] = &["participant", "url", "timeout_ms", "retry"];

const NAME_RULE: &str =
    "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ (1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit)";

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
pub fn parse_submission(body: &serde_json::Value) -> Result<SagaDefinition, Vec<FieldError>> {
    let mut errs = Errors::default();
    let Some(obj) = body.as_object() else {
        errs.add("", "must be a JSON object");
        return Err(errs.0);
    };
    check_unknown(obj, TOP_FIELDS, "", &mut errs);
    if contract::holds_nul(body) {
        errs.add(
            "",
            "must not hold the NUL character (\\u0000) in any string: Postgres cannot store it",
        );
    }

    let name = required_name(obj, "name", "", &mut errs);
    let key = parse_key(obj, &mut errs);
    let payload = get(obj, "payload").cloned().unwrap_or(Value::Null);
    let timeout_ms = optional_int(obj, "timeout_ms", "", 1, MAX_TIMEOUT_MS, &mut errs)
        .ok()
        .flatten();
    let steps = parse_steps(obj, &mut errs);
    let two_phase = parse_two_phase(obj, &mut errs);

    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(SagaDefinition {
        name: name.unwrap_or_default(),
        key,
        payload,
        timeout_ms,
        mode: two_phase.mode,
        check_back: two_phase.check_back,
        prepare_timeout_ms: two_phase.prepare_timeout_ms,
        check_back_retry: two_phase.check_back_retry,
        check_back_timeout_ms: two_phase.check_back_timeout_ms,
        steps,
    })
}

/// Accumulates errors; parsing goes on after an error so that all of them are reported.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Marks a value that was present but invalid; its error has already been recorded. Lets callers
/// tell "absent, use the default" from "broken" without reporting twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reported;

fn path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A field's value, with `null` treated as absent.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn check_unknown(obj: &Map<String, Value>, known: &[&str], prefix: &str, errs: &mut Errors) {
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            errs.add(path(prefix, key), "unknown field");
        }
    }
}

/// Hand-written `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`: names end up in AMQP routing keys, queue
/// names and idempotency keys, so they are kept to a small, unambiguous alphabet.
fn is_valid_name(s: &str) -> bool {
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

fn name_value(value: &Value, field: &str, errs: &mut Errors) -> Result<String, Reported> {
    match value.as_str() {
        Some(s) if is_valid_name(s) => Ok(s.to_string()),
        Some(_) => {
            errs.add(field, NAME_RULE);
            Err(Reported)
        }
        None => {
            errs.add(field, "must be a string");
            Err(Reported)
        }
    }
}

fn required_name(
    obj: &Map<String, Value>,
    key: &str,
    prefix: &str,
    errs: &mut Errors,
) -> Option<String> {
    let field = path(prefix, key);
    match get(obj, key) {
        Some(v) => name_value(v, &field, errs).ok(),
        None => {
            errs.add(field, "is required");
            None
        }
    }
}

fn optional_name(
    obj: &Map<String, Value>,
    key: &str,
    prefix: &str,
    errs: &mut Errors,
) -> Option<String> {
    get(obj, key).and_then(|v| name_value(v, &path(prefix, key), errs).ok())
}

/// An integer field within `min..=max`; `Ok(None)` when absent.
fn optional_int(
    obj: &Map<String, Value>,
    key: &str,
    prefix: &str,
    min: u64,
    max: u64,
    errs: &mut Errors,
) -> Result<Option<u64>, Reported> {
    let Some(value) = get(obj, key) else {
        return Ok(None);
    };
    let field = path(prefix, key);
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        Some(_) => {
            errs.add(field, format!("must be between {min} and {max}"));
            Err(Reported)
        }
        None => {
            let kind = if min >= 1 {
                "must be a positive integer"
            } else {
                "must be a non-negative integer"
            };
            errs.add(field, kind);
            Err(Reported)
        }
    }
}

fn parse_key(obj: &Map<String, Value>, errs: &mut Errors) -> Option<String> {
    let value = get(obj, "key")?;
    let Some(key) = value.as_str() else {
        errs.add("key", "must be a string");
        return None;
    };
    let chars = key.chars().count();
    if chars == 0 {
        errs.add("key", "must not be empty");
        None
    } else if chars > MAX_KEY_CHARS {
        errs.add("key", format!("must be at most {MAX_KEY_CHARS} characters"));
        None
    } else {
        Some(key.to_string())
    }
}

/// A retry policy; fields the client leaves out keep the value of `default`.
fn parse_retry(
    value: Option<&Value>,
    field: &str,
    default: RetryPolicy,
    errs: &mut Errors,
) -> RetryPolicy {
    let Some(value) = value else {
        return default;
    };
    let Some(obj) = value.as_object() else {
        errs.add(field, "must be an object");
        return default;
    };
    check_unknown(obj, RETRY_FIELDS, field, errs);

    let max_attempts = optional_int(obj, "max_attempts", field, 1, MAX_ATTEMPTS, errs);
    let initial = optional_int(obj, "initial_backoff_ms", field, 0, MAX_BACKOFF_MS, errs);
    let max = optional_int(obj, "max_backoff_ms", field, 0, MAX_BACKOFF_MS, errs);
    let multiplier = match get(obj, "multiplier") {
        None => default.multiplier,
        Some(v) => match v.as_f64() {
            Some(m) if MULTIPLIER_RANGE.contains(&m) => m,
            Some(_) => {
                errs.add(
                    path(field, "multiplier"),
                    format!(
                        "must be between {:.1} and {:.1}",
                        MULTIPLIER_RANGE.start(),
                        MULTIPLIER_RANGE.end()
                    ),
                );
                default.multiplier
            }
            None => {
                errs.add(path(field, "multiplier"), "must be a number");
                default.multiplier
            }
        },
    };

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
                errs.add(
                    path(field, "max_backoff_ms"),
                    format!(
                        "must be at least initial_backoff_ms ({})",
                        policy.initial_backoff_ms
                    ),
                );
            } else if initial.is_some() {
                errs.add(
                    path(field, "initial_backoff_ms"),
                    format!(
                        "must not exceed max_backoff_ms (default {})",
                        policy.max_backoff_ms
                    ),
                );
            }
        }
    }
    policy
}

/// A step with its fields checked but its `after` list not yet resolved to indices (that needs
/// every step's name).
struct StepDraft<'a> {
    def: StepDefinition,
    /// Whether the name was present and a string, so other steps may refer to it.
    has_name: bool,
    after: Option<&'a Value>,
}

fn parse_step<'a>(value: &'a Value, prefix: &str, errs: &mut Errors) -> Option<StepDraft<'a>> {
    let Some(obj) = value.as_object() else {
        errs.add(prefix, "must be an object");
        return None;
    };
    check_unknown(obj, STEP_FIELDS, prefix, errs);

    let raw_name = get(obj, "name").and_then(Value::as_str);
    let name = required_name(obj, "name", prefix, errs);
    let participant = required_name(obj, "participant", prefix, errs);
    let action = required_name(obj, "action", prefix, errs);
    let compensation = optional_name(obj, "compensation", prefix, errs);
    let payload = get(obj, "payload").cloned().unwrap_or(Value::Null);
    let timeout_ms = optional_int(obj, "timeout_ms", prefix, 1, MAX_TIMEOUT_MS, errs)
        .ok()
        .flatten()
        .unwrap_or(DEFAULT_STEP_TIMEOUT_MS);
    let retry = parse_retry(
        get(obj, "retry"),
        &path(prefix, "retry"),
        RetryPolicy::action_default(),
        errs,
    );
    let compensation_retry = parse_retry(
        get(obj, "compensation_retry"),
        &path(prefix, "compensation_retry"),
        RetryPolicy::compensation_default(),
        errs,
    );

    Some(StepDraft {
        def: StepDefinition {
            // A badly formed name is already reported; keep the raw text so that duplicate and
            // `after` checks still see it and do not pile up follow-on errors.
            name: name
                .or_else(|| raw_name.map(str::to_string))
                .unwrap_or_default(),
            participant: participant.unwrap_or_default(),
            action: action.unwrap_or_default(),
            compensation,
            payload,
            timeout_ms,
            retry,
            compensation_retry,
            after: Vec::new(),
        },
        has_name: raw_name.is_some(),
        after: get(obj, "after"),
    })
}

fn parse_steps(obj: &Map<String, Value>, errs: &mut Errors) -> Vec<StepDefinition> {
    let Some(value) = get(obj, "steps") else {
        errs.add("steps", "is required");
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        errs.add("steps", "must be an array");
        return Vec::new();
    };
    if items.is_empty() {
        errs.add("steps", "must have at least 1 step");
        return Vec::new();
    }
    if items.len() > MAX_STEPS {
        errs.add(
            "steps",
            format!("must have at most {MAX_STEPS} steps, got {}", items.len()),
        );
    }

    let drafts: Vec<Option<StepDraft>> = items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_step(item, &format!("steps[{i}]"), errs))
        .collect();

    // First occurrence wins; the later duplicate is the one reported.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, draft) in drafts.iter().enumerate() {
        let Some(draft) = draft.as_ref().filter(|d| d.has_name) else {
            continue;
        };
        let name = draft.def.name.as_str();
        if index.contains_key(name) {
            errs.add(
                format!("steps[{i}].name"),
                format!("duplicate step name \"{name}\""),
            );
        } else {
            index.insert(name, i);
        }
    }

    let graph = drafts
        .iter()
        .any(|d| d.as_ref().is_some_and(|d| d.after.is_some()));
    let deps: Vec<Vec<usize>> = if graph {
        drafts
            .iter()
            .enumerate()
            .map(|(i, d)| match d.as_ref().and_then(|d| d.after) {
                Some(after) => resolve_after(after, i, &index, errs),
                None => Vec::new(),
            })
            .collect()
    } else {
        (0..drafts.len())
            .map(|i| if i == 0 { Vec::new() } else { vec![i - 1] })
            .collect()
    };

    if let Some(cycle) = find_cycle(&deps) {
        let names: Vec<&str> = cycle
            .iter()
            .map(|&i| drafts[i].as_ref().map_or("?", |d| d.def.name.as_str()))
            .collect();
        errs.add("steps", format!("dependency cycle: {}", names.join(" -> ")));
    }

    drafts
        .into_iter()
        .zip(deps)
        .filter_map(|(draft, after)| draft.map(|d| StepDefinition { after, ..d.def }))
        .collect()
}

/// Turns one step's `after` list into sorted, distinct indices of other steps.
fn resolve_after(
    value: &Value,
    step: usize,
    index: &HashMap<&str, usize>,
    errs: &mut Errors,
) -> Vec<usize> {
    let field = format!("steps[{step}].after");
    let Some(items) = value.as_array() else {
        errs.add(field, "must be an array of step names");
        return Vec::new();
    };
    let mut deps = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let item_field = format!("{field}[{j}]");
        let Some(name) = item.as_str() else {
            errs.add(item_field, "must be a string");
            continue;
        };
        match index.get(name) {
            None => errs.add(item_field, format!("unknown step \"{name}\"")),
            Some(&dep) if dep == step => errs.add(item_field, "a step cannot depend on itself"),
            Some(dep) if deps.contains(dep) => {
                errs.add(item_field, format!("duplicate dependency \"{name}\""))
            }
            Some(&dep) => deps.push(dep),
        }
    }
    deps.sort_unstable();
    deps
}

/// The first dependency cycle found, as step indices with the first one repeated at the end
/// (`[a, b, a]`: a waits for b, which waits for a). Deterministic: nodes and edges are visited in
/// ascending index order, so the same submission always reports the same cycle.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mark {
        New,
        Active,
        Done,
    }

    fn visit(
        node: usize,
        deps: &[Vec<usize>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[node] = Mark::Active;
        stack.push(node);
        for &dep in &deps[node] {
            match marks[dep] {
                Mark::Active => {
                    let start = stack.iter().position(|&n| n == dep)?;
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(dep);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(dep, deps, marks, stack) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[node] = Mark::Done;
        None
    }

    let mut marks = vec![Mark::New; deps.len()];
    let mut stack = Vec::new();
    (0..deps.len()).find_map(|node| {
        if marks[node] == Mark::New {
            visit(node, deps, &mut marks, &mut stack)
        } else {
            None
        }
    })
}

/// The two-phase part of a submission (contract, section 5).
struct TwoPhase {
    mode: SubmissionMode,
    check_back: Option<CheckBack>,
    prepare_timeout_ms: u64,
    check_back_retry: RetryPolicy,
    check_back_timeout_ms: u64,
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

/// `mode`, `check_back` and `prepare_timeout_ms` (contract section 5), checked together because
/// each one's validity depends on the mode.
fn parse_two_phase(obj: &Map<String, Value>, errs: &mut Errors) -> TwoPhase {
    let mode = match get(obj, "mode") {
        None => Ok(SubmissionMode::Run),
        Some(Value::String(s)) if s == "run" => Ok(SubmissionMode::Run),
        Some(Value::String(s)) if s == "prepare" => Ok(SubmissionMode::Prepare),
        Some(_) => {
            errs.add("mode", "must be \"run\" or \"prepare\"");
            Err(Reported)
        }
    };
    let check_back_value = get(obj, "check_back");
    let has_prepare_timeout = get(obj, "prepare_timeout_ms").is_some();

    // In run mode the two-phase fields are meaningless: reporting their presence is enough, their
    // shape does not matter.
    if mode == Ok(SubmissionMode::Run) {
        let only_prepare = "only allowed when \"mode\" is \"prepare\"";
        if check_back_value.is_some() {
            errs.add("check_back", only_prepare);
        }
        if has_prepare_timeout {
            errs.add("prepare_timeout_ms", only_prepare);
        }
        return TwoPhase::run();
    }

    let mut two_phase = TwoPhase {
        mode: SubmissionMode::Prepare,
        ..TwoPhase::run()
    };
    match check_back_value {
        Some(value) => parse_check_back(value, &mut two_phase, errs),
        None => {
            if mode.is_ok() {
                errs.add("check_back", "is required when \"mode\" is \"prepare\"");
            }
        }
    }
    two_phase.prepare_timeout_ms =
        optional_int(obj, "prepare_timeout_ms", "", 1, MAX_TIMEOUT_MS, errs)
            .ok()
            .flatten()
            .unwrap_or(DEFAULT_PREPARE_TIMEOUT_MS);
    two_phase
}

/// `check_back`: where to ask (`participant` or `url`) and, optionally, how patiently
/// (`timeout_ms` per attempt, `retry` policy).
fn parse_check_back(value: &Value, two_phase: &mut TwoPhase, errs: &mut Errors) {
    let Some(obj) = value.as_object() else {
        errs.add(
            "check_back",
            "must be an object with \"participant\" or \"url\"",
        );
        return;
    };
    check_unknown(obj, CHECK_BACK_FIELDS, "check_back", errs);
    two_phase.check_back = match (get(obj, "participant"), get(obj, "url")) {
        (Some(participant), None) => name_value(participant, "check_back.participant", errs)
            .ok()
            .map(CheckBack::Participant),
        (None, Some(url)) => parse_url(url, errs).map(CheckBack::Url),
        (Some(_), Some(_)) => {
            errs.add(
                "check_back",
                "must have exactly one of \"participant\" or \"url\", not both",
            );
            None
        }
        (None, None) => {
            errs.add("check_back", "must have \"participant\" or \"url\"");
            None
        }
    };
    two_phase.check_back_timeout_ms =
        optional_int(obj, "timeout_ms", "check_back", 1, MAX_TIMEOUT_MS, errs)
            .ok()
            .flatten()
            .unwrap_or(DEFAULT_CHECK_BACK_TIMEOUT_MS);
    two_phase.check_back_retry = parse_retry(
        get(obj, "retry"),
        "check_back.retry",
        RetryPolicy::check_back_default(),
        errs,
    );
}

/// The check-back URL is fetched by the coordinator later, when nobody is around to read an error,
/// so obviously unusable URLs are refused now.
fn parse_url(value: &Value, errs: &mut Errors) -> Option<String> {
    const FIELD: &str = "check_back.url";
    let Some(url) = value.as_str() else {
        errs.add(FIELD, "must be a string");
        return None;
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        None => {
            errs.add(FIELD, "must start with http:// or https://");
            None
        }
        Some("") => {
            errs.add(FIELD, "must name a host after the scheme");
            None
        }
        Some(_) if url.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            errs.add(FIELD, "must not contain whitespace or control characters");
            None
        }
        Some(_) => Some(url.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example() -> Value {
        json!({
          "name": "place-order",
          "key": "order-8812",
          "payload": {"order_id": 8812},
          "timeout_ms": 60000,
          "steps": [
            {"name": "reserve", "participant": "inventory", "action": "reserve", "compensation": "release",
             "payload": {"sku": "A-1", "qty": 2}, "timeout_ms": 5000,
             "retry": {"max_attempts": 5, "initial_backoff_ms": 100, "max_backoff_ms": 10000, "multiplier": 2.0}},
            {"name": "charge", "participant": "payments", "action": "charge", "compensation": "refund",
             "payload": {"amount_cents": 4200}},
            {"name": "notify", "participant": "mailer", "action": "send-confirmation"}
          ]
        })
    }

    fn minimal() -> Value {
        json!({"name": "s", "steps": [{"name": "a", "participant": "p", "action": "do"}]})
    }

    fn errors(body: &Value) -> Vec<FieldError> {
        match parse_submission(body) {
            Ok(def) => panic!("expected errors, got {def:?}"),
            Err(errs) => errs,
        }
    }

    /// Asserts the body fails with exactly one error, on `field`, and returns its message.
    fn single_error(body: &Value, field: &str) -> String {
        let errs = errors(body);
        assert_eq!(
            errs.len(),
            1,
            "expected one error on {field:?}, got {errs:?}"
        );
        assert_eq!(errs[0].field, field, "{errs:?}");
        errs[0].message.clone()
    }

    fn with(mut body: Value, key: &str, value: Value) -> Value {
        body[key] = value;
        body
    }

    fn with_step(mut body: Value, step: usize, key: &str, value: Value) -> Value {
        body["steps"][step][key] = value;
        body
    }

    fn graph(steps: Value) -> Value {
        json!({"name": "g", "steps": steps})
    }

    fn step(name: &str, after: Value) -> Value {
        let mut s = json!({"name": name, "participant": "p", "action": "do"});
        if !after.is_null() {
            s["after"] = after;
        }
        s
    }

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
    fn step_names_are_checked() {
        for field in ["name", "participant", "action"] {
            let mut body = minimal();
            body["steps"][0].as_object_mut().map(|o| o.remove(field));
            assert_eq!(
                single_error(&body, &format!("steps[0].{field}")),
                "is required"
            );
        }
        for field in ["name", "participant", "action", "compensation"] {
            let body = with_step(minimal(), 0, field, json!("bad name"));
            let msg = single_error(&body, &format!("steps[0].{field}"));
            assert!(msg.starts_with("must match"), "{msg}");
            let body = with_step(minimal(), 0, field, json!(["x"]));
            assert_eq!(
                single_error(&body, &format!("steps[0].{field}")),
                "must be a string"
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

    #[test]
    fn steps_rules() {
        let mut body = minimal();
        body.as_object_mut().map(|o| o.remove("steps"));
        assert_eq!(single_error(&body, "steps"), "is required");
        assert_eq!(
            single_error(&with(minimal(), "steps", json!({})), "steps"),
            "must be an array"
        );
        single_error(&with(minimal(), "steps", json!([])), "steps");
        let many: Vec<Value> = (0..=MAX_STEPS)
            .map(|i| step(&format!("s{i}"), Value::Null))
            .collect();
        single_error(&with(minimal(), "steps", json!(many)), "steps");
        let max: Vec<Value> = (0..MAX_STEPS)
            .map(|i| step(&format!("s{i}"), Value::Null))
            .collect();
        let def = parse_submission(&with(minimal(), "steps", json!(max))).expect("valid");
        assert_eq!(def.steps.len(), MAX_STEPS);
        assert_eq!(def.steps[99].after, vec![98]);
        assert_eq!(
            single_error(
                &with(minimal(), "steps", json!([step("a", Value::Null), "b"])),
                "steps[1]"
            ),
            "must be an object"
        );
    }

    #[test]
    fn duplicate_step_names_blame_the_later_one() {
        let body = graph(json!([
            step("reserve", Value::Null),
            step("charge", Value::Null),
            step("charge", Value::Null)
        ]));
        assert_eq!(
            single_error(&body, "steps[2].name"),
            "duplicate step name \"charge\""
        );
    }

    #[test]
    fn sequential_order_without_after() {
        let def = parse_submission(&graph(json!([
            step("a", Value::Null),
            step("b", Value::Null),
            step("c", Value::Null)
        ])))
        .expect("valid");
        let after: Vec<Vec<usize>> = def.steps.iter().map(|s| s.after.clone()).collect();
        assert_eq!(after, vec![vec![], vec![0], vec![1]]);
    }

    #[test]
    fn any_after_switches_to_the_graph() {
        // One empty `after` is enough: every step then has exactly its own list.
        let def = parse_submission(&graph(json!([
            step("a", Value::Null),
            step("b", json!([])),
            step("c", Value::Null)
        ])))
        .expect("valid");
        assert!(def.steps.iter().all(|s| s.after.is_empty()));

        let def = parse_submission(&graph(json!([
            step("a", Value::Null),
            step("b", json!(["a"])),
            step("c", json!(["a"])),
            step("d", json!(["c", "b", "a"]))
        ])))
        .expect("valid");
        let after: Vec<Vec<usize>> = def.steps.iter().map(|s| s.after.clone()).collect();
        assert_eq!(after, vec![vec![], vec![0], vec![0], vec![0, 1, 2]]);
        assert_eq!(def.dependents(0).collect::<Vec<_>>(), vec![1, 2, 3]);

        // A step may depend on one listed later in the array.
        let def = parse_submission(&graph(json!([
            step("a", json!(["b"])),
            step("b", json!([]))
        ])))
        .expect("valid");
        assert_eq!(def.steps[0].after, vec![1]);
    }

    #[test]
    fn after_rules() {
        let unknown = graph(json!([
            step("a", Value::Null),
            step("b", json!(["charge"]))
        ]));
        assert_eq!(
            single_error(&unknown, "steps[1].after[0]"),
            "unknown step \"charge\""
        );
        let not_array = graph(json!([step("a", Value::Null), step("b", json!("a"))]));
        assert_eq!(
            single_error(&not_array, "steps[1].after"),
            "must be an array of step names"
        );
        let not_string = graph(json!([step("a", Value::Null), step("b", json!(["a", 0]))]));
        assert_eq!(
            single_error(&not_string, "steps[1].after[1]"),
            "must be a string"
        );
        let self_dep = graph(json!([step("a", Value::Null), step("b", json!(["b"]))]));
        single_error(&self_dep, "steps[1].after[0]");
        let dup = graph(json!([
            step("a", Value::Null),
            step("b", json!(["a", "a"]))
        ]));
        assert_eq!(
            single_error(&dup, "steps[1].after[1]"),
            "duplicate dependency \"a\""
        );
    }

    #[test]
    fn cycles_are_reported_once_with_their_path() {
        let two = graph(json!([step("a", json!(["b"])), step("b", json!(["a"]))]));
        assert_eq!(single_error(&two, "steps"), "dependency cycle: a -> b -> a");

        let three = graph(json!([
            step("start", json!([])),
            step("x", json!(["start", "z"])),
            step("y", json!(["x"])),
            step("z", json!(["y"]))
        ]));
        assert_eq!(
            single_error(&three, "steps"),
            "dependency cycle: x -> z -> y -> x"
        );
    }

    #[test]
    fn cycle_finder_accepts_dags() {
        assert_eq!(find_cycle(&[vec![], vec![0], vec![0, 1]]), None);
        assert_eq!(
            find_cycle(&[vec![1], vec![2], vec![0]]),
            Some(vec![0, 1, 2, 0])
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
