//! Eventarc Firestore document events (`google.cloud.firestore.document.v1.created`,
//! `.updated`, `.deleted`, `.written`). The data is `google.events.cloud.firestore.v1.
//! DocumentEventData`, protobuf by default (`application/protobuf`) or JSON when the trigger
//! asks for it. No published crate decodes it, so the message is declared here; its nested
//! `Document` and `Value` have the same field numbers as `google.firestore.v1`, whose types
//! the `firestore` crate already ships.

use super::{DeliveryError, Payload};
use base64::Engine;
use firestore::gcloud_sdk::google::firestore::v1 as pb;
use pb::value::ValueType;
use serde_json::{Map, Number, Value};

/// `google.events.cloud.firestore.v1.DocumentEventData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DocumentEventData {
    /// The document after the change; absent for a delete.
    #[prost(message, optional, tag = "1")]
    pub value: Option<pb::Document>,
    /// The document before the change; absent for a create.
    #[prost(message, optional, tag = "2")]
    pub old_value: Option<pb::Document>,
    /// Fields changed by an update.
    #[prost(message, optional, tag = "3")]
    pub update_mask: Option<pb::DocumentMask>,
}

fn bad(message: String) -> DeliveryError {
    DeliveryError::Envelope {
        field: "data".into(),
        message,
    }
}

/// Decode protobuf `DocumentEventData` into the document's fields as plain JSON.
pub fn decode_protobuf(bytes: &[u8]) -> Result<Payload, DeliveryError> {
    let data = <DocumentEventData as prost::Message>::decode(bytes)
        .map_err(|e| bad(format!("not a DocumentEventData protobuf: {e}")))?;
    // Google's own samples write a delete as a present but empty `value`: absent too.
    Ok(
        match data
            .value
            .filter(|d| !d.name.is_empty() || !d.fields.is_empty())
        {
            None => deleted(),
            Some(doc) => Payload::Work {
                json: Value::Object(
                    doc.fields
                        .into_iter()
                        .map(|(k, v)| (k, proto_to_json(v)))
                        .collect(),
                ),
                fallback_key: Some(format!("firestore-document:{}", doc.name)),
            },
        },
    )
}

fn deleted() -> Payload {
    Payload::Skip {
        reason: "document deleted: no work to process".into(),
    }
}

/// A JSON document with neither a name nor fields (`{}`, or `{"name":"","fields":{}}` as
/// protobuf's JSON printer writes an empty `Document`).
fn is_empty_json_doc(doc: &Value) -> bool {
    let Some(o) = doc.as_object() else {
        return false;
    };
    let name_empty = match o.get("name") {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    };
    let fields_empty = match o.get("fields") {
        None | Some(Value::Null) => true,
        Some(Value::Object(f)) => f.is_empty(),
        Some(_) => false,
    };
    name_empty && fields_empty
}

fn proto_to_json(v: pb::Value) -> Value {
    match v.value_type {
        None | Some(ValueType::NullValue(_)) => Value::Null,
        Some(ValueType::BooleanValue(b)) => Value::Bool(b),
        Some(ValueType::IntegerValue(i)) => Value::from(i),
        Some(ValueType::DoubleValue(d)) => Number::from_f64(d).map_or(Value::Null, Value::Number),
        Some(ValueType::StringValue(s)) | Some(ValueType::ReferenceValue(s)) => Value::String(s),
        Some(ValueType::BytesValue(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Some(ValueType::TimestampValue(t)) => firestore::timestamp_utils::from_timestamp(t)
            .map(|ts| Value::String(ts.to_string()))
            .unwrap_or(Value::Null),
        Some(ValueType::ArrayValue(a)) => {
            Value::Array(a.values.into_iter().map(proto_to_json).collect())
        }
        Some(ValueType::MapValue(m)) => Value::Object(
            m.fields
                .into_iter()
                .map(|(k, v)| (k, proto_to_json(v)))
                .collect(),
        ),
        Some(ValueType::GeoPointValue(g)) => {
            serde_json::json!({"latitude": g.latitude, "longitude": g.longitude})
        }
        Some(_) => Value::Null,
    }
}

/// Decode JSON `DocumentEventData` (`{"value":{"name":…,"fields":{"k":{"stringValue":…}}}}`).
pub fn decode_json(v: &Value) -> Result<Payload, DeliveryError> {
    let obj = v
        .as_object()
        .ok_or_else(|| bad("DocumentEventData must be a JSON object".into()))?;
    let Some(doc) = obj
        .get("value")
        .filter(|d| !d.is_null() && !is_empty_json_doc(d))
    else {
        return Ok(deleted());
    };
    let name = doc
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("value.name is required".into()))?;
    let fields = match doc.get("fields") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(f)) => f.clone(),
        Some(_) => return Err(bad("value.fields must be an object".into())),
    };
    let mut out = Map::new();
    for (k, fv) in fields {
        out.insert(
            k.clone(),
            rest_to_json(&fv).map_err(|m| bad(format!("value.fields.{k}: {m}")))?,
        );
    }
    Ok(Payload::Work {
        json: Value::Object(out),
        fallback_key: Some(format!("firestore-document:{name}")),
    })
}

/// One Firestore REST/JSON value (`{"integerValue":"2"}`) as plain JSON.
fn rest_to_json(v: &Value) -> Result<Value, String> {
    let obj = v
        .as_object()
        .ok_or("must be a typed Firestore value object")?;
    let (kind, inner) = obj.iter().next().ok_or("is an empty value")?;
    Ok(match kind.as_str() {
        "nullValue" => Value::Null,
        "booleanValue" => Value::Bool(inner.as_bool().ok_or("booleanValue must be a boolean")?),
        "integerValue" => {
            let i = match inner {
                Value::String(s) => s.parse::<i64>().map_err(|e| format!("integerValue: {e}"))?,
                Value::Number(n) => n.as_i64().ok_or("integerValue out of range")?,
                _ => return Err("integerValue must be a string or number".into()),
            };
            Value::from(i)
        }
        "doubleValue" => inner.clone(),
        "stringValue" | "referenceValue" | "timestampValue" | "bytesValue" => inner.clone(),
        "arrayValue" => Value::Array(
            inner
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(rest_to_json).collect::<Result<Vec<_>, _>>())
                .transpose()?
                .unwrap_or_default(),
        ),
        "mapValue" => {
            let mut m = Map::new();
            if let Some(f) = inner.get("fields").and_then(Value::as_object) {
                for (k, v) in f {
                    m.insert(k.clone(), rest_to_json(v)?);
                }
            }
            Value::Object(m)
        }
        "geoPointValue" => inner.clone(),
        other => return Err(format!("unknown value type {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use serde_json::json;

    /// Protobuf bytes written by hand, field by field, the way Firestore's encoder lays them
    /// out: independent of the prost structs above.
    fn hand_encoded() -> Vec<u8> {
        fn varint(mut n: u64, out: &mut Vec<u8>) {
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }
        fn ld(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
            varint(((tag << 3) | 2) as u64, out);
            varint(bytes.len() as u64, out);
            out.extend_from_slice(bytes);
        }
        fn entry(key: &str, value: &[u8]) -> Vec<u8> {
            let mut e = Vec::new();
            ld(1, key.as_bytes(), &mut e);
            ld(2, value, &mut e);
            e
        }
        let mut string_v = Vec::new();
        ld(17, b"v-77", &mut string_v); // Value.string_value = 17
        let mut poll_v = Vec::new();
        ld(17, b"p1", &mut poll_v);
        let mut int_v = Vec::new();
        varint(2 << 3, &mut int_v); // Value.integer_value = 2, varint
        varint(3, &mut int_v);
        let mut doc = Vec::new();
        ld(
            1,
            b"projects/p/databases/(default)/documents/vote_requests/r1",
            &mut doc,
        );
        ld(2, &entry("vote_id", &string_v), &mut doc); // Document.fields = 2 (map entries)
        ld(2, &entry("poll", &poll_v), &mut doc);
        ld(2, &entry("weight", &int_v), &mut doc);
        let mut data = Vec::new();
        ld(1, &doc, &mut data); // DocumentEventData.value = 1
        data
    }

    #[test]
    fn hand_encoded_protobuf_decodes() {
        let p = decode_protobuf(&hand_encoded()).unwrap();
        assert_eq!(
            p,
            Payload::Work {
                json: json!({"vote_id":"v-77","poll":"p1","weight":3}),
                fallback_key: Some(
                    "firestore-document:projects/p/databases/(default)/documents/vote_requests/r1"
                        .into()
                )
            }
        );
    }

    #[test]
    fn prost_round_trip_with_nested_values_and_delete() {
        let mut fields = std::collections::HashMap::new();
        let line = pb::Value {
            value_type: Some(ValueType::MapValue(pb::MapValue {
                fields: [
                    (
                        "poll".to_string(),
                        pb::Value {
                            value_type: Some(ValueType::StringValue("a".into())),
                        },
                    ),
                    (
                        "weight".to_string(),
                        pb::Value {
                            value_type: Some(ValueType::IntegerValue(2)),
                        },
                    ),
                ]
                .into_iter()
                .collect(),
            })),
        };
        fields.insert(
            "ballots".to_string(),
            pb::Value {
                value_type: Some(ValueType::ArrayValue(pb::ArrayValue { values: vec![line] })),
            },
        );
        let data = DocumentEventData {
            value: Some(pb::Document {
                name: "projects/p/databases/(default)/documents/vote_requests/r2".into(),
                fields,
                ..Default::default()
            }),
            ..Default::default()
        };
        let Payload::Work { json, .. } = decode_protobuf(&data.encode_to_vec()).unwrap() else {
            panic!("skipped")
        };
        assert_eq!(json, json!({"ballots":[{"poll":"a","weight":2}]}));
        let deleted = DocumentEventData {
            old_value: data.value.clone(),
            ..Default::default()
        };
        assert!(matches!(
            decode_protobuf(&deleted.encode_to_vec()),
            Ok(Payload::Skip { .. })
        ));
        let empty = DocumentEventData {
            value: Some(pb::Document::default()),
            old_value: data.value.clone(),
            ..Default::default()
        };
        let bytes = empty.encode_to_vec();
        assert_eq!(&bytes[..2], &[0x0a, 0x00], "value present, empty");
        assert!(matches!(decode_protobuf(&bytes), Ok(Payload::Skip { .. })));
    }

    #[test]
    fn truncated_or_foreign_bytes_are_errors() {
        let full = hand_encoded();
        for cut in [1, 5, full.len() / 2, full.len() - 1] {
            assert!(decode_protobuf(&full[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_protobuf(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn json_event_data_decodes() {
        let v = json!({"value": {"name": "projects/p/databases/(default)/documents/vote_requests/r3",
            "fields": {"vote_id": {"stringValue": "v-3"}, "poll": {"stringValue": "p2"},
                       "weight": {"integerValue": "4"}},
            "createTime": "2026-11-23T10:00:00Z"}, "updateMask": {"fieldPaths": []}});
        let Payload::Work { json, fallback_key } = decode_json(&v).unwrap() else {
            panic!("skipped")
        };
        assert_eq!(json, json!({"vote_id":"v-3","poll":"p2","weight":4}));
        assert!(fallback_key.unwrap().ends_with("vote_requests/r3"));
        assert!(matches!(
            decode_json(&json!({"oldValue": {}})),
            Ok(Payload::Skip { .. })
        ));
        // An empty document is a delete, as Google's samples write one.
        for empty in [
            json!({"value": {}}),
            json!({"value": {"name": "", "fields": {}}}),
        ] {
            assert!(
                matches!(decode_json(&empty), Ok(Payload::Skip { .. })),
                "{empty}"
            );
        }
        assert!(decode_json(&json!({"value": {"fields": {"a": {"stringValue": "x"}}}})).is_err());
        assert!(decode_json(
            &json!({"value": {"name": "n", "fields": {"q": {"integerValue": "x"}}}})
        )
        .is_err());
        assert!(decode_json(&json!([1])).is_err());
    }
}
