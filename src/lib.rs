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
//! 3. [`guard`] runs one Firestore transaction: read the status document and the operation's
//!    documents, decide, commit the writes and the status document together, or replay;
//! 4. [`http`] maps the outcome to an answer that fits the caller (see the README's contract).
//!
//! ## The guarantee
//! The business writes of an operation and its status document `operations/{sha256(kind:key)}`
//! are committed in the same transaction, so they exist together or not at all. A delivery
//! that finds the status document changes nothing and answers with the stored response. A
//! business rejection is stored the same way, so it is replayed, never retried forever.
//!
//! ## Its limits
//! - Effects outside Firestore (an e-mail, a payment API) cannot join the transaction.
//! - Status documents expire after the configured retention (default 35 days); a delivery
//!   arriving later than that is treated as new.

pub mod config;
pub mod delivery;
pub mod faults;
pub mod guard;
pub mod http;
pub mod ops;
pub mod telemetry;

pub use http::{app, AppState};
