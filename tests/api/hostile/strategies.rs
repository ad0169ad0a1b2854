//! The proptest strategies: hostile strings, JSON, orders, envelopes, events, headers, bodies.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore_once_core::delivery::{self, firestore_event, MAX_TRANSPORT_ID_BYTES};
use firestore_once_shop::order::MAX_QUANTITY;
use pb::value::ValueType;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Strings an attacker would try as keys and IDs.
pub(super) fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\\x7f]{1,12}",
        "[/.]{1,6}",
        "__[a-z]{0,6}__",
        Just(String::new()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("a/b/../c".to_string()),
        Just("\u{202e}evil\u{0}".to_string()),
        (4090usize..4100).prop_map(|n| "k".repeat(n)),
        Just("i-00".to_string()),
    ]
}

/// Any JSON value, nested a few levels.
pub(super) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        hostile_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(hostile_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn quantity() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (1i64..4).prop_map(Value::from),
        1 => Just(json!(0)),
        1 => Just(json!(-1)),
        1 => Just(json!(1.5)),
        1 => Just(json!("2")),
        1 => Just(json!(MAX_QUANTITY + 1)),
        1 => Just(json!(i64::MAX)),
        1 => json_value(),
    ]
}

fn item_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (0u8..4).prop_map(|i| json!(format!("i-{i:02}"))),
        1 => hostile_string().prop_map(Value::from),
        1 => json_value(),
    ]
}

/// Order-shaped objects with hostile fields: the shapes a decoder is most likely to get
/// almost right.
pub(super) fn order_json() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        3 => "[a-z0-9-]{1,12}".prop_map(Value::from),
        2 => hostile_string().prop_map(Value::from),
        1 => json_value(),
    ];
    let single = (id.clone(), item_id(), quantity(), any::<bool>()).prop_map(|(id, i, q, keep)| {
        let mut o = json!({"item_id": i, "quantity": q});
        if keep {
            o["order_id"] = id;
        }
        o
    });
    let line = (item_id(), quantity()).prop_map(|(i, q)| json!({"item_id": i, "quantity": q}));
    let multi = (id, prop::collection::vec(line, 0..5))
        .prop_map(|(id, lines)| json!({"order_id": id, "items": lines}));
    prop_oneof![3 => single, 2 => multi, 1 => json_value()]
}

/// `bytes` as Pub/Sub message data (base64).
pub(super) fn b64(bytes: &[u8]) -> String {
    delivery::pubsub::encode_data(bytes)
}

/// Pub/Sub push envelopes around an order (or junk), with hostile envelope fields.
fn push_envelope() -> impl Strategy<Value = Value> {
    let data = prop_oneof![
        3 => order_json().prop_map(|o| json!(b64(o.to_string().as_bytes()))),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| json!(b64(&b))),
        1 => json_value(),
    ];
    let message_id = prop_oneof![
        3 => "[0-9]{1,12}".prop_map(Value::from),
        1 => json_value(),
    ];
    (data, message_id, json_value(), any::<bool>()).prop_map(|(data, id, attrs, sub)| {
        let mut v = json!({"message": {"data": data, "messageId": id, "attributes": attrs}});
        if sub {
            v["subscription"] = json!("projects/p/subscriptions/orders");
        } else {
            v["subscription"] = Value::Null;
        }
        v
    })
}

/// Structured-mode CloudEvents.
fn structured_event() -> impl Strategy<Value = Value> {
    let ty = prop_oneof![
        Just(json!("com.example.order")),
        Just(json!(
            firestore_once_core::delivery::cloudevent::PUBSUB_PUBLISHED
        )),
        Just(json!("google.cloud.firestore.document.v1.created")),
        json_value(),
    ];
    (ty, order_json(), push_envelope(), json_value(), any::<u8>()).prop_map(
        |(ty, order, envelope, junk, pick)| {
            let data = match pick % 4 {
                0 => order,
                1 => envelope,
                2 => junk,
                _ => Value::Null,
            };
            json!({"specversion": "1.0", "id": "e-1", "source": "//test", "type": ty, "data": data})
        },
    )
}

/// A valid `DocumentEventData` holding an order, encoded, for mutation.
fn firestore_event_bytes(order_id: &str, quantity: i64) -> Vec<u8> {
    use prost::Message;
    let s = |v: &str| pb::Value {
        value_type: Some(ValueType::StringValue(v.into())),
    };
    let fields = [
        ("order_id".to_string(), s(order_id)),
        ("item_id".to_string(), s("i-00")),
        (
            "quantity".to_string(),
            pb::Value {
                value_type: Some(ValueType::IntegerValue(quantity)),
            },
        ),
    ]
    .into_iter()
    .collect();
    firestore_event::DocumentEventData {
        value: Some(pb::Document {
            name: "projects/p/databases/(default)/documents/order_requests/r".into(),
            fields,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Protobuf bytes: noise, or a valid event truncated or with bytes flipped.
pub(super) fn protobuf_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid = ("[a-z0-9]{1,8}", 1i64..4).prop_map(|(id, q)| firestore_event_bytes(&id, q));
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        (valid.clone(), any::<prop::sample::Index>()).prop_map(|(b, i)| {
            let cut = i.index(b.len() + 1);
            b[..cut].to_vec()
        }),
        (
            valid,
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
        )
            .prop_map(|(mut b, flips)| {
                for (i, x) in flips {
                    let n = b.len();
                    b[i.index(n)] ^= x;
                }
                b
            }),
    ]
}

const HEADER_NAMES: &[&str] = &[
    "content-type",
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
    "ce-subject",
    "idempotency-key",
    "x-cloudtasks-taskname",
    "x-cloudtasks-queuename",
    "x-cloudtasks-taskretrycount",
    "traceparent",
    "x-cloud-trace-context",
];

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"application/json".to_vec()),
        Just(b"application/cloudevents+json".to_vec()),
        Just(b"application/protobuf".to_vec()),
        Just(b"1.0".to_vec()),
        Just(b"google.cloud.firestore.document.v1.written".to_vec()),
        Just(b"google.cloud.pubsub.topic.v1.messagePublished".to_vec()),
        "[ -~]{0,24}".prop_map(String::into_bytes),
        // Arbitrary bytes, invalid UTF-8 included; control bytes are refused by HeaderValue.
        prop::collection::vec(any::<u8>(), 0..32),
        (0usize..3).prop_map(|k| vec![b'z'; MAX_TRANSPORT_ID_BYTES + k]),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((prop::sample::select(HEADER_NAMES), header_value()), 0..7).prop_map(
        |pairs| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                if let Ok(v) = HeaderValue::from_bytes(&value) {
                    h.insert(HeaderName::from_static(name), v);
                }
            }
            h
        },
    )
}

/// Request bodies: noise, JSON, orders, push envelopes, structured events, protobuf.
pub(super) fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..200),
        2 => json_value().prop_map(|v| v.to_string().into_bytes()),
        4 => order_json().prop_map(|v| v.to_string().into_bytes()),
        3 => push_envelope().prop_map(|v| v.to_string().into_bytes()),
        2 => structured_event().prop_map(|v| v.to_string().into_bytes()),
        2 => protobuf_bytes(),
    ]
}

/// Headers that make the body be read as something in particular, plus fuzzed ones.
pub(super) fn request_headers() -> impl Strategy<Value = HeaderMap> {
    let base = prop_oneof![
        Just(vec![("content-type", "application/json")]),
        Just(vec![("content-type", "application/cloudevents+json")]),
        Just(vec![
            ("content-type", "application/protobuf"),
            ("ce-specversion", "1.0"),
            ("ce-id", "evt-1"),
            (
                "ce-source",
                "//firestore.googleapis.com/projects/p/databases/(default)"
            ),
            ("ce-type", "google.cloud.firestore.document.v1.created"),
        ]),
        Just(vec![
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "evt-2"),
            ("ce-source", "//pubsub.googleapis.com/projects/p/topics/t"),
            ("ce-type", "google.cloud.pubsub.topic.v1.messagePublished"),
        ]),
        Just(vec![
            ("content-type", "application/json"),
            ("x-cloudtasks-taskname", "t-1"),
            ("x-cloudtasks-queuename", "q"),
        ]),
        Just(vec![]),
    ];
    (base, headers()).prop_map(|(base, fuzzed)| {
        let mut h = HeaderMap::new();
        for (k, v) in base {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        for (k, v) in fuzzed.iter() {
            h.insert(k.clone(), v.clone());
        }
        h
    })
}
