//! Scenario 1: duplicate storms, every order delivered several times to two instances.

use super::{
    all_answers, check, ledger, long, post_json, redeliver, seed, settle, workload, Answer, Figures,
};
use crate::helpers::*;
use futures::StreamExt;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Scenario 1: two instances on different ports against one emulator; every order delivered
/// several times, shuffled, concurrently to both; some items run out of stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_storm_applies_each_order_once() {
    let (n, items, copies, concurrency) = if long() {
        (500, 20, 5, 64)
    } else {
        (120, 10, 3, 32)
    };
    let started = Instant::now();
    let project = project();
    let a = spawn_app_with(project.clone(), |_| {}).await;
    let b = spawn_app_with(project.clone(), |_| {}).await;
    let w = workload("storm", n, items, 8);
    seed(&a.http, &a.rest, &w.initial).await;
    let urls = [a.url("/orders"), b.url("/orders")];

    let mut rng = fastrand::Rng::with_seed(1);
    let mut plan: Vec<usize> = (0..n)
        .flat_map(|i| std::iter::repeat_n(i, copies))
        .collect();
    rng.shuffle(&mut plan);
    let plan: Vec<(usize, usize)> = plan.into_iter().map(|i| (i, rng.usize(0..2))).collect();

    // Stock is sampled while the storm runs: it must never be seen below zero.
    let lowest = Arc::new(Mutex::new(i64::MAX));
    let sampler = {
        let (lowest, http, rest) = (lowest.clone(), a.http.clone(), a.rest.clone());
        tokio::spawn(async move {
            loop {
                let v: Value = http
                    .get(format!("{rest}/items"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                for d in v["documents"].as_array().into_iter().flatten() {
                    if let Some(s) = d["fields"]["stock"]["integerValue"].as_str() {
                        let s: i64 = s.parse().unwrap();
                        let mut l = lowest.lock().unwrap();
                        *l = (*l).min(s);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let http = reqwest::Client::new();
    let answers: Vec<(usize, Answer)> = futures::stream::iter(plan)
        .map(|(i, to)| {
            let (http, url, body) = (&http, &urls[to], &w.orders[i]);
            async move { (i, post_json(http, url, body).await) }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut ledger = ledger(answers);
    let unavailable = all_answers(&ledger).filter(|a| a.failed()).count();
    let no_answer = all_answers(&ledger).filter(|a| a.status == 599).count();
    let redelivered = redeliver(&http, &urls, &w.orders, &mut ledger, 30).await;
    sampler.abort();
    let (ok, rejected, left) = settle(&ledger, n);
    let report = check(&project, None, &w.initial).await;

    let f = Figures {
        orders: n,
        deliveries: n * copies + redelivered,
        duplicates: n * (copies - 1),
        replayed: all_answers(&ledger).filter(|a| a.replayed).count(),
        faults: "none (duplicates and cross-instance contention)".into(),
        unavailable,
        redelivered,
        fivexx_after: left,
        violations: report.violations.len(),
        peak_rss_mib: None,
        seconds: started.elapsed().as_secs_f64(),
    };
    f.print("duplicate-storm");
    assert_eq!(no_answer, 0, "every delivery got an answer");
    assert_eq!(left, 0, "no 5xx left after redelivery");
    assert!(report.ok(), "{report}");
    assert_eq!((report.orders, report.rejected), (ok, rejected));
    assert!(rejected > 0, "the scarce items ran out");
    assert!(*lowest.lock().unwrap() >= 0);
}
