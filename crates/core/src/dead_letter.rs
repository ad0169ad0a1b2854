//! Dead letters: push deliveries that can never succeed (an undecodable envelope, an invalid
//! payload, a key reused with another payload). Answering 4xx would make Pub/Sub or Eventarc
//! redeliver them for days; answering 2xx and dropping them would lose them. So they are
//! recorded durably, once per delivery, logged at ERROR, and then acknowledged.
//!
//! The body is kept byte for byte (UTF-8 as text, anything else, such as Eventarc's protobuf
//! `DocumentEventData`, as base64 with `body_encoding: "base64"`), so a redrive
//! ([`crate::redrive`]) sends back exactly what arrived.

use crate::engine::key::hashed_id;
use crate::engine::DeliveryMeta;
use crate::engine::DocRef;
use crate::guard::{Guard, GuardError};
use base64::Engine;
use firestore::FirestoreInstant;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// Most body bytes kept in a dead letter; the rest is counted, not stored.
pub const MAX_BODY: usize = 64 * 1024;
/// Most characters kept of one header value.
const MAX_HEADER: usize = 512;

/// How [`DeadLetter::body`] holds the bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyEncoding {
    /// The bytes were UTF-8 and are stored as that text.
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    /// The bytes were not UTF-8; `body` is their standard base64.
    #[serde(rename = "base64")]
    Base64,
}

/// What redrives did to a dead letter; absent until the first one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RedriveState {
    /// Redrives that sent it through the guard.
    pub attempts: i64,
    /// Result of the last one: `processed`, `rejected`, `replayed`, `skipped`, `failed` or
    /// `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// Why, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_detail: Option<String>,
    /// When the last one finished.
    #[serde(
        default,
        with = "firestore::serialize_as_optional_timestamp",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_at: Option<FirestoreInstant>,
    /// The operation it reached, when it got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// True once a redrive got a durable outcome: later redrives leave it alone.
    #[serde(default)]
    pub resolved: bool,
    /// The redrive that holds it right now (a claim, so two redrives never send it at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// When that claim lapses (its holder died): another redrive may take it then.
    #[serde(
        default,
        with = "firestore::serialize_as_optional_timestamp",
        skip_serializing_if = "Option::is_none"
    )]
    pub claim_expires_at: Option<FirestoreInstant>,
}

/// The `dead_letters/{id}` document.
#[derive(Serialize, Deserialize, Debug, Clone)]
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
    /// The body, at most [`MAX_BODY`] bytes of it, as `body_encoding` says.
    pub body: String,
    /// How `body` holds the bytes (records written before this field: lossy UTF-8).
    #[serde(default)]
    pub body_encoding: BodyEncoding,
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
    /// What redrives did to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<RedriveState>,
}

impl DeadLetter {
    /// The stored body bytes, exactly as they arrived (up to [`MAX_BODY`]).
    pub fn body_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match self.body_encoding {
            BodyEncoding::Utf8 => Ok(self.body.as_bytes().to_vec()),
            BodyEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(&self.body),
        }
    }
}

/// Stored form of `bytes`: the text when it is UTF-8, else base64. A cut that splits a UTF-8
/// character is stored as base64 too, so no byte is ever replaced.
fn encode_body(bytes: &[u8]) -> (String, BodyEncoding) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), BodyEncoding::Utf8),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            BodyEncoding::Base64,
        ),
    }
}

/// Headers kept: those the decoder reads (so a redrive decodes the delivery the same way)
/// and correlation IDs; never credentials.
pub fn kept(name: &str) -> bool {
    name == "content-type"
        || name == "user-agent"
        || name == "idempotency-key"
        || name.starts_with("ce-")
        || name.starts_with("x-cloudtasks-")
        || name.starts_with("x-goog-pubsub-")
        || name == "x-goog-ordering-key"
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
    let (stored, body_encoding) = encode_body(&body[..cut]);
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
        body: stored,
        body_encoding,
        body_bytes: body.len() as i64,
        body_truncated: cut < body.len(),
        created_at: now,
        expire_at: now.saturating_add(retention).unwrap_or(now),
        redrive: None,
    };
    guard
        .create_once(DocRef::new(collection, &id), &letter)
        .await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_byte_for_byte() {
        for bytes in [
            b"{\"vote_id\":\"v\"}".to_vec(),
            vec![0x0a, 0x91, 0x01, 0xff, 0xfe, 0x00, 0x80],
            "é".as_bytes()[..1].to_vec(),
            Vec::new(),
        ] {
            let (body, body_encoding) = encode_body(&bytes);
            let letter = DeadLetter {
                route: "/tasks/vote".into(),
                reason: "r".into(),
                detail: "d".into(),
                delivery: DeliveryMeta::default(),
                headers: BTreeMap::new(),
                body,
                body_encoding,
                body_bytes: bytes.len() as i64,
                body_truncated: false,
                created_at: FirestoreInstant::now(),
                expire_at: FirestoreInstant::now(),
                redrive: None,
            };
            assert_eq!(letter.body_bytes().unwrap(), bytes);
        }
        assert_eq!(encode_body(b"{}").1, BodyEncoding::Utf8);
        assert_eq!(encode_body(&[0xff]).1, BodyEncoding::Base64);
    }
}
