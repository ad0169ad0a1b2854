//! Every response body the service sends, built here and nowhere else: the stored answers of
//! an operation (processed, or a rejection as `application/problem+json`, RFC 9457), a
//! workflow's answer, and the answers that are never stored (skipped, dead-lettered, a
//! redrive that still fails, an error). The HTTP layer only picks the status and headers.

use super::record::{OutcomeKind, StoredResponse};
use super::workflow::StepReport;
use super::Rejection;
use serde_json::{json, Map, Value};

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

/// A finished workflow: its own ID and kind, each step's outcome, then the workflow's
/// members (`extra`). A `null` member is kept, so a field the schema promises is present.
pub fn workflow(
    operation_id: &str,
    kind: &str,
    reports: &[StepReport],
    extra: Map<String, Value>,
) -> Value {
    let steps: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({
                "step": r.step.name,
                "operation_id": r.outcome.operation_id,
                "outcome": r.outcome.record.outcome.as_str(),
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
