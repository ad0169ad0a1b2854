//! Two instances selling one hot item: the clients, what the survivor answered, the
//! redelivery that settles every order, and the stock wherever it sits.

use super::{all_answers, check, ledger, post_json, redeliver, settle, Answer};
use firestore_once_shop::invariants::{Report, StockMap};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One order sent during a scale-out fault scenario.
pub(super) struct Sent {
    /// The instance it went to.
    pub(super) instance: usize,
    /// When it was sent.
    pub(super) at: Instant,
    /// What came back.
    pub(super) answer: Answer,
}

/// Clients per instance keep ordering one unit of `hot` with fresh order IDs until `stop`.
pub(super) async fn sell_hot(
    http: &reqwest::Client,
    prefix: &str,
    urls: &[String],
    per_instance: usize,
    stop: Instant,
) -> Vec<(Value, Sent)> {
    let next = AtomicUsize::new(0);
    let clients = (0..urls.len() * per_instance).map(|c| {
        let (next, instance) = (&next, c % urls.len());
        let url = &urls[instance];
        async move {
            let mut out = Vec::new();
            while Instant::now() < stop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let body =
                    json!({"order_id": format!("{prefix}-{i}"), "item_id": "hot", "quantity": 1});
                let at = Instant::now();
                let answer = post_json(http, url, &body).await;
                // No answer at all: the instance is gone; its platform stops routing to it.
                let gone = answer.status == 599;
                out.push((
                    body,
                    Sent {
                        instance,
                        at,
                        answer,
                    },
                ));
                if gone {
                    break;
                }
            }
            out
        }
    });
    futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The survivor's orders sent from `from` on: all 200, none slower than 2 s. Returns how many
/// and the slowest.
pub(super) fn survivor_kept_selling(
    sent: &[(Value, Sent)],
    survivor: usize,
    from: Instant,
) -> (usize, Duration) {
    let after: Vec<&Sent> = sent
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.instance == survivor && s.at >= from)
        .collect();
    let slowest = after
        .iter()
        .map(|s| s.answer.latency)
        .max()
        .unwrap_or_default();
    let mut lat: Vec<Duration> = after.iter().map(|s| s.answer.latency).collect();
    lat.sort();
    println!(
        "survivor: {} orders from the fault on, median {:?}, slowest {slowest:?}",
        after.len(),
        lat.get(lat.len() / 2).copied().unwrap_or_default()
    );
    for s in &after {
        assert_eq!(
            s.answer.status, 200,
            "the survivor answered {} after the fault: {:?}",
            s.answer.status, s.answer.body
        );
    }
    assert!(
        slowest <= Duration::from_secs(2),
        "a request to the survivor waited {slowest:?}"
    );
    assert!(
        after.len() > 20,
        "the survivor sold only {} orders",
        after.len()
    );
    (after.len(), slowest)
}

/// Redeliver every order whose answer was a 5xx (or none) to `url` until each settles, then
/// check the invariants.
pub(super) async fn settle_and_check(
    http: &reqwest::Client,
    url: &str,
    project: &str,
    sent: Vec<(Value, Sent)>,
    initial: &StockMap,
) -> (usize, Report) {
    let orders: Vec<Value> = sent.iter().map(|(b, _)| b.clone()).collect();
    let mut ledger = ledger(
        sent.into_iter()
            .enumerate()
            .map(|(i, (_, s))| (i, s.answer)),
    );
    let unavailable = all_answers(&ledger).filter(|a| a.failed()).count();
    redeliver(http, &[url.to_string()], &orders, &mut ledger, 20).await;
    let (ok, rejected, left) = settle(&ledger, orders.len());
    assert_eq!(left, 0, "no 5xx left after redelivery");
    let report = check(project, None, initial).await;
    assert!(report.ok(), "{report}");
    assert_eq!((report.orders, report.rejected), (ok, rejected));
    (unavailable, report)
}

/// Units the item holds in all: its main document plus every stock shard, none below zero.
pub(super) async fn total_stock(http: &reqwest::Client, rest: &str, id: &str) -> i64 {
    let main: Value = http
        .get(format!("{rest}/items/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let main = main["fields"]["stock"]["integerValue"]
        .as_str()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    assert!(main >= 0, "the main document below zero: {main}");
    let shards = shards(http, rest, id).await;
    for (k, units) in &shards {
        assert!(*units >= 0, "shard {k} below zero: {units}");
    }
    main + shards.values().sum::<i64>()
}

/// Units in each stock shard of `id`, by shard number.
pub(super) async fn shards(
    http: &reqwest::Client,
    rest: &str,
    id: &str,
) -> std::collections::BTreeMap<String, i64> {
    let v: Value = http
        .get(format!("{rest}/items/{id}/shards"))
        .query(&[("pageSize", "1000")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["documents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let name = d["name"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string();
            let units = d["fields"]["stock"]["integerValue"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap();
            (name, units)
        })
        .collect()
}
