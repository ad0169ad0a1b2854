//! The status document: one per operation, written in the same commit as the operation's
//! business writes, never changed afterwards. Its presence is what makes a redelivery a replay.

use crate::delivery::DeliveryMeta;
use crate::ops::{Decision, Rejection};
use firestore::FirestoreInstant;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Terminal outcome of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeKind {
    /// The writes were committed.
    Processed,
    /// A business rule refused it; only the status document was written.
    Rejected,
}

impl OutcomeKind {
    /// Lowercase name, as stored and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Processed => "processed",
            OutcomeKind::Rejected => "rejected",
        }
    }
}

/// The first answer, kept verbatim so a replay is byte-for-byte the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// HTTP status given to a direct caller.
    pub status: u16,
    /// `application/json` or `application/problem+json`.
    pub content_type: String,
    /// Exact body bytes (UTF-8 JSON).
    pub body: String,
}

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
    /// Rejection reason (`insufficient_stock`, …).
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

/// Problem-type URI for a rejection reason (RFC 9457 allows a relative reference).
pub fn problem_type(reason: &str) -> String {
    format!("/problems/{}", reason.replace('_', "-"))
}

/// "insufficient_stock" → "Insufficient stock".
pub fn title(reason: &str) -> String {
    let s = reason.replace('_', " ");
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }
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
        Decision::Apply { result, .. } => {
            let mut body = Map::new();
            body.insert("operation_id".into(), json!(input.operation_id));
            body.insert("kind".into(), json!(input.kind));
            body.insert("outcome".into(), json!("processed"));
            for (k, v) in result {
                body.entry(k.clone()).or_insert_with(|| v.clone());
            }
            (
                OutcomeKind::Processed,
                None,
                StoredResponse {
                    status: 200,
                    content_type: "application/json".into(),
                    body: Value::Object(body).to_string(),
                },
            )
        }
        Decision::Reject(Rejection {
            reason,
            detail,
            extra,
        }) => {
            let mut body = Map::new();
            body.insert("type".into(), json!(problem_type(reason)));
            body.insert("title".into(), json!(title(reason)));
            body.insert("status".into(), json!(409));
            body.insert("detail".into(), json!(detail));
            body.insert("operation_id".into(), json!(input.operation_id));
            body.insert("kind".into(), json!(input.kind));
            body.insert("outcome".into(), json!("rejected"));
            body.insert("reason".into(), json!(reason));
            for (k, v) in extra {
                body.entry(k.clone()).or_insert_with(|| v.clone());
            }
            (
                OutcomeKind::Rejected,
                Some(reason.clone()),
                StoredResponse {
                    status: 409,
                    content_type: "application/problem+json".into(),
                    body: Value::Object(body).to_string(),
                },
            )
        }
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
