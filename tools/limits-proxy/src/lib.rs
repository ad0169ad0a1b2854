//! `limits-proxy`: an h2c gRPC proxy between a service and the Firestore emulator that
//! enforces what production Firestore enforces and the emulator does not, so a benchmark or a
//! test sees a hot document treated as production would treat it:
//!
//! - about one sustained commit a second per document, short bursts tolerated: a token bucket
//!   per document; a commit without a token for every document it writes is refused whole
//!   with `ABORTED` "Too much contention on these datastore entities. Please try again.";
//! - at most 500 writes a commit (field transforms counted): `INVALID_ARGUMENT`;
//! - a database-wide write rate: `RESOURCE_EXHAUSTED`.
//!
//! Only `Commit` is judged; every other call is forwarded untouched and streamed. A refused
//! commit never reaches the emulator. See the crate README for each figure's source.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let proxy = limits_proxy::Proxy::start(limits_proxy::Limits::default(), "127.0.0.1:8085").await?;
//! // FIRESTORE_EMULATOR_HOST=<proxy.addr()> for the service under test, then:
//! let stats = proxy.stats();
//! println!("{} commits refused", stats.totals.commits_refused_rate);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod bucket;
pub mod commit;
pub mod forward;
pub mod grpc;
pub mod ledger;
pub mod limits;
pub mod stats;

#[cfg(test)]
mod tests;

pub use forward::{CONTENTION_MESSAGE, DATABASE_RATE_MESSAGE};
pub use limits::{InvalidLimits, Limits};
pub use stats::{BusiestWindow, DocumentCounts, Second, Stats, Totals};

use forward::Shared;
use ledger::Ledger;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running proxy. Its ports accept connections once [`start`](Self::start) returns; it
/// stops (both ports and every connection) when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Start a proxy to the emulator at `upstream` (`host:port`), its gRPC and admin ports on
    /// free loopback ports: what a test in the same process wants.
    pub async fn start(limits: Limits, upstream: impl Into<String>) -> anyhow::Result<Self> {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self::start_on(limits, upstream, loopback, loopback).await
    }

    /// Start a proxy listening for gRPC on `listen` and for the admin API on `admin`.
    /// Fails if the limits are invalid or a port cannot be bound; the emulator need not be up
    /// yet (each inbound connection makes its own upstream connection).
    pub async fn start_on(
        limits: Limits,
        upstream: impl Into<String>,
        listen: SocketAddr,
        admin: SocketAddr,
    ) -> anyhow::Result<Self> {
        limits.validate()?;
        let grpc = TcpListener::bind(listen).await?;
        let admin_listener = TcpListener::bind(admin).await?;
        let shared = Arc::new(Shared {
            upstream: upstream.into(),
            ledger: Mutex::new(Ledger::new(limits, Instant::now())),
        });
        let proxy = Self {
            addr: grpc.local_addr()?,
            admin_addr: admin_listener.local_addr()?,
            tasks: vec![
                tokio::spawn(accept(grpc, shared.clone())),
                tokio::spawn(admin::serve(admin_listener, shared.clone())),
            ],
            shared,
        };
        Ok(proxy)
    }

    /// Where callers connect: `host:port` for `FIRESTORE_EMULATOR_HOST`, or
    /// `http://{addr}` for `FirestoreDbOptions::firebase_api_url`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the admin API (`GET /stats`, `POST /reset`) listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.shared.ledger().limits().clone()
    }

    /// Everything counted so far, every document included.
    pub fn stats(&self) -> Stats {
        self.shared.ledger().stats(None, Instant::now())
    }

    /// Everything counted so far, only the `top` documents by forwarded commits listed.
    pub fn stats_top(&self, top: usize) -> Stats {
        self.shared.ledger().stats(Some(top), Instant::now())
    }

    /// Zero every count and refill every bucket: a measurement starts here.
    pub fn reset(&self) {
        self.shared.ledger().reset(Instant::now());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Accept gRPC connections; the connections live in a `JoinSet`, so aborting this task (on
/// drop of the [`Proxy`]) ends them all.
async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors or the like: do not spin on it.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                connections.spawn(forward::serve_connection(stream, shared.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
