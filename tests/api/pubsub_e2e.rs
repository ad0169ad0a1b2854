//! End to end through the real Pub/Sub emulator: a push subscription delivers to the running
//! service, some first deliveries fail with 503, Pub/Sub redelivers, every order lands once.

use crate::helpers::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test]
async fn push_subscription_with_failures_and_duplicates_applies_each_order_once() {
    let app = spawn_app().await;
    let ps = PubSub::new(&format!("ps-{}", uuid::Uuid::new_v4().simple()));
    for (item, stock) in [("i-0", 50), ("i-1", 50), ("i-2", 3)] {
        app.seed(item, stock).await;
    }
    ps.topic("orders").await;
    ps.push_subscription("orders-push", "orders", &app.url("/orders"))
        .await;

    // 30 orders over 3 items; i-2 has 3 units for 10 orders of 1 (7 rejected, durably).
    let orders: Vec<Value> = (0..30)
        .map(|i| json!({"order_id": format!("ps-{i}"), "item_id": format!("i-{}", i % 3), "quantity": 1}))
        .collect();
    // Every fifth order's first delivery answers 503.
    for i in (0..30).step_by(5) {
        app.faults.fail_next(&format!("ps-{i}"));
    }
    // Each order published once, a third of them twice more (re-published: new messageIds).
    let mut messages = Vec::new();
    for (i, o) in orders.iter().enumerate() {
        let copies = if i % 3 == 0 { 3 } else { 1 };
        messages.extend(std::iter::repeat_n(o.clone(), copies));
    }
    let published = messages.len();
    ps.publish("orders", &messages).await;

    // Wait until every order has a status document (processed or rejected).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = app.list("operations").await.len();
        if n == 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of 30 orders settled; published {published}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Let in-flight redeliveries finish, then check nothing moved twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.stock("i-0").await, Some(40));
    assert_eq!(app.stock("i-1").await, Some(40));
    assert_eq!(app.stock("i-2").await, Some(0));
    assert_eq!(app.list("orders").await.len(), 23);
    let rejected = app
        .list("operations")
        .await
        .iter()
        .filter(|d| d["fields"]["outcome"]["stringValue"] == "rejected")
        .count();
    assert_eq!(rejected, 7);
    assert!(app.list("dead_letters").await.is_empty());
    // Every armed fault was met: those first deliveries really failed and were redelivered.
    for i in (0..30).step_by(5) {
        assert!(
            !app.faults.take_fail(&format!("ps-{i}")),
            "fault for ps-{i} never fired"
        );
    }
}

/// Pub/Sub push with payload unwrapping (`noWrapper`), as the emulator delivers it: the raw
/// message as the body, no Content-Type unless the message has that attribute, metadata in
/// `x-goog-pubsub-*` headers only with `writeMetadata`. Every message is processed once (the
/// message ID keys an order without `order_id`), and garbage is dead-lettered and
/// acknowledged, so Pub/Sub stops redelivering it.
#[tokio::test]
async fn unwrapped_push_with_and_without_metadata() {
    use base64::Engine;
    let app = spawn_app().await;
    let ps = PubSub::new(&format!("ps-{}", uuid::Uuid::new_v4().simple()));
    app.seed("i-u", 100).await;
    ps.topic("meta").await;
    ps.topic("bare").await;
    ps.push_subscription_with(
        "meta-push",
        "meta",
        json!({"pushEndpoint": app.url("/orders"), "noWrapper": {"writeMetadata": true}}),
    )
    .await;
    // Without metadata nothing in the request says "Pub/Sub": the endpoint URL declares it.
    ps.push_subscription_with(
        "bare-push",
        "bare",
        json!({"pushEndpoint": app.url("/orders?source=pubsub"), "noWrapper": {}}),
    )
    .await;
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let meta_ids = ps
        .publish_messages(
            "meta",
            &[
                // No Content-Type attribute: the emulator sends form-urlencoded.
                json!({"data": b64(r#"{"order_id":"u-1","item_id":"i-u","quantity":1}"#),
                       "attributes": {"origin": "shop"}, "orderingKey": "cust-1"}),
                // No order_id: keyed by the message ID.
                json!({"data": b64(r#"{"item_id":"i-u","quantity":2}"#),
                       "attributes": {"Content-Type": "application/json"}}),
                // A business rejection: acknowledged, not redelivered.
                json!({"data": b64(r#"{"order_id":"u-3","item_id":"nope","quantity":1}"#)}),
                json!({"data": b64("this is not an order")}),
            ],
        )
        .await;
    ps.publish_messages(
        "bare",
        &[
            json!({"data": b64(r#"{"order_id":"u-4","item_id":"i-u","quantity":4}"#)}),
            json!({"data": b64("garbage without metadata")}),
        ],
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ops = app.list("operations").await.len();
        let letters = app.list("dead_letters").await.len();
        if ops == 4 && letters == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ops} of 4 operations, {letters} of 2 dead letters"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every answer was 2xx: nothing is redelivered, nothing is recorded twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.list("operations").await.len(), 4);
    assert_eq!(app.list("dead_letters").await.len(), 2);
    assert_eq!(app.stock("i-u").await, Some(100 - 1 - 2 - 4));
    let d = app.doc("operations", &op_id("order", "u-1")).await.unwrap();
    assert_eq!(field(&d, &["delivery", "source"]).unwrap(), "pubsub");
    assert_eq!(
        field(&d, &["delivery", "id"]).unwrap(),
        meta_ids[0].as_str()
    );
    assert_eq!(
        field(&d, &["delivery", "attrs", "subscription"])
            .unwrap()
            .as_str(),
        Some(format!("projects/{}/subscriptions/meta-push", ps_project(&ps)).as_str())
    );
    assert_eq!(
        field(&d, &["delivery", "attrs", "ordering_key"]).unwrap(),
        "cust-1"
    );
    let keyed = op_id("order", &format!("pubsub:{}", meta_ids[1]));
    assert!(app.doc("operations", &keyed).await.is_some());
    let rejected = app.doc("operations", &op_id("order", "u-3")).await.unwrap();
    assert_eq!(field(&rejected, &["outcome"]).unwrap(), "rejected");
    let letters = app.list("dead_letters").await;
    let garbage = letters
        .iter()
        .find(|l| {
            field(l, &["delivery", "id"]).map(|v| v.as_str()) == Some(Some(meta_ids[3].as_str()))
        })
        .expect("the garbage message's dead letter, keyed by its message ID");
    assert_eq!(field(garbage, &["body"]).unwrap(), "this is not an order");
}

fn ps_project(ps: &PubSub) -> String {
    ps.project().to_string()
}
