//! End to end through the real Pub/Sub emulator: a push subscription delivers to the running
//! service, some first deliveries fail with 503, Pub/Sub redelivers, every order lands once.

use crate::helpers::*;
use base64::Engine;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test]
async fn push_subscription_with_failures_and_duplicates_applies_each_order_once() {
    let app = spawn_app().await;
    let ps = pubsub_host();
    let project = format!("ps-{}", uuid::Uuid::new_v4().simple());
    let base = format!("http://{ps}/v1/projects/{project}");
    let http = reqwest::Client::new();
    for (item, stock) in [("i-0", 50), ("i-1", 50), ("i-2", 3)] {
        app.seed(item, stock).await;
    }
    let put = |url: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http.put(url).json(&body).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
    };
    put(format!("{base}/topics/orders"), json!({})).await;
    put(
        format!("{base}/subscriptions/orders-push"),
        json!({"topic": format!("projects/{project}/topics/orders"),
               "ackDeadlineSeconds": 10,
               "pushConfig": {"pushEndpoint": app.url("/orders")}}),
    )
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
        for _ in 0..copies {
            messages.push(
                json!({"data": base64::engine::general_purpose::STANDARD.encode(o.to_string())}),
            );
        }
    }
    let published = messages.len();
    let r = http
        .post(format!("{base}/topics/orders:publish"))
        .json(&json!({"messages": messages}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

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
