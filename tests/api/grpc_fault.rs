//! A gRPC-aware fault proxy: HTTP/2 cleartext (h2c) between one service process and the
//! Firestore emulator. It forwards every call, and can be told to lose the answers of ONE
//! method (`Commit`, `BatchGetDocuments`, …) while every other call on the same connection
//! goes through, so a test can tell a lost read from a lost commit. The TCP [`FaultProxy`]
//! (helpers/fault_proxy.rs) cannot: it drops every byte coming back.
//!
//! A lost answer is lost *after* the request reached the emulator: the proxy sends the call
//! upstream and waits for the emulator's full answer (a commit is applied or refused), then
//! either never answers the service ([`Lose::Hold`]) or resets the stream ([`Lose::Reset`]).
//! It records what each lost answer was (`grpc-status`), so a test knows how many commits
//! were applied without the service learning it.
//!
//! [`FaultProxy`]: crate::helpers::FaultProxy

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How the answers of a faulted method are lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lose {
    /// Never answer: the service waits until its own deadline, then gives up on the call.
    Hold,
    /// Reset the stream once the emulator has answered: the service sees a broken call.
    Reset,
}

/// Calls of one method that went through the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// Answers passed back to the service.
    pub answered: usize,
    /// Answers the service never got.
    pub lost: usize,
    /// Of those, how many the emulator had answered `OK` (for a commit: applied).
    pub lost_ok: usize,
}

#[derive(Default)]
struct State {
    faults: HashMap<String, Lose>,
    calls: HashMap<String, Calls>,
}

/// The proxy; stops accepting connections when dropped.
pub struct GrpcFaultProxy {
    /// `127.0.0.1:port`, for the service's `FIRESTORE_EMULATOR_HOST`.
    pub host: String,
    state: Arc<Mutex<State>>,
    accept: tokio::task::JoinHandle<()>,
}

/// The method of a gRPC path: `/google.firestore.v1.Firestore/Commit` → `Commit`.
fn method(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl GrpcFaultProxy {
    /// Start a proxy to the emulator at `upstream` (host:port). Each connection from the
    /// service gets its own HTTP/2 connection to the emulator.
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (upstream, st) = (upstream.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(out) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = out.set_nodelay(true);
                    let _ = inbound.set_nodelay(true);
                    let Ok((sender, conn)) = hyper::client::conn::http2::handshake(
                        TokioExecutor::new(),
                        TokioIo::new(out),
                    )
                    .await
                    else {
                        return;
                    };
                    tokio::spawn(conn);
                    let service = hyper::service::service_fn(move |req| {
                        forward(req, sender.clone(), st.clone())
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(inbound), service)
                        .await;
                });
            }
        });
        Self {
            host,
            state,
            accept,
        }
    }

    /// Lose the answers of `method` (e.g. `"Commit"`) from now on, the `how` way.
    pub fn lose(&self, method: &str, how: Lose) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(method.to_string(), how);
    }

    /// Answer every method again.
    pub fn heal(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// What happened to the calls of `method` so far.
    pub fn calls(&self, method: &str) -> Calls {
        self.state
            .lock()
            .unwrap()
            .calls
            .get(method)
            .copied()
            .unwrap_or_default()
    }
}

impl Drop for GrpcFaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Why a stream was reset on purpose.
#[derive(Debug)]
struct LostOnPurpose;

impl std::fmt::Display for LostOnPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer lost by the fault proxy")
    }
}

impl std::error::Error for LostOnPurpose {}

async fn forward(
    req: Request<Incoming>,
    mut upstream: hyper::client::conn::http2::SendRequest<Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let name = method(req.uri().path()).to_string();
    let fault = state.lock().unwrap().faults.get(&name).copied();
    let sent = upstream.send_request(req);
    let Some(how) = fault else {
        let r = sent.await?;
        state
            .lock()
            .unwrap()
            .calls
            .entry(name)
            .or_default()
            .answered += 1;
        return Ok(r);
    };
    // The call goes to the emulator in full, on a task of its own so it completes even if the
    // service gives up on it; the answer is read to its end (trailers included) and recorded.
    let st = state.clone();
    let upstream_call = tokio::spawn(async move {
        let ok = match sent.await {
            Ok(r) => {
                let header_status = r.headers().get("grpc-status").cloned();
                let trailers = r
                    .into_body()
                    .collect()
                    .await
                    .ok()
                    .and_then(|c| c.trailers().cloned());
                let status = header_status.or_else(|| trailers?.get("grpc-status").cloned());
                status.is_some_and(|s| s == "0")
            }
            Err(_) => false,
        };
        let mut s = st.lock().unwrap();
        let c = s.calls.entry(name).or_default();
        c.lost += 1;
        c.lost_ok += usize::from(ok);
    });
    match how {
        Lose::Hold => std::future::pending().await,
        Lose::Reset => {
            let _ = upstream_call.await;
            Err(Box::new(LostOnPurpose))
        }
    }
}
