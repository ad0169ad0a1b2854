//! HTTP: the router, the handlers, and the mapping from outcomes to answers.

pub mod error;

use crate::config::Config;
use crate::delivery::{self, Delivery, DeliveryMeta};
use crate::guard::{Guard, Outcome};
use crate::ops::order::Order;
use crate::telemetry;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

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
}

/// The service's router. Tests drive it with `oneshot` or a real listener.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(post_orders))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Read the body up to `limit` bytes; a declared or actual excess is refused without
/// buffering the rest.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = delivery::header(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit")
        {
            ApiError::TooLarge { limit }
        } else {
            ApiError::Malformed(format!("could not read the body: {e}"))
        }
    })
}

/// The stored response of an outcome, with the replay header when it is one.
fn outcome_response(o: &Outcome) -> Response {
    let r = &o.record.response;
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    let mut resp = (status, r.body.clone()).into_response();
    let h = resp.headers_mut();
    if let Ok(ct) = HeaderValue::from_str(&r.content_type) {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if o.replayed {
        h.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    resp
}

async fn post_orders(State(st): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let span = telemetry::request_span(&parts.headers, &st.project_id, "POST /orders");
    async move {
        let mut meta = DeliveryMeta::default();
        let result = handle_order(&st, &parts.headers, body, &mut meta).await;
        let (resp, outcome, operation_id, replayed, error) = match result {
            Ok(o) => (
                outcome_response(&o),
                o.record.outcome.as_str(),
                o.operation_id,
                o.replayed,
                None,
            ),
            Err((e, op)) => {
                let (code, text) = (e.code(), e.to_string());
                (
                    e.into_response(),
                    code,
                    op.unwrap_or_default(),
                    false,
                    Some(text),
                )
            }
        };
        let status = resp.status().as_u16();
        let level_error = status >= 500;
        macro_rules! decision {
            ($lvl:ident) => {
                tracing::$lvl!(
                    operation_id = %operation_id,
                    outcome,
                    replayed,
                    status,
                    delivery_source = %meta.source,
                    delivery_id = meta.id.as_deref().unwrap_or(""),
                    delivery_attempt = meta.attempt,
                    latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                    error,
                    "order decision"
                )
            };
        }
        if level_error {
            decision!(error);
        } else {
            decision!(info);
        }
        resp
    }
    .instrument(span)
    .await
}

async fn handle_order(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    meta: &mut DeliveryMeta,
) -> Result<Outcome, (ApiError, Option<String>)> {
    let cfg = &st.config;
    let bytes = read_body(headers, body, cfg.max_body_bytes)
        .await
        .map_err(|e| (e, None))?;
    let Delivery {
        payload, meta: m, ..
    } = delivery::decode(headers, &bytes).map_err(|e| (e.into(), None))?;
    *meta = m;
    let order = Order::parse(&payload, &cfg.collections).map_err(|e| (e.into(), None))?;
    let op: Arc<dyn crate::ops::Operation> = Arc::new(order);
    let operation_id = crate::guard::operation_id(op.as_ref());
    let run = st.guard.run(op, meta.clone());
    match tokio::time::timeout(cfg.request_timeout, run).await {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => Err((
            ApiError::from_guard(e, cfg.retry_after_secs),
            Some(operation_id),
        )),
        Err(_) => Err((
            ApiError::Unavailable {
                detail: format!(
                    "request deadline of {} ms passed",
                    cfg.request_timeout.as_millis()
                ),
                retry_after: cfg.retry_after_secs,
            },
            Some(operation_id),
        )),
    }
}
