//! Concurrent deliveries: the same order many times, many orders on one item, two instances.

use crate::helpers::*;
use serde_json::{json, Value};

#[tokio::test]
async fn twenty_concurrent_deliveries_apply_once() {
    let app = spawn_app().await;
    app.seed("apple", 100).await;
    let body = json!({"order_id":"dup-1","item_id":"apple","quantity":3});
    let replies = futures::future::join_all((0..20).map(|_| app.order(&body))).await;
    let mut bodies = Vec::new();
    let mut fresh = 0;
    for r in replies {
        assert_eq!(r.status(), 200);
        if r.headers().get("idempotent-replayed").is_none() {
            fresh += 1;
        }
        bodies.push(r.bytes().await.unwrap());
    }
    assert_eq!(fresh, 1, "exactly one delivery processed it");
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(app.stock("apple").await, Some(97));
    assert_eq!(app.list("orders").await.len(), 1);
}

#[tokio::test]
async fn fifty_orders_on_one_item_with_stock_thirty() {
    let app = spawn_app().await;
    app.seed("hot", 30).await;
    let replies = futures::future::join_all((0..50).map(|i| {
        app.order_owned(json!({"order_id": format!("h-{i}"), "item_id": "hot", "quantity": 1}))
    }))
    .await;
    let processed = replies.iter().filter(|s| **s == 200).count();
    let rejected = replies.iter().filter(|s| **s == 409).count();
    assert_eq!((processed, rejected), (30, 20), "{replies:?}");
    assert_eq!(app.stock("hot").await, Some(0));
    assert_eq!(app.list("orders").await.len(), 30);
    assert_eq!(app.list("operations").await.len(), 50);
}

#[tokio::test]
async fn two_instances_share_one_truth() {
    let project = project();
    let a = spawn_app_with(project.clone(), |_| {}).await;
    let b = spawn_app_with(project, |_| {}).await;
    a.seed("x", 12).await;
    // Each order is delivered to both instances at once; 20 orders for 12 units.
    let mut calls = Vec::new();
    for i in 0..20 {
        let body = json!({"order_id": format!("t-{i}"), "item_id": "x", "quantity": 1});
        calls.push(a.order_owned(body.clone()));
        calls.push(b.order_owned(body));
    }
    let statuses = futures::future::join_all(calls).await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    // Both deliveries of one order got the same answer.
    for pair in statuses.chunks(2) {
        assert_eq!(pair[0], pair[1]);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 24);
    assert_eq!(a.stock("x").await, Some(0));
    let orders: Vec<Value> = a.list("orders").await;
    assert_eq!(orders.len(), 12);
}
