//! Dead letters: push deliveries that can never succeed (an undecodable envelope, an invalid
//! order, a key reused with another payload). Answering 4xx would make Pub/Sub or Eventarc
//! redeliver them for days; answering 2xx and dropping them would lose them. So they are
//! recorded durably, once per delivery, logged at ERROR, and then acknowledged.

use crate::delivery::DeliveryMeta;
use crate::guard::key::hashed_id;
use crate::guard::{Guard, GuardError};
use crate::ops::DocRef;
use axum::http::HeaderMap;
use firestore::FirestoreInstant;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// Most body bytes kept in a dead letter; the rest is counted, not stored.
pub const MAX_BODY: usize = 64 * 1024;
/// Most characters kept of one header value.
const MAX_HEADER: usize = 512;

/// The `dead_letters/{id}` document.
#[derive(Serialize, Debug)]
pub struct DeadLetter {
    /// Route that received it.
    pub route: String,
    /// Problem code (`invalid-envelope`, `invalid-field`, `key-reused`, …).
    pub reason: String,
    /// What was wrong.
    pub detail: String,
    /// Who delivered it.
    pub delivery: DeliveryMeta,
    /// Correlation headers only (content type, `ce-*`, Cloud Tasks); never credentials.
    pub headers: BTreeMap<String, String>,
    /// The body as text (lossy UTF-8), at most [`MAX_BODY`] bytes of it.
    pub body: String,
    /// Full body length.
    pub body_bytes: i64,
    /// Whether `body` was cut.
    pub body_truncated: bool,
    /// When it was recorded.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub created_at: FirestoreInstant,
    /// TTL field, as for status documents.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub expire_at: FirestoreInstant,
}

fn kept(name: &str) -> bool {
    name == "content-type"
        || name == "user-agent"
        || name == "idempotency-key"
        || name.starts_with("ce-")
        || name.starts_with("x-cloudtasks-")
}

/// The dead letter's document ID: one per delivery, so a redelivery of the same bad message
/// finds its record instead of adding another.
pub fn id(route: &str, meta: &DeliveryMeta, body: &[u8]) -> String {
    let who = match &meta.id {
        Some(id) => format!("{}|{id}", meta.source),
        None => format!("{}|body:{}", meta.source, hex::encode(Sha256::digest(body))),
    };
    hashed_id("dead_letter", &format!("{route}|{who}"))
}

/// Record a dead letter (idempotent per delivery) and return its ID.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    guard: &Guard,
    collection: &str,
    retention: Duration,
    route: &str,
    reason: &str,
    detail: &str,
    meta: &DeliveryMeta,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, GuardError> {
    let id = id(route, meta, body);
    let now = FirestoreInstant::now();
    let cut = body.len().min(MAX_BODY);
    let headers = headers
        .iter()
        .filter(|(k, _)| kept(k.as_str()))
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes());
            (k.as_str().to_string(), v.chars().take(MAX_HEADER).collect())
        })
        .collect();
    let letter = DeadLetter {
        route: route.to_string(),
        reason: reason.to_string(),
        detail: detail.chars().take(4096).collect(),
        delivery: meta.clone(),
        headers,
        body: String::from_utf8_lossy(&body[..cut]).into_owned(),
        body_bytes: body.len() as i64,
        body_truncated: cut < body.len(),
        created_at: now,
        expire_at: now.saturating_add(retention).unwrap_or(now),
    };
    guard
        .create_once(DocRef::new(collection, &id), &letter)
        .await?;
    Ok(id)
}
