//! OTLP export of spans (HTTP/protobuf), configured by the standard `OTEL_*` variables.
//!
//! Spans go through the SDK's batch span processor (its own thread; `OTEL_BSP_*` tune it) to the
//! OTLP exporter (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, headers,
//! timeout as the exporter reads them). The sampler is the SDK's from `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`; it is asked once per saga, the same way each time (see
//! [`Exporting::samples`]), so a saga's spans are all kept or all dropped.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Config, SamplingDecision, ShouldSample, SpanData, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use uuid::Uuid;

use super::context::{saga_span_id, TraceParent};

/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "saga-coordinator";

/// How long shutdown waits for the last spans to be sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

static EXPORTING: OnceLock<Exporting> = OnceLock::new();

/// The exporter and what every span needs, once installed.
pub struct Exporting {
    processor: BatchSpanProcessor,
    sampler: Box<dyn ShouldSample>,
    pub(super) scope: InstrumentationScope,
}

/// The installed exporter, if spans are exported: the one check on every hot path.
pub fn exporting() -> Option<&'static Exporting> {
    EXPORTING.get()
}

/// Whether the environment asks for spans: an OTLP endpoint is given, and neither
/// `OTEL_TRACES_EXPORTER=none` (or another exporter than `otlp`) nor `OTEL_SDK_DISABLED=true` says
/// otherwise. `var` reads a variable (the process environment, or a test's).
pub fn wanted(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    if let Some(exporters) = set("OTEL_TRACES_EXPORTER") {
        if !exporters.split(',').any(|e| e.trim() == "otlp") {
            return false;
        }
    }
    set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
}

/// Installs the exporter if the environment asks for one ([`wanted`]); answers whether it did.
/// Call it once, before the async runtime starts (the HTTP client it builds is a blocking one).
pub fn install() -> anyhow::Result<bool> {
    let var = |name: &str| std::env::var(name).ok();
    if !wanted(var) {
        return Ok(false);
    }
    if let Some(protocol) = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .filter(|p| p != "http/protobuf")
    {
        log::warn!("OTEL_EXPORTER_OTLP_PROTOCOL {protocol:?} is not supported; exporting OTLP over http/protobuf");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    processor.set_resource(&resource(var));
    let scope = InstrumentationScope::builder("saga-coordinator")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let exporting = Exporting {
        processor,
        // The SDK's reading of OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG.
        sampler: Config::default().sampler,
        scope,
    };
    if EXPORTING.set(exporting).is_err() {
        anyhow::bail!("the span exporter was installed twice");
    }
    Ok(true)
}

/// Sends the spans still queued and stops the exporter (at shutdown, after the last transition).
pub fn shutdown() {
    if let Some(exporting) = EXPORTING.get() {
        if let Err(e) = exporting.processor.shutdown_with_timeout(FLUSH_TIMEOUT) {
            log::warn!("spans not sent at shutdown: {e}");
        }
    }
}

fn resource(var: impl Fn(&str) -> Option<String>) -> Resource {
    let named = var("OTEL_SERVICE_NAME").is_some_and(|v| !v.trim().is_empty())
        || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| v.contains("service.name="));
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(DEFAULT_SERVICE_NAME).build()
    }
}

impl Exporting {
    /// Whether saga `saga_id` named `name`, stored with `stored`, is sampled: the sampler's
    /// decision for its span. Asked again for each of its spans: for the samplers the SDK reads
    /// from the environment the answer depends only on these, so it is the same every time.
    pub fn samples(&self, saga_id: Uuid, name: &str, stored: TraceParent) -> bool {
        let trace_id = TraceId::from_bytes(stored.trace_id);
        let parent = if stored.roots(saga_id) {
            Context::new()
        } else {
            Context::new().with_remote_span_context(remote(stored))
        };
        let result = self.sampler.should_sample(
            Some(&parent),
            trace_id,
            name,
            &SpanKind::Internal,
            &[],
            &[],
        );
        result.decision == SamplingDecision::RecordAndSample
    }

    /// Queues a finished span for export.
    pub(super) fn send(&self, span: SpanData) {
        self.processor.on_end(span);
    }
}

/// The span context `traceparent` names, as a remote parent.
pub(super) fn remote(traceparent: TraceParent) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(traceparent.trace_id),
        SpanId::from_bytes(traceparent.parent_id),
        TraceFlags::new(traceparent.flags),
        true,
        TraceState::default(),
    )
}

/// The saga span's context (the parent of its attempts' spans).
pub(super) fn saga_span(saga_id: Uuid, stored: TraceParent) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(stored.trace_id),
        SpanId::from_bytes(saga_span_id(saga_id)),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn wanted_with(vars: &[(&str, &str)]) -> bool {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wanted(|name| vars.get(name).cloned())
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported() {
        assert!(!wanted_with(&[]));
        assert!(!wanted_with(&[("OTEL_SERVICE_NAME", "orders")]));
        assert!(!wanted_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]));
    }

    #[test]
    fn either_endpoint_turns_export_on() {
        assert!(wanted_with(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )]));
        assert!(wanted_with(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces"
        )]));
        assert!(wanted_with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ]));
    }

    #[test]
    fn none_or_a_disabled_sdk_turns_it_off_despite_an_endpoint() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert!(!wanted_with(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]));
        assert!(!wanted_with(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "zipkin")
        ]));
        assert!(!wanted_with(&[endpoint, ("OTEL_SDK_DISABLED", "true")]));
    }
}
