//! Killed instances: SIGKILL with Pub/Sub pushes in flight (scenario 3), and one of two
//! instances selling a hot item killed mid-flight (scenario 5).

use super::hot_item::{sell_hot, settle_and_check, survivor_kept_selling};
use super::instance::{memory_mib, Instance, LogCount};
use super::{check, ids, long, rest_root, seed, workload, Figures};
use crate::helpers::*;
use firestore_once_shop::invariants::StockMap;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A reverse proxy in front of a service instance that can be killed: the push endpoint stays
/// valid across restarts, and the proxy knows exactly how many pushes were in flight when
/// the instance died (their forwarding fails; they are answered 502 and Pub/Sub redelivers).
#[derive(Clone)]
struct FrontProxy {
    target: Arc<Mutex<String>>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
    /// Pushes whose forwarding failed (the instance died under them, or was down).
    cut: Arc<AtomicUsize>,
    /// Bumped when the instance is killed; a push remembers the epoch it started in.
    epoch: Arc<AtomicUsize>,
    /// (subscription, message ID) of the pushes in flight when the instance was killed.
    cut_in_flight: Arc<Mutex<BTreeSet<(String, String)>>>,
    http: reqwest::Client,
}

impl FrontProxy {
    async fn start(target: String) -> (Self, String) {
        let p = FrontProxy {
            target: Arc::new(Mutex::new(target)),
            in_flight: Arc::default(),
            most_in_flight: Arc::default(),
            cut: Arc::default(),
            epoch: Arc::default(),
            cut_in_flight: Arc::default(),
            http: reqwest::Client::new(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(Self::forward)
            .with_state(p.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (p, url)
    }

    async fn forward(
        axum::extract::State(p): axum::extract::State<FrontProxy>,
        req: axum::extract::Request,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let started_in = p.epoch.load(Ordering::SeqCst);
        let now = p.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        p.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let target = p.target.lock().unwrap().clone();
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 4 << 20)
            .await
            .unwrap_or_default();
        let envelope: Value = serde_json::from_slice(&body).unwrap_or_default();
        let r = p
            .http
            .post(format!("{target}{}", parts.uri.path()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let answer = match r {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap_or_default();
                (axum::http::StatusCode::from_u16(status).unwrap(), body).into_response()
            }
            Err(_) => {
                p.cut.fetch_add(1, Ordering::SeqCst);
                if started_in == 0 {
                    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                    p.cut_in_flight.lock().unwrap().insert((
                        text(&envelope["subscription"]),
                        text(&envelope["message"]["messageId"]),
                    ));
                }
                axum::http::StatusCode::BAD_GATEWAY.into_response()
            }
        };
        p.in_flight.fetch_sub(1, Ordering::SeqCst);
        answer
    }
}

/// Scenario 3: a Pub/Sub push subscription delivers to the real binary, which is SIGKILLed
/// with pushes in flight and restarted on the same port; Pub/Sub redelivers what was cut.
///
/// The instance reaches Firestore through a link that adds latency, so every transaction
/// takes a few round trips of it and many pushes are in flight when the kill comes; some of
/// them have committed without answering. Those are found afterwards: a message the restarted
/// instance answered as a replay of its own earlier commit (the status document names the
/// same message ID) was cut between commit and answer.
///
/// The guard holds no transaction (issue 12), so the restarted instance finds nothing locked;
/// Pub/Sub's back-off on the cut pushes sets the pace of recovery, and nothing is lost or
/// repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_loses_and_repeats_nothing() {
    let (n, items, settle_within) = if long() {
        (1000, 20, Duration::from_secs(300))
    } else {
        (120, 8, Duration::from_secs(240))
    };
    let started = Instant::now();
    let fs = emulator_host();
    let slow = FaultProxy::start(fs.to_string()).await;
    slow.set(Link::Slow(Duration::from_millis(10)));
    let via = slow.url.trim_start_matches("http://").to_string();
    let project = project();
    let port = free_port();
    let before = Arc::new(LogCount::default());
    let mut inst = Instance::start(port, &project, &via, &[], before.clone()).await;
    let (front, front_url) = FrontProxy::start(inst.url.clone()).await;
    let http = reqwest::Client::new();
    let rest = rest_root(fs, &project);
    let w = workload("kill", n, items, 3);
    seed(&http, &rest, &w.initial).await;

    let ps = PubSub::new(&project);
    ps.topic("orders").await;
    // Three push subscriptions on one topic: every message reaches the service three times,
    // concurrently, as with several subscribers, and more pushes are in flight at any moment.
    let subscriptions = 3;
    for s in 0..subscriptions {
        ps.push_subscription(
            &format!("orders-push-{s}"),
            "orders",
            &format!("{front_url}/orders"),
        )
        .await;
    }
    // Every order once; every fourth published twice more (new message IDs, same order).
    let mut messages = Vec::new();
    for (i, o) in w.orders.iter().enumerate() {
        messages.extend(std::iter::repeat_n(
            o.clone(),
            if i % 4 == 0 { 3 } else { 1 },
        ));
    }
    let published = messages.len();
    let pushes = published * subscriptions;
    ps.publish("orders", &messages).await;

    // Kill it a third of the way through, with pushes in flight; restart on the same port.
    let wait_until = Instant::now() + Duration::from_secs(90);
    while before.decisions.load(Ordering::Relaxed) < pushes / 3
        || front.in_flight.load(Ordering::SeqCst) == 0
    {
        assert!(Instant::now() < wait_until, "pushes did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    front.epoch.store(1, Ordering::SeqCst);
    inst.kill().await;
    let killed_at = before.decisions.load(Ordering::Relaxed);
    let after = Arc::new(LogCount::default());
    let inst = Instance::start(port, &project, &via, &[], after.clone()).await;
    let restarted = Instant::now();

    // Settled when every order has its status document, and nothing moves for a while.
    let deadline = Instant::now() + settle_within;
    loop {
        let done = ids(&http, &rest, "operations").await.len();
        if done == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {n} orders settled; {} deliveries seen after the restart",
            after.decisions.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let recovery = restarted.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (peak, _) = memory_mib(inst.pid());
    let report = check(&project, None, &w.initial).await;
    let dead_letters = ids(&http, &rest, "dead_letters").await.len();
    for s in 0..subscriptions {
        ps.delete_subscription(&format!("orders-push-{s}")).await;
    }

    // Pushes in flight at the kill that had committed: their status document names them as
    // the delivery that processed the order, yet they never got an answer.
    let committed_by = status_deliveries(&http, &rest).await;
    let cut_in_flight = front.cut_in_flight.lock().unwrap().clone();
    let cut_after_commit = cut_in_flight.intersection(&committed_by).count();
    let refused = front.cut.load(Ordering::SeqCst) - cut_in_flight.len();
    let total = |f: fn(&LogCount) -> &AtomicUsize| {
        f(&before).load(Ordering::Relaxed) + f(&after).load(Ordering::Relaxed)
    };
    let f = Figures {
        orders: n,
        deliveries: total(|l| &l.decisions),
        duplicates: pushes - n,
        replayed: total(|l| &l.replayed),
        faults: format!(
            "SIGKILL after {killed_at} answered deliveries, {} pushes in flight cut \
             ({cut_after_commit} of them after their commit), {refused} pushes refused while \
             down, restart on the same port; settled {recovery:.0} s after the restart \
             (at most {} pushes in flight)",
            cut_in_flight.len(),
            front.most_in_flight.load(Ordering::SeqCst),
        ),
        unavailable: total(|l| &l.failed),
        // Every push attempt was answered (a decision line) or cut (seen by the front proxy);
        // attempts beyond the pushes are Pub/Sub's redeliveries.
        redelivered: (total(|l| &l.decisions) + front.cut.load(Ordering::SeqCst))
            .saturating_sub(pushes),
        fivexx_after: 0,
        violations: report.violations.len(),
        peak_rss_mib: Some(peak),
        seconds: started.elapsed().as_secs_f64(),
    };
    f.print("killed-instance");
    assert!(report.ok(), "{report}");
    assert_eq!(report.processed + report.rejected, n);
    assert_eq!(dead_letters, 0);
    assert!(!cut_in_flight.is_empty(), "the kill cut pushes in flight");
}

/// (subscription, message ID) of the delivery that committed each status document.
async fn status_deliveries(http: &reqwest::Client, rest: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for d in list_documents(http, rest, "operations", Some("delivery")).await {
        let f = &d["fields"]["delivery"]["mapValue"]["fields"];
        let sub = &f["attrs"]["mapValue"]["fields"]["subscription"]["stringValue"];
        if let (Some(sub), Some(id)) = (sub.as_str(), f["id"]["stringValue"].as_str()) {
            out.insert((sub.to_string(), id.to_string()));
        }
    }
    out
}

/// Scenario 5 (issue 12): two instances sell one hot item; one is SIGKILLed mid-flight. Its
/// Firestore connection goes through a proxy that keeps the upstream end open (as Google's
/// front end would), so nothing the dead instance left could be released early. Nothing is
/// locked between a read and a commit any more, so the survivor keeps selling at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_strands_nothing_the_survivor_keeps_selling() {
    let started = Instant::now();
    let fs = emulator_host();
    let proxy = FaultProxy::start_holding(fs.to_string()).await;
    let via = proxy.url.trim_start_matches("http://").to_string();
    let project = project();
    let log = Arc::new(LogCount::default());
    // At the emulator's pace (no write budget): the survivor's throughput is the subject,
    // and under a budget of one commit a second it would be 4 orders a second by design.
    let unpaced = ("ONCE_DOC_COMMITS_PER_SEC", "off");
    let mut doomed = Instance::start(
        free_port(),
        &project,
        &via,
        &[("ONCE_INSTANCE_ID", "0"), unpaced],
        log.clone(),
    )
    .await;
    let survivor = Instance::start(
        free_port(),
        &project,
        fs,
        &[("ONCE_INSTANCE_ID", "1"), unpaced],
        log.clone(),
    )
    .await;
    let http = reqwest::Client::new();
    let initial: StockMap = [("hot".to_string(), 1_000_000)].into();
    seed(&http, &rest_root(fs, &project), &initial).await;
    let urls = [
        format!("{}/orders", doomed.url),
        format!("{}/orders", survivor.url),
    ];
    let stop = Instant::now() + Duration::from_secs(if long() { 20 } else { 8 });
    let killer = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at = Instant::now();
        doomed.kill().await;
        at
    };
    let (sent, killed_at) = tokio::join!(sell_hot(&http, "h", &urls, 4, stop), killer);
    let (n, slowest) = survivor_kept_selling(&sent, 1, killed_at + Duration::from_secs(2));
    let total = sent.len();
    let (unavailable, report) = settle_and_check(&http, &urls[1], &project, sent, &initial).await;
    Figures {
        orders: total,
        deliveries: total,
        faults: format!(
            "SIGKILL of one of two instances selling one hot item (upstream held open); \
             {n} survivor orders from 2 s after the kill, slowest {} ms",
            slowest.as_millis()
        ),
        unavailable,
        violations: report.violations.len(),
        seconds: started.elapsed().as_secs_f64(),
        ..Figures::default()
    }
    .print("scale-out-kill");
}
