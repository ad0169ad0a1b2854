//! Deliveries: turn an HTTP request into a payload plus the transport facts around it.
//!
//! Every shape that reaches a Cloud Run endpoint is recognised from its headers and body, so
//! one destination path serves them all:
//!
//! | shape | recognised by | payload |
//! |---|---|---|
//! | plain JSON | anything else | the body |
//! | Cloud Tasks HTTP target | `X-CloudTasks-TaskName` | the body |
//! | Pub/Sub push | JSON body with `message` and `subscription` | base64 `message.data` |
//! | Pub/Sub push, unwrapped (`noWrapper`) | `x-goog-pubsub-message-id` (`writeMetadata`), `?source=pubsub` on the endpoint, or Google's push agent with a body that is no envelope | the body, whatever its content type |
//! | CloudEvent, binary mode (Eventarc) | `ce-specversion` header | by `ce-type`, below |
//! | CloudEvent, structured mode | `application/cloudevents+json` | by `type`, below |
//!
//! CloudEvent types: `google.cloud.pubsub.topic.v1.messagePublished` carries a Pub/Sub push
//! envelope; `google.cloud.firestore.document.v1.*` carries `DocumentEventData` (protobuf by
//! default, JSON on request) and the work is the document's fields; any other type carries the
//! payload itself. The operation logic never sees an envelope.

pub mod cloudevent;
pub mod cloudtasks;
pub mod firestore_event;
pub mod pubsub;

use crate::engine::DeliveryMeta;
use http::HeaderMap;
use serde_json::Value;

/// Longest accepted `Idempotency-Key` (the Stripe convention).
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Longest transport identity accepted (a message ID, `ce-id`, `ce-source`, a task name, a
/// subscription, a Firestore document name). Real ones are far shorter; a Firestore document
/// name, the longest legitimate one, stops at 6 KiB. See [`decode`].
pub const MAX_TRANSPORT_ID_BYTES: usize = 8 * 1024;

/// Who delivered a request, and so how it must be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A direct caller: gets 4xx for bad input and decides itself whether to retry.
    Direct,
    /// A platform (Pub/Sub, Eventarc, Cloud Tasks) that redelivers anything but 2xx, so a
    /// delivery that can never succeed is recorded as a dead letter and acknowledged.
    Push,
}

/// What a decodable delivery asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// Work to do: the operation's JSON, and the transport identity to key it by when the
    /// payload carries no domain identity (a `vote_id`).
    Work {
        /// The JSON the operation is parsed from.
        json: Value,
        /// `idempotency-key:…`, `firestore-document:…`, `cloudevent:…` or `pubsub:…`.
        fallback_key: Option<String>,
    },
    /// Nothing to do (a Firestore delete event): acknowledged, not an error.
    Skip {
        /// Why.
        reason: String,
    },
}

/// A decoded request: who sent it, how to answer, and what it asks for (or why it cannot be
/// read: for a push delivery that still has to be recorded and acknowledged).
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Transport identity.
    pub meta: DeliveryMeta,
    /// How to answer.
    pub mode: Mode,
    /// The payload, or why there is none.
    pub payload: Result<Payload, DeliveryError>,
}

/// Why a request's envelope or payload could not be decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum DeliveryError {
    /// The body is not in a media type this endpoint reads.
    #[error("unsupported content type {0:?}; send application/json")]
    UnsupportedMediaType(String),
    /// The body is not valid JSON.
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
    /// An envelope field is missing or has the wrong type.
    #[error("{field}: {message}")]
    Envelope {
        /// Which field, e.g. `message.data` or `ce-id`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl DeliveryError {
    fn envelope(field: &str, message: impl Into<String>) -> Self {
        DeliveryError::Envelope {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// True for `application/json` and `application/*+json`, parameters ignored.
pub fn is_json(content_type: &str) -> bool {
    let essence = media_type(content_type);
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The lowercase media type without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Header value as text; invalid UTF-8 counts as absent rather than failing the request.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn parse_json(body: &[u8]) -> Result<Value, DeliveryError> {
    serde_json::from_slice(body).map_err(|e| DeliveryError::MalformedJson(e.to_string()))
}

/// The `Idempotency-Key` header, checked: at most 255 characters, printable.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, DeliveryError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |m: &str| DeliveryError::envelope("Idempotency-Key", m);
    let s = raw
        .to_str()
        .map_err(|_| bad("must be visible ASCII"))?
        .trim();
    if s.is_empty() {
        return Err(bad("must not be empty"));
    }
    if s.chars().count() > MAX_IDEMPOTENCY_KEY {
        return Err(bad("must be at most 255 characters"));
    }
    Ok(Some(s.to_string()))
}

/// Decode a request body with its headers. Never fails outright: what cannot be read is
/// reported in [`Delivery::payload`] together with what is known about the sender.
pub fn decode(headers: &HeaderMap, body: &[u8]) -> Delivery {
    decode_declared(headers, body, None)
}

/// [`decode`], with the source the endpoint URL declares (`?source=pubsub`): the only way an
/// unwrapped Pub/Sub push without `writeMetadata` can be told from a direct call.
pub fn decode_declared(headers: &HeaderMap, body: &[u8], declared: Option<&str>) -> Delivery {
    let idem = idempotency_key(headers);
    let found = ENVELOPES
        .iter()
        .find(|e| (e.recognise)(headers, declared))
        .map(|e| (e.decode)(headers, body));
    let mut d = if let Some(d) = found {
        d
    } else {
        let ct = header(headers, "content-type").unwrap_or("");
        let json = if is_json(ct) {
            parse_json(body)
        } else {
            Err(DeliveryError::UnsupportedMediaType(ct.to_string()))
        };
        match json {
            Ok(v) if pubsub::is_push_envelope(&v) => {
                let (meta, payload) = pubsub::decode(&v);
                Delivery {
                    meta,
                    mode: Mode::Push,
                    payload,
                }
            }
            _ if pubsub::from_google_push_agent(headers) => pubsub::decode_unwrapped(headers, body),
            other => Delivery {
                meta: DeliveryMeta {
                    source: "http".into(),
                    ..Default::default()
                },
                mode: Mode::Direct,
                payload: other.map(|json| Payload::Work {
                    json,
                    fallback_key: None,
                }),
            },
        }
    };
    // The Idempotency-Key outranks every transport ID: it is the caller's own identity.
    match idem {
        Ok(Some(k)) => {
            d.meta.attrs.insert("idempotency_key".into(), k.clone());
            if let Ok(Payload::Work { fallback_key, .. }) = &mut d.payload {
                *fallback_key = Some(format!("idempotency-key:{k}"));
            }
        }
        Ok(None) => {}
        Err(e) => {
            if d.payload.is_ok() {
                d.payload = Err(e);
            }
        }
    }
    bound(&mut d);
    d
}

/// An envelope recognised by its headers (or by the source the endpoint's URL declares) before
/// the body is read: a new one is a file with these two functions and a line in [`ENVELOPES`].
pub struct Envelope {
    /// For logs and docs.
    pub name: &'static str,
    /// Whether a request is this envelope; `declared` is the URL's `?source=`.
    pub recognise: fn(&HeaderMap, Option<&str>) -> bool,
    /// Its payload and transport identity.
    pub decode: fn(&HeaderMap, &[u8]) -> Delivery,
}

/// Header-recognised envelopes, tried in order; a request none of them claims is told apart by
/// its body (a wrapped Pub/Sub push, or plain JSON from a direct caller).
pub const ENVELOPES: &[Envelope] = &[
    Envelope {
        name: "pubsub-unwrapped",
        recognise: |h, declared| pubsub::is_unwrapped(h, declared == Some("pubsub")),
        decode: pubsub::decode_unwrapped,
    },
    Envelope {
        name: "cloudtasks",
        recognise: |h, _| cloudtasks::meta(h).is_some(),
        decode: cloudtasks::decode,
    },
    Envelope {
        name: "cloudevent",
        recognise: |h, _| cloudevent::is_cloudevent(h),
        decode: cloudevent::decode,
    },
];

/// Cut `s` to at most `max` bytes on a character boundary; true when it was longer.
fn cut(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut n = max;
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s.truncate(n);
    true
}

/// Refuse a delivery whose transport identity is longer than [`MAX_TRANSPORT_ID_BYTES`], and
/// keep only that much of it. Those values are stored on status documents and dead letters
/// and logged: unbounded, a hostile envelope could push a status document past Firestore's
/// 1 MiB limit, and a commit that fails that way answers 503, which a platform redelivers
/// forever. Refused, the delivery is dead-lettered (push) or answered 400 (direct).
fn bound(d: &mut Delivery) {
    let mut too_long: Option<String> = None;
    if let Some(id) = d.meta.id.as_mut() {
        if cut(id, MAX_TRANSPORT_ID_BYTES) {
            let field = match d.meta.source.as_str() {
                "eventarc" => "ce-id",
                "pubsub" => "message.messageId",
                "cloudtasks" => "X-CloudTasks-TaskName",
                _ => "id",
            };
            too_long = Some(field.to_string());
        }
    }
    for (k, v) in d.meta.attrs.iter_mut() {
        if cut(v, MAX_TRANSPORT_ID_BYTES) && too_long.is_none() {
            too_long = Some(k.clone());
        }
    }
    if let Ok(Payload::Work {
        fallback_key: Some(k),
        ..
    }) = &d.payload
    {
        // A key is a short prefix plus identities checked above, or a document name.
        if k.len() > MAX_TRANSPORT_ID_BYTES + 64 && too_long.is_none() {
            too_long = Some("data.value.name".into());
        }
    }
    if let Some(field) = too_long {
        if d.payload.is_ok() {
            d.payload = Err(DeliveryError::envelope(
                &field,
                format!("must be at most {MAX_TRANSPORT_ID_BYTES} bytes"),
            ));
        }
    }
}

/// A JSON body with no envelope.
pub(crate) fn plain(headers: &HeaderMap, body: &[u8]) -> Result<Payload, DeliveryError> {
    let ct = header(headers, "content-type").unwrap_or("");
    if !is_json(ct) {
        return Err(DeliveryError::UnsupportedMediaType(ct.to_string()));
    }
    Ok(Payload::Work {
        json: parse_json(body)?,
        fallback_key: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/cloudevents+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }

    #[test]
    fn plain_json_is_direct() {
        let d = decode(
            &headers(&[("content-type", "application/json")]),
            br#"{"a":1}"#,
        );
        assert_eq!(d.mode, Mode::Direct);
        assert_eq!(d.meta.source, "http");
        assert!(matches!(
            d.payload,
            Ok(Payload::Work {
                fallback_key: None,
                ..
            })
        ));
        let d = decode(&headers(&[("content-type", "text/plain")]), b"{}");
        assert!(matches!(
            d.payload,
            Err(DeliveryError::UnsupportedMediaType(_))
        ));
        let d = decode(&headers(&[("content-type", "application/json")]), b"{");
        assert!(matches!(d.payload, Err(DeliveryError::MalformedJson(_))));
    }

    #[test]
    fn idempotency_key_is_the_first_fallback() {
        let d = decode(
            &headers(&[
                ("content-type", "application/json"),
                ("idempotency-key", "k-1"),
            ]),
            b"{}",
        );
        assert_eq!(
            d.payload,
            Ok(Payload::Work {
                json: serde_json::json!({}),
                fallback_key: Some("idempotency-key:k-1".into())
            })
        );
        let long = "k".repeat(256);
        let d = decode(
            &headers(&[
                ("content-type", "application/json"),
                ("idempotency-key", &long),
            ]),
            b"{}",
        );
        assert!(
            matches!(d.payload, Err(DeliveryError::Envelope { ref field, .. }) if field == "Idempotency-Key")
        );
        let ok = "k".repeat(255);
        let d = decode(
            &headers(&[
                ("content-type", "application/json"),
                ("idempotency-key", &ok),
            ]),
            b"{}",
        );
        assert!(d.payload.is_ok());
    }

    #[test]
    fn transport_identities_are_bounded() {
        let huge = "m".repeat(MAX_TRANSPORT_ID_BYTES + 1);
        let envelope = serde_json::json!({
            "message": {"data": pubsub::encode_data(br#"{"poll":"a","vote_id":"v-1"}"#),
                        "messageId": huge},
            "subscription": "projects/p/subscriptions/s"
        });
        let d = decode(
            &headers(&[("content-type", "application/json")]),
            envelope.to_string().as_bytes(),
        );
        assert_eq!(d.mode, Mode::Push);
        assert!(
            matches!(&d.payload, Err(DeliveryError::Envelope { field, .. }) if field == "message.messageId"),
            "{:?}",
            d.payload
        );
        assert_eq!(
            d.meta.id.as_ref().map(String::len),
            Some(MAX_TRANSPORT_ID_BYTES)
        );
        let source = "s".repeat(MAX_TRANSPORT_ID_BYTES + 10);
        let d = decode(
            &headers(&[
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-id", "e-1"),
                ("ce-source", &source),
                ("ce-type", "com.example.vote"),
            ]),
            br#"{"poll":"a","vote_id":"v-1"}"#,
        );
        assert!(
            matches!(&d.payload, Err(DeliveryError::Envelope { field, .. }) if field == "ce_source"),
            "{:?}",
            d.payload
        );
        let mut s = "é".repeat(10);
        assert!(cut(&mut s, 5));
        assert_eq!(s, "éé");
    }
}
