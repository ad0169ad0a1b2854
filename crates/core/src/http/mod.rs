//! HTTP: the router, the handlers, and the mapping from outcomes to answers.

#[cfg(feature = "console")]
pub mod console;
pub mod error;
pub mod handle;
pub mod openapi;
pub mod overload;
pub mod ready;
pub mod status;

use crate::ingest::Target;
use crate::service::Service;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;

/// Header set on a replayed answer (IETF `Idempotency-Key` draft, Stripe).
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The service's router: `POST /tasks/{kind}`, a `POST` per route added with
/// [`Service::route`], the status query, probes and the OpenAPI document (and the console and
/// `/metrics` with their features). Tests drive it with `oneshot` or a real listener; merge it
/// into your own router to serve both.
pub fn app(state: Service) -> Router {
    let mut work = Router::new().route("/tasks/{kind}", post(handle::post_task));
    for (route, kind) in state.routes.iter() {
        let target = Target::new(route, kind);
        work = work.route(
            route,
            post(move |State(st): State<Service>, req: Request| {
                handle::post_kind(st, req, target.clone())
            }),
        );
    }
    // The limit covers the routes above only: health checks answer even when the instance is full.
    let metrics = state.guard.metrics().clone();
    let router = overload::shed(work, &state.config, metrics)
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready::readyz))
        .route("/operations/{operation_id}", get(status::get_operation))
        .route("/openapi.json", get(openapi::openapi_json));
    #[cfg(feature = "console")]
    let router = console::routes(router);
    // Off (`ONCE_METRICS=off`, or built without the `metrics` feature): no route, so the path
    // is a 404 like any unknown one.
    let router = if state.config.metrics && cfg!(feature = "metrics") {
        router.route("/metrics", get(serve_metrics))
    } else {
        router
    };
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// `GET /healthz`: liveness, independent of Firestore.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    responses((status = 200, description = "The process is alive.", body = String,
               content_type = "text/plain", example = "ok"))
)]
pub async fn healthz() -> &'static str {
    "ok"
}

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
         exist, as for any unknown path.", body = openapi::Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn serve_metrics(State(st): State<Service>) -> Response {
    match st.guard.metrics().encode() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => ApiError::Internal(format!("encoding metrics: {e}")).into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
