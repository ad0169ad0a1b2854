//! The programs under `examples/`, served and driven as a user would: the guard embedded in
//! another axum app (`embed.rs`), and a new workflow with an outside call (`refund.rs`).

use crate::helpers::*;
use firestore_once_core::config::Config;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[path = "../../crates/core/examples/embed.rs"]
mod embed;
#[path = "../../crates/core/examples/refund.rs"]
mod refund;

async fn post(http: &reqwest::Client, url: String, body: Option<&Value>) -> (u16, bool, Value) {
    let mut r = http.post(url);
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.unwrap();
    let replayed = r
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, replayed, v)
}

#[tokio::test]
async fn the_guard_embedded_in_another_axum_app_counts_each_vote_once() {
    let project = project();
    let guard = guard_for(&project, &Config::default(), None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, embed::router(guard)).await });
    let http = reqwest::Client::new();
    let url = |poll: &str, vote: &str| format!("http://{addr}/polls/{poll}/votes/{vote}");
    let first = futures::future::join_all((0..5).map(|_| post(&http, url("p1", "v1"), None))).await;
    assert!(first.iter().all(|(s, _, _)| *s == 200), "{first:?}");
    assert_eq!(first.iter().filter(|(_, replayed, _)| !replayed).count(), 1);
    assert!(first.iter().all(|(_, _, v)| v["votes"] == 1), "{first:?}");
    let (s, replayed, v) = post(&http, url("p1", "v2"), None).await;
    assert_eq!((s, replayed, v["votes"].as_i64()), (200, false, Some(2)));
    // The same vote ID for another poll is refused, and changes nothing.
    let (s, _, _) = post(&http, url("p2", "v1"), None).await;
    assert_eq!(s, 422);
    let rest = format!(
        "http://{}/v1/projects/{project}/databases/(default)/documents/polls/p1",
        emulator_host()
    );
    let doc: Value = http.get(rest).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["fields"]["votes"]["integerValue"], "2");
}

/// A payment API that counts its calls and takes a while, to catch deliveries mid-call.
#[derive(Default)]
struct CountingPayments {
    calls: AtomicUsize,
}

impl refund::PaymentApi for CountingPayments {
    fn pay<'a>(
        &'a self,
        key: &'a str,
        _: &'a str,
        _: i64,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(format!("PAY-{}", &key[..8]))
        })
    }
}

#[tokio::test]
async fn a_workflow_from_examples_pays_once_and_is_listed_by_the_status_query() {
    let payments = Arc::new(CountingPayments::default());
    let p = payments.clone();
    let app = spawn_app_full(
        project(),
        |_| {},
        None,
        move |mut s| {
            let mut r = (*s.registry).clone();
            refund::register(&mut r, p);
            s.registry = Arc::new(r);
            s
        },
    )
    .await;
    let body = json!({"refund_id": "rf-1", "customer_id": "c-1", "amount": 25});
    let url = app.url("/tasks/refund");
    let answers =
        futures::future::join_all((0..5).map(|_| post(&app.http, url.clone(), Some(&body)))).await;
    // Deliveries that met the lease get 409 in-progress with Retry-After; redeliver them.
    let done: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 200).collect();
    assert!(!done.is_empty(), "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, _, v)| *s == 200 || (*s == 409 && v["type"] == "/problems/in-progress")),
        "{answers:?}"
    );
    let (s, _, v) = post(&app.http, url.clone(), Some(&body)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(payments.calls.load(Ordering::SeqCst), 1);
    assert_eq!(v["kind"], "refund");
    assert_eq!(v["refund_id"], "rf-1");
    assert_eq!(v["operation_id"], op_id("refund", "rf-1").as_str());
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["record", "pay"]);
    // The status query knows the new workflow without a line of HTTP code naming it.
    let r = app
        .http
        .get(app.url(&format!("/operations/{}", op_id("refund", "rf-1"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let st: Value = r.json().await.unwrap();
    assert_eq!(st["outcome"], "processed");
    assert_eq!(st["steps"].as_array().map(Vec::len), Some(2));
    let pay_id = op_id("refund.pay", "rf-1");
    let r = app
        .http
        .get(app.url(&format!("/operations/{pay_id}")))
        .send()
        .await
        .unwrap();
    let st: Value = r.json().await.unwrap();
    assert_eq!(st["task"]["kind"], "refund");
    assert_eq!(st["task"]["step"], "pay");
    // A crash right after `record`: the redelivery resumes at `pay`, which pays once.
    app.faults.crash_after("record");
    let body2 = json!({"refund_id": "rf-2", "customer_id": "c-1", "amount": 5});
    let (s, _, _) = post(&app.http, url.clone(), Some(&body2)).await;
    assert_eq!(s, 503);
    assert_eq!(payments.calls.load(Ordering::SeqCst), 1);
    let (s, _, v) = post(&app.http, url.clone(), Some(&body2)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["steps"][0]["outcome"], "processed");
    assert_eq!(payments.calls.load(Ordering::SeqCst), 2);
    // The same refund ID with another amount is refused before any step runs.
    let (s, _, _) = post(
        &app.http,
        url,
        Some(&json!({"refund_id": "rf-1", "customer_id": "c-1", "amount": 26})),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(payments.calls.load(Ordering::SeqCst), 2);
}
