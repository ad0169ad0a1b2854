//! HTTP: the router, the handlers, and the mapping from outcomes to answers.

pub mod console;
pub mod dead_letter;
pub mod error;
pub mod handle;
pub mod openapi;
pub mod overload;
pub mod ready;
pub mod status;

use crate::config::Config;
use crate::engine::Registry;
use crate::faults::Faults;
use crate::guard::{workflow, Guard};
use axum::extract::State;
use axum::http::{header, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use std::sync::Arc;

/// Header set on a replayed answer (IETF `Idempotency-Key` draft, Stripe).
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Runs operations exactly once.
    pub guard: Guard,
    /// Configuration.
    pub config: Arc<Config>,
    /// Project ID, for log trace fields.
    pub project_id: Arc<str>,
    /// Kinds served under `/tasks/{kind}` (and `order` under `/orders`).
    pub registry: Arc<Registry>,
    /// Where the workflow runner keeps task records and leases.
    pub workflows: Arc<workflow::Collections>,
    /// Test fault switches; `None` in production, so no request consults them.
    pub faults: Option<Arc<Faults>>,
}

impl AppState {
    /// State with the shop's kinds, the local carrier and no faults.
    pub fn new(guard: Guard, config: Config, project_id: impl Into<Arc<str>>) -> Self {
        guard.metrics().set_enabled(config.metrics);
        let workflows = workflow::Collections {
            tasks: config.collections.tasks.clone(),
            leases: config.collections.leases.clone(),
        };
        Self {
            guard,
            config: Arc::new(config),
            project_id: project_id.into(),
            registry: Arc::new(crate::shop::default_registry()),
            workflows: Arc::new(workflows),
            faults: None,
        }
    }
}

/// The service's router. Tests drive it with `oneshot` or a real listener.
pub fn app(state: AppState) -> Router {
    let work = Router::new()
        .route("/orders", post(handle::post_orders))
        .route("/tasks/{kind}", post(handle::post_task));
    // The limit covers the routes above only: health checks answer even when the instance is full.
    let metrics = state.guard.metrics().clone();
    let router = overload::shed(work, &state.config, metrics)
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready::readyz))
        .route("/operations", get(console::list_operations))
        .route("/operations/lookup", get(console::lookup))
        .route("/operations/{operation_id}", get(status::get_operation))
        .route("/dead-letters", get(console::list_dead_letters))
        .route("/dead-letters/{id}", get(console::get_dead_letter))
        .route(
            "/dead-letters/{id}/redrive",
            post(console::redrive_dead_letter),
        )
        .route("/console", get(console::page))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .route("/openapi.json", get(openapi::openapi_json));
    // Off (`ONCE_METRICS=off`): no route, so the path is a 404 like any unknown one.
    let router = if state.config.metrics {
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
pub async fn serve_metrics(State(st): State<AppState>) -> Response {
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
