//! Readiness: is Firestore answering this instance right now?
//!
//! `/healthz` says the process is alive and must stay independent of Firestore, or a
//! Firestore outage would make Cloud Run restart healthy instances. `/readyz` is the check
//! an operator or an uptime check uses to see whether requests can succeed at all.

use super::error::ApiError;
use crate::service::Service;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The document read by the probe. It is never written: reading a missing document is the
/// cheapest call that still goes through authentication, the network and the database.
pub const PROBE_DOCUMENT: &str = "readyz-probe";

/// `GET /readyz`: 200 `ready` when a single document read answers within the Firestore
/// deadline, else 503 problem+json with `Retry-After`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    responses(
        (status = 200, description = "Firestore answers this instance.", body = String,
         content_type = "text/plain", example = "ready"),
        (status = 503, description = "Firestore did not answer the probe read in time.",
         body = super::schema::Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before asking again."))),
    )
)]
pub async fn readyz(State(st): State<Service>) -> Response {
    let cfg = &st.config;
    let probe = [crate::engine::DocRef::new(
        &cfg.collections.operations,
        PROBE_DOCUMENT,
    )];
    let read = st.guard.read_docs(&probe);
    let failure = match tokio::time::timeout(cfg.firestore_timeout, read).await {
        Ok(Ok(_)) => return (StatusCode::OK, "ready").into_response(),
        Ok(Err(e)) => format!("Firestore did not answer the probe read: {e}"),
        Err(_) => format!(
            "Firestore did not answer the probe read within {} ms",
            cfg.firestore_timeout.as_millis()
        ),
    };
    tracing::warn!(error = failure.as_str(), "not ready");
    ApiError::NotReady {
        detail: failure,
        retry_after: cfg.retry_after_secs,
    }
    .into_response()
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
