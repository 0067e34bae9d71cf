//! Log lines of the coordinator and of participants, in one of two formats chosen by
//! `SAGA_LOG_FORMAT`: `text` (the default, for a person at a terminal) or `json` (one object per
//! line, for a log pipeline).
//!
//! Code logs through the `log` facade as before; a line about a saga passes its fields as the
//! facade's key-values, so both formats carry them without parsing the message:
//!
//! ```
//! # let saga_id = "0193a5c4-0000-7000-8000-000000000000";
//! log::info!(saga_id = saga_id, saga = "place-order", step = "reserve", attempt = 2; "timed out");
//! ```
//!
//! - `text` is env_logger's default line with the key-values appended as ` key=value`:
//!   `[2026-12-04T23:00:04Z INFO coordinator::runtime] timed out saga_id=… saga=place-order`.
//! - `json` is one object per line: `ts` (RFC 3339, UTC, milliseconds), `level`, `target`,
//!   `message`, then every key-value as a field of its own (numbers and booleans stay JSON numbers
//!   and booleans; anything else is its `Display` text).
//!
//! In both, a key-value whose value is null (a `None`) is left out, so a call site can pass an
//! optional field such as `trace_id` as it is. `RUST_LOG` filters as it always did.

use std::fmt;
use std::io::{self, Write};

use log::kv::{self, Key, Source, Value, VisitSource, VisitValue};
use log::Record;

/// The environment variable that chooses the format.
pub const FORMAT_VAR: &str = "SAGA_LOG_FORMAT";

/// The fields a JSON line always has; a key-value of the same name is left out rather than
/// written twice (a second `message` would make the line ambiguous to most readers).
const RESERVED: [&str; 4] = ["ts", "level", "target", "message"];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// env_logger's human line, key-values appended as `key=value`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `text` or `json` (case-insensitive, surrounding blanks ignored); empty means the default.
    pub fn parse(value: &str) -> Result<LogFormat, FormatError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(FormatError {
                value: value.to_string(),
            }),
        }
    }

    /// The format `SAGA_LOG_FORMAT` names; unset means the default.
    pub fn from_env() -> Result<LogFormat, FormatError> {
        match std::env::var(FORMAT_VAR) {
            Ok(value) => LogFormat::parse(&value),
            Err(std::env::VarError::NotPresent) => Ok(LogFormat::Text),
            Err(std::env::VarError::NotUnicode(value)) => Err(FormatError {
                value: value.to_string_lossy().into_owned(),
            }),
        }
    }
}

/// `SAGA_LOG_FORMAT` names no format: start-up stops with this, naming the variable and what it
/// may be, rather than logging in a format nobody asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    value: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{FORMAT_VAR} must be `text` or `json`, not {:?}",
            self.value
        )
    }
}

impl std::error::Error for FormatError {}

/// Installs the logger for a binary: the format from `SAGA_LOG_FORMAT`, the filter from
/// `RUST_LOG` or else `default_filter` (e.g. `"info"`). A logger installed already (a test that
/// set one up) is kept. Answers the format chosen.
pub fn init(default_filter: &str) -> Result<LogFormat, FormatError> {
    let format = LogFormat::from_env()?;
    // Only fails when a logger is installed already, which is then the one to keep.
    let _ = builder(format, default_filter).try_init();
    Ok(format)
}

/// An env_logger builder writing `format`, filtered by `RUST_LOG` or else `default_filter`, for a
/// caller that wants to adjust it further before installing it.
pub fn builder(format: LogFormat, default_filter: &str) -> env_logger::Builder {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter));
    match format {
        LogFormat::Text => {
            builder.format_key_values(|out, pairs| write_text_pairs(out, pairs));
        }
        LogFormat::Json => {
            builder.format(|out, record| {
                let ts = out.timestamp_millis();
                write_json_line(out, &ts, record)
            });
        }
    }
    builder
}

/// The trace id of a W3C `traceparent` (`version-traceid-parentid-flags`): its second field, if
/// it has the shape of one (32 hex digits). Anything else is no trace id, so a malformed header
/// never ends up as a field that looks like one.
pub fn trace_id(traceparent: Option<&str>) -> Option<&str> {
    let id = traceparent?.trim().split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Appends each non-null key-value as ` key=value` (env_logger's own spelling, without styling:
/// the same line whether or not it reaches a terminal).
pub fn write_text_pairs(out: &mut dyn Write, pairs: &dyn Source) -> io::Result<()> {
    struct Text<'a>(&'a mut dyn Write);
    impl<'kvs> VisitSource<'kvs> for Text<'_> {
        fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
            if !is_null(&value) {
                write!(self.0, " {key}={value}")?;
            }
            Ok(())
        }
    }
    pairs.visit(&mut Text(out)).map_err(io::Error::other)
}

/// Writes `record` as one JSON object and a newline: `ts`, `level`, `target`, `message`, then its
/// non-null key-values. serde_json escapes every string, so quotes and newlines in a message or a
/// value keep the line one valid object.
pub fn write_json_line(
    out: &mut dyn Write,
    ts: &dyn fmt::Display,
    record: &Record<'_>,
) -> io::Result<()> {
    // Built whole first: a line is written in one piece or not at all.
    let mut line = Vec::with_capacity(256);
    line.push(b'{');
    write_field(&mut line, "ts", &serde_json::Value::String(ts.to_string()))?;
    line.push(b',');
    write_field(
        &mut line,
        "level",
        &serde_json::Value::String(record.level().as_str().to_string()),
    )?;
    line.push(b',');
    write_field(
        &mut line,
        "target",
        &serde_json::Value::String(record.target().to_string()),
    )?;
    line.push(b',');
    write_field(
        &mut line,
        "message",
        &serde_json::Value::String(record.args().to_string()),
    )?;
    let mut fields = Json {
        line: &mut line,
        error: None,
    };
    record
        .key_values()
        .visit(&mut fields)
        .map_err(io::Error::other)?;
    if let Some(e) = fields.error {
        return Err(e);
    }
    line.extend_from_slice(b"}\n");
    out.write_all(&line)
}

struct Json<'a> {
    line: &'a mut Vec<u8>,
    error: Option<io::Error>,
}

impl<'kvs> VisitSource<'kvs> for Json<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        if RESERVED.contains(&key.as_str()) {
            return Ok(());
        }
        let Some(value) = json_value(&value) else {
            return Ok(());
        };
        self.line.push(b',');
        if let Err(e) = write_field(self.line, key.as_str(), &value) {
            self.error = Some(e);
        }
        Ok(())
    }
}

fn write_field(line: &mut Vec<u8>, key: &str, value: &serde_json::Value) -> io::Result<()> {
    serde_json::to_writer(&mut *line, key)?;
    line.push(b':');
    serde_json::to_writer(&mut *line, value)?;
    Ok(())
}

/// A key-value's value as JSON; `None` for null (left out).
fn json_value(value: &Value<'_>) -> Option<serde_json::Value> {
    struct Convert(Option<serde_json::Value>);
    impl<'v> VisitValue<'v> for Convert {
        fn visit_any(&mut self, value: Value<'_>) -> Result<(), kv::Error> {
            self.0 = Some(serde_json::Value::String(value.to_string()));
            Ok(())
        }
        fn visit_null(&mut self) -> Result<(), kv::Error> {
            self.0 = None;
            Ok(())
        }
        fn visit_u64(&mut self, value: u64) -> Result<(), kv::Error> {
            self.0 = Some(value.into());
            Ok(())
        }
        fn visit_i64(&mut self, value: i64) -> Result<(), kv::Error> {
            self.0 = Some(value.into());
            Ok(())
        }
        fn visit_f64(&mut self, value: f64) -> Result<(), kv::Error> {
            // NaN and infinities have no JSON number: their text instead.
            self.0 = Some(
                serde_json::Number::from_f64(value)
                    .map(serde_json::Value::Number)
                    .unwrap_or_else(|| serde_json::Value::String(value.to_string())),
            );
            Ok(())
        }
        fn visit_bool(&mut self, value: bool) -> Result<(), kv::Error> {
            self.0 = Some(value.into());
            Ok(())
        }
        fn visit_str(&mut self, value: &str) -> Result<(), kv::Error> {
            self.0 = Some(value.into());
            Ok(())
        }
    }
    let mut convert = Convert(Some(serde_json::Value::Null));
    // Visiting a captured value does not fail; should it, its text is still worth keeping.
    if value.visit(&mut convert).is_err() {
        return Some(serde_json::Value::String(value.to_string()));
    }
    convert.0
}

fn is_null(value: &Value<'_>) -> bool {
    json_value(value).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(record: &Record<'_>) -> (String, serde_json::Value) {
        let mut out = Vec::new();
        write_json_line(&mut out, &"2026-12-04T23:00:04.123Z", record).expect("written");
        let text = String::from_utf8(out).expect("UTF-8");
        let value = serde_json::from_str(&text).expect("one JSON object");
        (text, value)
    }

    #[test]
    fn a_record_with_key_values_is_one_json_object_with_each_as_a_field() {
        let saga_id = uuid_like();
        let trace: Option<&str> = Some("4bf92f3577b34da6a3ce929d0e0e4736");
        let none: Option<&str> = None;
        let pairs: [(&str, Value<'_>); 6] = [
            ("saga_id", Value::from_display(&saga_id)),
            ("saga", Value::from("place-order")),
            ("step", Value::from("reserve")),
            ("attempt", Value::from(3u32)),
            ("trace_id", kv::ToValue::to_value(&trace)),
            ("participant", kv::ToValue::to_value(&none)),
        ];
        let (text, json) = json_of(
            &Record::builder()
                .args(format_args!("saga {saga_id}: timed out"))
                .level(log::Level::Warn)
                .target("coordinator::runtime")
                .key_values(&pairs)
                .build(),
        );
        assert!(
            text.ends_with("}\n") && text.matches('\n').count() == 1,
            "{text}"
        );
        assert_eq!(
            json,
            serde_json::json!({
                "ts": "2026-12-04T23:00:04.123Z",
                "level": "WARN",
                "target": "coordinator::runtime",
                "message": format!("saga {saga_id}: timed out"),
                "saga_id": saga_id.to_string(),
                "saga": "place-order",
                "step": "reserve",
                "attempt": 3,
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            })
        );
        // The fixed fields come first, for a person reading raw lines.
        assert!(text.starts_with(r#"{"ts":"#), "{text}");
    }

    #[test]
    fn quotes_newlines_and_control_characters_stay_one_valid_json_line() {
        let step = "a \"quoted\"\nstep\t\u{1}";
        let pairs = [("step", step)];
        let (text, json) = json_of(
            &Record::builder()
                .args(format_args!("line one\nline \"two\" \\ {}", '\u{7}'))
                .level(log::Level::Error)
                .target("t")
                .key_values(&pairs)
                .build(),
        );
        assert_eq!(text.matches('\n').count(), 1, "one line: {text:?}");
        assert_eq!(json["message"], "line one\nline \"two\" \\ \u{7}");
        assert_eq!(json["step"], step);
    }

    #[test]
    fn a_key_value_never_replaces_a_fixed_field() {
        let pairs = [("message", "forged"), ("level", "TRACE"), ("saga", "s")];
        let (text, json) = json_of(
            &Record::builder()
                .args(format_args!("real"))
                .level(log::Level::Info)
                .target("t")
                .key_values(&pairs)
                .build(),
        );
        assert_eq!(json["message"], "real");
        assert_eq!(json["level"], "INFO");
        assert_eq!(json["saga"], "s");
        assert_eq!(text.matches("\"message\"").count(), 1, "{text}");
    }

    #[test]
    fn text_appends_each_key_value_and_leaves_nulls_out() {
        let none: Option<&str> = None;
        let pairs: [(&str, Value<'_>); 4] = [
            ("saga", Value::from("place-order")),
            ("step", Value::from("reserve")),
            ("attempt", Value::from(2u32)),
            ("trace_id", kv::ToValue::to_value(&none)),
        ];
        let mut out = Vec::new();
        write_text_pairs(&mut out, &pairs).expect("written");
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            " saga=place-order step=reserve attempt=2"
        );
    }

    #[test]
    fn the_format_is_text_json_or_a_clear_error() {
        assert_eq!(LogFormat::parse(""), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(" JSON "), Ok(LogFormat::Json));
        let error = LogFormat::parse("xml").expect_err("not a format");
        assert_eq!(
            error.to_string(),
            "SAGA_LOG_FORMAT must be `text` or `json`, not \"xml\""
        );
    }

    #[test]
    fn the_trace_id_is_the_second_field_of_a_well_formed_traceparent() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id(Some(&format!("00-{id}-00f067aa0ba902b7-01"))),
            Some(id)
        );
        assert_eq!(trace_id(None), None);
        assert_eq!(trace_id(Some("garbage")), None);
        assert_eq!(trace_id(Some("00-short-00f067aa0ba902b7-01")), None);
        assert_eq!(
            trace_id(Some(
                "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            )),
            None
        );
    }

    /// A saga id's shape, without a dependency on uuid: anything `Display` is captured as text.
    fn uuid_like() -> impl fmt::Display {
        "0193a5c4-8f00-7000-8000-00000000abcd"
    }
}
