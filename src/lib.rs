//! # firestore-once
//!
//! Process every order or task **exactly once in effect**, however many times Eventarc,
//! Pub/Sub, Cloud Tasks or a caller delivers it.
//!
//! A request flows through one module per stage:
//!
//! 1. [`delivery`] decodes the envelope into a payload plus transport identity;
//! 2. [`ops`] parses the payload into an [`Operation`](ops::Operation) that knows its key, its
//!    fingerprint, the documents it reads and a pure decision;
//! 3. [`guard`] reads the status document and the operation's documents, decides, and commits
//!    the writes and the status document together in one commit guarded by preconditions
//!    (optimistic: nothing is locked), or replays;
//! 4. [`http`] maps the outcome to an answer that fits the caller (see the README's contract).
//!
//! ## The guarantee
//! The business writes of an operation and its status document `operations/{sha256(kind:key)}`
//! are committed in the same atomic commit, so they exist together or not at all. A delivery
//! that finds the status document changes nothing and answers with the stored response. A
//! business rejection is stored the same way, so it is replayed, never retried forever.
//!
//! ## Adding an operation kind
//! Implement [`ops::Operation`] in one file and register a parser; nothing else changes.
//! The decision is pure, so it is tested without Firestore, and the guard may fold it over
//! a batch of operations on the same documents (group commit).
//!
//! ```
//! use firestore_once::engine::key::Fingerprint;
//! use firestore_once::engine::{Decision, DocRef, OpError, Operation, Registry, Snapshot, Write};
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
//!     fn decide(&self, snap: &Snapshot) -> Result<Decision, OpError> {
//!         let doc = DocRef::new("coupons", &self.coupon);
//!         Ok(Decision::Apply {
//!             writes: vec![Write::set(doc, &json!({"used": true}))?],
//!             result: Map::new(),
//!         })
//!     }
//! }
//!
//! let mut kinds = Registry::with_builtin();
//! kinds.register("redeem", |body, ctx| {
//!     let (key, _) = ctx.key(body, "redemption_id", || Fingerprint::of("redeem", body))?;
//!     let coupon = firestore_once::engine::parse::doc_id_field(body, "coupon")?;
//!     Ok(Arc::new(Redeem { redemption_id: key, coupon }) as Arc<dyn Operation>)
//! });
//! assert!(kinds.get("redeem").is_some());
//! ```
//! `examples/award_points.rs` is a complete one, served and tested in `tests/api/tasks.rs`.
//!
//! ## Its limits
//! - Effects outside Firestore (an e-mail, a carrier, a payment API) cannot join the
//!   transaction. [`guard::lease`] keeps two deliveries from running such a step at once and
//!   commits its result once; a call is repeated only after a crash mid-call, so the outside
//!   system should honour the step's operation ID as an idempotency key.
//! - Across instances, the commit's preconditions are the only arbiter. A hot item's stock is
//!   spread over shard documents so instances write different documents (production
//!   Firestore sustains about one write per second per document; group commit puts many
//!   operations in each write); see docs/scale-out.md.
//! - Status documents expire after the configured retention (default 35 days); a delivery
//!   arriving later than that is treated as new.

pub mod config;
pub mod delivery;
pub mod engine;
pub mod faults;
pub mod guard;
pub mod http;
pub mod metrics;
pub mod redrive;
pub mod server;
pub mod shop;
pub mod telemetry;
pub mod tracing_otel;

pub use http::{app, AppState};
