//! OpenTelemetry for sagas: the trace context a saga carries, its spans, and their OTLP export.
//!
//! Off unless configured ([`export::wanted`]): then nothing is built, no connection is made, and
//! every caller's check is one load of a global ([`exporting`]). The only module that knows the
//! OpenTelemetry crates.
//!
//! Spans are not kept open in memory while a saga runs: each is built once, when it ends, from the
//! saga's durable data (its creation time, the dispatch times of its event log), with ids derived
//! from the saga's coordinates ([`context`]). So a span that began before a restart ends after it
//! with the ids and times the first coordinator would have given it.

pub mod context;
pub mod export;
pub mod spans;

pub use context::TraceParent;
pub use export::{exporting, install, shutdown};

use crate::saga::machine::Command;
use crate::saga::{CommandKind, Saga};
use uuid::Uuid;

/// The `traceparent` a new saga is stored with: the caller's, when it sent a valid one (the saga
/// span is its child), else a new trace rooted at the saga span.
pub fn saga_traceparent(caller: Option<&str>, saga_id: Uuid) -> String {
    caller
        .and_then(TraceParent::parse)
        .unwrap_or_else(|| TraceParent::new_root(saga_id))
        .to_string()
}

/// The `tracestate` a new saga keeps and passes on: the caller's, if it came with a valid
/// `traceparent` (it belongs to that trace) and is well formed (W3C: at most 512 printable ASCII
/// characters); else none.
pub fn saga_tracestate(caller: Option<&str>, tracestate: Option<&str>) -> Option<String> {
    caller.and_then(TraceParent::parse)?;
    let tracestate = tracestate?.trim();
    let well_formed = !tracestate.is_empty()
        && tracestate.len() <= 512
        && tracestate.bytes().all(|b| (0x20..=0x7e).contains(&b));
    well_formed.then(|| tracestate.to_owned())
}

/// The `traceparent` a command carries: with spans exported, the span of the command's attempt
/// (so the participant's span is its child); without, the saga's context as stored.
pub fn command_traceparent(saga: &Saga, command: &Command) -> Option<String> {
    attempt_traceparent(saga, command.step, command.kind, command.attempt)
}

/// [`command_traceparent`] by the attempt's coordinates (an HTTP check-back has no `Command`).
pub fn attempt_traceparent(
    saga: &Saga,
    step: Option<usize>,
    kind: CommandKind,
    attempt: u32,
) -> Option<String> {
    let stored = saga.traceparent.as_deref()?;
    let Some(exporting) = exporting() else {
        return Some(stored.to_owned());
    };
    let Some(parent) = TraceParent::parse(stored) else {
        return Some(stored.to_owned());
    };
    let span = context::attempt_span_id(saga.id, step, kind, attempt);
    let sampled = exporting.samples(saga.id, &saga.definition.name, parent);
    Some(parent.child(span).sampled(sampled).to_string())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::saga::machine::Command;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_saga_keeps_a_valid_callers_context_and_begins_its_own_trace_otherwise() {
        let id = Uuid::now_v7();
        assert_eq!(saga_traceparent(Some(CALLER), id), CALLER);
        for caller in [None, Some("garbage")] {
            let own = TraceParent::parse(&saga_traceparent(caller, id)).expect("valid");
            assert!(own.roots(id), "{caller:?}");
        }
    }

    #[test]
    fn a_saga_keeps_the_callers_tracestate_only_with_its_traceparent_and_well_formed() {
        let state = Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        assert_eq!(saga_tracestate(Some(CALLER), state).as_deref(), state);
        assert_eq!(saga_tracestate(None, state), None);
        assert_eq!(saga_tracestate(Some("garbage"), state), None);
        assert_eq!(saga_tracestate(Some(CALLER), None), None);
        assert_eq!(saga_tracestate(Some(CALLER), Some("  ")), None);
        assert_eq!(saga_tracestate(Some(CALLER), Some("a=\u{e9}")), None);
        let long = "a=".to_owned() + &"b".repeat(511);
        assert_eq!(saga_tracestate(Some(CALLER), Some(&long)), None);
    }

    #[test]
    fn without_export_a_command_carries_the_sagas_context_as_stored() {
        let definition = crate::submission::parse_submission(
            &json!({"name": "n", "steps": [{"name": "a", "participant": "p", "action": "x"}]}),
        )
        .expect("a valid submission");
        let mut saga = Saga::new(Uuid::now_v7(), definition, None, Utc::now());
        let command = Command {
            step: Some(0),
            kind: CommandKind::Action,
            attempt: 1,
            deadline: Utc::now(),
        };
        assert_eq!(command_traceparent(&saga, &command), None);
        saga.traceparent = Some(CALLER.to_owned());
        assert_eq!(
            command_traceparent(&saga, &command).as_deref(),
            Some(CALLER)
        );
    }
}
