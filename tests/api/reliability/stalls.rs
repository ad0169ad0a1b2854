//! Scenario 2: the database stalls (SIGSTOP) longer than the request deadline, then resumes.

use super::instance::{memory_mib, signal_group, Instance, LogCount, OwnEmulator};
use super::{
    all_answers, check, ledger, long, post_json, redeliver, rest_root, seed, settle, workload,
    Answer, Figures,
};
use crate::helpers::*;
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Scenario 2: the database stops answering (SIGSTOP) for longer than the request deadline
/// in the middle of the load, then resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_stall_answers_503_in_time_and_recovers() {
    let (n, items, clients, pause) = if long() {
        (600, 10, 32, Duration::from_secs(10))
    } else {
        (150, 10, 16, Duration::from_secs(3))
    };
    let deadline = Duration::from_millis(1000);
    let started = Instant::now();
    let emu = OwnEmulator::start().await;
    let project = project();
    let deadline_ms = deadline.as_millis().to_string();
    let log = Arc::new(LogCount::default());
    let inst = Instance::start(
        free_port(),
        &project,
        &emu.host,
        &[
            ("ONCE_REQUEST_TIMEOUT_MS", &deadline_ms),
            ("ONCE_FIRESTORE_TIMEOUT_MS", "500"),
        ],
        log.clone(),
    )
    .await;
    let http = reqwest::Client::new();
    let rest = rest_root(&emu.host, &project);
    let w = workload("stall", n, items, 2);
    seed(&http, &rest, &w.initial).await;
    let url = format!("{}/orders", inst.url);

    // The controller pauses the emulator once a third of the orders are answered.
    let answered = Arc::new(AtomicUsize::new(0));
    let window: Arc<Mutex<Option<(Instant, Instant)>>> = Arc::default();
    let rss_before = Arc::new(Mutex::new(0.0));
    let controller = {
        let (answered, window, pgid, pid) = (
            answered.clone(),
            window.clone(),
            emu.pgid.clone(),
            inst.pid(),
        );
        let rss_before = rss_before.clone();
        tokio::spawn(async move {
            while answered.load(Ordering::Relaxed) < n / 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            *rss_before.lock().unwrap() = memory_mib(pid).1;
            signal_group(&pgid, "-STOP");
            let stopped = Instant::now();
            tokio::time::sleep(pause).await;
            signal_group(&pgid, "-CONT");
            *window.lock().unwrap() = Some((stopped, Instant::now()));
        })
    };
    let answers: Vec<(usize, Instant, Answer)> = futures::stream::iter(0..n)
        .map(|i| {
            let (http, url, body, answered) = (&http, &url, &w.orders[i], &answered);
            async move {
                // Keep the load going through the pause: a request per client at a time.
                let sent = Instant::now();
                let a = post_json(http, url, body).await;
                answered.fetch_add(1, Ordering::Relaxed);
                (i, sent, a)
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    controller.await.unwrap();
    let (stopped, resumed) = window.lock().unwrap().expect("the pause happened");
    let (peak, _) = memory_mib(inst.pid());
    let rss_before = *rss_before.lock().unwrap();

    // While paused: every answer is a 503 with Retry-After, none later than the deadline.
    let slack = Duration::from_millis(1500);
    let mut during = 0;
    for (i, sent, a) in &answers {
        assert!(
            a.latency <= deadline + slack,
            "order {i} answered after {:?}",
            a.latency
        );
        if *sent >= stopped && *sent + a.latency <= resumed {
            during += 1;
            assert_eq!(a.status, 503, "order {i} during the pause: {:?}", a.body);
            assert!(a.retry_after, "503 without Retry-After");
        }
    }
    let mut ledger = ledger(answers.into_iter().map(|(i, _, a)| (i, a)));
    let unavailable = all_answers(&ledger).filter(|a| a.failed()).count();
    let redelivered = redeliver(
        &http,
        std::slice::from_ref(&url),
        &w.orders,
        &mut ledger,
        60,
    )
    .await;
    let (ok, rejected, left) = settle(&ledger, n);
    let report = check(&project, Some(&emu.host), &w.initial).await;

    let f = Figures {
        orders: n,
        deliveries: n + redelivered,
        duplicates: 0,
        replayed: all_answers(&ledger).filter(|a| a.replayed).count(),
        faults: format!(
            "SIGSTOP of the database for {} s ({during} requests sent and answered inside it)",
            pause.as_secs()
        ),
        unavailable,
        redelivered,
        fivexx_after: left,
        violations: report.violations.len(),
        peak_rss_mib: Some(peak),
        seconds: started.elapsed().as_secs_f64(),
    };
    f.print("database-stall");
    assert!(
        during > 0,
        "some requests were made while the database was paused"
    );
    assert!(
        peak - rss_before < 64.0,
        "memory grew from {rss_before:.1} MiB to a peak of {peak:.1} MiB during the pause"
    );
    assert_eq!(left, 0, "no 5xx left after redelivery");
    assert!(report.ok(), "{report}");
    assert_eq!((report.orders, report.rejected), (ok, rejected));
}
