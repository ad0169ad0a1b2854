//! The service inside production Firestore's limits, measured through the limits proxy
//! (tools/limits-proxy) in front of the emulator: each document's commit budget, the 500
//! writes of one commit, and what a contention refusal becomes.

use crate::helpers::{emulator_host, list_documents, project, spawn_app_at, TestApp};
use crate::scale_out::verify;
use firestore_once_core::guard::Budget;
use limits_proxy::{Limits, Proxy};
use serde_json::{json, Value};
use std::time::Duration;

/// A proxy at `per_sec` commits a second per document with a burst of `burst`.
async fn proxy(per_sec: f64, burst: f64) -> Proxy {
    let limits = Limits {
        doc_writes_per_sec: per_sec,
        doc_burst: burst,
        ..Limits::default()
    };
    Proxy::start(limits, emulator_host().to_string())
        .await
        .expect("limits proxy")
}

/// `n` orders sent at once, each built by `body(i)`; the answers' statuses and bodies.
async fn storm(app: &TestApp, n: usize, body: impl Fn(usize) -> Value) -> Vec<(u16, Value)> {
    let sends = (0..n).map(|i| {
        let b = body(i);
        async move {
            let r = app.order(&b).await;
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    });
    futures::future::join_all(sends).await
}

/// How many of `id`'s shard documents hold stock.
async fn shards_used(app: &TestApp, id: &str) -> usize {
    list_documents(&app.http, &app.rest, &format!("items/{id}/shards"), None)
        .await
        .len()
}

#[tokio::test]
async fn a_single_instance_spreads_a_hot_item_by_demand_inside_each_documents_budget() {
    let proxy = proxy(2.0, 3.0).await;
    let project = project();
    let app = spawn_app_at(
        project.clone(),
        |c| {
            c.core.doc_budget = Some(Budget {
                per_sec: 2.0,
                burst: 2.0,
            });
            // 20 orders a commit (two writes each and the stock's one): 300 orders at once
            // are more than one document's commits can carry.
            c.core.max_commit_writes = 41;
            c.shop.stock_shards = 8;
        },
        Some(format!("http://{}", proxy.addr())),
    )
    .await;
    app.seed("hot", 100_000).await;
    let answers = storm(
        &app,
        300,
        |i| json!({"order_id": format!("d-{i}"), "item_id": "hot", "quantity": 1}),
    )
    .await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    let stats = proxy.stats();
    // Every commit went through: the service never planned past a document's budget.
    let short: Vec<_> = stats.documents.iter().filter(|d| d.short > 0).collect();
    assert_eq!(
        stats.totals.commits_refused_rate, 0,
        "{:?}; refused on {short:?}; per second {:?}",
        stats.totals, stats.per_second
    );
    assert_eq!(stats.totals.commits_refused_size, 0);
    let busiest = stats.busiest_window.expect("commits were forwarded");
    assert!(
        busiest.commits <= 4,
        "{} got {} commits in one second (budget: 2 a second, burst 2)",
        busiest.document,
        busiest.commits
    );
    // One instance alone left the main document for several shards: demand, not a conflict.
    let used = shards_used(&app, "hot").await;
    assert!(used >= 2, "the hot item used {used} shard(s)");
    assert_eq!(app.stock("hot").await, Some(100_000 - 300));
    let report = verify(&project, &[("hot".to_string(), 100_000)].into()).await;
    assert!(report.ok(), "{report}");
}

#[tokio::test]
async fn a_storm_of_multi_line_orders_is_never_committed_over_500_writes() {
    // Production's figures: 500 writes a commit, one commit a second per document (burst 5).
    let proxy = proxy(1.0, 5.0).await;
    let project = project();
    let app = spawn_app_at(
        project.clone(),
        |_| {},
        Some(format!("http://{}", proxy.addr())),
    )
    .await;
    let items: Vec<String> = std::iter::once("hot".to_string())
        .chain((1..100).map(|i| format!("i{i:02}")))
        .collect();
    for id in &items {
        app.seed(id, 1_000).await;
    }
    let lines: Vec<Value> = items
        .iter()
        .map(|id| json!({"item_id": id, "quantity": 1}))
        .collect();
    // 300 orders of 100 lines on the same items: one lane, and 300 × 102 writes to fold.
    let answers = storm(
        &app,
        300,
        |i| json!({"order_id": format!("m-{i}"), "items": lines}),
    )
    .await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    let stats = proxy.stats();
    assert_eq!(
        stats.totals.commits_refused_size, 0,
        "a commit carried more than 500 writes"
    );
    assert_eq!(stats.totals.commits_refused_rate, 0, "{:?}", stats.totals);
    // More than one commit: one could not hold them all.
    assert!(stats.totals.commits_forwarded >= 2, "{:?}", stats.totals);
    for id in &items {
        assert_eq!(app.stock(id).await, Some(700), "{id}");
    }
    let initial = items.iter().map(|id| (id.clone(), 1_000)).collect();
    let report = verify(&project, &initial).await;
    assert!(report.ok(), "{report}");
}

#[tokio::test]
async fn a_contention_refusal_is_retried_and_never_reaches_the_caller() {
    // The guard believes a document takes 20 commits a second; production (the proxy) takes
    // one, with a burst of 2: Firestore answers ABORTED "Too much contention".
    let proxy = proxy(1.0, 2.0).await;
    let project = project();
    let app = spawn_app_at(
        project.clone(),
        |c| {
            c.core.doc_budget = Some(Budget {
                per_sec: 20.0,
                burst: 2.0,
            });
            c.core.batch_max = 4;
            c.shop.stock_shards = 0;
        },
        Some(format!("http://{}", proxy.addr())),
    )
    .await;
    app.seed("hot", 1_000).await;
    let body = |i: usize| json!({"order_id": format!("c-{i}"), "item_id": "hot", "quantity": 1});
    let mut pending: Vec<usize> = (0..40).collect();
    let mut rounds = 0;
    while !pending.is_empty() {
        rounds += 1;
        assert!(rounds <= 30, "orders still unsettled: {pending:?}");
        let answers = futures::future::join_all(pending.iter().map(|i| {
            let b = body(*i);
            let app = &app;
            async move {
                let r = app.order(&b).await;
                let retry = r.headers().get("retry-after").is_some();
                (r.status().as_u16(), retry)
            }
        }))
        .await;
        let mut next = Vec::new();
        for (i, (status, retry)) in pending.iter().zip(answers) {
            match status {
                200 => {}
                // Outcome unknown: 503 with Retry-After, and the redelivery settles it.
                503 if retry => next.push(*i),
                other => panic!("order c-{i} answered {other} (retry-after: {retry})"),
            }
        }
        pending = next;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let stats = proxy.stats();
    assert!(
        stats.totals.commits_refused_rate > 0,
        "the proxy never refused: the test proved nothing ({:?})",
        stats.totals
    );
    // Refused commits never reached the emulator: each order applied exactly once.
    assert_eq!(app.stock("hot").await, Some(1_000 - 40));
    let report = verify(&project, &[("hot".to_string(), 1_000)].into()).await;
    assert!(report.ok(), "{report}");
}

#[tokio::test]
async fn a_database_write_limit_refusal_is_retried_inside_the_request() {
    // The database takes 30 writes a second (production: 10,000); 20 one-line orders on 20
    // items are 60 writes at once. RESOURCE_EXHAUSTED refuses a commit before applying it,
    // so the guard retries it with back-off on fresh reads: every order is answered 200.
    let proxy = Proxy::start(
        Limits {
            doc_writes_per_sec: 0.0,
            database_writes_per_sec: 30.0,
            database_burst: 30.0,
            ..Limits::default()
        },
        emulator_host().to_string(),
    )
    .await
    .expect("limits proxy");
    let project = project();
    let app = spawn_app_at(
        project.clone(),
        |c| {
            c.core.doc_budget = None;
            c.shop.stock_shards = 0;
        },
        Some(format!("http://{}", proxy.addr())),
    )
    .await;
    let items: Vec<String> = (0..20).map(|i| format!("db-{i}")).collect();
    for id in &items {
        app.seed(id, 10).await;
    }
    let answers = storm(
        &app,
        20,
        |i| json!({"order_id": format!("d-{i}"), "item_id": format!("db-{i}"), "quantity": 1}),
    )
    .await;
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "order d-{i}: {body}");
    }
    let stats = proxy.stats();
    assert!(
        stats.totals.commits_refused_database > 0,
        "the proxy never refused: the test proved nothing ({:?})",
        stats.totals
    );
    for id in &items {
        assert_eq!(app.stock(id).await, Some(9), "{id}");
    }
    let initial = items.iter().map(|id| (id.clone(), 10)).collect();
    let report = verify(&project, &initial).await;
    assert!(report.ok(), "{report}");
}
