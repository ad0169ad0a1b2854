//! Every response body the service sends, built here and nowhere else: the stored answers of
//! an operation (processed, or a rejection as `application/problem+json`, RFC 9457), a
//! workflow's answer, and the answers that are never stored (skipped, dead-lettered, a
//! redrive that still fails, an error). The HTTP layer only picks the status and headers.

use super::Rejection;
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

/// Media type of a success body.
pub const JSON: &str = "application/json";
/// Media type of a problem body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Problem-type URI for a reason or error code (RFC 9457 allows a relative reference).
pub fn problem_type(reason: &str) -> String {
    format!("/problems/{}", reason.replace('_', "-"))
}

/// "poll_closed" → "Poll closed".
pub fn title(reason: &str) -> String {
    let s = reason.replace('_', " ");
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }
}

/// A problem body: `type`, `title`, `status`, `detail`, then `extra`'s members.
pub fn problem(
    code: &str,
    title: &str,
    status: u16,
    detail: &str,
    extra: Map<String, Value>,
) -> Value {
    let mut body = Map::new();
    body.insert("type".into(), json!(problem_type(code)));
    body.insert("title".into(), json!(title));
    body.insert("status".into(), json!(status));
    body.insert("detail".into(), json!(detail));
    for (k, v) in extra {
        body.entry(k).or_insert(v);
    }
    Value::Object(body)
}

/// The stored answer of an applied operation: its ID, kind and outcome, then what the
/// decision added (`result`); an operation cannot overwrite the first three.
pub fn processed(operation_id: &str, kind: &str, result: &Map<String, Value>) -> StoredResponse {
    let mut body = Map::new();
    body.insert("operation_id".into(), json!(operation_id));
    body.insert("kind".into(), json!(kind));
    body.insert("outcome".into(), json!(OutcomeKind::Processed.as_str()));
    for (k, v) in result {
        body.entry(k.clone()).or_insert_with(|| v.clone());
    }
    StoredResponse {
        status: 200,
        content_type: JSON.into(),
        body: Value::Object(body).to_string(),
    }
}

/// The stored answer of a rejection: a 409 problem naming the operation and the reason,
/// plus the rejection's own members.
pub fn rejected(operation_id: &str, kind: &str, r: &Rejection) -> StoredResponse {
    let mut extra = Map::new();
    extra.insert("operation_id".into(), json!(operation_id));
    extra.insert("kind".into(), json!(kind));
    extra.insert("outcome".into(), json!(OutcomeKind::Rejected.as_str()));
    extra.insert("reason".into(), json!(r.reason));
    for (k, v) in &r.extra {
        extra.entry(k.clone()).or_insert_with(|| v.clone());
    }
    StoredResponse {
        status: 409,
        content_type: PROBLEM_JSON.into(),
        body: problem(&r.reason, &title(&r.reason), 409, &r.detail, extra).to_string(),
    }
}

/// A finished workflow: its own ID and kind, each step's outcome (`(step, operation_id,
/// outcome)`, in order), then the workflow's members (`extra`). A `null` member is kept, so
/// a field the schema promises is present.
pub fn workflow(
    operation_id: &str,
    kind: &str,
    steps: &[(&str, &str, OutcomeKind)],
    extra: Map<String, Value>,
) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .map(|(step, operation_id, outcome)| {
            json!({
                "step": step,
                "operation_id": operation_id,
                "outcome": outcome.as_str(),
            })
        })
        .collect();
    let mut body = Map::new();
    body.insert("operation_id".into(), json!(operation_id));
    body.insert("kind".into(), json!(kind));
    for (k, v) in extra {
        body.entry(k).or_insert(v);
    }
    body.insert("outcome".into(), json!(OutcomeKind::Processed.as_str()));
    body.insert("steps".into(), Value::Array(steps));
    Value::Object(body)
}

/// A delivery with nothing to do (a Firestore delete event).
pub fn skipped(reason: &str) -> Value {
    json!({"outcome": "skipped", "reason": reason})
}

/// A platform delivery that can never succeed, kept as a dead letter and acknowledged.
pub fn dead_lettered(id: &str, reason: &str, detail: &str) -> Value {
    json!({"outcome": "dead_lettered", "dead_letter_id": id, "reason": reason, "detail": detail})
}

/// A redriven delivery that still fails: reported, never dead-lettered again.
pub fn refused(reason: &str, detail: &str) -> Value {
    json!({"outcome": "failed", "reason": reason, "detail": detail})
}
