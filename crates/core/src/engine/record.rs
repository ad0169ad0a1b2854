//! The status document: one per operation, written in the same commit as the operation's
//! business writes, never changed afterwards. Its presence is what makes a redelivery a replay.

use super::answer::{self, OutcomeKind, StoredResponse};
use super::{Decision, DeliveryMeta};
use firestore::FirestoreInstant;
use serde::{Deserialize, Serialize};

/// Fields of `operations/{operation_id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// Hex sha256 of `kind:key`; also the document ID.
    pub operation_id: String,
    /// Operation kind.
    pub kind: String,
    /// Raw domain key, for people reading the database.
    pub key: String,
    /// Hex sha256 of the canonical payload.
    pub fingerprint: String,
    /// Processed or rejected.
    pub outcome: OutcomeKind,
    /// Rejection reason (`too_many_writes`, or a kind's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The response every delivery of this operation gets.
    pub response: StoredResponse,
    /// Transport identity of the delivery that processed it.
    pub delivery: DeliveryMeta,
    /// Commit time (as decided).
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub created_at: FirestoreInstant,
    /// TTL field: a Firestore TTL policy deletes the document after this.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub expire_at: FirestoreInstant,
}

/// Everything needed to build a record besides the decision.
pub struct RecordInput<'a> {
    /// Operation ID.
    pub operation_id: &'a str,
    /// Kind.
    pub kind: &'a str,
    /// Raw key.
    pub key: &'a str,
    /// Fingerprint hex.
    pub fingerprint: String,
    /// Delivery that processed it.
    pub delivery: &'a DeliveryMeta,
    /// Decision time.
    pub now: FirestoreInstant,
    /// Retention, for `expire_at`.
    pub retention: std::time::Duration,
}

/// Build the status record (and so the response) for a decision.
pub fn build(input: RecordInput<'_>, decision: &Decision) -> StatusRecord {
    let (outcome, reason, response) = match decision {
        Decision::Apply { result, .. } => (
            OutcomeKind::Processed,
            None,
            answer::processed(input.operation_id, input.kind, result),
        ),
        Decision::Reject(rejection) => (
            OutcomeKind::Rejected,
            Some(rejection.reason.clone()),
            answer::rejected(input.operation_id, input.kind, rejection),
        ),
    };
    StatusRecord {
        operation_id: input.operation_id.to_string(),
        kind: input.kind.to_string(),
        key: input.key.to_string(),
        fingerprint: input.fingerprint,
        outcome,
        reason,
        response,
        delivery: input.delivery.clone(),
        created_at: input.now,
        expire_at: input
            .now
            .saturating_add(input.retention)
            .unwrap_or(input.now),
    }
}

/// What an operation came to: the status document, and whether this delivery decided it.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Hex sha256 of `kind:key`; the status document's ID.
    pub operation_id: String,
    /// True when an earlier delivery decided it and this one changed nothing.
    pub replayed: bool,
    /// The status document.
    pub record: StatusRecord,
    /// True when the replay came from this instance's cache, without Firestore (metrics tell
    /// the two replays apart).
    pub from_cache: bool,
}
