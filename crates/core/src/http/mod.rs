//! HTTP: the router, the handlers, and the mapping from outcomes to answers.

#[cfg(feature = "console")]
pub mod console;
pub mod error;
pub mod handle;
pub mod metrics;
pub mod openapi;
pub mod overload;
pub mod ready;
pub mod schema;
pub mod status;

pub use handle::REPLAYED;

use crate::service::{Service, Target};
use axum::extract::{Request, State};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;

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
        .route("/healthz", get(ready::healthz))
        .route("/readyz", get(ready::readyz))
        .route("/operations/{operation_id}", get(status::get_operation))
        .route("/openapi.json", get(openapi::openapi_json));
    #[cfg(feature = "console")]
    let router = console::routes(router);
    // Off (`ONCE_METRICS=off`, or built without the `metrics` feature): no route, so the path
    // is a 404 like any unknown one.
    let router = if state.config.metrics && cfg!(feature = "metrics") {
        router.route("/metrics", get(metrics::serve_metrics))
    } else {
        router
    };
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
