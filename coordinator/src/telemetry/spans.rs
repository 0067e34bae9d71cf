//! A saga's spans, built once each when it ends, with explicit ids, parents and times.
//!
//! The saga span runs from the saga's creation to the first time it stops (a final state, or
//! `failed`); its parent is the caller's span, or none when the saga began its trace. Each attempt
//! of a command (a step's action or compensation, or a check-back) is a span from its dispatch to
//! what ended it (a reply, a timeout, a dead letter), a child of the saga span; the command carried
//! its id to the participant.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::context::{attempt_span_id, saga_span_id, TraceParent};
use super::export::{exporting, remote, saga_span};
use crate::saga::{CommandKind, Saga, SagaState};

/// Something that happened during a span, at a time of its own.
#[derive(Debug, Clone)]
pub struct SpanEvent {
    pub name: String,
    pub at: DateTime<Utc>,
    pub attributes: Vec<(String, String)>,
}

/// An attempt of a command that ended.
#[derive(Debug, Clone)]
pub struct AttemptSpan {
    /// `None` for a check-back.
    pub step: Option<usize>,
    pub kind: CommandKind,
    pub attempt: u32,
    pub dispatched_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// What ended it: a reply's outcome, `timed_out` or `dead_lettered`.
    pub outcome: String,
    pub error: Option<String>,
    /// What the end led to (a retry scheduled, the attempts given up).
    pub events: Vec<SpanEvent>,
}

/// Exports the span of an attempt of `saga`'s (nothing if spans are not exported, the saga has no
/// trace context, or its trace is not sampled).
pub fn attempt_ended(saga: &Saga, span: AttemptSpan) {
    let Some((exporting, stored)) = sampled(saga) else {
        return;
    };
    let definition = &saga.definition;
    let step = span.step.and_then(|i| definition.steps.get(i));
    let (name, participant, command) = match (step, span.kind) {
        (Some(step), CommandKind::Compensation) => (
            format!("{} compensation", step.name),
            step.participant.clone(),
            step.compensation.clone().unwrap_or_default(),
        ),
        (Some(step), _) => (
            format!("{} action", step.name),
            step.participant.clone(),
            step.action.clone(),
        ),
        (None, _) => {
            let participant = match &definition.check_back {
                Some(crate::saga::CheckBack::Participant(p)) => p.clone(),
                _ => String::new(),
            };
            ("check-back".to_owned(), participant, "check".to_owned())
        }
    };
    let mut attributes = vec![
        KeyValue::new("saga.id", saga.id.to_string()),
        KeyValue::new("saga.name", definition.name.clone()),
        KeyValue::new("saga.participant", participant),
        KeyValue::new("saga.command", command),
        KeyValue::new("saga.command.kind", span.kind.as_str()),
        KeyValue::new("saga.attempt", i64::from(span.attempt)),
        KeyValue::new("saga.outcome", span.outcome.clone()),
    ];
    if let Some(step) = step {
        attributes.push(KeyValue::new("saga.step", step.name.clone()));
    }
    let ok = matches!(
        span.outcome.as_str(),
        "success" | "committed" | "aborted" | "pending"
    );
    let status = if ok {
        Status::Ok
    } else {
        Status::error(span.error.clone().unwrap_or_else(|| span.outcome.clone()))
    };
    let id = attempt_span_id(saga.id, span.step, span.kind, span.attempt);
    exporting.send(SpanData {
        span_context: own(saga, stored, id),
        parent_span_id: saga_span(saga.id, stored).span_id(),
        parent_span_is_remote: false,
        span_kind: SpanKind::Producer,
        name: Cow::Owned(name),
        start_time: span.dispatched_at.into(),
        end_time: span.ended_at.into(),
        attributes,
        dropped_attributes_count: 0,
        events: events(span.events),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: exporting.scope.clone(),
    });
}

/// Exports the saga span of `saga`, which stopped at `ended_at`, with `events` from its event log.
pub fn saga_stopped(saga: &Saga, ended_at: DateTime<Utc>, events_: Vec<SpanEvent>) {
    let Some((exporting, stored)) = sampled(saga) else {
        return;
    };
    let definition = &saga.definition;
    let mut attributes = vec![
        KeyValue::new("saga.id", saga.id.to_string()),
        KeyValue::new("saga.name", definition.name.clone()),
        KeyValue::new("saga.state", saga.state.as_str()),
    ];
    if let Some(key) = &definition.key {
        attributes.push(KeyValue::new("saga.key", key.clone()));
    }
    let status = match saga.state {
        SagaState::Committed => Status::Ok,
        state => Status::error(state.as_str()),
    };
    let (parent_span_id, parent_span_is_remote) = if stored.roots(saga.id) {
        (SpanId::INVALID, false)
    } else {
        (remote(stored).span_id(), true)
    };
    exporting.send(SpanData {
        span_context: own(saga, stored, saga_span_id(saga.id)),
        parent_span_id,
        parent_span_is_remote,
        span_kind: SpanKind::Internal,
        name: Cow::Owned(definition.name.clone()),
        start_time: saga.created_at.into(),
        end_time: ended_at.into(),
        attributes,
        dropped_attributes_count: 0,
        events: events(events_),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: exporting.scope.clone(),
    });
}

/// The exporter and the saga's stored context, if its spans are to be exported.
fn sampled(saga: &Saga) -> Option<(&'static super::export::Exporting, TraceParent)> {
    let exporting = exporting()?;
    let stored = TraceParent::parse(saga.traceparent.as_deref()?)?;
    exporting
        .samples(saga.id, &saga.definition.name, stored)
        .then_some((exporting, stored))
}

/// A span of the saga's trace with id `id`, sampled, with the caller's `tracestate`.
fn own(saga: &Saga, stored: TraceParent, id: [u8; 8]) -> SpanContext {
    let state = saga
        .tracestate
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanContext::new(
        TraceId::from_bytes(stored.trace_id),
        SpanId::from_bytes(id),
        TraceFlags::SAMPLED,
        false,
        state,
    )
}

fn events(events: Vec<SpanEvent>) -> SpanEvents {
    let mut out = SpanEvents::default();
    out.events = events
        .into_iter()
        .map(|e| {
            let attributes = e
                .attributes
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect();
            Event::new(e.name, e.at.into(), attributes, 0)
        })
        .collect();
    out
}
