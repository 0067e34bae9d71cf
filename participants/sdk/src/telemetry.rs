//! OpenTelemetry for participants: the saga's trace continued through each handler, and back.
//!
//! A command carries the W3C `traceparent` of its attempt's span in the coordinator (contract,
//! section 4). The runtime starts a span for the handler as its child (kind `consumer`, named
//! `{kind} {command}`) and runs the handler inside it, so whatever the handler instruments with
//! OpenTelemetry nests under it; the reply carries that span's `traceparent` back. The client sends
//! the caller's current context with every request, so a saga started from a traced request joins
//! its trace.
//!
//! Spans go to the global tracer provider: nothing is exported until one is installed, by
//! [`install`] (OTLP over HTTP/protobuf from the standard `OTEL_*` variables) or by your own code.

use std::collections::HashMap;

use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::command::Command;
use crate::outcome::Outcome;

/// The instrumentation scope of the SDK's spans.
const SCOPE: &str = "saga-participant";

/// Why [`install`] failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP span exporter: {0}")]
pub struct InstallError(String);

/// Installs an OTLP span exporter (HTTP/protobuf, batched) as the global tracer provider, when the
/// environment asks for one: `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
/// is set, and neither `OTEL_TRACES_EXPORTER=none` nor `OTEL_SDK_DISABLED=true` says otherwise.
/// The sampler is read from `OTEL_TRACES_SAMPLER`/`_ARG`, the service name from
/// `OTEL_SERVICE_NAME`, else `default_service_name`. Keep the provider and call
/// [`SdkTracerProvider::shutdown`] before exiting, so the last spans are sent. `None`: nothing is
/// exported, and nothing was installed.
///
/// Call it outside an async runtime, or from a blocking thread: the HTTP client it builds is a
/// blocking one.
pub fn install(default_service_name: &str) -> Result<Option<SdkTracerProvider>, InstallError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let otlp = var("OTEL_TRACES_EXPORTER").is_none_or(|v| v.split(',').any(|e| e.trim() == "otlp"));
    let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    if disabled || !otlp || !endpoint {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| InstallError(e.to_string()))?;
    let resource = if var("OTEL_SERVICE_NAME").is_some() {
        Resource::builder().build()
    } else {
        Resource::builder()
            .with_service_name(default_service_name.to_owned())
            .build()
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(Some(provider))
}

/// The context a stored or received `traceparent` names (as a remote parent), with the
/// `tracestate` that came with it; an empty one for none or a malformed one.
pub(crate) fn continued(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    traceparent
        .map(|traceparent| {
            let mut carrier = HashMap::from([(contract::properties::TRACEPARENT, traceparent)]);
            if let Some(tracestate) = tracestate {
                carrier.insert(contract::properties::TRACESTATE, tracestate);
            }
            TraceContextPropagator::new().extract(&Carrier(carrier))
        })
        .unwrap_or_default()
}

/// The handler's span for `command`, started as the child of the context the command carried.
pub(crate) fn handler_context<P>(participant: &str, command: &Command<P>) -> Context {
    let parent = continued(
        command.traceparent.as_deref(),
        command.tracestate.as_deref(),
    );
    let tracer = global::tracer(SCOPE);
    let mut attributes = vec![
        KeyValue::new("saga.id", command.saga_id.to_string()),
        KeyValue::new("saga.name", command.saga_name.clone()),
        KeyValue::new("saga.participant", participant.to_owned()),
        KeyValue::new("saga.command", command.name.clone()),
        KeyValue::new("saga.command.kind", command.kind.to_string()),
        KeyValue::new("saga.attempt", i64::from(command.attempt)),
    ];
    // A check-back has no step.
    if !command.step.is_empty() {
        attributes.push(KeyValue::new("saga.step", command.step.clone()));
    }
    let span = tracer
        .span_builder(format!("{} {}", command.kind, command.name))
        .with_kind(SpanKind::Consumer)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

/// Ends the handler's span with what it answered.
pub(crate) fn handler_ended(context: &Context, outcome: &Outcome) {
    let span = context.span();
    span.set_attribute(KeyValue::new("saga.outcome", outcome.label()));
    match outcome {
        Outcome::Success(_) | Outcome::CheckBack(_) => span.set_status(Status::Ok),
        Outcome::Failure(e) | Outcome::Retry(e) => span.set_status(Status::error(e.clone())),
    }
    span.end();
}

/// The W3C headers of `context`'s span (`traceparent`, and `tracestate` when it has one), for a
/// reply or a request to the coordinator; none without a valid span.
pub(crate) fn trace_headers(context: &Context) -> Vec<(&'static str, String)> {
    if !context.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut carrier = Carrier(HashMap::new());
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    let mut headers: Vec<(&'static str, String)> = carrier
        .0
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect();
    // traceparent first, as a person reading the headers expects.
    headers.sort_by_key(|(name, _)| *name != contract::properties::TRACEPARENT);
    headers
}

/// The caller's current [`trace_headers`], for a request to the coordinator.
pub(crate) fn current_trace_headers() -> Vec<(&'static str, String)> {
    trace_headers(&Context::current())
}

/// The caller's current `traceparent`, kept with an outbox row.
pub(crate) fn current_traceparent() -> Option<String> {
    current_trace_headers()
        .into_iter()
        .find(|(name, _)| *name == contract::properties::TRACEPARENT)
        .map(|(_, value)| value)
}

/// W3C headers as the propagator reads and writes them.
struct Carrier<V>(HashMap<&'static str, V>);

impl<V: AsRef<str>> Extractor for Carrier<V> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(AsRef::as_ref)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().copied().collect()
    }
}

impl Injector for Carrier<String> {
    fn set(&mut self, key: &str, value: String) {
        // Only the W3C fields are kept: the AMQP headers and requests carry these two.
        let key = match key {
            "traceparent" => contract::properties::TRACEPARENT,
            "tracestate" => contract::properties::TRACESTATE,
            _ => return,
        };
        self.0.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

    #[test]
    fn a_received_tracestate_goes_on_with_its_traceparent() {
        assert_eq!(
            trace_headers(&continued(Some(TRACEPARENT), Some(TRACESTATE))),
            vec![
                ("traceparent", TRACEPARENT.to_owned()),
                ("tracestate", TRACESTATE.to_owned())
            ]
        );
        assert_eq!(
            trace_headers(&continued(Some(TRACEPARENT), None)),
            vec![("traceparent", TRACEPARENT.to_owned())]
        );
        assert!(trace_headers(&continued(None, Some(TRACESTATE))).is_empty());
    }
}
