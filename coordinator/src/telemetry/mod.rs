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
