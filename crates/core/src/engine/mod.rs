//! The engine contract: everything an operation, a workflow or an envelope needs to know, and
//! nothing that does I/O. No Firestore calls, no axum: the [guard](crate::guard) is the only
//! code that turns these values into a commit; a service's kinds are built on them.
//!
//! - [`Operation`]: one unit of work with a key, a fingerprint, the documents it reads and a
//!   pure [`Operation::decide`] that returns a [`Decision`] (writes, or a durable rejection).
//! - [`Workflow`]: several operations in order, each committed with its own status document,
//!   some behind a call to the outside world.
//! - [`Registry`]: which kinds `POST /tasks/{kind}` serves, and how a payload becomes one.
//! - [`DeliveryMeta`], [`Fingerprint`], [`hashed_id`]: identity of a delivery and of its work.
//! - [`record`] and [`answer`]: the status document and every response body, built in one place.

pub mod answer;
pub mod delivery;
pub mod key;
pub mod kind;
pub mod operation;
pub mod parse;
pub mod record;
pub mod workflow;

pub use answer::{OutcomeKind, StoredResponse};
pub use delivery::DeliveryMeta;
pub use key::{hashed_id, is_valid_document_id, Fingerprint};
pub use kind::{DocId, Kind};
pub use operation::{
    CommitReport, Decision, DocRef, Fields, OpError, Operation, Rejection, Snapshot, Write,
    WriteKind,
};
pub use parse::{
    doc_id_field, object, positive_field, ParseCtx, Parsed, Registry, ValidationError,
};
pub use record::Outcome;
pub use record::StatusRecord;
pub use workflow::{StepReport, StepSpec, TaskRecord, Workflow};
