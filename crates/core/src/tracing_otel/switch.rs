//! Whether traces are on: the variables that turn the exporter on, and the switch a request
//! reads (with or without the `otlp` feature), apart from the exporter that sets it.

use std::sync::atomic::{AtomicBool, Ordering};

/// The standard variables that turn the exporter on, most specific first.
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Name under which spans are reported unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "firestore-once";

/// Set once an OpenTelemetry layer exists, so that with tracing off a request pays nothing
/// for propagation (no header parsing, no extra span fields).
pub(super) static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Why the exporter could not be built (a malformed endpoint, most often).
#[derive(Debug, thiserror::Error)]
#[error("OTLP trace exporter: {0}")]
pub struct TraceInitError(String);

impl TraceInitError {
    pub(super) fn new(why: impl Into<String>) -> Self {
        Self(why.into())
    }
}

/// Whether export is configured in `get`'s environment.
pub fn configured(get: impl Fn(&str) -> Option<String>) -> bool {
    ENDPOINT_VARS
        .iter()
        .any(|k| get(k).is_some_and(|v| !v.trim().is_empty()))
}

/// Whether spans are being exported by some layer in this process.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}
