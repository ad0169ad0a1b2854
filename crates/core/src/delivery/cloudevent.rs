//! CloudEvents over HTTP, as Eventarc sends them: binary mode (`ce-*` headers, data in the
//! body) and structured mode (`application/cloudevents+json`). `(source, id)` identifies one
//! event across all its retries.

use super::{
    firestore_event, header, is_json, media_type, pubsub, Delivery, DeliveryError, Mode, Payload,
};
use crate::engine::DeliveryMeta;
use base64::Engine;
use http::HeaderMap;
use serde_json::Value;

/// Pub/Sub message published (data: a push envelope).
pub const PUBSUB_PUBLISHED: &str = "google.cloud.pubsub.topic.v1.messagePublished";
/// Prefix of Firestore document event types (data: `DocumentEventData`).
pub const FIRESTORE_DOCUMENT: &str = "google.cloud.firestore.document.v1.";

/// True when the request is a CloudEvent in either mode.
pub fn is_cloudevent(headers: &HeaderMap) -> bool {
    headers.contains_key("ce-specversion")
        || media_type(header(headers, "content-type").unwrap_or(""))
            == "application/cloudevents+json"
}

enum Data {
    Json(Value),
    Bytes(Vec<u8>),
}

struct Event {
    id: String,
    source: String,
    ty: String,
    subject: Option<String>,
    content_type: String,
    data: Option<Data>,
}

fn env(field: &str, m: impl Into<String>) -> DeliveryError {
    DeliveryError::Envelope {
        field: field.into(),
        message: m.into(),
    }
}

/// A `ce-*` header value, percent-decoded as the CloudEvents HTTP binding writes them (space,
/// `"`, `%` and everything outside printable ASCII are percent-encoded by conforming senders).
/// `None` when absent; an encoding that does not decode to UTF-8 is an envelope error.
pub fn ce_header(headers: &HeaderMap, name: &str) -> Option<Result<String, DeliveryError>> {
    let raw = header(headers, name)?;
    Some(
        percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map(|v| v.into_owned())
            .map_err(|_| env(name, "is not percent-encoded UTF-8")),
    )
}

fn binary(headers: &HeaderMap, body: &[u8]) -> Result<Event, DeliveryError> {
    let req = |h: &str| -> Result<String, DeliveryError> {
        match ce_header(headers, h).transpose()? {
            Some(v) if !v.trim().is_empty() => Ok(v),
            _ => Err(env(h, "is required")),
        }
    };
    let spec = req("ce-specversion")?;
    if spec != "1.0" {
        return Err(env(
            "ce-specversion",
            format!("{spec:?} is not supported; use 1.0"),
        ));
    }
    Ok(Event {
        id: req("ce-id")?,
        source: req("ce-source")?,
        ty: req("ce-type")?,
        subject: ce_header(headers, "ce-subject").transpose()?,
        content_type: header(headers, "content-type").unwrap_or("").to_string(),
        data: (!body.is_empty()).then(|| Data::Bytes(body.to_vec())),
    })
}

fn structured(body: &[u8]) -> Result<(Event, Value), DeliveryError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| DeliveryError::MalformedJson(e.to_string()))?;
    let s = |k: &str| -> Result<String, DeliveryError> {
        match v.get(k) {
            Some(Value::String(x)) if !x.trim().is_empty() => Ok(x.clone()),
            Some(Value::String(_)) | None | Some(Value::Null) => Err(env(k, "is required")),
            Some(_) => Err(env(k, "must be a string")),
        }
    };
    let spec = s("specversion")?;
    if spec != "1.0" {
        return Err(env(
            "specversion",
            format!("{spec:?} is not supported; use 1.0"),
        ));
    }
    let data = match (v.get("data"), v.get("data_base64")) {
        (Some(d), _) if !d.is_null() => Some(Data::Json(d.clone())),
        (_, Some(Value::String(b))) => Some(Data::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| env("data_base64", format!("is not valid base64: {e}")))?,
        )),
        (_, Some(_)) => return Err(env("data_base64", "must be a base64 string")),
        _ => None,
    };
    let e = Event {
        id: s("id")?,
        source: s("source")?,
        ty: s("type")?,
        subject: match v.get("subject") {
            None | Some(Value::Null) => None,
            Some(Value::String(x)) => Some(x.clone()),
            Some(_) => return Err(env("subject", "must be a string")),
        },
        content_type: v
            .get("datacontenttype")
            .and_then(Value::as_str)
            .unwrap_or("application/json")
            .to_string(),
        data,
    };
    Ok((e, v))
}

fn data_json(data: Option<Data>) -> Result<Value, DeliveryError> {
    match data {
        None => Err(env("data", "is required")),
        Some(Data::Json(v)) => Ok(v),
        Some(Data::Bytes(b)) => {
            serde_json::from_slice(&b).map_err(|e| env("data", format!("is not valid JSON: {e}")))
        }
    }
}

/// Decode a CloudEvent (either mode) into a push delivery.
pub fn decode(headers: &HeaderMap, body: &[u8]) -> Delivery {
    let mut meta = DeliveryMeta {
        source: "eventarc".into(),
        ..Default::default()
    };
    let event = if headers.contains_key("ce-specversion") {
        meta.id = ce_header(headers, "ce-id").and_then(Result::ok);
        binary(headers, body)
    } else {
        structured(body).map(|(e, _)| e)
    };
    let payload = event.and_then(|e| {
        meta.id = Some(e.id.clone());
        meta.attrs.insert("ce_source".into(), e.source.clone());
        meta.attrs.insert("ce_type".into(), e.ty.clone());
        if let Some(subject) = &e.subject {
            meta.attrs.insert("ce_subject".into(), subject.clone());
        }
        let ce_key = format!("cloudevent:{}/{}", e.source, e.id);
        if e.ty == PUBSUB_PUBLISHED {
            let envelope = data_json(e.data)?;
            let (inner, payload) = pubsub::decode(&envelope);
            if let Some(id) = inner.id {
                meta.attrs.insert("message_id".into(), id);
            }
            meta.attrs.extend(inner.attrs);
            meta.attempt = inner.attempt;
            payload.map(|p| with_key(p, ce_key))
        } else if e.ty.starts_with(FIRESTORE_DOCUMENT) {
            // The document's name is its domain identity: a re-written request document is
            // still one piece of work, whatever its event ID.
            match e.data {
                None => Err(env("data", "is required")),
                Some(Data::Json(v)) => firestore_event::decode_json(&v),
                Some(Data::Bytes(b)) if is_json(&e.content_type) => {
                    let v: Value = serde_json::from_slice(&b)
                        .map_err(|err| env("data", format!("is not valid JSON: {err}")))?;
                    firestore_event::decode_json(&v)
                }
                Some(Data::Bytes(b)) => firestore_event::decode_protobuf(&b),
            }
        } else {
            if !e.content_type.is_empty() && !is_json(&e.content_type) {
                return Err(DeliveryError::UnsupportedMediaType(e.content_type));
            }
            Ok(Payload::Work {
                json: data_json(e.data)?,
                fallback_key: Some(ce_key),
            })
        }
    });
    Delivery {
        meta,
        mode: Mode::Push,
        payload,
    }
}

/// The CloudEvent identity outranks the inner message ID.
fn with_key(p: Payload, key: String) -> Payload {
    match p {
        Payload::Work { json, .. } => Payload::Work {
            json,
            fallback_key: Some(key),
        },
        skip => skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::decode as decode_request;
    use crate::delivery::tests::headers;
    use serde_json::json;

    fn ce(ty: &str, ct: &str) -> Vec<(&'static str, String)> {
        vec![
            ("ce-specversion", "1.0".into()),
            ("ce-id", "evt-1".into()),
            (
                "ce-source",
                "//pubsub.googleapis.com/projects/p/topics/votes".into(),
            ),
            ("ce-type", ty.into()),
            ("content-type", ct.into()),
        ]
    }

    fn h(v: &[(&'static str, String)]) -> HeaderMap {
        headers(&v.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())
    }

    #[test]
    fn binary_pubsub_event() {
        let body = json!({"message": {"data": pubsub::encode_data(br#"{"vote_id":"v"}"#), "messageId": "m-1"},
                          "subscription": "projects/p/subscriptions/eventarc-sub"});
        let d = decode_request(
            &h(&ce(PUBSUB_PUBLISHED, "application/json")),
            body.to_string().as_bytes(),
        );
        assert_eq!(d.mode, Mode::Push);
        assert_eq!(d.meta.source, "eventarc");
        assert_eq!(d.meta.id.as_deref(), Some("evt-1"));
        assert_eq!(d.meta.attrs["message_id"], "m-1");
        assert_eq!(
            d.payload,
            Ok(Payload::Work {
                json: json!({"vote_id":"v"}),
                fallback_key: Some(
                    "cloudevent://pubsub.googleapis.com/projects/p/topics/votes/evt-1".into()
                )
            })
        );
    }

    #[test]
    fn structured_event_with_json_and_base64_data() {
        let body = json!({"specversion":"1.0","id":"e-2","source":"/polls","type":"com.example.vote",
                          "datacontenttype":"application/json","data":{"vote_id":"v-2"}});
        let d = decode_request(
            &headers(&[(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            )]),
            body.to_string().as_bytes(),
        );
        assert_eq!(d.meta.id.as_deref(), Some("e-2"));
        assert!(
            matches!(d.payload, Ok(Payload::Work { ref json, .. }) if json["vote_id"] == "v-2")
        );
        let body = json!({"specversion":"1.0","id":"e-3","source":"/polls","type":"com.example.vote",
                          "data_base64": pubsub::encode_data(br#"{"vote_id":"v-3"}"#)});
        let d = decode_request(
            &headers(&[("content-type", "application/cloudevents+json")]),
            body.to_string().as_bytes(),
        );
        assert!(
            matches!(d.payload, Ok(Payload::Work { ref json, .. }) if json["vote_id"] == "v-3")
        );
    }

    #[test]
    fn missing_attributes_and_bad_data_are_envelope_errors() {
        let mut no_id = ce("com.example.vote", "application/json");
        no_id.retain(|(k, _)| *k != "ce-id");
        let d = decode_request(&h(&no_id), b"{}");
        assert_eq!(d.mode, Mode::Push);
        assert!(
            matches!(d.payload, Err(DeliveryError::Envelope { ref field, .. }) if field == "ce-id")
        );
        let d = decode_request(&h(&ce("com.example.vote", "application/json")), b"{nope");
        assert!(d.payload.is_err());
        let d = decode_request(
            &h(&ce(PUBSUB_PUBLISHED, "application/json")),
            br#"{"message":{"data":"@@"},"subscription":"s"}"#,
        );
        assert!(
            matches!(d.payload, Err(DeliveryError::Envelope { ref field, .. }) if field == "message.data")
        );
        let d = decode_request(
            &h(&ce(
                "google.cloud.firestore.document.v1.created",
                "application/protobuf",
            )),
            &[0x0a, 0x05, 0x01],
        );
        assert!(d.payload.is_err());
        let d = decode_request(
            &headers(&[("content-type", "application/cloudevents+json")]),
            br#"{"specversion":"1.0","id":"x","type":"t"}"#,
        );
        assert!(
            matches!(d.payload, Err(DeliveryError::Envelope { ref field, .. }) if field == "source")
        );
        let mut v03 = ce("t", "application/json");
        v03[0].1 = "0.3".into();
        assert!(decode_request(&h(&v03), b"{}").payload.is_err());
    }
}
