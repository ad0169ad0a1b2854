//! Pub/Sub push envelopes, sent straight by a push subscription or wrapped in an Eventarc
//! `messagePublished` CloudEvent:
//! `{"message":{"data":base64,"attributes":{},"messageId":"…","publishTime":"…"},"subscription":"…","deliveryAttempt":N}`.
//! Pub/Sub acknowledges on 102, 200, 201, 202 or 204 and redelivers everything else.

use super::{header, parse_json, Delivery, DeliveryError, Mode, Payload};
use crate::engine::DeliveryMeta;
use base64::Engine;
use http::HeaderMap;
use serde_json::Value;

/// Message ID header of a push with payload unwrapping and `writeMetadata`.
pub const MESSAGE_ID_HEADER: &str = "x-goog-pubsub-message-id";

/// `DeliveryMeta.attrs["wrapper"]` of an unwrapped push, so a redrive decodes it the same way.
pub const UNWRAPPED: &str = "none";

/// True for a Pub/Sub push with payload unwrapping (`pushConfig.noWrapper`) that says so: with
/// `writeMetadata` it carries `x-goog-pubsub-message-id`; without it nothing in the request
/// does, so the push endpoint declares it (`?source=pubsub`, `declared`).
pub fn is_unwrapped(headers: &HeaderMap, declared: bool) -> bool {
    declared || headers.contains_key(MESSAGE_ID_HEADER)
}

/// True when the sender is Google's push agent (Pub/Sub push requests carry the
/// `APIs-Google` user agent): a body that is not a push envelope is then an unwrapped one.
pub fn from_google_push_agent(headers: &HeaderMap) -> bool {
    header(headers, "user-agent").is_some_and(|ua| ua.starts_with("APIs-Google"))
}

/// Decode an unwrapped push: the body is the raw message data, the metadata (with
/// `writeMetadata`) is in `x-goog-pubsub-*` headers and the attributes are headers too. The
/// media type is not checked: a message without a `Content-Type` attribute arrives with
/// whatever the pusher's HTTP client defaults to, and the data is read as JSON regardless.
pub fn decode_unwrapped(headers: &HeaderMap, body: &[u8]) -> Delivery {
    let id = header(headers, MESSAGE_ID_HEADER)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let mut meta = DeliveryMeta {
        source: "pubsub".into(),
        id: id.clone(),
        attempt: header(headers, "x-goog-pubsub-delivery-attempt").and_then(|v| v.parse().ok()),
        ..Default::default()
    };
    meta.attrs.insert("wrapper".into(), UNWRAPPED.into());
    for (h, k) in [
        ("x-goog-pubsub-subscription-name", "subscription"),
        ("x-goog-pubsub-publish-time", "publish_time"),
        ("x-goog-ordering-key", "ordering_key"),
        ("x-goog-pubsub-ordering-key", "ordering_key"),
    ] {
        if let Some(v) = header(headers, h).filter(|v| !v.is_empty()) {
            meta.attrs.insert(k.into(), v.to_string());
        }
    }
    let payload = parse_json(body).map(|json| Payload::Work {
        json,
        fallback_key: id.map(|id| format!("pubsub:{id}")),
    });
    Delivery {
        meta,
        mode: Mode::Push,
        payload,
    }
}

/// True when `v` has the shape of a push envelope.
pub fn is_push_envelope(v: &Value) -> bool {
    v.get("message").is_some() && v.get("subscription").is_some()
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Decode an envelope into delivery identity and the payload carried in `message.data`.
pub fn decode(v: &Value) -> (DeliveryMeta, Result<Payload, DeliveryError>) {
    let msg = v.get("message");
    let message_id =
        msg.and_then(|m| text(m.get("messageId")).or_else(|| text(m.get("message_id"))));
    let mut meta = DeliveryMeta {
        source: "pubsub".into(),
        id: message_id.clone(),
        attempt: v.get("deliveryAttempt").and_then(Value::as_i64),
        ..Default::default()
    };
    if let Some(s) = text(v.get("subscription")) {
        meta.attrs.insert("subscription".into(), s);
    }
    for (field, key) in [
        ("publishTime", "publish_time"),
        ("orderingKey", "ordering_key"),
    ] {
        if let Some(s) = msg.and_then(|m| text(m.get(field))) {
            meta.attrs.insert(key.into(), s);
        }
    }
    let payload = payload(msg, message_id);
    (meta, payload)
}

fn payload(msg: Option<&Value>, message_id: Option<String>) -> Result<Payload, DeliveryError> {
    let env = |field: &str, m: &str| DeliveryError::Envelope {
        field: field.into(),
        message: m.into(),
    };
    let msg = msg
        .filter(|m| m.is_object())
        .ok_or_else(|| env("message", "must be an object"))?;
    let data = match msg.get("data") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => return Err(env("message.data", "is required")),
        Some(_) => return Err(env("message.data", "must be a base64 string")),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(data.trim()))
        .map_err(|e| env("message.data", &format!("is not valid base64: {e}")))?;
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|e| env("message.data", &format!("does not decode to JSON: {e}")))?;
    Ok(Payload::Work {
        json,
        fallback_key: message_id.map(|id| format!("pubsub:{id}")),
    })
}

/// Base64 as Pub/Sub encodes `message.data`; for tests and examples.
pub fn encode_data(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::tests::headers;
    use crate::delivery::{decode as decode_request, Mode};
    use serde_json::json;

    fn envelope(data: Value) -> Value {
        json!({
            "message": {"data": data, "attributes": {"k": "v"}, "messageId": "136969346945",
                        "publishTime": "2026-11-23T10:00:00.000Z"},
            "subscription": "projects/p/subscriptions/votes-push",
            "deliveryAttempt": 3
        })
    }

    #[test]
    fn push_envelope_decodes() {
        let body = envelope(json!(encode_data(br#"{"vote_id":"v-1"}"#)));
        let d = decode_request(
            &headers(&[("content-type", "application/json")]),
            body.to_string().as_bytes(),
        );
        assert_eq!(d.mode, Mode::Push);
        assert_eq!(d.meta.source, "pubsub");
        assert_eq!(d.meta.id.as_deref(), Some("136969346945"));
        assert_eq!(d.meta.attempt, Some(3));
        assert_eq!(
            d.meta.attrs["subscription"],
            "projects/p/subscriptions/votes-push"
        );
        assert_eq!(
            d.payload,
            Ok(Payload::Work {
                json: json!({"vote_id":"v-1"}),
                fallback_key: Some("pubsub:136969346945".into())
            })
        );
    }

    #[test]
    fn malformed_envelopes_name_the_field() {
        for (data, field) in [
            (Value::Null, "message.data"),
            (json!(12), "message.data"),
            (json!("%%% not base64"), "message.data"),
            (json!(encode_data(b"not json")), "message.data"),
        ] {
            let (_, p) = decode(&envelope(data));
            assert!(
                matches!(p, Err(DeliveryError::Envelope { field: ref f, .. }) if f == field),
                "{p:?}"
            );
        }
        let (_, p) = decode(&json!({"message": "x", "subscription": "s"}));
        assert!(matches!(p, Err(DeliveryError::Envelope { field: ref f, .. }) if f == "message"));
    }

    #[test]
    fn unwrapped_push_with_metadata_headers() {
        // As the Pub/Sub emulator sends it for a message without a Content-Type attribute.
        let h = headers(&[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-goog-pubsub-message-id", "42"),
            (
                "x-goog-pubsub-subscription-name",
                "projects/p/subscriptions/raw",
            ),
            ("x-goog-pubsub-publish-time", "2026-12-03T09:38:46.095Z"),
            ("x-goog-ordering-key", "k1"),
            ("origin", "polls"),
        ]);
        let d = decode_request(&h, br#"{"vote_id":"v-1"}"#);
        assert_eq!(d.mode, Mode::Push);
        assert_eq!(d.meta.source, "pubsub");
        assert_eq!(d.meta.id.as_deref(), Some("42"));
        assert_eq!(d.meta.attrs["subscription"], "projects/p/subscriptions/raw");
        assert_eq!(d.meta.attrs["ordering_key"], "k1");
        assert_eq!(
            d.payload,
            Ok(Payload::Work {
                json: json!({"vote_id":"v-1"}),
                fallback_key: Some("pubsub:42".into())
            })
        );
        let d = decode_request(&h, b"not json");
        assert_eq!(d.mode, Mode::Push);
        assert!(d.payload.is_err());
    }

    #[test]
    fn unwrapped_push_without_metadata_is_declared_or_recognised() {
        let h = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        let d = crate::delivery::decode_declared(&h, br#"{"vote_id":"v-2"}"#, Some("pubsub"));
        assert_eq!((d.mode, d.meta.source.as_str()), (Mode::Push, "pubsub"));
        assert_eq!(d.meta.id, None);
        // Undeclared, the same request is a direct call refused for its media type.
        let d = decode_request(&h, br#"{"vote_id":"v-2"}"#);
        assert_eq!(d.mode, Mode::Direct);
        // Google's push agent, body not an envelope: an unwrapped push.
        let h = headers(&[(
            "user-agent",
            "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)",
        )]);
        let d = decode_request(&h, b"garbage");
        assert_eq!((d.mode, d.meta.source.as_str()), (Mode::Push, "pubsub"));
        assert!(d.payload.is_err());
    }
}
