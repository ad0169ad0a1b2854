//! `GET /metrics`, served from the guard's registry (see [`crate::metrics`]).

use super::error::ApiError;
use crate::service::Service;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// `GET /metrics`: the `once_*` series as Prometheus text, for the collector sidecar (which
/// scrapes it on localhost, inside the instance; from outside, Cloud Run's IAM gate applies as
/// to every path). See docs/observability.md.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses(
        (status = 200, description = "The `once_*` series in the OpenMetrics text format \
         (Prometheus text with `# EOF`), for a Prometheus scraper or the OpenTelemetry \
         Collector's prometheus receiver. Outside the in-flight limit; no Firestore call.",
         body = String, content_type = "application/openmetrics-text",
         example = "# TYPE once_deliveries counter\n\
                    once_deliveries_total{source=\"http\",outcome=\"processed\"} 1\n# EOF\n"),
        (status = 404, description = "Metrics are off (`ONCE_METRICS=off`): the route does not \
         exist, as for any unknown path.", body = super::schema::Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn serve_metrics(State(st): State<Service>) -> Response {
    match st.guard.metrics().encode() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => ApiError::Internal(format!("encoding metrics: {e}")).into_response(),
    }
}
