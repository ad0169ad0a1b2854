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
