//! Traces: every request's `tracing` span, and the Firestore calls made for it, exported as
//! OpenTelemetry spans over OTLP/HTTP (protobuf) to the collector sidecar, which sends them on
//! to Cloud Trace (docs/observability.md).
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set;
//! the standard `OTEL_*` variables (sampler, service name, batch sizes) apply. An incoming W3C
//! `traceparent` is honoured: the request span joins that trace, and the JSON log line's
//! `logging.googleapis.com/trace` names the same trace, so Cloud Logging and Cloud Trace show
//! the request together.
//!
//! The exporter is `opentelemetry-otlp`'s HTTP one on reqwest (already a dependency), not its
//! gRPC one, which would bring a second tonic next to the Firestore client's. It sends from the
//! SDK's batch thread, never from a request. Built without the `otlp` feature, nothing is
//! exported and [`from_env`] refuses an endpoint it cannot honour.

#[cfg(feature = "otlp")]
mod export;
#[cfg(feature = "otlp")]
pub use export::{from_env, join_incoming, layer, provider, Traces};

mod switch;
pub use switch::{active, configured, TraceInitError, ENDPOINT_VARS, SERVICE_NAME};

use tracing::Span;

/// Without the `otlp` feature there is no provider to hold.
#[cfg(not(feature = "otlp"))]
pub enum Traces {}

/// Built without the `otlp` feature: `None`, or an error when the environment asks for export.
#[cfg(not(feature = "otlp"))]
pub fn from_env() -> Result<Option<Traces>, TraceInitError> {
    if configured(|k| std::env::var(k).ok()) {
        return Err(TraceInitError::new(
            "OTEL_EXPORTER_OTLP_*ENDPOINT is set, but this build has no `otlp` feature",
        ));
    }
    Ok(None)
}

/// Built without the `otlp` feature: requests join no trace.
#[cfg(not(feature = "otlp"))]
pub fn join_incoming(
    _span: &Span,
    _headers: &http::HeaderMap,
    _name: &str,
) -> Option<(String, String)> {
    None
}

/// A client span around one Firestore RPC (`BatchGetDocuments`, `Commit`, …), a child of the
/// current span, named the way Cloud Trace shows gRPC calls.
pub fn firestore_span(method: &'static str) -> Span {
    if !active() {
        return Span::none();
    }
    let name = format!("google.firestore.v1.Firestore/{method}");
    tracing::info_span!(
        "firestore",
        otel.name = name.as_str(),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.method = method,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_only_by_a_non_empty_endpoint() {
        assert!(!configured(|_| None));
        assert!(!configured(|_| Some(" ".into())));
        assert!(configured(
            |k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://127.0.0.1:4318".to_string())
        ));
    }
}
