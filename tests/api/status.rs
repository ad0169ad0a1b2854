//! `GET /operations/{operation_id}` and `GET /openapi.json`: the status query answers from the
//! stored documents (finished, rejected, leased, multi-step), never writes, and the served
//! OpenAPI document is the one committed in the repository.

use crate::helpers::*;
use base64::Engine;
use firestore_once_core::config::Config;
use firestore_once_core::guard::lease::LeaseOutcome;
use firestore_once_shop::{self as shop, fulfil::Carrier, ShopConfig};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl TestApp {
    async fn status(&self, id: &str) -> (u16, String, Value) {
        let r = self
            .http
            .get(self.url(&format!("/operations/{id}")))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        (s, ct, r.json().await.unwrap())
    }

    async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap())
    }

    /// Every document the service may write, counted: a status query must change none.
    async fn census(&self) -> Vec<usize> {
        let mut n = Vec::new();
        for c in [
            "operations",
            "leases",
            "tasks",
            "orders",
            "items",
            "dead_letters",
        ] {
            n.push(self.list(c).await.len());
        }
        n
    }
}

fn push(order: &Value, message_id: &str) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(order.to_string());
    json!({
        "message": {"data": data, "messageId": message_id, "publishTime": "2026-11-23T10:00:00Z"},
        "subscription": "projects/demo/subscriptions/orders-push",
        "deliveryAttempt": 1
    })
}

fn rfc3339(v: &Value) -> &str {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    assert!(
        s.len() >= 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z'),
        "{s}"
    );
    s
}

#[tokio::test]
async fn processed_order_names_its_first_delivery_and_stored_answer() {
    let app = spawn_app().await;
    app.seed("apple", 10).await;
    let order = json!({"order_id": "st-1", "item_id": "apple", "quantity": 2});
    let (s, first) = app.post_json("/orders", &push(&order, "m-1")).await;
    assert_eq!((s, first["outcome"].as_str()), (200, Some("processed")));
    let id = first["operation_id"].as_str().unwrap().to_string();
    assert_eq!(id, op_id("order", "st-1"));
    // A redelivery under another message ID is a replay; the status keeps the first delivery.
    let (s, _) = app.post_json("/orders", &push(&order, "m-2")).await;
    assert_eq!(s, 200);

    let (s, ct, v) = app.status(&id).await;
    assert_eq!((s, ct.as_str()), (200, "application/json"));
    assert_eq!(v["operation_id"], id.as_str());
    assert_eq!(v["kind"], "order");
    assert_eq!(v["key"], "st-1");
    assert_eq!(v["outcome"], "processed");
    assert!(v.get("reason").is_none());
    let created = rfc3339(&v["created_at"]).to_string();
    let expire = rfc3339(&v["expire_at"]);
    assert!(expire > created.as_str(), "{expire} <= {created}");
    assert_eq!(v["delivery"]["source"], "pubsub");
    assert_eq!(v["delivery"]["id"], "m-1");
    assert_eq!(v["delivery"]["attempt"], 1);
    assert_eq!(
        v["delivery"]["attrs"]["subscription"],
        "projects/demo/subscriptions/orders-push"
    );
    assert_eq!(v["response"]["status"], 200);
    assert_eq!(v["response"]["content_type"], "application/json");
    // The stored body comes back as JSON, equal to the first answer.
    assert_eq!(v["response"]["body"], first);
    assert!(v.get("task").is_none() && v.get("steps").is_none());
}

#[tokio::test]
async fn rejected_operation_gives_its_reason() {
    let app = spawn_app().await;
    app.seed("apple", 1).await;
    let (s, r) = app
        .post_json(
            "/orders",
            &json!({"order_id": "st-2", "item_id": "apple", "quantity": 5}),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _, v) = app.status(r["operation_id"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(v["outcome"], "rejected");
    assert_eq!(v["reason"], "insufficient_stock");
    assert_eq!(v["delivery"]["source"], "http");
    assert_eq!(v["response"]["status"], 409);
    assert_eq!(v["response"]["content_type"], "application/problem+json");
    assert_eq!(
        v["response"]["body"]["type"],
        "/problems/insufficient-stock"
    );
    assert_eq!(v["response"]["body"]["available"], 1);
}

#[tokio::test]
async fn unknown_is_404_malformed_is_400_and_queries_never_write() {
    let app = spawn_app().await;
    app.seed("apple", 10).await;
    app.order(&json!({"order_id": "st-3", "item_id": "apple", "quantity": 1}))
        .await;
    let before = app.census().await;

    let unknown = op_id("order", "never-sent");
    let (s, ct, v) = app.status(&unknown).await;
    assert_eq!((s, ct.as_str()), (404, "application/problem+json"));
    assert_eq!(v["type"], "/problems/not-found");
    assert_eq!(v["status"], 404);

    let upper = op_id("order", "st-3").to_uppercase();
    let short = &unknown[..63];
    let long = format!("{unknown}0");
    let non_hex = format!("g{}", &unknown[1..]);
    for bad in [
        upper.as_str(),
        short,
        long.as_str(),
        non_hex.as_str(),
        "order:st-3",
        "%FF%FE",
    ] {
        let (s, ct, v) = app.status(bad).await;
        assert_eq!((s, ct.as_str()), (400, "application/problem+json"), "{bad}");
        assert_eq!(v["field"], "operation_id", "{bad}");
    }
    // Asking many times, about known and unknown IDs, changes nothing anywhere.
    for _ in 0..3 {
        assert_eq!(app.status(&op_id("order", "st-3")).await.0, 200);
        assert_eq!(app.status(&unknown).await.0, 404);
    }
    assert_eq!(app.census().await, before);
}

/// A carrier slow enough to catch the `ship` step holding its lease.
struct SlowCarrier(Duration);

impl Carrier for SlowCarrier {
    fn book<'a>(&'a self, key: &'a str, _order: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            tokio::time::sleep(self.0).await;
            Ok(format!("TRK-{}", &key[..8]))
        })
    }
}

#[tokio::test]
async fn multi_step_task_lists_its_steps_while_running_and_when_done() {
    let app = spawn_app_full(
        project(),
        |_| {},
        None,
        |mut s| {
            let carrier = Arc::new(SlowCarrier(Duration::from_secs(3)));
            s.registry = Arc::new(shop::registry(&ShopConfig::default(), carrier));
            s
        },
    )
    .await;
    app.seed("apple", 10).await;
    let order = json!({"order_id": "st-4", "item_id": "apple", "quantity": 1});
    assert_eq!(app.order(&order).await.status(), 200);
    let task_id = op_id("fulfil_order", "st-4");
    let ship_id = op_id("fulfil_order.ship", "st-4");
    assert_eq!(app.status(&task_id).await.0, 404);

    let running = {
        let http = app.http.clone();
        let url = app.url("/tasks/fulfil_order");
        tokio::spawn(async move {
            let r = http
                .post(url)
                .json(&json!({"order_id": "st-4"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    // Wait for the ship step to hold its lease.
    let started = Instant::now();
    let ship = loop {
        let (s, _, v) = app.status(&ship_id).await;
        if s == 200 {
            break v;
        }
        assert_eq!(s, 404);
        assert!(started.elapsed() < Duration::from_secs(10), "no lease seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ship["outcome"], "in_progress");
    assert_eq!(ship["kind"], "fulfil_order.ship");
    assert_eq!(ship["key"], "st-4");
    assert_eq!(ship["lease"]["expired"], false);
    assert!(ship["lease"]["holder"]
        .as_str()
        .unwrap()
        .starts_with("http:"));
    rfc3339(&ship["lease"]["expires_at"]);
    assert_eq!(ship["task"]["operation_id"], task_id.as_str());
    assert_eq!(ship["task"]["step"], "ship");

    let (s, _, t) = app.status(&task_id).await;
    assert_eq!(s, 200);
    assert_eq!(t["kind"], "fulfil_order");
    assert_eq!(t["key"], "st-4");
    assert_eq!(t["outcome"], "in_progress");
    let states: Vec<(&str, &str)> = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("reserve", "processed"),
            ("invoice", "processed"),
            ("ship", "in_progress")
        ]
    );
    assert_eq!(t["steps"][2]["operation_id"], ship_id.as_str());

    let (s, answer) = running.await.unwrap();
    assert_eq!(s, 200, "{answer}");
    assert_eq!(answer["operation_id"], task_id.as_str());
    let (s, _, t) = app.status(&task_id).await;
    assert_eq!((s, t["outcome"].as_str()), (200, Some("processed")));
    assert!(t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["outcome"] == "processed" && s.get("lease").is_none()));
    assert_eq!(t["delivery"]["source"], "http");
    rfc3339(&t["created_at"]);
    let (_, _, ship) = app.status(&ship_id).await;
    assert_eq!(ship["outcome"], "processed");
    assert_eq!(
        ship["response"]["body"]["carrier_ref"],
        answer["carrier_ref"]
    );
    // Each step's ID, as the task's answer lists them, is answered too.
    for step in answer["steps"].as_array().unwrap() {
        let (s, _, v) = app.status(step["operation_id"].as_str().unwrap()).await;
        assert_eq!((s, v["task"]["step"].clone()), (200, step["step"].clone()));
    }
}

#[tokio::test]
async fn task_rejected_at_its_first_step_is_found_by_the_step_id() {
    let app = spawn_app().await;
    let (s, r) = app
        .post_json("/tasks/fulfil_order", &json!({"order_id": "st-ghost"}))
        .await;
    assert_eq!((s, r["reason"].as_str()), (409, Some("unknown_order")));
    let step_id = r["operation_id"].as_str().unwrap();
    assert_eq!(step_id, op_id("fulfil_order.reserve", "st-ghost"));
    let (s, _, v) = app.status(step_id).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("rejected")));
    assert_eq!(v["reason"], "unknown_order");
    assert_eq!(
        v["task"]["operation_id"],
        op_id("fulfil_order", "st-ghost").as_str()
    );
    assert_eq!(app.status(&op_id("fulfil_order", "st-ghost")).await.0, 404);
}

#[tokio::test]
async fn a_bare_lease_is_in_progress_then_pending_once_expired() {
    let project = project();
    let app = spawn_app_with(project.clone(), |_| {}).await;
    let guard = guard_for(&project, &Config::default(), None).await;
    let leases = Config::default().collections.leases;
    let live = op_id("custom.step", "k-1");
    let got = guard
        .acquire_lease(&leases, &live, "tester", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(got, LeaseOutcome::Acquired(_)));
    let (s, _, v) = app.status(&live).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("in_progress")));
    assert_eq!(v["lease"]["holder"], "tester");
    assert!(v.get("kind").is_none());

    let stale = op_id("custom.step", "k-2");
    guard
        .acquire_step_lease(
            &leases,
            "custom.step",
            "k-2",
            "tester",
            Duration::from_millis(1),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (s, _, v) = app.status(&stale).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("pending")));
    assert_eq!(
        (v["kind"].as_str(), v["key"].as_str()),
        (Some("custom.step"), Some("k-2"))
    );
    assert_eq!(v["lease"]["expired"], true);
}

/// Found while checking the document's promise that every error is problem+json: a path
/// segment that is not UTF-8 got axum's plain-text 400.
#[tokio::test]
async fn undecodable_path_segments_are_problem_json() {
    let app = spawn_app().await;
    for (method, path) in [
        (reqwest::Method::POST, "/tasks/%FF"),
        (reqwest::Method::GET, "/operations/%FF"),
    ] {
        let r = app
            .http
            .request(method, app.url(path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "/problems/invalid-field", "{path}");
    }
}

/// The listing's filters select in Firestore: one rejected order behind more newer processed
/// ones than any in-process window would read (1,000 was the old one) is still found.
#[tokio::test]
async fn operations_listing_filters_in_firestore_over_every_operation() {
    let app = spawn_app().await;
    app.seed("apple", 1).await;
    let r = app
        .order(&json!({"order_id": "old-refused", "item_id": "apple", "quantity": 5}))
        .await;
    assert_eq!(r.status(), 409);
    let r = app
        .order(&json!({"order_id": "newer", "item_id": "apple", "quantity": 1}))
        .await;
    assert_eq!(r.status(), 200);
    // 1,200 more processed status documents, each a copy of the real one (so each is a
    // well-formed record, newer than the rejection), written in commits of 400.
    let real = app
        .doc("operations", &op_id("order", "newer"))
        .await
        .expect("the processed order's status document");
    let root = app.rest.split("/v1/").nth(1).unwrap().to_string();
    for chunk in 0..3 {
        let writes: Vec<Value> = (0..400)
            .map(|i| {
                let key = format!("filler-{chunk}-{i}");
                let mut fields = real["fields"].clone();
                fields["key"] = json!({"stringValue": key});
                fields["operation_id"] = json!({"stringValue": op_id("order", &key)});
                json!({"update": {"name": format!("{root}/operations/{}", op_id("order", &key)),
                                  "fields": fields}})
            })
            .collect();
        let r = app
            .http
            .post(format!("{}:commit", app.rest))
            .json(&json!({ "writes": writes }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let list = |q: &'static str| {
        let app = &app;
        async move {
            let r = app
                .http
                .get(app.url(&format!("/operations?{q}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{q}");
            let v: Value = r.json().await.unwrap();
            v["operations"].as_array().unwrap().clone()
        }
    };
    let refused = list("outcome=rejected&limit=10").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["key"], "old-refused");
    assert_eq!(refused[0]["reason"], "insufficient_stock");
    let refused = list("outcome=rejected&kind=order").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    let processed = list("outcome=processed&kind=order&limit=200").await;
    assert_eq!(processed.len(), 200);
    assert!(processed.iter().all(|o| o["outcome"] == "processed"));
    assert!(list("kind=restock").await.is_empty());
    // Unfiltered: the newest 50, none of them the old rejection.
    let recent = list("").await;
    assert_eq!(recent.len(), 50);
    assert!(recent.iter().all(|o| o["outcome"] == "processed"));
}

/// `UPDATE_OPENAPI=1 cargo test openapi` rewrites `openapi.json` from the code.
#[tokio::test]
async fn served_openapi_document_is_the_committed_file() {
    let app = spawn_app().await;
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let served = r.text().await.unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &served).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        served == committed,
        "openapi.json differs from the document the code generates; run \
         `UPDATE_OPENAPI=1 cargo test openapi` and commit the result"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
}
