//! Group commit and the replay cache: a batch that runs out of stock half-way, and replays
//! answered from memory without weakening the guarantee.

use crate::helpers::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Firestore answers again after being cut; keep the guard retrying long enough to see it.
/// (A cut link refuses at once; the call budget only has to cover a loaded machine's commit
/// of a whole batch, its rejections verifying every stock shard.)
fn patient(c: &mut crate::helpers::Settings) {
    c.core.max_attempts = 30;
    c.core.firestore_timeout = Duration::from_millis(2000);
    c.core.request_timeout = Duration::from_secs(30);
}

#[tokio::test]
async fn a_batch_straddling_the_last_unit_of_stock_decides_each_order_in_turn() {
    let proxy = FaultProxy::start(emulator_host().to_string()).await;
    let app = spawn_app_at(project(), patient, Some(proxy.url.clone())).await;
    app.seed("last", 8).await;

    // With Firestore cut, the first order's transaction keeps retrying, so the next fifteen
    // queue on the item's lane behind it and are folded into one transaction (batch max 16).
    proxy.set(Link::Down);
    let send = |i: usize| {
        let http = app.http.clone();
        let url = app.url("/orders");
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"order_id": format!("b-{i}"), "item_id": "last", "quantity": 1}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    };
    let first = send(0);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let rest: Vec<_> = (1..16).map(send).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set(Link::Up);
    let first = first.await.unwrap();
    let rest = futures::future::join_all(rest)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect::<Vec<u16>>();

    let mut all = vec![first];
    all.extend(rest);
    let processed = all.iter().filter(|s| **s == 200).count();
    assert!(
        all.iter()
            .all(|s| *s == 200 || *s == 409 || (*s == 503 && all[0] == 503)),
        "{all:?}"
    );
    assert_eq!(processed, 8, "exactly the stock was sold: {all:?}");
    assert_eq!(app.stock("last").await, Some(0));
    assert_eq!(app.list("orders").await.len(), 8);

    // Every order has its own status document; the fifteen share one transaction (one
    // decision time) in which the earlier ones were processed and the later ones rejected.
    let ops = app.list("operations").await;
    let answered = all.iter().filter(|s| **s != 503).count();
    assert_eq!(ops.len(), answered);
    let mut by_tx: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for d in &ops {
        let f = &d["fields"];
        let at = f["created_at"]["timestampValue"]
            .as_str()
            .unwrap()
            .to_string();
        let key = f["key"]["stringValue"].as_str().unwrap().to_string();
        let outcome = f["outcome"]["stringValue"].as_str().unwrap().to_string();
        by_tx.entry(at).or_default().push((key, outcome));
    }
    let batch = by_tx
        .values()
        .find(|v| v.len() == 15)
        .unwrap_or_else(|| panic!("no transaction decided all fifteen: {by_tx:?}"));
    let mut batch = batch.clone();
    batch.sort_by_key(|(k, _)| k[2..].parse::<u32>().unwrap());
    let outcomes: Vec<&str> = batch.iter().map(|(_, o)| o.as_str()).collect();
    let split = outcomes
        .iter()
        .position(|o| *o == "rejected")
        .expect("the batch ran out of stock");
    assert!(split > 0, "some of the batch were processed: {outcomes:?}");
    assert!(
        outcomes[split..].iter().all(|o| *o == "rejected"),
        "once stock ran out, every later order in the batch was rejected: {outcomes:?}"
    );
    // A rejected order's stored answer names the stock it saw: none left.
    let rejected = app
        .doc("operations", &op_id("order", &batch[split].0))
        .await
        .unwrap();
    let body: Value = serde_json::from_str(
        rejected["fields"]["response"]["mapValue"]["fields"]["body"]["stringValue"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["available"], 0);
    assert_eq!(body["reason"], "insufficient_stock");
}

#[tokio::test]
async fn cached_replays_are_byte_for_byte_and_still_check_the_fingerprint() {
    let proxy = FaultProxy::start(emulator_host().to_string()).await;
    let app = spawn_app_at(
        project(),
        |c| {
            c.core.max_attempts = 1;
            c.core.firestore_timeout = Duration::from_millis(500);
        },
        Some(proxy.url.clone()),
    )
    .await;
    app.seed("pear", 1).await;
    let ok = json!({"order_id":"c-1","item_id":"pear","quantity":1});
    let no = json!({"order_id":"c-2","item_id":"pear","quantity":1});
    let first = app.order(&ok).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.bytes().await.unwrap();
    let rejected = app.order(&no).await;
    assert_eq!(rejected.status(), 409);
    let rejected_body = rejected.bytes().await.unwrap();

    // Firestore is gone: only this instance's memory can answer now.
    proxy.set(Link::Down);
    for _ in 0..3 {
        let r = app.order(&ok).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.bytes().await.unwrap(), first_body);
        let r = app.order(&no).await;
        assert_eq!(r.status(), 409);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert_eq!(r.bytes().await.unwrap(), rejected_body);
    }
    // The same key with another payload is still refused, from the cache.
    let r = app
        .order(&json!({"order_id":"c-1","item_id":"pear","quantity":2}))
        .await;
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "/problems/key-reused");
    // A new order does need Firestore.
    let r = app
        .order(&json!({"order_id":"c-3","item_id":"pear","quantity":1}))
        .await;
    assert_eq!(r.status(), 503);
    proxy.set(Link::Up);
    assert_eq!(app.stock("pear").await, Some(0));
}

/// Replays of `n` orders with Firestore cut: how many this instance could still answer.
async fn replays_answered_from_memory(cache_bytes: u64, n: usize) -> usize {
    let proxy = FaultProxy::start(emulator_host().to_string()).await;
    let app = spawn_app_at(
        project(),
        |c| {
            c.core.max_attempts = 1;
            c.core.firestore_timeout = Duration::from_millis(300);
            c.core.replay_cache_bytes = cache_bytes;
        },
        Some(proxy.url.clone()),
    )
    .await;
    app.seed("fig", 1000).await;
    let body = |i: usize| json!({"order_id": format!("m-{i}"), "item_id": "fig", "quantity": 1});
    for i in 0..n {
        assert_eq!(app.order(&body(i)).await.status(), 200);
    }
    proxy.set(Link::Down);
    let mut hits = 0;
    for i in 0..n {
        match app.order(&body(i)).await.status().as_u16() {
            200 => hits += 1,
            503 => {}
            s => panic!("replay {i}: {s}"),
        }
    }
    hits
}

#[tokio::test]
async fn the_replay_cache_is_bounded() {
    // A status record weighs about 1 KB in the cache: 8 KiB holds a handful of 40 orders.
    let small = replays_answered_from_memory(8 * 1024, 40).await;
    assert!(
        (1..=12).contains(&small),
        "{small} of 40 replays from memory"
    );
    let off = replays_answered_from_memory(0, 5).await;
    assert_eq!(off, 0, "with the cache off, every replay needs Firestore");
}
