//! The OTLP/HTTP exporter and trace-context propagation (the `otlp` feature).

use super::switch::{active, configured, TraceInitError, ACTIVE, SERVICE_NAME};
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::sync::atomic::Ordering;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The tracer provider that batches and sends spans; keep it to flush at exit.
pub type Traces = SdkTracerProvider;

/// A tracer provider batching spans to `traces_url` (a full URL, `…/v1/traces`), or, when
/// `None`, to the endpoint the `OTEL_EXPORTER_OTLP_*` variables name.
pub fn provider(traces_url: Option<&str>) -> Result<Traces, TraceInitError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    if let Some(url) = traces_url {
        builder = builder.with_endpoint(url);
    }
    let exporter = builder
        .build()
        .map_err(|e| TraceInitError::new(e.to_string()))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The provider the environment asks for, or `None` when export is not configured.
pub fn from_env() -> Result<Option<SdkTracerProvider>, TraceInitError> {
    if configured(|k| std::env::var(k).ok()) {
        provider(None).map(Some)
    } else {
        Ok(None)
    }
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    ACTIVE.store(true, Ordering::Relaxed);
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_threads(false)
        .with_location(false)
}

struct Headers<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Make `span` (a request span not yet entered) a child of the caller's W3C `traceparent`,
/// name it `"{method} {route}"` for the trace view, and return the trace and span IDs it will
/// be exported under, for the log line. `None` when tracing is off.
pub fn join_incoming(span: &Span, headers: &HeaderMap, name: &str) -> Option<(String, String)> {
    if !active() {
        return None;
    }
    let mut parent = TraceContextPropagator::new().extract(&Headers(headers));
    if !parent.span().span_context().is_valid() {
        if let Some(sc) = cloud_trace_context(headers) {
            parent = opentelemetry::Context::new().with_remote_span_context(sc);
        }
    }
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span.record("otel.name", name);
    span.record("otel.kind", "server");
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// The caller's `X-Cloud-Trace-Context: TRACE/SPAN;o=1` (Google's older header, decimal span
/// ID) as a remote parent, for callers that send it without `traceparent`.
fn cloud_trace_context(headers: &HeaderMap) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let v = headers.get("x-cloud-trace-context")?.to_str().ok()?;
    let (trace, rest) = v.trim().split_once('/')?;
    let (span, opts) = rest.split_once(';').unwrap_or((rest, ""));
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from(span.parse::<u64>().ok()?);
    let flags = if opts.trim() == "o=0" {
        TraceFlags::default()
    } else {
        TraceFlags::SAMPLED
    };
    let sc = SpanContext::new(trace, span, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}
