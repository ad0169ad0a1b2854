//! # firestore-once-core
//!
//! Exactly-once-in-effect processing on Firestore for Cloud Run: each piece of work commits
//! its business writes **together with** its processed-status document, in one atomic commit
//! guarded by preconditions, however many times Eventarc, Pub/Sub, Cloud Tasks or a caller
//! delivers it. A redelivery finds the status document and gets the first answer back, byte
//! for byte. No lock is held, a hot document stays inside production Firestore's write
//! budget (about one commit a second), and no commit carries more than 500 writes.
//!
//! ## Your kind, in your axum app
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use firestore_once_core::engine::*;
//! use firestore_once_core::{app, config::Config, service};
//! use serde::{Deserialize, Serialize};
//!
//! /// `{"redemption_id": "r-1", "coupon": "c-9"}`: a coupon redeemed once, whoever retries.
//! #[derive(Serialize, Deserialize)]
//! struct Redeem { coupon: DocId }
//!
//! impl Kind for Redeem {
//!     const KIND: &'static str = "redeem";
//!     const KEY: &'static str = "redemption_id";
//!     fn reads(&self) -> Vec<DocRef> { vec![DocRef::new("coupons", &self.coupon)] }
//!     fn decide(&self, snap: &Snapshot) -> Result<Decision, OpError> {
//!         let coupon = DocRef::new("coupons", &self.coupon);
//!         if snap.exists(&coupon)? {
//!             return Ok(Decision::reject("coupon_used", "redeemed before".into(), ().into()));
//!         }
//!         Ok(Decision::apply(vec![Write::create(coupon, &serde_json::json!({"used": true}))?]))
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let mut kinds = Registry::default();
//!     kinds.register_kind::<Redeem>();
//!     let once = service::connect(Config::from_env()?, kinds).await?.route("/redemptions", "redeem");
//!     let mine = Router::new().route("/", get(|| async { "my app" }));
//!     let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//!     Ok(axum::serve(listener, mine.merge(app(once))).await?)
//! }
//! ```
//!
//! `POST /redemptions` (and `POST /tasks/redeem`) now take the redemption as plain JSON with
//! an `Idempotency-Key` or a `redemption_id`, as a Pub/Sub push, an Eventarc CloudEvent or a
//! Cloud Tasks task; a retry replays the first answer with `Idempotent-Replayed: true`, a
//! rejection is stored and replayed as a 409 (a 200 to a platform, so it stops redelivering),
//! and an outcome not known yet is a 503 with `Retry-After`. `GET /operations/{id}` says what
//! happened, `GET /openapi.json` describes it all, and `examples/minimal.rs` is the same as a
//! whole service in 36 lines.
//!
//! ## How a delivery flows
//!
//! 1. [`delivery`] decodes the envelope into a payload plus the transport's identity;
//! 2. [`engine`] is the contract: a registered kind parses the payload into an
//!    [`Operation`](engine::Operation) (one commit; [`Kind`](engine::Kind) for a serde type)
//!    or a [`Workflow`](engine::Workflow) (several steps, some behind an outside call), each
//!    with its key, its fingerprint and a pure decision: no I/O;
//! 3. [`guard`] reads the status document and the operation's documents (or commits from
//!    what its own last commit left), folds every operation queued on the same documents into
//!    one commit within each document's write budget, and commits the writes and the status
//!    documents together, or replays;
//! 4. [`ingest`] is that path from a received delivery to an answer or a dead letter: the
//!    HTTP handlers (`http`) and [`redrive`] both run through it;
//! 5. `http` answers in the caller's terms (problem+json, `Retry-After`), `server` serves
//!    with graceful shutdown.
//!
//! ## Features
//!
//! `server` (the axum router, handlers, OpenAPI and `server::run`), `console` (the
//! operator console), `metrics` (the `once_*` Prometheus series on `/metrics`), `otlp`
//! (traces over OTLP/HTTP): all on by default. Without them the engine, the guard, ingest and
//! redrive remain, to run operations from any framework with [`guard::Guard::run`].
//!
//! ## Its limits
//! - Effects outside Firestore (an e-mail, a payment API) cannot join the commit. A workflow
//!   step that calls out holds a lease ([`guard::lease`]) so two deliveries never call at
//!   once, and commits its result once; a call is repeated only after a crash mid-call, so
//!   the outside system should honour the step's operation ID as an idempotency key.
//! - Across instances, the commit's preconditions are the only arbiter, and each instance
//!   keeps to each document's budget on its own: a kind with a hot document spreads it over
//!   shards ([`engine::Operation::committed`] tells it how its commits fare).
//! - Status documents expire after the configured retention (default 35 days); a delivery
//!   arriving later than that is treated as new.

pub mod config;
pub mod dead_letter;
pub mod delivery;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod faults;
pub mod guard;
#[cfg(feature = "server")]
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod redrive;
#[cfg(feature = "server")]
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tracing_otel;

#[cfg(feature = "server")]
pub use http::app;
pub use service::Service;
