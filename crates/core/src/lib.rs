//! # firestore-once
//!
//! Process every order or task **exactly once in effect**, however many times Eventarc,
//! Pub/Sub, Cloud Tasks or a caller delivers it.
//!
//! A request flows through one module per stage:
//!
//! 1. [`delivery`] decodes the envelope into a payload plus transport identity;
//! 2. [`engine`] is the contract: a registered kind parses the payload into an
//!    [`Operation`](engine::Operation) (one commit) or a [`Workflow`](engine::Workflow)
//!    (several), each knowing its key, its fingerprint and a pure decision. No I/O here;
//!    [`shop`] is the domain this binary ships (order, restock, cancel, `fulfil_order`);
//! 3. [`guard`] reads the status document and the operation's documents, decides, and commits
//!    the writes and the status document together in one commit guarded by preconditions
//!    (optimistic: nothing is locked), or replays; [`guard::workflow`] runs workflows;
//! 4. [`http`] maps the outcome to an answer that fits the caller; [`server`] serves it.
//!
//! ## The guarantee
//! The business writes of an operation and its status document `operations/{sha256(kind:key)}`
//! are committed in the same atomic commit, so they exist together or not at all. A delivery
//! that finds the status document changes nothing and answers with the stored response. A
//! business rejection is stored the same way, so it is replayed, never retried forever.
//!
//! ## Your own kind
//! Implement [`engine::Operation`] in one file and register it: the guard does the rest.
//! The decision is pure, so it is tested without Firestore, and the guard may fold it over a
//! batch of operations on the same documents (group commit).
//!
//! ```
//! use firestore_once::engine::{
//!     doc_id_field, Decision, DocRef, Fingerprint, OpError, Operation, Registry, Snapshot, Write,
//! };
//! use serde_json::{json, Map};
//! use std::sync::Arc;
//!
//! /// Mark a coupon used, once per redemption.
//! struct Redeem { redemption_id: String, coupon: String }
//!
//! impl Operation for Redeem {
//!     fn kind(&self) -> &'static str { "redeem" }
//!     fn key(&self) -> &str { &self.redemption_id }
//!     fn fingerprint(&self) -> Fingerprint { Fingerprint::of("redeem", &self.coupon) }
//!     fn reads(&self) -> Vec<DocRef> { vec![DocRef::new("coupons", &self.coupon)] }
//!     fn decide(&self, _: &Snapshot) -> Result<Decision, OpError> {
//!         let doc = DocRef::new("coupons", &self.coupon);
//!         let writes = vec![Write::set(doc, &json!({"used": true}))?];
//!         Ok(Decision::Apply { writes, result: Map::new() })
//!     }
//! }
//!
//! let mut kinds = Registry::default();
//! kinds.register("redeem", |body, ctx| {
//!     let (key, _) = ctx.key(body, "redemption_id", || Fingerprint::of("redeem", body))?;
//!     let coupon = doc_id_field(body, "coupon")?;
//!     Ok(Arc::new(Redeem { redemption_id: key, coupon }) as Arc<dyn Operation>)
//! });
//! assert!(kinds.contains("redeem"));
//! ```
//!
//! Three complete programs under `examples/`, each served and tested in `tests/api/`:
//! `award_points.rs` (a kind served at `POST /tasks/award_points`), `refund.rs` (a workflow
//! whose second step calls a payment API) and `embed.rs` (the guard in your own axum router).
//!
//! ## Its limits
//! - Effects outside Firestore (an e-mail, a carrier, a payment API) cannot join the
//!   commit. A workflow step that calls out holds a lease ([`guard::lease`]) so two
//!   deliveries never call at once, and commits its result once; a call is repeated only
//!   after a crash mid-call, so the outside system should honour the step's operation ID as
//!   an idempotency key.
//! - Across instances, the commit's preconditions are the only arbiter. A hot item's stock is
//!   spread over shard documents so instances write different documents (production
//!   Firestore sustains about one write per second per document; group commit puts many
//!   operations in each write); see docs/scale-out.md.
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
