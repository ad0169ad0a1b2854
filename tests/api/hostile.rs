//! Hostile input (issue 8, scenario 5): every decoder fuzzed with proptest, the whole router
//! driven with generated requests, and hostile keys checked to reach Firestore only hashed.
//!
//! No panic anywhere, and only the documented answers: for a direct caller 200, 400, 404
//! (unknown task kind), 409, 413, 415 or 422; for a platform delivery 200 (processed,
//! rejected, skipped or dead-lettered) or 413. `PROPTEST_CASES` raises the number of cases
//! (`RELIABILITY=long` multiplies the defaults by ten).

use crate::helpers::*;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request};
use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore_once_core::app;
use firestore_once_core::config::Config;
use firestore_once_core::delivery::{self, firestore_event, Mode, Payload, MAX_TRANSPORT_ID_BYTES};
use firestore_once_core::engine::key::{hashed_id, is_valid_document_id};
use firestore_once_core::engine::{Operation, ParseCtx};
use firestore_once_shop::order::{Order, MAX_LINES, MAX_QUANTITY};
use firestore_once_shop::ShopConfig;
use futures::StreamExt;
use pb::value::ValueType;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tower::ServiceExt;

fn cases(short: u32) -> u32 {
    let long = std::env::var("RELIABILITY").as_deref() == Ok("long");
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(if long { short * 10 } else { short })
}

fn runner(short: u32) -> TestRunner {
    TestRunner::new(PtConfig {
        cases: cases(short),
        failure_persistence: None,
        ..PtConfig::default()
    })
}

fn is_hex64(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

// ---- strategies ---------------------------------------------------------------------------

/// Strings an attacker would try as keys and IDs.
fn hostile_string() -> impl Strategy<Value = String> {
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
fn json_value() -> impl Strategy<Value = Value> {
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
fn order_json() -> impl Strategy<Value = Value> {
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

fn b64(bytes: &[u8]) -> String {
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
fn protobuf_bytes() -> impl Strategy<Value = Vec<u8>> {
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

fn body() -> impl Strategy<Value = Vec<u8>> {
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
fn request_headers() -> impl Strategy<Value = HeaderMap> {
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

// ---- decoders, no database ----------------------------------------------------------------

/// The delivery decoder never panics, and what it hands on is bounded: no transport identity
/// longer than the cap, so no status document or dead letter can be inflated by one.
#[test]
fn delivery_decoder_never_panics_and_bounds_identities() {
    runner(2048)
        .run(&(request_headers(), body()), |(h, b)| {
            let d = delivery::decode(&h, &b);
            if let Some(id) = &d.meta.id {
                prop_assert!(id.len() <= MAX_TRANSPORT_ID_BYTES);
            }
            for v in d.meta.attrs.values() {
                prop_assert!(v.len() <= MAX_TRANSPORT_ID_BYTES);
            }
            if let Ok(Payload::Work {
                fallback_key: Some(k),
                ..
            }) = &d.payload
            {
                prop_assert!(k.len() <= MAX_TRANSPORT_ID_BYTES + 64, "key of {}", k.len());
            }
            Ok(())
        })
        .unwrap();
}

/// Order parsing never panics; what it accepts is valid, and its operation ID is a hash.
#[test]
fn order_parser_never_panics_and_accepts_only_valid_orders() {
    let shop = ShopConfig::default();
    runner(4096)
        .run(
            &(
                order_json(),
                prop::option::of("[a-z:]{1,20}"),
                any::<bool>(),
            ),
            |(v, fallback, direct)| {
                let ctx = ParseCtx {
                    fallback_key: fallback.as_deref(),
                    direct,
                };
                if let Ok(o) = Order::parse_with(&v, &ctx, &shop) {
                    prop_assert!(!o.order_id().is_empty());
                    prop_assert!(!o.lines().is_empty() && o.lines().len() <= MAX_LINES);
                    for l in o.lines() {
                        prop_assert!(is_valid_document_id(&l.item_id));
                        prop_assert!((1..=MAX_QUANTITY).contains(&l.quantity));
                    }
                    let id = hashed_id(o.kind(), o.key());
                    prop_assert!(is_hex64(&id));
                }
                Ok(())
            },
        )
        .unwrap();
}

/// The Firestore event decoder takes any bytes: noise, truncated or corrupted events.
#[test]
fn firestore_protobuf_decoder_never_panics() {
    runner(4096)
        .run(&protobuf_bytes(), |b| {
            if let Ok(Payload::Work { json, .. }) = firestore_event::decode_protobuf(&b) {
                prop_assert!(json.is_object());
            }
            Ok(())
        })
        .unwrap();
    runner(1024)
        .run(&json_value(), |v| {
            let _ = firestore_event::decode_json(&v);
            Ok(())
        })
        .unwrap();
}

/// Any key becomes a 64-character hex document ID.
#[test]
fn every_key_hashes_to_a_safe_document_id() {
    runner(4096)
        .run(&(hostile_string(), hostile_string()), |(kind, key)| {
            let id = hashed_id(&kind, &key);
            prop_assert!(is_hex64(&id) && is_valid_document_id(&id));
            Ok(())
        })
        .unwrap();
}

// ---- the whole router, against the emulator ------------------------------------------------

/// Generated requests through the real router (load shedding, body limit, decoders, guard,
/// dead letters): only documented statuses, never a panic, and afterwards every document the
/// service created has a hashed ID.
#[test]
fn router_answers_only_documented_statuses() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let project = project();
    let (router, probe) = rt.block_on(async {
        let config = Config::default();
        let guard = guard_for(&project, &config, None).await;
        let state = shop_service(guard, Settings::default(), &project);
        let probe = spawn_app_with(project.clone(), |_| {}).await;
        for i in 0..4 {
            probe.seed(&format!("i-{i:02}"), 1_000_000).await;
        }
        (app(state), probe)
    });
    let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let path = prop_oneof![
        6 => Just("/orders".to_string()),
        1 => Just("/tasks/order".to_string()),
        1 => Just("/tasks/restock".to_string()),
        1 => Just("/tasks/cancel_order".to_string()),
        1 => Just("/tasks/no-such-kind".to_string()),
    ];
    let total = AtomicUsize::new(0);
    runner(192)
        .run(&(path, request_headers(), body()), |(path, h, b)| {
            let mode = delivery::decode(&h, &b).mode;
            let mut req = Request::builder().method("POST").uri(path.as_str());
            for (k, v) in h.iter() {
                req = req.header(k, v);
            }
            let req = req.body(Body::from(b)).unwrap();
            let resp = rt.block_on(router.clone().oneshot(req)).unwrap();
            let status = resp.status().as_u16();
            total.fetch_add(1, Ordering::Relaxed);
            *seen
                .lock()
                .unwrap()
                .entry((mode == Mode::Push, status))
                .or_insert(0) += 1;
            let allowed: &[u16] = match mode {
                Mode::Direct => &[200, 400, 404, 409, 413, 415, 422],
                Mode::Push if path == "/tasks/no-such-kind" => &[404],
                Mode::Push => &[200, 413],
            };
            prop_assert!(
                allowed.contains(&status),
                "{path} {mode:?} answered {status}: {:?}",
                rt.block_on(axum::body::to_bytes(resp.into_body(), 1 << 20))
            );
            Ok(())
        })
        .unwrap();
    println!(
        "hostile: {} generated requests through the router, (push, status) → count: {:?}",
        total.load(Ordering::Relaxed),
        seen.lock().unwrap()
    );
    rt.block_on(async {
        for collection in ["operations", "orders", "dead_letters"] {
            for d in probe.list(collection).await {
                let name = d["name"].as_str().unwrap();
                let id = name.rsplit('/').next().unwrap();
                assert!(is_hex64(id), "{collection}/{id} is not a hashed ID");
            }
        }
    });
}

// ---- hostile keys over real HTTP -----------------------------------------------------------

/// Keys that are paths, reserved names, control characters, right-to-left marks, 4 KiB and
/// 1 MB: accepted ones are stored under their hash only, the rest refused with a 400 naming
/// the field, and the stock moves exactly once per accepted order.
#[tokio::test]
async fn hostile_keys_reach_firestore_only_hashed() {
    let app = spawn_app().await;
    app.seed("i-00", 1000).await;
    let accepted = [
        "a/b",
        "../../etc/passwd",
        ".",
        "..",
        "__name__",
        "__x__",
        "\u{0}\u{1}\u{1f}",
        "\u{202e}gpj.exe",
        "ünï/cødé 😀",
        &"k".repeat(4096),
        "projects/p/databases/(default)/documents/items/i-00",
    ];
    for key in accepted {
        for _ in 0..2 {
            let r = app
                .order(&json!({"order_id": key, "item_id": "i-00", "quantity": 1}))
                .await;
            assert_eq!(r.status(), 200, "{key:?}");
        }
    }
    for key in ["k".repeat(4097), "x".repeat(1_000_000)] {
        let r = app
            .order(&json!({"order_id": key, "item_id": "i-00", "quantity": 1}))
            .await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["field"], "order_id");
    }
    // Idempotency keys and transport IDs with awkward bytes, invalid UTF-8 included.
    let bad_utf8 = HeaderValue::from_bytes(b"\xff\xfe/..").unwrap();
    let r = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "application/json")
        .header("idempotency-key", "a/b/__x__")
        .body(json!({"item_id": "i-00", "quantity": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "application/json")
        .header("idempotency-key", bad_utf8.clone())
        .body(json!({"item_id": "i-00", "quantity": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "an Idempotency-Key that is not ASCII");
    let r = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", bad_utf8)
        .header("ce-source", "//x/..")
        .header("ce-type", "com.example.order")
        .body(json!({"item_id": "i-00", "quantity": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a push with an unreadable ce-id is dead-lettered"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "dead_lettered");

    for collection in ["operations", "orders", "dead_letters"] {
        for d in app.list(collection).await {
            let id = d["name"].as_str().unwrap().rsplit('/').next().unwrap();
            assert!(is_hex64(id), "{collection}/{id}");
        }
    }
    assert_eq!(app.list("operations").await.len(), accepted.len() + 1);
    assert_eq!(
        app.stock("i-00").await,
        Some(1000 - accepted.len() as i64 - 1)
    );
}

/// A push delivery with a 1 MB key or a huge transport ID is dead-lettered and acknowledged
/// (never a 503 that would be redelivered forever), and the dead letter is size-limited.
#[tokio::test]
async fn huge_push_fields_are_dead_lettered_in_bounded_records() {
    let app = spawn_app().await;
    app.seed("i-00", 10).await;
    let huge_key = json!({"order_id": "x".repeat(700_000), "item_id": "i-00", "quantity": 1});
    let envelope = json!({"message": {"data": b64(huge_key.to_string().as_bytes()),
                                      "messageId": "m-1"},
                          "subscription": "projects/p/subscriptions/s"});
    let r = app.order(&envelope).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["outcome"].as_str(), v["reason"].as_str()),
        (Some("dead_lettered"), Some("invalid-field"))
    );

    let order = json!({"item_id": "i-00", "quantity": 1});
    let envelope = json!({"message": {"data": b64(order.to_string().as_bytes()),
                                      "messageId": "7".repeat(600_000)},
                          "subscription": "projects/p/subscriptions/s"});
    let r = app.order(&envelope).await;
    assert_eq!(r.status(), 200, "not a 503 redelivered forever");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["outcome"].as_str(), v["reason"].as_str()),
        (Some("dead_lettered"), Some("invalid-envelope"))
    );

    let letters = app.list("dead_letters").await;
    assert_eq!(letters.len(), 2);
    for d in &letters {
        let f = &d["fields"];
        let body = f["body"]["stringValue"].as_str().unwrap();
        assert!(body.len() <= firestore_once_core::dead_letter::MAX_BODY);
        assert_eq!(f["body_truncated"]["booleanValue"], true);
        assert!(d.to_string().len() < 200_000, "a dead letter stays small");
    }
    assert!(app.list("operations").await.is_empty());
    assert_eq!(app.stock("i-00").await, Some(10));
}

/// An over-limit push body sent as a chunked stream is refused once the limit is crossed:
/// the service stops reading long before the stream ends.
#[tokio::test]
async fn chunked_push_over_the_limit_is_refused_without_buffering() {
    let app = spawn_app().await;
    let pulled = Arc::new(AtomicUsize::new(0));
    let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
    let total_chunks = 64 * 16; // 64 MiB
    let counter = pulled.clone();
    let stream = futures::stream::iter(0..total_chunks).map(move |_| {
        counter.fetch_add(chunk.len(), Ordering::Relaxed);
        Ok::<_, std::io::Error>(chunk.clone())
    });
    let r = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "big-1")
        .header("ce-source", "//test")
        .header("ce-type", "com.example.order")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    let sent = pulled.load(Ordering::Relaxed);
    assert!(
        sent < 16 * 1024 * 1024,
        "the client was made to send {sent} bytes of a 64 MiB stream"
    );
    assert!(app.list("dead_letters").await.is_empty());
}
