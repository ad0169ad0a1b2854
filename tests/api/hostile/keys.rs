//! Hostile keys over real HTTP: stored hashed only, huge push fields dead-lettered in bounds.

use super::is_hex64;
use super::strategies::b64;
use crate::helpers::*;
use axum::http::HeaderValue;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
