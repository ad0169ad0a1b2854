//! `/tasks/{kind}`: restock, cancel_order, the multi-step fulfil_order, Cloud Tasks, and a
//! user-defined kind from `examples/`.

use crate::helpers::*;
use firestore_once_shop::{self as shop, fulfil::Carrier, ShopConfig};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[path = "../../crates/core/examples/award_points.rs"]
mod award_points;

impl TestApp {
    async fn task(&self, kind: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/tasks/{kind}")))
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    (s, r.json().await.unwrap())
}

/// A carrier that counts its calls and can be slow, to catch a second delivery mid-call.
#[derive(Default)]
struct CountingCarrier {
    calls: AtomicUsize,
    delay: Duration,
}

impl Carrier for CountingCarrier {
    fn book<'a>(&'a self, key: &'a str, _order: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            Ok(format!("TRK-{}", &key[..8]))
        })
    }
}

async fn app_with_carrier(carrier: Arc<CountingCarrier>) -> TestApp {
    spawn_app_full(
        project(),
        |_| {},
        None,
        move |mut s| {
            s.registry = Arc::new(shop::registry(&ShopConfig::default(), carrier));
            s
        },
    )
    .await
}

#[tokio::test]
async fn restock_adds_once_rejects_unknown_items_and_survives_concurrency() {
    let app = spawn_app().await;
    app.seed("a", 1).await;
    let body = json!({"restock_id":"rs-1","item_id":"a","quantity":5});
    let (s, v) = json_of(app.task("restock", &body).await).await;
    assert_eq!((s, v["stock"].as_i64()), (200, Some(6)));
    let again = app.task("restock", &body).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let concurrent = json!({"restock_id":"rs-2","item_id":"a","quantity":10});
    let replies =
        futures::future::join_all((0..10).map(|_| app.task("restock", &concurrent))).await;
    assert!(replies.iter().all(|r| r.status() == 200));
    assert_eq!(app.stock("a").await, Some(16));
    let (s, v) = json_of(
        app.task(
            "restock",
            &json!({"restock_id":"rs-3","item_id":"ghost","quantity":1}),
        )
        .await,
    )
    .await;
    assert_eq!((s, v["reason"].as_str()), (409, Some("unknown_item")));
    let again = app
        .task(
            "restock",
            &json!({"restock_id":"rs-3","item_id":"ghost","quantity":1}),
        )
        .await;
    assert_eq!(
        (
            again.status().as_u16(),
            &again.headers()["idempotent-replayed"]
        ),
        (
            409,
            &"true".parse::<reqwest::header::HeaderValue>().unwrap()
        )
    );
    let (s, v) = json_of(
        app.task(
            "restock",
            &json!({"restock_id":"rs-1","item_id":"a","quantity":6}),
        )
        .await,
    )
    .await;
    assert_eq!((s, v["type"].as_str()), (422, Some("/problems/key-reused")));
    let (s, v) = json_of(
        app.task("restock", &json!({"item_id":"a","quantity":1}))
            .await,
    )
    .await;
    assert_eq!((s, v["field"].as_str()), (400, Some("restock_id")));
    assert_eq!(app.stock("a").await, Some(16));
}

#[tokio::test]
async fn cancel_order_restores_stock_once() {
    let app = spawn_app().await;
    app.seed("a", 10).await;
    app.seed("b", 10).await;
    let order = json!({"order_id":"c-1","items":[{"item_id":"a","quantity":3},{"item_id":"b","quantity":1}]});
    assert_eq!(app.order(&order).await.status(), 200);
    assert_eq!(
        (app.stock("a").await, app.stock("b").await),
        (Some(7), Some(9))
    );
    let cancel = json!({"order_id":"c-1"});
    let replies =
        futures::future::join_all((0..10).map(|_| app.task("cancel_order", &cancel))).await;
    let fresh = replies
        .iter()
        .filter(|r| r.headers().get("idempotent-replayed").is_none())
        .count();
    assert!(replies.iter().all(|r| r.status() == 200));
    assert_eq!(fresh, 1);
    assert_eq!(
        (app.stock("a").await, app.stock("b").await),
        (Some(10), Some(10))
    );
    let doc = app.doc("orders", &op_id("order", "c-1")).await.unwrap();
    assert_eq!(doc["fields"]["state"]["stringValue"], "cancelled");
    // The order redelivered after its cancellation is a replay: stock stays.
    assert_eq!(
        app.order(&order).await.headers()["idempotent-replayed"],
        "true"
    );
    assert_eq!(app.stock("a").await, Some(10));

    let (s, v) = json_of(app.task("cancel_order", &json!({"order_id":"nope"})).await).await;
    assert_eq!((s, v["reason"].as_str()), (409, Some("unknown_order")));
    let r = app.task("cancel_order", &json!({"order_id":"nope"})).await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["idempotent-replayed"].to_str().unwrap()
        ),
        (409, "true")
    );
    app.seed("c", 0).await;
    assert_eq!(
        app.order(&json!({"order_id":"c-2","item_id":"c","quantity":1}))
            .await
            .status(),
        409
    );
    let (s, v) = json_of(app.task("cancel_order", &json!({"order_id":"c-2"})).await).await;
    assert_eq!((s, v["reason"].as_str()), (409, Some("order_rejected")));
}

#[tokio::test]
async fn fulfil_order_runs_each_step_once() {
    let carrier = Arc::new(CountingCarrier::default());
    let app = app_with_carrier(carrier.clone()).await;
    app.seed("a", 10).await;
    assert_eq!(
        app.order(&json!({"order_id":"f-1","item_id":"a","quantity":2}))
            .await
            .status(),
        200
    );
    let first = app.task("fulfil_order", &json!({"order_id":"f-1"})).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.bytes().await.unwrap();
    let v: Value = serde_json::from_slice(&first_body).unwrap();
    assert_eq!(v["outcome"], "processed");
    assert_eq!(v["operation_id"], op_id("fulfil_order", "f-1"));
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["reserve", "invoice", "ship"]);
    assert_eq!(
        v["steps"][2]["operation_id"],
        op_id("fulfil_order.ship", "f-1")
    );
    assert!(v["carrier_ref"].as_str().unwrap().starts_with("TRK-"));
    let again = app.task("fulfil_order", &json!({"order_id":"f-1"})).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.bytes().await.unwrap(), first_body);
    assert_eq!(carrier.calls.load(Ordering::SeqCst), 1);
    let order = app.doc("orders", &op_id("order", "f-1")).await.unwrap();
    assert_eq!(order["fields"]["state"]["stringValue"], "shipped");
    assert_eq!(app.list("invoices").await.len(), 1);
    assert_eq!(app.list("shipments").await.len(), 1);
    assert!(
        app.list("leases").await.is_empty(),
        "the lease is released with the commit"
    );
    // A shipped order cannot be cancelled; an unknown one cannot be fulfilled.
    let (s, v) = json_of(app.task("cancel_order", &json!({"order_id":"f-1"})).await).await;
    assert_eq!((s, v["reason"].as_str()), (409, Some("not_cancellable")));
    let (s, v) = json_of(app.task("fulfil_order", &json!({"order_id":"ghost"})).await).await;
    assert_eq!(
        (s, v["reason"].as_str(), v["step"].as_str()),
        (409, Some("unknown_order"), Some("reserve"))
    );
    assert_eq!(app.stock("a").await, Some(8));
}

#[tokio::test]
async fn fulfil_order_resumes_after_a_crash_after_each_step() {
    for step in ["reserve", "invoice", "ship"] {
        let carrier = Arc::new(CountingCarrier::default());
        let app = app_with_carrier(carrier.clone()).await;
        app.seed("a", 5).await;
        assert_eq!(
            app.order(&json!({"order_id":"k-1","item_id":"a","quantity":1}))
                .await
                .status(),
            200
        );
        app.faults.crash_after(step);
        let crashed = app.task("fulfil_order", &json!({"order_id":"k-1"})).await;
        assert_eq!(crashed.status(), 503, "{step}");
        assert!(crashed.headers().contains_key("retry-after"));
        let retried = app.task("fulfil_order", &json!({"order_id":"k-1"})).await;
        assert_eq!(retried.status(), 200, "{step}");
        // Steps up to the crash are replays now; the resumed ones ran once.
        assert_eq!(
            retried.headers().get("idempotent-replayed").is_some(),
            step == "ship",
            "{step}"
        );
        assert_eq!(app.list("fulfilments").await.len(), 1);
        assert_eq!(app.list("invoices").await.len(), 1);
        assert_eq!(app.list("shipments").await.len(), 1);
        assert_eq!(carrier.calls.load(Ordering::SeqCst), 1, "{step}");
        let statuses = app.list("operations").await;
        assert_eq!(statuses.len(), 4, "order + three steps");
        assert_eq!(app.stock("a").await, Some(4));
    }
}

#[tokio::test]
async fn concurrent_fulfilments_never_call_the_carrier_twice() {
    let carrier = Arc::new(CountingCarrier {
        calls: AtomicUsize::new(0),
        delay: Duration::from_millis(800),
    });
    let app = app_with_carrier(carrier.clone()).await;
    app.seed("a", 5).await;
    assert_eq!(
        app.order(&json!({"order_id":"cc-1","item_id":"a","quantity":1}))
            .await
            .status(),
        200
    );
    let body = json!({"order_id":"cc-1"});
    let replies = futures::future::join_all((0..6).map(|_| app.task("fulfil_order", &body))).await;
    let mut busy = 0;
    for r in &replies {
        match r.status().as_u16() {
            200 => {}
            409 => {
                busy += 1;
                assert!(r.headers().contains_key("retry-after"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(busy >= 1, "another delivery held the lease");
    assert_eq!(carrier.calls.load(Ordering::SeqCst), 1);
    let (s, v) = json_of(app.task("fulfil_order", &body).await).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("processed")));
    assert_eq!(app.list("shipments").await.len(), 1);
}

#[tokio::test]
async fn cloud_tasks_deliveries_are_acknowledged_and_correlated() {
    let app = spawn_app().await;
    app.seed("a", 1).await;
    let send = |body: Value, task: &'static str| {
        app.http
            .post(app.url("/tasks/restock"))
            .header("x-cloudtasks-taskname", task)
            .header("x-cloudtasks-queuename", "restocks")
            .header("x-cloudtasks-taskretrycount", "1")
            .header("x-cloudtasks-taskexecutioncount", "2")
            .json(&body)
            .send()
    };
    let r = send(
        json!({"restock_id":"ct-1","item_id":"a","quantity":2}),
        "task-1",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let s = app
        .doc("operations", &op_id("restock", "ct-1"))
        .await
        .unwrap();
    let d = &s["fields"]["delivery"]["mapValue"]["fields"];
    assert_eq!(d["source"]["stringValue"], "cloudtasks");
    assert_eq!(d["id"]["stringValue"], "task-1");
    assert_eq!(d["attempt"]["integerValue"], "1");
    assert_eq!(
        d["attrs"]["mapValue"]["fields"]["queue"]["stringValue"],
        "restocks"
    );
    // A durable rejection is still 2xx for Cloud Tasks (anything else is retried).
    let (s, v) = json_of(
        send(
            json!({"restock_id":"ct-2","item_id":"ghost","quantity":1}),
            "task-2",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("rejected")));
    // Without restock_id, the task name keys it: a retry of the task is a replay.
    let body = json!({"item_id":"a","quantity":1});
    assert_eq!(send(body.clone(), "task-3").await.unwrap().status(), 200);
    let r = send(body, "task-3").await.unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(app.stock("a").await, Some(4));
}

#[tokio::test]
async fn unknown_kind_is_404_listing_the_known_ones() {
    let app = spawn_app().await;
    let (s, v) = json_of(app.task("teleport", &json!({})).await).await;
    assert_eq!(s, 404);
    assert_eq!(v["type"], "/problems/unknown-kind");
    assert_eq!(
        v["known_kinds"],
        json!(["cancel_order", "fulfil_order", "order", "restock"])
    );
}

#[tokio::test]
async fn a_kind_from_examples_runs_exactly_once() {
    let app = spawn_app_full(
        project(),
        |_| {},
        None,
        |mut s| {
            let mut r = (*s.registry).clone();
            award_points::register(&mut r);
            s.registry = Arc::new(r);
            s
        },
    )
    .await;
    let body = json!({"award_id":"aw-1","customer_id":"cust","points":7});
    let replies = futures::future::join_all((0..5).map(|_| app.task("award_points", &body))).await;
    assert!(replies.iter().all(|r| r.status() == 200));
    let (_, v) = json_of(
        app.task(
            "award_points",
            &json!({"award_id":"aw-2","customer_id":"cust","points":3}),
        )
        .await,
    )
    .await;
    assert_eq!(v["points"], 10);
    let c = app.doc("customers", "cust").await.unwrap();
    assert_eq!(c["fields"]["points"]["integerValue"], "10");
    let (s, _) = json_of(
        app.task(
            "award_points",
            &json!({"award_id":"aw-1","customer_id":"cust","points":8}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422);
}
