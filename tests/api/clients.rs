//! Deliveries as real clients encode them: the `cloudevents` SDK (binary and structured HTTP
//! binding, percent-encoded attributes) and Google's `google-events` (Firestore
//! `DocumentEventData`, protobuf and JSON), run from tests/clients/encode.py.

use crate::helpers::*;
use base64::Engine;
use serde_json::Value;

#[tokio::test]
async fn events_encoded_by_the_real_client_libraries() {
    let app = spawn_app().await;
    app.seed("apple", 100).await;
    let cases = client_encoded("apple");
    let send = |name: &'static str| {
        let (h, b) = encoded_case(&cases, name);
        let app = &app;
        async move {
            let r = app.post_raw("/orders", &h, b).await;
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap())
        }
    };

    // Binary mode: ce-id, ce-source and ce-subject were percent-encoded by the SDK.
    let (s, v) = send("binary_order").await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("processed")), "{v}");
    let d = app
        .doc("operations", &op_id("order", "o-ce-1"))
        .await
        .unwrap();
    assert_eq!(field(&d, &["delivery", "id"]).unwrap(), "evt ce/1 ü");
    let attrs = |d: &Value, k: &str| field(d, &["delivery", "attrs", k]).cloned();
    assert_eq!(attrs(&d, "ce_source").unwrap(), "/shop/eu west");
    assert_eq!(attrs(&d, "ce_subject").unwrap(), "orders/o-ce-1 ünï");

    // Structured mode records the subject too.
    let (s, v) = send("structured_order").await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("processed")), "{v}");
    let d = app
        .doc("operations", &op_id("order", "o-ce-2"))
        .await
        .unwrap();
    assert_eq!(attrs(&d, "ce_subject").unwrap(), "orders/o-ce-2");

    // Firestore events from google-events: protobuf (Eventarc's default) and JSON.
    for (case, order) in [
        ("firestore_protobuf_created", "o-fs-pb"),
        ("firestore_json_written", "o-fs-json"),
    ] {
        let (s, v) = send(case).await;
        assert_eq!(
            (s, v["order_id"].as_str()),
            (200, Some(order)),
            "{case}: {v}"
        );
    }
    assert_eq!(app.stock("apple").await, Some(100 - 1 - 2 - 3 - 4));

    // A delete as Google's samples write it (an empty `value`): skipped, not dead-lettered.
    for case in ["firestore_protobuf_deleted", "firestore_json_deleted"] {
        let (s, v) = send(case).await;
        assert_eq!(
            (s, v["outcome"].as_str()),
            (200, Some("skipped")),
            "{case}: {v}"
        );
    }
    assert!(app.list("dead_letters").await.is_empty());

    // An invalid order in protobuf with non-UTF-8 bytes: dead-lettered with its exact bytes.
    let (s, v) = send("firestore_protobuf_invalid").await;
    assert_eq!(
        (s, v["outcome"].as_str(), v["reason"].as_str()),
        (200, Some("dead_lettered"), Some("invalid-field")),
        "{v}"
    );
    let id = v["dead_letter_id"].as_str().unwrap();
    let letter = app.doc("dead_letters", id).await.unwrap();
    assert_eq!(field(&letter, &["body_encoding"]).unwrap(), "base64");
    let stored = base64::engine::general_purpose::STANDARD
        .decode(field(&letter, &["body"]).unwrap().as_str().unwrap())
        .unwrap();
    let (_, sent) = encoded_case(&cases, "firestore_protobuf_invalid");
    assert_eq!(
        stored, sent,
        "the dead letter keeps the exact protobuf bytes"
    );
    assert_eq!(
        field(&letter, &["headers", "content-type"]).unwrap(),
        "application/protobuf"
    );
    assert_eq!(app.stock("apple").await, Some(90));
}
