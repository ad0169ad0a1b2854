//! Pub/Sub push envelopes, sent straight by a push subscription or wrapped in an Eventarc
//! `messagePublished` CloudEvent:
//! `{"message":{"data":base64,"attributes":{},"messageId":"…","publishTime":"…"},"subscription":"…","deliveryAttempt":N}`.
//! Pub/Sub acknowledges on 102, 200, 201, 202 or 204 and redelivers everything else.

use super::{DeliveryError, DeliveryMeta, Payload};
use base64::Engine;
use serde_json::Value;

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
            "subscription": "projects/p/subscriptions/orders-push",
            "deliveryAttempt": 3
        })
    }

    #[test]
    fn push_envelope_decodes() {
        let body = envelope(json!(encode_data(br#"{"order_id":"o-1"}"#)));
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
            "projects/p/subscriptions/orders-push"
        );
        assert_eq!(
            d.payload,
            Ok(Payload::Work {
                json: json!({"order_id":"o-1"}),
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
}
