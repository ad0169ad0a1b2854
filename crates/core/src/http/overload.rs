//! Load shedding: past `ONCE_MAX_IN_FLIGHT` requests in flight, the next one is answered 503
//! with `Retry-After` at once, before its body is kept or any Firestore call is made.
//!
//! Why shed rather than queue: a queued request still holds its connection and, once read,
//! its body, and it waits on a Firestore that is already the bottleneck, so an unbounded
//! queue turns a burst into unbounded memory and into answers that come after every caller's
//! deadline. A shed request costs almost nothing, changed nothing, and every caller of this
//! service (Pub/Sub, Eventarc, Cloud Tasks, an HTTP client) retries a 503 with back-off.
//!
//! A shed request's body is read and thrown away chunk by chunk, up to [`DRAIN_MAX`] bytes
//! and for at most [`DRAIN_FOR`], before the answer is sent (nginx's lingering close does the
//! same): a server that closes a connection with unread request bytes makes the kernel reset
//! it, and the client then sees a broken connection instead of the 503 and its `Retry-After`.
//! Work payloads and push envelopes are far smaller than that, so their senders always read the 503;
//! a larger body may see its connection closed, which every sender retries just the same.

use super::error::ApiError;
use crate::config::Config;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::Router;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Longest a shed request's body is drained before the connection is answered anyway.
pub const DRAIN_FOR: Duration = Duration::from_secs(2);
/// Most bytes of a shed request's body that are drained: far more than any payload or push
/// envelope needs, far less than the body limit, so that a flood of large bodies costs
/// connections × this at most, not connections × the body limit.
pub const DRAIN_MAX: usize = 64 * 1024;

/// Limit every route already on `router` to `ONCE_MAX_IN_FLIGHT` requests at once, across
/// all of them (one shared semaphore); the rest are shed with 503 and `Retry-After`. Routes
/// added afterwards (health checks, status reads) are outside the limit, so a full instance
/// still reports itself alive.
pub fn shed<S>(router: Router<S>, config: &Config, metrics: Arc<Metrics>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let max_in_flight = config.max_in_flight.max(1);
    let gate = Arc::new(Semaphore::new(max_in_flight));
    let retry_after = config.retry_after_secs;
    let max_body = config.max_body_bytes;
    router.route_layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let gate = gate.clone();
            let metrics = metrics.clone();
            async move {
                // Held until the handler has answered; dropped with it if the client leaves.
                let Ok(_permit) = gate.try_acquire_owned() else {
                    tracing::warn!(max_in_flight, "shed: instance at its in-flight limit");
                    metrics.shed();
                    drain(req.into_body(), max_body.min(DRAIN_MAX)).await;
                    return ApiError::Unavailable {
                        detail: format!(
                            "this instance is at its limit of {max_in_flight} requests in \
                             flight; nothing was started"
                        ),
                        retry_after,
                    }
                    .into_response();
                };
                next.run(req).await
            }
        },
    ))
}

/// Read and drop up to `limit` bytes of `body`, for at most [`DRAIN_FOR`]; never keeps more
/// than the chunk in hand.
async fn drain(body: Body, limit: usize) {
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen = seen.saturating_add(chunk.len());
            if seen > limit {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_FOR, read).await;
}
