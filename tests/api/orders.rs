//! The HTTP contract of `POST /orders`, line by line.

use crate::helpers::*;
use serde_json::{json, Value};

async fn problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], status);
    assert!(v["type"].as_str().unwrap().starts_with("/problems/"));
    assert!(v["title"].is_string() && v["detail"].is_string());
    v
}

#[tokio::test]
async fn new_order_is_processed_with_its_status_document() {
    let app = spawn_app().await;
    app.seed("apple", 10).await;
    let r = app
        .order(&json!({"order_id":"o-1","item_id":"apple","quantity":2}))
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("idempotent-replayed").is_none());
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    let id = op_id("order", "o-1");
    assert_eq!(body["operation_id"], id);
    assert_eq!(body["order_id"], "o-1");
    assert_eq!(body["outcome"], "processed");
    assert_eq!(app.stock("apple").await, Some(8));

    let order = app.doc("orders", &id).await.expect("order document");
    let f = &order["fields"];
    assert_eq!(f["order_id"]["stringValue"], "o-1");
    assert_eq!(f["state"]["stringValue"], "processed");
    let line = &f["lines"]["arrayValue"]["values"][0]["mapValue"]["fields"];
    assert_eq!(line["item_id"]["stringValue"], "apple");
    assert_eq!(line["quantity"]["integerValue"], "2");
    assert!(f["created_at"]["timestampValue"].is_string());

    let status = app.doc("operations", &id).await.expect("status document");
    let s = &status["fields"];
    assert_eq!(s["outcome"]["stringValue"], "processed");
    assert_eq!(s["key"]["stringValue"], "o-1");
    assert_eq!(s["kind"]["stringValue"], "order");
    assert_eq!(s["fingerprint"]["stringValue"].as_str().unwrap().len(), 64);
    assert!(s["created_at"]["timestampValue"].is_string());
    assert!(
        s["expire_at"]["timestampValue"].as_str().unwrap()
            > s["created_at"]["timestampValue"].as_str().unwrap()
    );
    assert_eq!(
        s["response"]["mapValue"]["fields"]["status"]["integerValue"],
        "200"
    );
}

#[tokio::test]
async fn replay_is_byte_for_byte_and_changes_nothing() {
    let app = spawn_app().await;
    app.seed("apple", 10).await;
    let body = json!({"order_id":"o-2","items":[{"item_id":"apple","quantity":3}]});
    let first = app.order(&body).await;
    let first_status = first.status();
    let first_bytes = first.bytes().await.unwrap();
    let status_doc = app.doc("operations", &op_id("order", "o-2")).await;
    for _ in 0..3 {
        // The single-line shape is the same order: same fingerprint, so a replay.
        let again = app
            .order(&json!({"order_id":"o-2","item_id":"apple","quantity":3}))
            .await;
        assert_eq!(again.status(), first_status);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.bytes().await.unwrap(), first_bytes);
    }
    assert_eq!(app.stock("apple").await, Some(7));
    assert_eq!(app.list("orders").await.len(), 1);
    assert_eq!(
        app.doc("operations", &op_id("order", "o-2")).await,
        status_doc
    );
}

#[tokio::test]
async fn same_order_id_with_other_lines_is_422_and_changes_nothing() {
    let app = spawn_app().await;
    app.seed("apple", 10).await;
    app.seed("pear", 10).await;
    assert_eq!(
        app.order(&json!({"order_id":"o-3","item_id":"apple","quantity":1}))
            .await
            .status(),
        200
    );
    let before = app.doc("operations", &op_id("order", "o-3")).await;
    for other in [
        json!({"order_id":"o-3","item_id":"apple","quantity":2}),
        json!({"order_id":"o-3","item_id":"pear","quantity":1}),
        json!({"order_id":"o-3","items":[{"item_id":"apple","quantity":1},{"item_id":"pear","quantity":1}]}),
    ] {
        let v = problem(app.order(&other).await, 422).await;
        assert_eq!(v["operation_id"], op_id("order", "o-3"));
    }
    assert_eq!(app.stock("apple").await, Some(9));
    assert_eq!(app.stock("pear").await, Some(10));
    assert_eq!(app.doc("operations", &op_id("order", "o-3")).await, before);
}

#[tokio::test]
async fn rejections_are_409_recorded_and_replayed() {
    let app = spawn_app().await;
    app.seed("plum", 1).await;
    let short = json!({"order_id":"o-4","item_id":"plum","quantity":2});
    let r = app.order(&short).await;
    assert!(r.headers().get("idempotent-replayed").is_none());
    let first = problem(r, 409).await;
    assert_eq!(first["reason"], "insufficient_stock");
    assert_eq!(first["item_id"], "plum");
    assert_eq!(first["available"], 1);
    assert_eq!(first["requested"], 2);
    assert_eq!(first["outcome"], "rejected");
    assert_eq!(first["type"], "/problems/insufficient-stock");
    let again = app.order(&short).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(problem(again, 409).await, first);
    assert_eq!(app.stock("plum").await, Some(1));
    let status = app.doc("operations", &op_id("order", "o-4")).await.unwrap();
    assert_eq!(status["fields"]["outcome"]["stringValue"], "rejected");
    assert_eq!(
        status["fields"]["reason"]["stringValue"],
        "insufficient_stock"
    );
    assert!(app.list("orders").await.is_empty());

    let unknown = problem(
        app.order(&json!({"order_id":"o-5","item_id":"ghost","quantity":1}))
            .await,
        409,
    )
    .await;
    assert_eq!(unknown["reason"], "unknown_item");
    assert_eq!(unknown["item_id"], "ghost");
    assert!(unknown["detail"].as_str().unwrap().contains("ghost"));
}

#[tokio::test]
async fn multi_line_orders_are_all_or_nothing() {
    let app = spawn_app().await;
    app.seed("a", 5).await;
    app.seed("b", 1).await;
    let v = problem(
        app.order(&json!({"order_id":"m-1","items":[{"item_id":"a","quantity":2},{"item_id":"b","quantity":2}]})).await,
        409,
    )
    .await;
    assert_eq!(v["item_id"], "b");
    assert_eq!(
        (app.stock("a").await, app.stock("b").await),
        (Some(5), Some(1))
    );
    let ok = app
        .order(&json!({"order_id":"m-2","items":[{"item_id":"a","quantity":2},{"item_id":"b","quantity":1}]}))
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        (app.stock("a").await, app.stock("b").await),
        (Some(3), Some(0))
    );
}

#[tokio::test]
async fn bad_input_is_400_naming_the_field_and_writes_nothing() {
    let app = spawn_app().await;
    app.seed("a", 5).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"item_id":"a","quantity":1}), "order_id"),
        (
            json!({"order_id":"","item_id":"a","quantity":1}),
            "order_id",
        ),
        (json!({"order_id":"x","quantity":1}), "item_id"),
        (json!({"order_id":"x","item_id":"","quantity":1}), "item_id"),
        (
            json!({"order_id":"x","item_id":"a/b","quantity":1}),
            "item_id",
        ),
        (
            json!({"order_id":"x","item_id":"a","quantity":0}),
            "quantity",
        ),
        (
            json!({"order_id":"x","item_id":"a","quantity":-3}),
            "quantity",
        ),
        (
            json!({"order_id":"x","item_id":"a","quantity":1.5}),
            "quantity",
        ),
        (
            json!({"order_id":"x","item_id":"a","quantity":"1"}),
            "quantity",
        ),
        (
            json!({"order_id":"x","items":[{"item_id":"a","quantity":1},{"item_id":"a","quantity":1}]}),
            "items",
        ),
        (
            json!({"order_id":"x","items":(0..101).map(|i| json!({"item_id":format!("i{i}"),"quantity":1})).collect::<Vec<_>>()}),
            "items",
        ),
        (
            json!({"order_id":"x","items":[{"item_id":"a","quantity":1},{"quantity":1}]}),
            "items[1].item_id",
        ),
        (json!("just a string"), "body"),
    ];
    for (body, field) in cases {
        let v = problem(app.order(&body).await, 400).await;
        assert_eq!(v["field"], field, "{body}");
        assert!(v["detail"].as_str().unwrap().starts_with(field), "{v}");
    }
    let r = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "application/json")
        .body("{\"order_id\": ")
        .send()
        .await
        .unwrap();
    let v = problem(r, 400).await;
    assert_eq!(v["type"], "/problems/malformed-body");
    assert!(app.list("operations").await.is_empty());
    assert_eq!(app.stock("a").await, Some(5));
}

#[tokio::test]
async fn transport_errors_are_problem_json() {
    let app = spawn_app().await;
    // 12 MiB with a Content-Length: refused before the body is read.
    let big = vec![b' '; 12 * 1024 * 1024];
    let r = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await;
    match r {
        Ok(r) => {
            problem(r, 413).await;
        }
        // The server may answer and close before the client finishes sending 12 MiB.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    // Chunked (no Content-Length): refused once the limit is crossed, not after 12 MiB.
    let chunks =
        futures::stream::iter((0..12).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024 * 1024])));
    let r = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    if let Ok(r) = r {
        problem(r, 413).await;
    }
    let r = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(r, 415).await;
    problem(app.http.get(app.url("/nowhere")).send().await.unwrap(), 404).await;
    problem(app.http.get(app.url("/orders")).send().await.unwrap(), 405).await;
    let h = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
}

#[tokio::test]
async fn firestore_unavailable_is_503_with_retry_after_and_recovers() {
    let proxy = FaultProxy::start(emulator_host().to_string()).await;
    let app = spawn_app_at(
        project(),
        |c| {
            c.core.max_attempts = 2;
            c.core.firestore_timeout = std::time::Duration::from_millis(500);
        },
        Some(proxy.url.clone()),
    )
    .await;
    app.seed("a", 3).await;
    let body = json!({"order_id":"o-9","item_id":"a","quantity":1});
    proxy.set(Link::Down);
    let r = app.order(&body).await;
    assert_eq!(r.headers()["retry-after"], "1");
    let v = problem(r, 503).await;
    assert_eq!(v["type"], "/problems/unavailable");
    assert_eq!(app.stock("a").await, Some(3));
    // The redelivery after recovery processes it, once.
    proxy.set(Link::Up);
    let mut status = 0;
    for _ in 0..20 {
        status = app.order(&body).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(app.stock("a").await, Some(2));
}

#[tokio::test]
async fn request_deadline_is_503_not_a_hang() {
    // A listener that accepts and never answers: calls hang until their deadlines.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let app = spawn_app_at(
        project(),
        |c| {
            c.core.request_timeout = std::time::Duration::from_millis(400);
            c.core.firestore_timeout = std::time::Duration::from_secs(30);
        },
        Some(url),
    )
    .await;
    let started = std::time::Instant::now();
    let r = app
        .order(&json!({"order_id":"o-10","item_id":"a","quantity":1}))
        .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(r.headers().contains_key("retry-after"));
    problem(r, 503).await;
}

#[tokio::test]
async fn hostile_order_ids_are_hashed_and_work() {
    let app = spawn_app().await;
    app.seed("a", 100).await;
    let long = "x".repeat(2048);
    for id in [
        "a/b",
        "..",
        ".",
        "__x__",
        long.as_str(),
        "ünïcødé 🚀",
        "with\nnewline",
    ] {
        let body = json!({"order_id": id, "item_id": "a", "quantity": 1});
        let r = app.order(&body).await;
        assert_eq!(r.status(), 200, "{id:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["operation_id"], op_id("order", id));
        assert_eq!(v["order_id"], id);
        let again = app.order(&body).await;
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        let status = app.doc("operations", &op_id("order", id)).await.unwrap();
        assert_eq!(status["fields"]["key"]["stringValue"], id);
    }
    assert_eq!(app.stock("a").await, Some(93));
}
