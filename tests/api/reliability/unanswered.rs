//! Calls Firestore never answers: one instance deaf to it for 3 s (scenario 6), and one
//! method's answers lost through a gRPC-aware proxy (scenarios 6a, 6b).

use super::hot_item::{sell_hot, settle_and_check, survivor_kept_selling, total_stock, Sent};
use super::instance::{Instance, LogCount};
use super::{check, ledger, post_json, redeliver, rest_root, seed, settle, Figures};
use crate::helpers::*;
use firestore_once_shop::invariants::StockMap;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Scenario 6 (issue 12): one of two instances selling one hot item loses every answer from
/// Firestore for 3 s: reads whose answer never comes (under read-write transactions, the
/// read that began one) and commits applied without their answer. The survivor keeps selling;
/// the deaf instance answers 503 and recovers; the redelivery settles every unknown outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_strand_nothing_the_other_instance_keeps_selling() {
    let started = Instant::now();
    let fs = emulator_host();
    let proxy = FaultProxy::start_holding(fs.to_string()).await;
    let via = proxy.url.trim_start_matches("http://").to_string();
    let project = project();
    let log = Arc::new(LogCount::default());
    let deaf = Instance::start(
        free_port(),
        &project,
        &via,
        &[
            ("ONCE_INSTANCE_ID", "0"),
            ("ONCE_FIRESTORE_TIMEOUT_MS", "500"),
            ("ONCE_REQUEST_TIMEOUT_MS", "2000"),
        ],
        log.clone(),
    )
    .await;
    let other = Instance::start(
        free_port(),
        &project,
        fs,
        &[("ONCE_INSTANCE_ID", "1")],
        log.clone(),
    )
    .await;
    let http = reqwest::Client::new();
    let initial: StockMap = [("hot".to_string(), 1_000_000)].into();
    seed(&http, &rest_root(fs, &project), &initial).await;
    let urls = [
        format!("{}/orders", deaf.url),
        format!("{}/orders", other.url),
    ];
    let stop = Instant::now() + Duration::from_secs(9);
    let fault = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at = Instant::now();
        proxy.set(Link::DropAnswers);
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.set(Link::Up);
        (at, Instant::now())
    };
    let (sent, (dropped_at, resumed_at)) =
        tokio::join!(sell_hot(&http, "h", &urls, 4, stop), fault);
    let (n, slowest) = survivor_kept_selling(&sent, 1, dropped_at);
    let during = sent
        .iter()
        .filter(|(_, s)| s.instance == 0 && s.at >= dropped_at && s.at < resumed_at)
        .count();
    let deaf_503 = sent
        .iter()
        .filter(|(_, s)| s.instance == 0 && s.answer.status == 503)
        .count();
    let recovered = sent
        .iter()
        .filter(|(_, s)| {
            s.instance == 0 && s.at >= resumed_at + Duration::from_secs(1) && s.answer.status == 200
        })
        .count();
    assert!(
        deaf_503 > 0,
        "the deaf instance answered 503 while its answers were lost"
    );
    assert!(
        recovered > 0,
        "the deaf instance sold again after the link came back"
    );
    let total = sent.len();
    let (unavailable, report) = settle_and_check(&http, &urls[1], &project, sent, &initial).await;
    Figures {
        orders: total,
        deliveries: total,
        faults: format!(
            "every Firestore answer to one of two instances dropped for 3 s ({during} of its \
             orders sent then, {deaf_503} answered 503); the other sold {n} orders meanwhile \
             and after, slowest {} ms; the deaf one sold {recovered} again from 1 s after",
            slowest.as_millis()
        ),
        unavailable,
        violations: report.violations.len(),
        seconds: started.elapsed().as_secs_f64(),
        ..Figures::default()
    }
    .print("scale-out-lost-answers");
}

/// Scenarios 6a and 6b (issue 12): two instances sell one hot item of stock `S`; a gRPC-aware
/// proxy in front of instance 0 loses the answers of ONE Firestore method for 3 s (the call
/// reaches the emulator; only its answer is lost: never answered for 2 s, then the stream
/// reset for 1 s) while every other call goes through. Then:
/// - the other instance answered every order from the fault on with 200, none slower than 2 s;
/// - nothing (either instance) waits more than 2 s after the fault ends, and instance 0 sells
///   again from 1 s after it;
/// - every 5xx is redelivered to instance 0 until settled: one fresh outcome per order, the
///   same bytes on every answer; where a lost answer was an applied commit, the redelivery
///   replays it (`Idempotent-Replayed`), at least once per applied-but-lost commit;
/// - the rest of the stock, wherever it sits (main document, either instance's shard), is
///   then sold by two concurrent orders, one per instance, for exactly what is left: both
///   processed; one more unit is rejected by each. So exactly `S` units were processed,
///   nothing is below zero, and the invariant checker is clean.
///
/// Returns (lost answers, of which applied, replays on redelivery).
async fn one_method_loses_its_answers(method: &str) -> (usize, usize, usize) {
    let started = Instant::now();
    let fs = emulator_host();
    let proxy = crate::grpc_fault::GrpcFaultProxy::start(fs.to_string()).await;
    let project = project();
    let log = Arc::new(LogCount::default());
    let timeouts = [
        ("ONCE_FIRESTORE_TIMEOUT_MS", "500"),
        ("ONCE_REQUEST_TIMEOUT_MS", "2000"),
    ];
    // With commits from known versions, the deaf instance would read only its first order
    // and after conflicts; off, every batch reads, so every batch meets a lost read answer.
    let known = if method == "BatchGetDocuments" {
        "off"
    } else {
        "on"
    };
    let deaf = Instance::start(
        free_port(),
        &project,
        &proxy.host,
        &[
            timeouts[0],
            timeouts[1],
            ("ONCE_INSTANCE_ID", "0"),
            ("ONCE_COMMIT_FROM_KNOWN", known),
        ],
        log.clone(),
    )
    .await;
    let other = Instance::start(
        free_port(),
        &project,
        fs,
        &[timeouts[0], timeouts[1], ("ONCE_INSTANCE_ID", "1")],
        log.clone(),
    )
    .await;
    let http = reqwest::Client::new();
    let rest = rest_root(fs, &project);
    const S: i64 = 1_000_000;
    let initial: StockMap = [("hot".to_string(), S)].into();
    seed(&http, &rest, &initial).await;
    let urls = [
        format!("{}/orders", deaf.url),
        format!("{}/orders", other.url),
    ];
    let stop = Instant::now() + Duration::from_secs(8);
    let fault = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at = Instant::now();
        // Never answered for 2 s (the service's own deadline ends the call), then reset once
        // the emulator has answered for 1 s (the service sees a broken call at once).
        proxy.lose(method, crate::grpc_fault::Lose::Hold);
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.lose(method, crate::grpc_fault::Lose::Reset);
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.heal();
        (at, Instant::now())
    };
    let (sent, (lost_at, healed_at)) = tokio::join!(sell_hot(&http, "h", &urls, 4, stop), fault);
    let calls = proxy.calls(method);
    println!("{method} through the proxy: {calls:?}");
    assert!(
        calls.lost > 0,
        "no {method} answer was lost: the fault missed"
    );
    let (n, slowest) = survivor_kept_selling(&sent, 1, lost_at);
    // Nothing waits more than 2 s after the fault ends.
    for (body, s) in &sent {
        let answered = s.at + s.answer.latency;
        let bound = s.at.max(healed_at) + Duration::from_secs(2);
        assert!(
            answered <= bound,
            "instance {} answered {} {:?} after the fault ended: {body}",
            s.instance,
            s.answer.status,
            answered - healed_at,
        );
    }
    let deaf_5xx = sent
        .iter()
        .filter(|(_, s)| s.instance == 0 && s.answer.failed())
        .count();
    assert!(
        deaf_5xx > 0,
        "instance 0 never answered 503 while its {method} answers were lost"
    );
    let after: Vec<&Sent> = sent
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.instance == 0 && s.at >= healed_at + Duration::from_secs(1))
        .collect();
    assert!(
        !after.is_empty(),
        "nothing was sent to instance 0 after the fault"
    );
    for s in &after {
        assert_eq!(
            s.answer.status, 200,
            "instance 0 after the fault: {:?}",
            s.answer.body
        );
    }

    // Settle every unknown outcome by redelivering to the instance that lost the answers.
    let orders: Vec<Value> = sent.iter().map(|(b, _)| b.clone()).collect();
    let total = orders.len();
    let mut ledger = ledger(
        sent.into_iter()
            .enumerate()
            .map(|(i, (_, s))| (i, s.answer)),
    );
    let redelivered = redeliver(&http, &urls[..1], &orders, &mut ledger, 20).await;
    let (ok, rejected, left) = settle(&ledger, orders.len());
    assert_eq!(left, 0, "no 5xx left after redelivery");
    assert_eq!(rejected, 0, "nothing rejected while the item had stock");
    let replays = ledger
        .iter()
        .filter(|d| d.answers[0].failed())
        .filter(|d| d.answers.iter().skip(1).any(|a| a.replayed))
        .count();
    // (A lost read changed nothing, so only lost commits must replay.)
    assert!(
        method != "Commit" || replays >= calls.lost_ok,
        "{} commits were applied without their answer, but only {replays} redeliveries replayed",
        calls.lost_ok
    );

    // Sell what is left, wherever it sits, in two concurrent orders, one per instance.
    let left_units = total_stock(&http, &rest, "hot").await;
    assert_eq!(
        left_units,
        S - ok as i64,
        "stock moved by exactly the processed orders"
    );
    let half = left_units / 2;
    let last = |i: usize, q: i64| json!({"order_id": format!("last-{i}-{q}"), "item_id": "hot", "quantity": q});
    let (first, second) = (last(0, left_units - half), last(1, half));
    let (a, b) = tokio::join!(
        post_json(&http, &urls[0], &first),
        post_json(&http, &urls[1], &second),
    );
    assert_eq!(
        (a.status, b.status),
        (200, 200),
        "the last {left_units} units: {:?} {:?}",
        a.body,
        b.body
    );
    assert_eq!(total_stock(&http, &rest, "hot").await, 0);
    for url in &urls {
        let r = post_json(&http, url, &last(9, 1)).await;
        assert_eq!(r.status, 409, "one unit more than the stock: {:?}", r.body);
    }
    let report = check(&project, None, &initial).await;
    assert!(report.ok(), "{report}");
    assert_eq!((report.orders, report.rejected), (ok + 2, 1));
    Figures {
        orders: total + 3,
        deliveries: total + redelivered + 4,
        replayed: replays,
        redelivered,
        faults: format!(
            "{method} answers to one of two instances lost for 3 s ({} lost, {} of them \
             applied); the other sold {n} orders meanwhile and after, slowest {} ms; \
             {deaf_5xx} answered 503, {replays} redeliveries replayed",
            calls.lost,
            calls.lost_ok,
            slowest.as_millis()
        ),
        unavailable: deaf_5xx,
        violations: report.violations.len(),
        seconds: started.elapsed().as_secs_f64(),
        ..Figures::default()
    }
    .print(&format!("scale-out-lost-{method}"));
    (calls.lost, calls.lost_ok, replays)
}

/// Scenario 6a: lost read answers. Nothing was written by the reads, so nothing replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_read_answers_strand_nothing() {
    one_method_loses_its_answers("BatchGetDocuments").await;
}

/// Scenario 6b: lost commit answers. The emulator applied them; the service answered 503
/// and its redelivery replays them instead of applying them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_commit_answers_are_replayed_not_applied_twice() {
    let (_, applied, replays) = one_method_loses_its_answers("Commit").await;
    assert!(
        applied > 0,
        "no lost commit was applied: the fault proved nothing"
    );
    assert!(replays > 0);
}
