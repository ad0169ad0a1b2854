//! Logging: one JSON object per line in the shape Cloud Logging reads (`severity`, `message`,
//! `logging.googleapis.com/trace`), or human-readable text in a terminal.

use crate::config::LogFormat;
use crate::delivery::header;
use crate::tracing_otel::Traces;
use http::HeaderMap;
use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::writer::MakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `RUST_LOG` filters (default `info`).
///
/// JSON goes to stdout, where Cloud Run's log agent parses each line. Text goes to stderr
/// with colours only when stderr is a terminal, so redirected or piped text stays greppable.
pub fn init(format: LogFormat) {
    init_with(format, None);
}

/// [`init`], plus span export to `traces` when given (see [`crate::tracing_otel`]).
pub fn init_with(format: LogFormat, traces: Option<&Traces>) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    // A second call (tests) finds a subscriber installed and changes nothing.
    match format {
        LogFormat::Json => {
            let s = json_subscriber(env_filter(), std::io::stdout);
            let _ = s.with(otel_layer(traces)).try_init();
        }
        LogFormat::Text => {
            let s = tracing_subscriber::fmt()
                .with_env_filter(env_filter())
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .finish();
            let _ = s.with(otel_layer(traces)).try_init();
        }
    }
}

/// The span exporter's layer, when there is an exporter.
#[cfg(feature = "otlp")]
fn otel_layer<S>(traces: Option<&Traces>) -> impl tracing_subscriber::Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    traces.map(crate::tracing_otel::layer)
}

/// Without the `otlp` feature there is no exporter (`Traces` has no value).
#[cfg(not(feature = "otlp"))]
fn otel_layer(_: Option<&Traces>) -> Option<tracing_subscriber::layer::Identity> {
    None
}

fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The production JSON subscriber writing to `writer`: built in one place so tests can
/// capture exactly the lines Cloud Logging would see.
pub fn json_subscriber<W>(
    filter: EnvFilter,
    writer: W,
) -> impl Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(JsonFields::new())
        .event_format(CloudJson)
        .with_writer(writer)
        .finish()
}

/// Trace ID from W3C `traceparent`, else from `X-Cloud-Trace-Context` (`TRACE/SPAN;o=1`).
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    let hex32 = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(tp) = header(headers, "traceparent") {
        let mut parts = tp.trim().split('-');
        if let (Some(_ver), Some(t)) = (parts.next(), parts.next()) {
            if hex32(t) && t != "00000000000000000000000000000000" {
                return Some(t.to_ascii_lowercase());
            }
        }
    }
    let xc = header(headers, "x-cloud-trace-context")?;
    let t = xc.split('/').next()?.trim();
    hex32(t).then(|| t.to_ascii_lowercase())
}

/// A span for one request carrying the Cloud Logging trace field, so every line logged
/// inside it is grouped with the request in the Logs Explorer.
///
/// With trace export on ([`crate::tracing_otel`]) the span joins the caller's trace and the
/// log's trace and span IDs are the exported span's, so Cloud Logging links each line to the
/// span in Cloud Trace; a request without a trace header then gets the new trace's ID.
pub fn request_span(headers: &HeaderMap, project_id: &str, route: &str) -> tracing::Span {
    use tracing::field::Empty;
    let span = tracing::info_span!(
        "request",
        route,
        "logging.googleapis.com/trace" = Empty,
        "logging.googleapis.com/spanId" = Empty,
        otel.name = Empty,
        otel.kind = Empty,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    let exported = crate::tracing_otel::join_incoming(&span, headers, &format!("POST {route}"));
    let trace = match &exported {
        Some((t, s)) => {
            span.record("logging.googleapis.com/spanId", s.as_str());
            Some(t.clone())
        }
        None => trace_id(headers),
    };
    if let Some(t) = trace {
        span.record(
            "logging.googleapis.com/trace",
            format!("projects/{project_id}/traces/{t}"),
        );
    }
    span
}

/// Note the answer's status on the request span for the trace view (only when exporting).
pub fn record_status(span: &tracing::Span, status: u16) {
    if crate::tracing_otel::active() {
        span.record("http.response.status_code", status);
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// Cloud Logging structured-log formatter: event fields at the top level, span fields
/// merged in (inner spans win), `severity` from the level.
pub struct CloudJson;

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().into(), Value::from(v));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.0
            .insert(f.name().into(), Value::from(format!("{v:?}")));
    }
}

fn severity(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "ERROR",
        tracing::Level::WARN => "WARNING",
        tracing::Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

impl<S, N> FormatEvent<S, N> for CloudJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut map = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(f) = ext.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(f) {
                        map.extend(m);
                    }
                }
            }
        }
        event.record(&mut Fields(&mut map));
        map.insert("severity".into(), Value::from(severity(meta.level())));
        map.insert(
            "time".into(),
            Value::from(firestore::FirestoreInstant::now().to_string()),
        );
        map.insert("target".into(), Value::from(meta.target()));
        map.entry("message").or_insert_with(|| Value::from(""));
        writeln!(w, "{}", Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_from_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-cloud-trace-context",
            "105445AA7843BC8BF206B12000100000/1;o=1".parse().unwrap(),
        );
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("105445aa7843bc8bf206b12000100000")
        );
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut bad = HeaderMap::new();
        bad.insert("traceparent", "garbage".parse().unwrap());
        bad.insert("x-cloud-trace-context", "nothex/1".parse().unwrap());
        assert_eq!(trace_id(&bad), None);
    }
}
