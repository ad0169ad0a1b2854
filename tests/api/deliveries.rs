//! Every delivery shape, in the platforms' real formats, and what each is answered.

use crate::helpers::*;
use base64::Engine;
use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore_once_core::delivery::firestore_event::DocumentEventData;
use prost::Message;
use serde_json::{json, Value};

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}

fn push_envelope(order: &Value, message_id: &str) -> Value {
    json!({
        "message": {"data": b64(order), "attributes": {"origin": "shop"}, "messageId": message_id,
                    "message_id": message_id, "publishTime": "2026-11-23T10:00:00.000Z",
                    "publish_time": "2026-11-23T10:00:00.000Z"},
        "subscription": "projects/demo/subscriptions/orders-push",
        "deliveryAttempt": 1
    })
}

fn firestore_event_bytes(name: &str, fields: &[(&str, pb::value::ValueType)]) -> Vec<u8> {
    DocumentEventData {
        value: Some(pb::Document {
            name: name.into(),
            fields: fields
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        pb::Value {
                            value_type: Some(v.clone()),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

impl TestApp {
    async fn post(
        &self,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut r = self.http.post(self.url("/orders"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(body).send().await.unwrap()
    }

    async fn body_of(r: reqwest::Response) -> (u16, Value) {
        let s = r.status().as_u16();
        (s, r.json().await.unwrap())
    }
}

/// Headers, body, and the dead letter's expected reason.
type Case = (Vec<(&'static str, &'static str)>, Vec<u8>, &'static str);

const PUBSUB_EVENT: &str = "google.cloud.pubsub.topic.v1.messagePublished";

fn eventarc(
    ty: &'static str,
    id: &'static str,
    ct: &'static str,
) -> Vec<(&'static str, &'static str)> {
    vec![
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        (
            "ce-source",
            "//pubsub.googleapis.com/projects/demo/topics/orders",
        ),
        ("ce-type", ty),
        ("ce-time", "2026-11-23T10:00:00Z"),
        ("content-type", ct),
    ]
}

#[tokio::test]
async fn every_shape_processes_an_order() {
    let app = spawn_app().await;
    app.seed("apple", 100).await;
    // Pub/Sub push subscription straight to the service.
    let r = app
        .post(
            &[("content-type", "application/json")],
            push_envelope(
                &json!({"order_id":"p-1","item_id":"apple","quantity":1}),
                "m-1",
            )
            .to_string(),
        )
        .await;
    let (s, v) = TestApp::body_of(r).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("processed")));
    // Eventarc, binary mode, Pub/Sub-sourced.
    let r = app
        .post(
            &eventarc(PUBSUB_EVENT, "e-2", "application/json"),
            push_envelope(
                &json!({"order_id":"p-2","item_id":"apple","quantity":2}),
                "m-2",
            )
            .to_string(),
        )
        .await;
    assert_eq!(TestApp::body_of(r).await.1["order_id"], "p-2");
    // Structured CloudEvent with JSON data.
    let ce = json!({"specversion":"1.0","id":"e-3","source":"/shop","type":"com.example.order.created",
                    "datacontenttype":"application/json","data":{"order_id":"p-3","item_id":"apple","quantity":3}});
    let r = app
        .post(
            &[("content-type", "application/cloudevents+json")],
            ce.to_string(),
        )
        .await;
    assert_eq!(TestApp::body_of(r).await.1["outcome"], "processed");
    // Firestore document created, protobuf (the Eventarc default).
    use pb::value::ValueType::*;
    let bytes = firestore_event_bytes(
        "projects/demo/databases/(default)/documents/order_requests/r-4",
        &[
            ("order_id", StringValue("p-4".into())),
            ("item_id", StringValue("apple".into())),
            ("quantity", IntegerValue(4)),
        ],
    );
    let mut h = eventarc(
        "google.cloud.firestore.document.v1.created",
        "e-4",
        "application/protobuf",
    );
    h.push(("ce-subject", "documents/order_requests/r-4"));
    let r = app.post(&h, bytes).await;
    assert_eq!(TestApp::body_of(r).await.1["order_id"], "p-4");
    // Firestore document written, JSON, with no order_id: keyed by the document's name.
    let data = json!({"value": {"name": "projects/demo/databases/(default)/documents/order_requests/r-5",
        "fields": {"items": {"arrayValue": {"values": [{"mapValue": {"fields": {
            "item_id": {"stringValue": "apple"}, "quantity": {"integerValue": "5"}}}}]}}}}});
    let h = eventarc(
        "google.cloud.firestore.document.v1.written",
        "e-5",
        "application/json",
    );
    let r = app.post(&h, data.to_string()).await;
    let (s, v) = TestApp::body_of(r).await;
    assert_eq!(s, 200);
    assert_eq!(
        v["order_id"],
        "firestore-document:projects/demo/databases/(default)/documents/order_requests/r-5"
    );
    // The same document written again (new event ID) is still one order.
    let h = eventarc(
        "google.cloud.firestore.document.v1.written",
        "e-5b",
        "application/json",
    );
    let r = app.post(&h, data.to_string()).await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    // Cloud Tasks.
    let r = app
        .post(
            &[
                ("content-type", "application/json"),
                ("x-cloudtasks-taskname", "t-6"),
                ("x-cloudtasks-queuename", "orders"),
                ("x-cloudtasks-taskretrycount", "0"),
                ("x-cloudtasks-taskexecutioncount", "0"),
            ],
            json!({"order_id":"p-6","item_id":"apple","quantity":6}).to_string(),
        )
        .await;
    assert_eq!(TestApp::body_of(r).await.1["outcome"], "processed");
    assert_eq!(app.stock("apple").await, Some(100 - 21));

    // The first processing's transport IDs are on the status documents.
    let s = app.doc("operations", &op_id("order", "p-1")).await.unwrap();
    let d = &s["fields"]["delivery"]["mapValue"]["fields"];
    assert_eq!(d["source"]["stringValue"], "pubsub");
    assert_eq!(d["id"]["stringValue"], "m-1");
    assert_eq!(
        d["attrs"]["mapValue"]["fields"]["subscription"]["stringValue"],
        "projects/demo/subscriptions/orders-push"
    );
    let s = app.doc("operations", &op_id("order", "p-2")).await.unwrap();
    let d = &s["fields"]["delivery"]["mapValue"]["fields"];
    assert_eq!(
        (
            d["source"]["stringValue"].as_str(),
            d["id"]["stringValue"].as_str()
        ),
        (Some("eventarc"), Some("e-2"))
    );
    assert_eq!(
        d["attrs"]["mapValue"]["fields"]["message_id"]["stringValue"],
        "m-2"
    );
    let s = app.doc("operations", &op_id("order", "p-6")).await.unwrap();
    let d = &s["fields"]["delivery"]["mapValue"]["fields"];
    assert_eq!(
        (
            d["source"]["stringValue"].as_str(),
            d["id"]["stringValue"].as_str()
        ),
        (Some("cloudtasks"), Some("t-6"))
    );
}

#[tokio::test]
async fn one_order_through_three_paths_is_applied_once() {
    let app = spawn_app().await;
    app.seed("pear", 10).await;
    let order = json!({"order_id":"same","item_id":"pear","quantity":2});
    let first = app.order(&order).await;
    assert_eq!(first.status(), 200);
    let first = first.bytes().await.unwrap();
    let r = app
        .post(
            &[("content-type", "application/json")],
            push_envelope(&order, "m-9").to_string(),
        )
        .await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(r.bytes().await.unwrap(), first);
    let r = app
        .post(
            &eventarc(PUBSUB_EVENT, "e-9", "application/json"),
            push_envelope(&order, "m-10").to_string(),
        )
        .await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(r.bytes().await.unwrap(), first);
    assert_eq!(app.stock("pear").await, Some(8));
    assert_eq!(app.list("orders").await.len(), 1);
}

#[tokio::test]
async fn push_deliveries_get_2xx_for_durable_outcomes() {
    let app = spawn_app().await;
    app.seed("plum", 1).await;
    // Business rejection: acknowledged, the body says why, replayed the same way.
    let env = push_envelope(
        &json!({"order_id":"r-1","item_id":"plum","quantity":5}),
        "m-r1",
    )
    .to_string();
    let r = app
        .post(&[("content-type", "application/json")], env.clone())
        .await;
    let (s, v) = TestApp::body_of(r).await;
    assert_eq!(
        (s, v["outcome"].as_str(), v["reason"].as_str()),
        (200, Some("rejected"), Some("insufficient_stock"))
    );
    let r = app.post(&[("content-type", "application/json")], env).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    // The same key with another payload, pushed: dead-lettered and acknowledged.
    let other = push_envelope(
        &json!({"order_id":"r-1","item_id":"plum","quantity":1}),
        "m-r2",
    )
    .to_string();
    let (s, v) = TestApp::body_of(
        app.post(&[("content-type", "application/json")], other)
            .await,
    )
    .await;
    assert_eq!(
        (s, v["outcome"].as_str(), v["reason"].as_str()),
        (200, Some("dead_lettered"), Some("key-reused"))
    );
    assert_eq!(app.stock("plum").await, Some(1));
    // A Firestore delete event has no order: acknowledged and skipped.
    let deleted = DocumentEventData {
        old_value: Some(pb::Document {
            name: "projects/demo/databases/(default)/documents/order_requests/x".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = app
        .post(
            &eventarc(
                "google.cloud.firestore.document.v1.written",
                "e-del",
                "application/protobuf",
            ),
            deleted.encode_to_vec(),
        )
        .await;
    let (s, v) = TestApp::body_of(r).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("skipped")));
}

#[tokio::test]
async fn malformed_push_deliveries_are_dead_lettered_once_and_acknowledged() {
    let app = spawn_app().await;
    let json_ct = [("content-type", "application/json")];
    let bad_b64 = json!({"message": {"data": "%%%", "messageId": "bad-1"}, "subscription": "projects/demo/subscriptions/s"}).to_string();
    let not_json = json!({"message": {"data": base64::engine::general_purpose::STANDARD.encode("nope"), "messageId": "bad-2"}, "subscription": "s"}).to_string();
    let wrong_types = push_envelope(
        &json!({"order_id": 5, "item_id": "a", "quantity": "many"}),
        "bad-3",
    )
    .to_string();
    let no_data = json!({"message": {"messageId": "bad-4"}, "subscription": "s"}).to_string();
    let mut missing_id = eventarc("com.example.order", "x", "application/json");
    missing_id.retain(|(k, _)| *k != "ce-id");
    let full = firestore_event_bytes(
        "projects/demo/databases/(default)/documents/order_requests/t",
        &[("order_id", pb::value::ValueType::StringValue("o".into()))],
    );
    let truncated = full[..full.len() - 3].to_vec();
    let cases: Vec<Case> = vec![
        (json_ct.to_vec(), bad_b64.into_bytes(), "invalid-envelope"),
        (json_ct.to_vec(), not_json.into_bytes(), "invalid-envelope"),
        (json_ct.to_vec(), wrong_types.into_bytes(), "invalid-field"),
        (json_ct.to_vec(), no_data.into_bytes(), "invalid-envelope"),
        (missing_id, b"{}".to_vec(), "invalid-envelope"),
        (
            eventarc(
                "google.cloud.firestore.document.v1.created",
                "e-trunc",
                "application/protobuf",
            ),
            truncated,
            "invalid-envelope",
        ),
        (
            eventarc(PUBSUB_EVENT, "e-bad", "application/json"),
            b"{not json".to_vec(),
            "invalid-envelope",
        ),
        (
            vec![
                ("content-type", "text/plain"),
                ("x-cloudtasks-taskname", "t-bad"),
            ],
            b"hi".to_vec(),
            "unsupported-media-type",
        ),
    ];
    let n = cases.len();
    for (headers, body, reason) in cases {
        for _ in 0..2 {
            let r = app.post(&headers, body.clone()).await;
            let (s, v) = TestApp::body_of(r).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["outcome"], "dead_lettered", "{v}");
            assert_eq!(v["reason"], reason, "{v}");
        }
    }
    let letters = app.list("dead_letters").await;
    assert_eq!(
        letters.len(),
        n,
        "one record per delivery, however often redelivered"
    );
    let one = letters
        .iter()
        .find(|d| d["fields"]["delivery"]["mapValue"]["fields"]["id"]["stringValue"] == "bad-1")
        .unwrap();
    assert_eq!(one["fields"]["reason"]["stringValue"], "invalid-envelope");
    assert!(one["fields"]["body"]["stringValue"]
        .as_str()
        .unwrap()
        .contains("%%%"));
    assert!(app.list("operations").await.is_empty());
}

#[tokio::test]
async fn direct_callers_get_4xx_for_bad_envelopes() {
    let app = spawn_app().await;
    let ce = json!({"specversion":"1.0","source":"/s","type":"t","data":{}});
    let r = app
        .post(
            &[("content-type", "application/cloudevents+json")],
            ce.to_string(),
        )
        .await;
    // A CloudEvent is a platform delivery: recorded and acknowledged, not a 4xx loop.
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = app
        .post(
            &[
                ("content-type", "application/json"),
                ("idempotency-key", &"k".repeat(256)),
            ],
            "{}",
        )
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["field"], "Idempotency-Key");
    assert!(app.list("dead_letters").await.len() == 1);
}

#[tokio::test]
async fn idempotency_key_names_an_order_without_order_id() {
    let app = spawn_app().await;
    app.seed("fig", 10).await;
    let body = json!({"item_id":"fig","quantity":2}).to_string();
    let h = [
        ("content-type", "application/json"),
        ("idempotency-key", "idem-1"),
    ];
    let (s, v) = TestApp::body_of(app.post(&h, body.clone()).await).await;
    assert_eq!(s, 200);
    assert_eq!(v["operation_id"], op_id("order", "idempotency-key:idem-1"));
    let r = app.post(&h, body).await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let r = app
        .post(&h, json!({"item_id":"fig","quantity":3}).to_string())
        .await;
    assert_eq!(r.status(), 422);
    assert_eq!(app.stock("fig").await, Some(8));
    // order_id outranks the header: two keys, one order.
    let h2 = [
        ("content-type", "application/json"),
        ("idempotency-key", "idem-2"),
    ];
    let a = app
        .post(
            &h2,
            json!({"order_id":"dom","item_id":"fig","quantity":1}).to_string(),
        )
        .await;
    assert_eq!(a.status(), 200);
    let h3 = [
        ("content-type", "application/json"),
        ("idempotency-key", "idem-3"),
    ];
    let b = app
        .post(
            &h3,
            json!({"order_id":"dom","item_id":"fig","quantity":1}).to_string(),
        )
        .await;
    assert_eq!(b.headers()["idempotent-replayed"], "true");
    // Neither order_id nor Idempotency-Key from a direct caller: 400.
    let r = app
        .post(
            &[("content-type", "application/json")],
            json!({"item_id":"fig","quantity":1}).to_string(),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(app.stock("fig").await, Some(7));
}
