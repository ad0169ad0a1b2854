//! The gRPC side: one HTTP/2 cleartext connection upstream per inbound connection, every call
//! forwarded as it comes, `Commit` buffered and judged first.

use crate::commit::{frame, read_commit, CommitSummary};
use crate::grpc::{
    refusal, status_of, DownstreamBody, Replay, UpstreamBody, COMMIT_PATH, ROLLBACK_PATH,
    UNLIMITED_WRITE_METHODS,
};
use crate::ledger::{Ledger, Verdict};
use bytes::Bytes;
use gcloud_sdk::google::firestore::v1::RollbackRequest;
use gcloud_sdk::tonic::Code;
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::header::CONTENT_LENGTH;
use hyper::http::request::Parts;
use hyper::{Request, Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// What production answers a document written too often (Firestore's "Understand error codes"
/// page, ABORTED).
pub const CONTENTION_MESSAGE: &str =
    "Too much contention on these datastore entities. Please try again.";

/// What production answered a commit of more than 500 writes (Firestore clients' issue
/// trackers quote it as `3 INVALID_ARGUMENT: maximum 500 writes allowed per request`).
pub fn too_many_writes_message(max: usize) -> String {
    format!("maximum {max} writes allowed per request")
}

/// What production answers a database written faster than it may grow (Firestore's
/// "Understand error codes" page, RESOURCE_EXHAUSTED).
pub const DATABASE_RATE_MESSAGE: &str = "This database has exceeded their daily quota or the ramp up limit for writes, please retry with exponential backoff. To learn more about limits, see 'Usage and limits' section of the support documentation.";

/// What every connection shares: where the emulator is and the ledger.
#[derive(Debug)]
pub struct Shared {
    /// `host:port` of the emulator.
    pub upstream: String,
    /// The one ledger of the proxy.
    pub ledger: Mutex<Ledger>,
}

impl Shared {
    /// The ledger, even if a panic elsewhere poisoned the lock: counts are still counts.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serve one inbound connection until the caller or the emulator closes it. The emulator
/// connection is made first; when it ends, the inbound connection is wound down too, so the
/// client reconnects (and gets a fresh upstream) instead of failing call after call.
pub async fn serve_connection(inbound: TcpStream, shared: Arc<Shared>) {
    let _ = inbound.set_nodelay(true);
    let upstream = match connect(&shared.upstream).await {
        Ok(u) => Some(u),
        Err(_) => {
            shared.ledger().totals_mut().upstream_errors += 1;
            None
        }
    };
    let (sender, closed) = match upstream {
        Some((sender, closed)) => (Some(sender), Some(closed)),
        None => (None, None),
    };
    let sh = shared.clone();
    let service = hyper::service::service_fn(move |req| handle(req, sender.clone(), sh.clone()));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // The emulator (grpc-java) sets no limit on concurrent streams; hyper's default of 200
    // would make the proxy, not the emulator, the place where callers queue.
    builder.max_concurrent_streams(None);
    let conn = builder.serve_connection(TokioIo::new(inbound), service);
    tokio::pin!(conn);
    match closed {
        Some(closed) => {
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = closed => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
        None => {
            let _ = conn.await;
        }
    }
}

/// An HTTP/2 connection to the emulator, and a signal that fires when it ends.
async fn connect(
    upstream: &str,
) -> anyhow::Result<(
    SendRequest<UpstreamBody>,
    tokio::sync::oneshot::Receiver<()>,
)> {
    let out = TcpStream::connect(upstream).await?;
    let _ = out.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(out)).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = tx.send(());
    });
    Ok((sender, rx))
}

async fn handle(
    req: Request<Incoming>,
    upstream: Option<SendRequest<UpstreamBody>>,
    shared: Arc<Shared>,
) -> Result<Response<DownstreamBody>, Infallible> {
    let Some(upstream) = upstream else {
        shared.ledger().totals_mut().upstream_errors += 1;
        let why = format!("limits-proxy: cannot reach upstream {}", shared.upstream);
        return Ok(refusal(Code::Unavailable, &why));
    };
    let path = req.uri().path();
    if path == COMMIT_PATH {
        return Ok(commit(req, upstream, shared).await);
    }
    {
        let unlimited = UNLIMITED_WRITE_METHODS.contains(&path);
        let mut ledger = shared.ledger();
        let totals = ledger.totals_mut();
        totals.other_calls_forwarded += 1;
        totals.unlimited_write_calls_forwarded += u64::from(unlimited);
    }
    Ok(pass(req.map(Either::Left), upstream, &shared).await)
}

/// Send `req` upstream and hand its answer back as it streams in; an emulator that cannot be
/// reached is answered `UNAVAILABLE`, as a gRPC front end would.
async fn pass(
    req: Request<UpstreamBody>,
    mut upstream: SendRequest<UpstreamBody>,
    shared: &Shared,
) -> Response<DownstreamBody> {
    match upstream.send_request(req).await {
        Ok(r) => r.map(Either::Left),
        Err(e) => {
            shared.ledger().totals_mut().upstream_errors += 1;
            refusal(Code::Unavailable, &format!("limits-proxy: upstream: {e}"))
        }
    }
}

async fn commit(
    req: Request<Incoming>,
    upstream: SendRequest<UpstreamBody>,
    shared: Arc<Shared>,
) -> Response<DownstreamBody> {
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return refusal(Code::Internal, &format!("limits-proxy: request body: {e}")),
    };
    let summary = match read_commit(&bytes) {
        Ok(s) => s,
        Err(e) => {
            shared.ledger().totals_mut().commits_refused_unreadable += 1;
            return refusal(Code::Internal, &format!("limits-proxy: {e}"));
        }
    };
    let (verdict, limits) = {
        let mut ledger = shared.ledger();
        (
            ledger.decide(&summary, Instant::now()),
            ledger.limits().clone(),
        )
    };
    let (code, message, delay) = match verdict {
        Verdict::Forward => {
            let req = Request::from_parts(parts, Either::Right(Replay::new(bytes)));
            return pass(req, upstream, &shared).await;
        }
        Verdict::Contention => (
            Code::Aborted,
            CONTENTION_MESSAGE.to_string(),
            Duration::from_millis(limits.refuse_delay_ms),
        ),
        Verdict::TooManyWrites => (
            Code::InvalidArgument,
            too_many_writes_message(limits.max_writes_per_commit),
            Duration::ZERO,
        ),
        Verdict::DatabaseRate => (
            Code::ResourceExhausted,
            DATABASE_RATE_MESSAGE.to_string(),
            Duration::ZERO,
        ),
    };
    // Production ends a transaction whose commit failed; the emulator would keep its locks
    // until it has been idle for a minute. Release them before the caller can retry.
    tokio::join!(
        rollback(&parts, &summary, upstream, &shared),
        tokio::time::sleep(delay)
    );
    refusal(code, &message)
}

/// Roll back the transaction of a refused commit (nothing for a non-transactional one), with
/// the commit's own headers (routing, deadline, credentials) on the `Rollback` call.
async fn rollback(
    parts: &Parts,
    summary: &CommitSummary,
    mut upstream: SendRequest<UpstreamBody>,
    shared: &Shared,
) {
    if summary.transaction.is_empty() {
        return;
    }
    let authority = parts
        .uri
        .authority()
        .map_or(shared.upstream.as_str(), |a| a.as_str());
    let Ok(uri) = format!("http://{authority}{ROLLBACK_PATH}").parse::<Uri>() else {
        return;
    };
    let message = RollbackRequest {
        database: summary.database.clone(),
        transaction: summary.transaction.clone(),
        ..Default::default()
    };
    let mut req = Request::new(Either::Right(Replay::new(Bytes::from(frame(
        &message.encode_to_vec(),
    )))));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = parts.headers.clone();
    req.headers_mut().remove(CONTENT_LENGTH);
    shared.ledger().totals_mut().rollbacks_sent += 1;
    let ok = match upstream.send_request(req).await {
        Ok(r) => {
            let (head, body) = r.into_parts();
            let trailers = body
                .collect()
                .await
                .ok()
                .and_then(|c| c.trailers().cloned());
            status_of(&head.headers, trailers.as_ref()) == Some(0)
        }
        Err(_) => false,
    };
    if !ok {
        shared.ledger().totals_mut().rollbacks_failed += 1;
    }
}
