//! Reliability scenarios (issue 8): exactly-once under duplicate storms, database stalls, a
//! killed instance and overload, each ending with the invariant checker reading Firestore.
//!
//! Every scenario has a short size, run by `cargo test` and CI, and a long size, the one the
//! docs/reliability.md publishes: `RELIABILITY=long cargo test --test api reliability -- --nocapture`.
//! Each prints one `reliability:` line with its figures.
//!
//! Scenarios 2 to 4 run the real binary as a child process, so a SIGKILL is a real crash and
//! the memory figure (`VmHWM`, the peak resident set) is the service's alone.

mod hot_item;
mod instance;
mod kills;
mod overload;
mod shard_sharing;
mod stalls;
mod storms;
mod unanswered;

use crate::helpers::*;
use firestore::{FirestoreDb, FirestoreDbOptions};
use firestore_once_shop::invariants::{self, Report, StockMap};
use firestore_once_shop::ShopConfig;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// `RELIABILITY=long` selects the published sizes.
fn long() -> bool {
    std::env::var("RELIABILITY").as_deref() == Ok("long")
}

fn size_name() -> &'static str {
    if long() {
        "long"
    } else {
        "short"
    }
}

/// The figures of one run, printed as one line for the table in docs/reliability.md.
#[derive(Default)]
struct Figures {
    orders: usize,
    deliveries: usize,
    duplicates: usize,
    replayed: usize,
    faults: String,
    unavailable: usize,
    redelivered: usize,
    fivexx_after: usize,
    violations: usize,
    /// Peak resident memory of the service process; `None` when it runs inside the test.
    peak_rss_mib: Option<f64>,
    seconds: f64,
}

impl Figures {
    fn print(&self, scenario: &str) {
        println!(
            "reliability: scenario={scenario} size={} orders={} deliveries={} duplicates={} \
             replayed={} faults=\"{}\" answered_503={} redelivered={} 5xx_after_redelivery={} \
             invariant_violations={} peak_rss_mib={} seconds={:.1}",
            size_name(),
            self.orders,
            self.deliveries,
            self.duplicates,
            self.replayed,
            self.faults,
            self.unavailable,
            self.redelivered,
            self.fivexx_after,
            self.violations,
            self.peak_rss_mib
                .map_or("n/a".to_string(), |m| format!("{m:.1}")),
            self.seconds
        );
    }
}

/// Orders and the stock they draw on.
struct Workload {
    initial: StockMap,
    orders: Vec<Value>,
}

/// `n` orders over `items` items, deterministic for `seed`. Every other item is scarce (it
/// runs out about halfway through its orders, so some are rejected); a fifth of the orders
/// have two lines, which are all or nothing.
fn workload(prefix: &str, n: usize, items: usize, seed: u64) -> Workload {
    let mut rng = fastrand::Rng::with_seed(seed);
    let item = |i: usize| format!("i-{i:02}");
    let per_item = (n / items).max(1) as i64;
    let initial = (0..items)
        .map(|i| {
            let stock = if i % 2 == 0 { per_item } else { 1_000_000 };
            (item(i), stock)
        })
        .collect();
    let orders = (0..n)
        .map(|k| {
            let id = format!("{prefix}-{k}");
            let a = rng.usize(0..items);
            if items > 1 && rng.u8(0..5) == 0 {
                let b = (a + 1 + rng.usize(0..items - 1)) % items;
                json!({"order_id": id, "items": [
                    {"item_id": item(a), "quantity": rng.i64(1..=3)},
                    {"item_id": item(b), "quantity": rng.i64(1..=3)}]})
            } else {
                json!({"order_id": id, "item_id": item(a), "quantity": rng.i64(1..=3)})
            }
        })
        .collect();
    Workload { initial, orders }
}

fn rest_root(host: &str, project: &str) -> String {
    format!("http://{host}/v1/projects/{project}/databases/(default)/documents")
}

/// Create the items through the emulator's REST API.
async fn seed(http: &reqwest::Client, rest: &str, stock: &StockMap) {
    futures::stream::iter(stock.iter())
        .for_each_concurrent(16, |(id, n)| async move {
            let r = http
                .post(format!("{rest}/items"))
                .query(&[("documentId", id)])
                .json(&json!({"fields": {"stock": {"integerValue": n.to_string()}}}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "seed {id}");
        })
        .await;
}

/// IDs of every document of a collection (REST, paged).
async fn ids(http: &reqwest::Client, rest: &str, collection: &str) -> BTreeSet<String> {
    list_documents(http, rest, collection, Some("__name__"))
        .await
        .iter()
        .filter_map(|d| d["name"].as_str())
        .map(|name| name.rsplit('/').next().unwrap_or_default().to_string())
        .collect()
}

/// Run the invariant checker on `project`, on the shared emulator or on `host`.
async fn check(project: &str, host: Option<&str>, initial: &StockMap) -> Report {
    emulator_host();
    let mut opts = FirestoreDbOptions::new(project.to_string());
    opts.firebase_api_url = host.map(|h| format!("http://{h}"));
    let db = FirestoreDb::with_options(opts).await.unwrap();
    let report = invariants::verify(&db, &ShopConfig::default(), initial)
        .await
        .unwrap();
    print!("invariants: {report}");
    report
}

/// One answer as the client saw it.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    body: bytes::Bytes,
    replayed: bool,
    retry_after: bool,
    latency: Duration,
}

impl Answer {
    fn failed(&self) -> bool {
        self.status >= 500
    }
}

async fn post(http: &reqwest::Client, url: &str, body: reqwest::Body) -> Answer {
    let started = Instant::now();
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match r {
        Ok(r) => {
            let status = r.status().as_u16();
            let replayed = r.headers().contains_key("idempotent-replayed");
            let retry_after = r.headers().contains_key("retry-after");
            let body = r.bytes().await.unwrap_or_default();
            Answer {
                status,
                body,
                replayed,
                retry_after,
                latency: started.elapsed(),
            }
        }
        // No answer at all: counted as a failure to be redelivered, like a platform would.
        Err(e) => Answer {
            status: 599,
            body: bytes::Bytes::from(e.to_string()),
            replayed: false,
            retry_after: false,
            latency: started.elapsed(),
        },
    }
}

async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Answer {
    post(http, url, reqwest::Body::from(body.to_string())).await
}

/// One delivery of an order and the answers it got: the first, then one per redelivery.
struct Delivery {
    order: usize,
    answers: Vec<Answer>,
}

/// Every delivery of a run.
type Ledger = Vec<Delivery>;

fn ledger(answers: impl IntoIterator<Item = (usize, Answer)>) -> Ledger {
    answers
        .into_iter()
        .map(|(order, a)| Delivery {
            order,
            answers: vec![a],
        })
        .collect()
}

fn all_answers(ledger: &Ledger) -> impl Iterator<Item = &Answer> {
    ledger.iter().flat_map(|d| &d.answers)
}

/// Redeliver every delivery whose last answer was a 5xx (or none), as its sender would,
/// honouring `Retry-After` (1 s), until none is left or `rounds` are spent. Returns how many
/// redeliveries were sent.
async fn redeliver(
    http: &reqwest::Client,
    urls: &[String],
    orders: &[Value],
    ledger: &mut Ledger,
    rounds: usize,
) -> usize {
    let mut sent = 0;
    for round in 0..rounds {
        let todo: Vec<usize> = (0..ledger.len())
            .filter(|&d| ledger[d].answers.last().is_some_and(Answer::failed))
            .collect();
        if todo.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        sent += todo.len();
        let answers: Vec<(usize, Answer)> = futures::stream::iter(todo)
            .map(|d| {
                let url = &urls[(d + round) % urls.len()];
                let order = &orders[ledger[d].order];
                async move { (d, post_json(http, url, order).await) }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (d, a) in answers {
            ledger[d].answers.push(a);
        }
    }
    sent
}

/// What the answers say, checked against each other: every answer that is not a 5xx of one
/// order is the same bytes, and at most one was fresh (not a replay).
/// Returns (orders answered 200, orders answered 409, deliveries still on a 5xx).
fn settle(ledger: &Ledger, orders: usize) -> (usize, usize, usize) {
    let left = ledger
        .iter()
        .filter(|d| d.answers.last().is_none_or(Answer::failed))
        .count();
    let mut by_order: Vec<Vec<&Answer>> = vec![Vec::new(); orders];
    for d in ledger {
        by_order[d.order].extend(d.answers.iter().filter(|a| !a.failed()));
    }
    let (mut ok, mut rejected) = (0, 0);
    for (i, good) in by_order.iter().enumerate() {
        let Some(first) = good.first() else {
            continue;
        };
        for a in good {
            assert_eq!(
                (a.status, &a.body),
                (first.status, &first.body),
                "order {i}: answers differ"
            );
        }
        assert!(
            good.iter().filter(|a| !a.replayed).count() <= 1,
            "order {i} was processed fresh more than once"
        );
        match first.status {
            200 => ok += 1,
            409 => rejected += 1,
            s => panic!("order {i}: unexpected status {s}: {:?}", first.body),
        }
    }
    (ok, rejected, left)
}

#[test]
fn workloads_are_deterministic_and_can_run_out() {
    let a = workload("w", 100, 10, 5);
    let b = workload("w", 100, 10, 5);
    assert_eq!(a.orders, b.orders);
    let scarce: i64 = a.initial.values().filter(|s| **s < 1000).sum();
    assert_eq!(scarce, 50);
}
