//! Scenario 4: overload, shed at once with 503 + Retry-After, memory bounded.

use super::instance::{memory_mib, Instance, LogCount};
use super::{check, ids, long, post, rest_root, seed, Figures};
use crate::helpers::*;
use firestore_once_shop::invariants::StockMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Scenario 4: far more concurrent clients than the instance takes, each with a large body.
/// The excess is shed at once with 503 + Retry-After, nothing half-applied, memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_retry_after() {
    let (clients, limit, pad_kib) = if long() {
        (2000, 16, 960)
    } else {
        (300, 8, 960)
    };
    let started = Instant::now();
    let project = project();
    let fs = emulator_host();
    let log = Arc::new(LogCount::default());
    let limit_s = limit.to_string();
    let inst = Instance::start(
        free_port(),
        &project,
        fs,
        &[("ONCE_MAX_IN_FLIGHT", &limit_s)],
        log.clone(),
    )
    .await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let rest = rest_root(fs, &project);
    let initial: StockMap = (0..20).map(|i| (format!("i-{i:02}"), 1_000_000)).collect();
    seed(&http, &rest, &initial).await;
    let url = format!("{}/orders", inst.url);
    let (_, rss_before) = memory_mib(inst.pid());

    // Each body carries `pad_kib` KiB of padding (ignored by the service), shared on the
    // client side, so only the service could hold clients × padding in memory.
    let padding = bytes::Bytes::from(vec![b'x'; pad_kib * 1024]);
    let body = |k: usize| {
        let head = format!(
            r#"{{"order_id":"ov-{k}","item_id":"i-{:02}","quantity":1,"padding":""#,
            k % 20
        );
        let parts: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
            Ok(bytes::Bytes::from(head)),
            Ok(padding.clone()),
            Ok(bytes::Bytes::from_static(b"\"}")),
        ];
        reqwest::Body::wrap_stream(futures::stream::iter(parts))
    };
    let flood = futures::future::join_all((0..clients).map(|k| post(&http, &url, body(k))));
    let health = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        http.get(format!("{}/healthz", inst.url))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    let (first, health) = tokio::join!(flood, health);
    let (peak, _) = memory_mib(inst.pid());

    // Shed: answered 503, or (a body larger than what is drained) cut before the answer.
    let shed: Vec<usize> = (0..clients).filter(|&k| first[k].status != 200).collect();
    let cut = shed.iter().filter(|&&k| first[k].status == 599).count();
    for k in &shed {
        let a = &first[*k];
        assert!(
            a.status == 503 || a.status == 599,
            "client {k}: {} {:?}",
            a.status,
            a.body
        );
        if a.status == 503 {
            assert!(a.retry_after, "503 without Retry-After");
            assert!(
                String::from_utf8_lossy(&a.body).contains("in flight"),
                "{:?}",
                a.body
            );
        }
    }
    // Nothing half-applied: a shed order has no status document and no order document.
    let ops = ids(&http, &rest, "operations").await;
    let orders = ids(&http, &rest, "orders").await;
    for (k, answer) in first.iter().enumerate() {
        let id = op_id("order", &format!("ov-{k}"));
        let applied = answer.status == 200;
        assert_eq!(ops.contains(&id), applied, "client {k}: status document");
        assert_eq!(orders.contains(&id), applied, "client {k}: order document");
    }

    // Every shed client retries on its own after Retry-After (with jitter), like a platform.
    let retries = AtomicUsize::new(0);
    let finals = futures::future::join_all(shed.iter().map(|&k| {
        let (http, url, retries, body) = (&http, &url, &retries, &body);
        async move {
            let mut rng = fastrand::Rng::with_seed(k as u64);
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(1000 + rng.u64(0..1000))).await;
                retries.fetch_add(1, Ordering::Relaxed);
                let a = post(http, url, body(k)).await;
                if a.status < 500 {
                    return a.status;
                }
            }
            503
        }
    }))
    .await;
    let left = finals.iter().filter(|s| **s >= 500).count();
    let report = check(&project, None, &initial).await;

    let f = Figures {
        orders: clients,
        deliveries: clients + retries.load(Ordering::Relaxed),
        duplicates: 0,
        replayed: log.replayed.load(Ordering::Relaxed),
        faults: format!(
            "{clients} clients at once with {pad_kib} KiB bodies against ONCE_MAX_IN_FLIGHT={limit} \
             ({cut} shed connections closed before the answer)"
        ),
        unavailable: shed.len(),
        redelivered: retries.load(Ordering::Relaxed),
        fivexx_after: left,
        violations: report.violations.len(),
        peak_rss_mib: Some(peak),
        seconds: started.elapsed().as_secs_f64(),
    };
    f.print("overload");
    assert_eq!(
        health.ok(),
        Some(200),
        "/healthz answers while the instance is full"
    );
    assert!(shed.len() > cut, "the excess was shed with 503");
    assert_eq!(left, 0, "every shed order went through on retry");
    assert!(report.ok(), "{report}");
    assert_eq!(report.orders, clients);
    // Unbounded, the bodies alone would be clients × padding; bounded, limit × padding plus
    // what draining the shed ones costs (64 KiB each at most).
    let unbounded = (clients * pad_kib) as f64 / 1024.0;
    assert!(
        peak - rss_before < (unbounded / 2.0).min(256.0),
        "peak {peak:.1} MiB from {rss_before:.1} MiB; unbounded would be {unbounded:.0} MiB more"
    );
}
