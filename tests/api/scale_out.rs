//! Scale-out (issue 12): optimistic commits and sharded stock, in-process. Each new path of
//! the guard has a test here that fails if it breaks: a conflict retried on fresh reads, a
//! status document that appeared meanwhile (replayed), an item spread over shards only once
//! another writer contends it, the last units gathered across shards, and a hot item sold
//! through several instances under a redelivery storm.

use crate::helpers::*;
use firestore::{FirestoreDb, FirestoreDbOptions};
use firestore_once_shop::invariants::{self, StockMap};
use firestore_once_shop::stock::Placement;
use firestore_once_shop::ShopConfig;
use futures::StreamExt;
use serde_json::{json, Value};

/// The invariant checker over `project` on the shared emulator.
/// The invariant checker over `project`, from the emulator itself (not through any proxy).
pub(crate) async fn verify(project: &str, initial: &StockMap) -> invariants::Report {
    emulator_host();
    let db = FirestoreDb::with_options(FirestoreDbOptions::new(project.to_string()))
        .await
        .unwrap();
    invariants::verify(&db, &ShopConfig::default(), initial)
        .await
        .unwrap()
}

/// Overwrite `items/{id}.stock` behind the service's back (a second writer).
async fn write_stock(http: &reqwest::Client, rest: &str, id: &str, stock: i64) {
    let r = http
        .patch(format!("{rest}/items/{id}"))
        .query(&[("updateMask.fieldPaths", "stock")])
        .json(&json!({"fields": {"stock": {"integerValue": stock.to_string()}}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// Order `q` of the hot item through `app`: the status code and the body.
async fn order(app: &TestApp, id: &str, q: i64) -> (u16, Value) {
    let r = app
        .order(&json!({"order_id": id, "item_id": "hot", "quantity": q}))
        .await;
    let s = r.status().as_u16();
    (s, r.json::<Value>().await.unwrap())
}

/// Units in the main document and in each shard of an item.
async fn layout(app: &TestApp, id: &str) -> (i64, Vec<i64>) {
    let main = app.doc("items", id).await.unwrap()["fields"]["stock"]["integerValue"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let shards = app
        .list(&format!("items/{id}/shards"))
        .await
        .iter()
        .map(|d| {
            d["fields"]["stock"]["integerValue"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    (main, shards)
}

#[tokio::test]
async fn a_conflict_is_retried_on_fresh_reads() {
    // No shards: the order writes the main document, which a second writer changes between
    // the service's read and its commit.
    let app = spawn_app_with(project(), |c| c.shop.stock_shards = 0).await;
    app.seed("apple", 10).await;
    let (http, rest) = (app.http.clone(), app.rest.clone());
    app.guard.before_next_commit(Box::new(move || {
        Box::pin(async move { write_stock(&http, &rest, "apple", 5).await })
    }));
    let r = app
        .order(&json!({"order_id": "c1", "item_id": "apple", "quantity": 1}))
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Decided again on the fresh read (5), not on the stale one (10): no lost update.
    assert_eq!(app.stock("apple").await, Some(4));
}

#[tokio::test]
async fn a_rejection_is_never_based_on_a_stale_read() {
    let app = spawn_app_with(project(), |c| c.shop.stock_shards = 0).await;
    app.seed("apple", 1).await;
    let (http, rest) = (app.http.clone(), app.rest.clone());
    // The service reads 1, decides "insufficient" for 3; a restock lands before the commit.
    app.guard.before_next_commit(Box::new(move || {
        Box::pin(async move { write_stock(&http, &rest, "apple", 50).await })
    }));
    let r = app
        .order(&json!({"order_id": "r1", "item_id": "apple", "quantity": 3}))
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(app.stock("apple").await, Some(47));
}

#[tokio::test]
async fn a_status_document_that_appeared_meanwhile_is_replayed() {
    let project = project();
    let a = spawn_app_with(project.clone(), |_| {}).await;
    let b = spawn_app_with(project.clone(), |c| c.shop.placement = Placement::new(1)).await;
    a.seed("apple", 10).await;
    let order = json!({"order_id": "dup", "item_id": "apple", "quantity": 2});
    // Between a's fold and its commit, the same order is processed through b.
    let (bh, burl, body) = (b.http.clone(), b.url("/orders"), order.clone());
    a.guard.before_next_commit(Box::new(move || {
        Box::pin(async move {
            let r = bh.post(burl).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
        })
    }));
    let r = a.order(&order).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(a.stock("apple").await, Some(8));
    let report = verify(&project, &[("apple".to_string(), 10)].into()).await;
    assert!(report.ok(), "{report}");
}

#[tokio::test]
async fn an_item_moves_to_shards_only_once_another_writer_contends_it() {
    // On the emulator's terms (no write budget): with one, a commit held back by the budget
    // moves the item too (`budget::a_single_instance_spreads_a_hot_item_by_demand`).
    let app = spawn_app_with(project(), |c| {
        c.core.doc_budget = None;
        c.shop.stock_shards = 4;
        c.shop.placement = Placement::new(2);
    })
    .await;
    app.seed("hot", 100).await;
    app.seed("cold", 100).await;
    // Alone, an instance sells from the main document: no shard is ever written.
    for i in 0..10 {
        assert_eq!(order(&app, &format!("a{i}"), 1).await.0, 200);
    }
    assert_eq!(layout(&app, "hot").await, (90, vec![]));
    // Another writer changes the main document between this instance's read and commit:
    // the commit is refused and the item counts as contended, so the retry (on fresh reads)
    // already sells from this instance's shard (2): a refill of ceil(80 / 4) = 20 units.
    let (http, rest) = (app.http.clone(), app.rest.clone());
    app.guard.before_next_commit(Box::new(move || {
        Box::pin(async move { write_stock(&http, &rest, "hot", 80).await })
    }));
    assert_eq!(order(&app, "b0", 1).await.0, 200);
    assert_eq!(layout(&app, "hot").await, (60, vec![19]));
    // Later orders take from the shard alone.
    for i in 1..4 {
        assert_eq!(order(&app, &format!("b{i}"), 1).await.0, 200);
    }
    assert_eq!(layout(&app, "hot").await, (60, vec![16]));
    let shard = app.doc("items/hot/shards", "2").await;
    assert!(shard.is_some(), "the refill went to shard 2");
    // Another item, never contended, still has no shard.
    let r = app
        .order(&json!({"order_id": "c0", "item_id": "cold", "quantity": 1}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(layout(&app, "cold").await, (99, vec![]));
}

#[tokio::test]
async fn an_order_committed_from_known_versions_skips_the_read_and_a_stale_one_is_read_again() {
    // One instance alone: after its first order it knows the main document's version and
    // commits without reading; a change by someone else makes that commit fail its
    // precondition, and the order is read and decided again on the fresh stock.
    let app = spawn_app_with(project(), |c| c.shop.stock_shards = 0).await;
    app.seed("hot", 10).await;
    for i in 0..3 {
        assert_eq!(order(&app, &format!("k{i}"), 1).await.0, 200);
    }
    write_stock(&app.http, &app.rest, "hot", 5).await;
    assert_eq!(order(&app, "k3", 1).await.0, 200);
    // 4 (fresh 5 − 1), not 6 (what the stale record held, 7, − 1).
    assert_eq!(app.stock("hot").await, Some(4));
    // k1 and k2 committed without a read; k3's first commit was refused, then read.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("once_commits_without_read_total{result=\"committed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("once_commits_without_read_total{result=\"refused\"} 1"),
        "{metrics}"
    );
    // A duplicate of an order decided earlier: the record's commit is refused by the status
    // document, and the read replays it.
    let (s, body) = order(&app, "k0", 1).await;
    assert_eq!((s, &body["outcome"]), (200, &json!("processed")));
    assert_eq!(app.stock("hot").await, Some(4));
}

#[tokio::test]
async fn a_refused_instance_marks_the_item_so_a_writer_from_known_versions_yields() {
    let project = project();
    let shards = |own: u32, spread: bool| {
        move |c: &mut crate::helpers::Settings| {
            // Marks are the emulator's remedy (no write budget): under a budget every writer
            // leaves gaps another commits in, and the guard never marks.
            c.core.doc_budget = None;
            c.shop.stock_shards = 4;
            let p = Placement::new(own);
            c.shop.placement = if spread { p.spreading_every_item() } else { p };
        }
    };
    // a sells the item from its main document, committing from known versions (it never
    // reads, so it never meets a conflict by itself); b already sells it from shard 1.
    let a = spawn_app_with(project.clone(), shards(0, false)).await;
    let b = spawn_app_with(project.clone(), shards(1, true)).await;
    a.seed("hot", 100).await;
    for i in 0..3 {
        assert_eq!(order(&a, &format!("a{i}"), 1).await.0, 200);
    }
    assert_eq!(layout(&a, "hot").await, (97, vec![]));
    // b's commits are refused twice (its shard changes under it each time, main does not):
    // b marks the item's main document, then commits.
    let (http, rest, guard) = (b.http.clone(), b.rest.clone(), b.guard.clone());
    b.guard.before_next_commit(Box::new(move || {
        Box::pin(async move {
            write_stock(&http, &rest, "hot/shards/1", 0).await;
            guard.before_next_commit(Box::new(move || {
                Box::pin(async move { write_stock(&http, &rest, "hot/shards/1", 1).await })
            }));
        })
    }));
    assert_eq!(order(&b, "b0", 5).await.0, 200);
    let main = a.doc("items", "hot").await.unwrap();
    assert!(
        main["fields"]["stock_contended_at_ms"].is_object(),
        "b marked the main document: {main}"
    );
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("once_contention_marks_total 1"),
        "{metrics}"
    );
    // a's next commit from its record is refused by the mark: a counts the item contended
    // and sells it from its own shard (0) from now on.
    assert_eq!(order(&a, "a3", 1).await.0, 200);
    let (main, shards) = layout(&a, "hot").await;
    assert_eq!(shards.len(), 2, "a now has a shard too: {main} {shards:?}");
    // 100 seeded, 1 written into shard 1 by the test, 3 + 5 + 1 sold.
    assert_eq!(main + shards.iter().sum::<i64>(), 92);
}

#[tokio::test]
async fn the_last_units_are_gathered_across_shards() {
    let project = project();
    let shards = |own| {
        move |c: &mut crate::helpers::Settings| {
            c.shop.stock_shards = 4;
            // Both already met the item contended: the shard rules from the first order.
            c.shop.placement = Placement::new(own).spreading_every_item();
        }
    };
    let a = spawn_app_with(project.clone(), shards(0)).await;
    let b = spawn_app_with(project.clone(), shards(1)).await;
    a.seed("hot", 10).await;
    // Each instance refills its own shard from main: a moves 3 (ceil(10/4)), b moves 2.
    assert_eq!(order(&a, "o1", 1).await.0, 200);
    assert_eq!(order(&b, "o2", 1).await.0, 200);
    assert_eq!(layout(&a, "hot").await, (5, vec![2, 1]));
    // 8 left in all; a's shard and main hold 7: the order gathers b's shard too.
    assert_eq!(order(&a, "o3", 8).await.0, 200);
    assert_eq!(layout(&a, "hot").await, (0, vec![0, 0]));
    // Nothing left anywhere: rejected with the true total.
    let (s, body) = order(&b, "o4", 1).await;
    assert_eq!((s, &body["available"]), (409, &json!(0)));
    // A restock goes to main and answers the item's total.
    let r = a
        .http
        .post(a.url("/tasks/restock"))
        .json(&json!({"restock_id": "rs", "item_id": "hot", "quantity": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["stock"], 4);
    // Cancelling o3 gives its 8 back to main.
    let r = b
        .http
        .post(b.url("/tasks/cancel_order"))
        .json(&json!({"order_id": "o3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(a.stock("hot").await, Some(12));
    let report = verify(&project, &[("hot".to_string(), 10)].into()).await;
    assert!(report.ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_item_sold_through_three_instances_under_a_storm_sells_exactly_its_stock() {
    let (stock, orders, copies) = (30, 80, 3);
    let project = project();
    let mut apps = Vec::new();
    for own in 0..3 {
        apps.push(
            spawn_app_with(project.clone(), move |c| {
                // Every item starts on its main document; the instances spread it
                // themselves once their commits collide there.
                c.shop.stock_shards = 4;
                c.shop.placement = Placement::new(own);
            })
            .await,
        );
    }
    apps[0].seed("hot", stock).await;
    let mut plan: Vec<usize> = (0..orders)
        .flat_map(|i| std::iter::repeat_n(i, copies))
        .collect();
    fastrand::Rng::with_seed(12).shuffle(&mut plan);
    let http = reqwest::Client::new();
    let urls: Vec<String> = apps.iter().map(|a| a.url("/orders")).collect();
    let send = |k: usize, i: usize| {
        let (http, url) = (&http, &urls[k % urls.len()]);
        async move {
            let body = json!({"order_id": format!("s{i}"), "item_id": "hot", "quantity": 1});
            let r = http.post(url).json(&body).send().await.unwrap();
            (i, r.status().as_u16())
        }
    };
    let mut answers: Vec<(usize, u16)> = futures::stream::iter(plan.into_iter().enumerate())
        .map(|(k, i)| send(k, i))
        .buffer_unordered(24)
        .collect()
        .await;
    // Redeliver anything that got a 5xx, as a platform would.
    for round in 0..20 {
        let todo: Vec<usize> = answers.iter().filter(|a| a.1 >= 500).map(|a| a.0).collect();
        if todo.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        answers.retain(|a| a.1 < 500);
        for i in todo {
            answers.push(send(i + round, i).await);
        }
    }
    let mut by_order = std::collections::BTreeMap::new();
    for (i, s) in &answers {
        let prev = by_order.insert(*i, *s);
        assert!(
            prev.is_none() || prev == Some(*s),
            "order {i}: {prev:?} then {s}"
        );
    }
    let processed = by_order.values().filter(|s| **s == 200).count();
    let rejected = by_order.values().filter(|s| **s == 409).count();
    assert_eq!(
        (processed, rejected),
        (stock as usize, orders - stock as usize)
    );
    let (main, shards) = layout(&apps[0], "hot").await;
    assert_eq!(main + shards.iter().sum::<i64>(), 0);
    assert!(
        !shards.is_empty(),
        "colliding instances spread the item over shards"
    );
    assert!(main >= 0 && shards.iter().all(|s| *s >= 0));
    let report = verify(&project, &[("hot".to_string(), stock)].into()).await;
    assert!(report.ok(), "{report}");
    assert_eq!(report.processed, stock as usize);
}
