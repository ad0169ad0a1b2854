//! Metrics and traces against the real emulator: every kind of delivery moves its
//! `once_deliveries_total` series by exactly one, and an exported trace reaches an OTLP/HTTP
//! receiver with the caller's trace ID and the Firestore calls as child spans.

use crate::helpers::{emulator_host, guard_for, project, spawn_app_with, TestApp};
use crate::operate::Service;
use axum::body::Bytes;
use axum::routing::post;
use base64::Engine;
use firestore_once_core::config::Config;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every sample of a Prometheus text exposition: `name{labels}` → value.
async fn scrape(app: &TestApp) -> BTreeMap<String, f64> {
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.contains("openmetrics-text"), "{ct}");
    let text = r.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample: {l}"));
            (
                k.to_string(),
                v.parse().unwrap_or_else(|_| panic!("value: {l}")),
            )
        })
        .collect()
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

fn deliveries(source: &str, outcome: &str) -> String {
    format!("once_deliveries_total{{source=\"{source}\",outcome=\"{outcome}\"}}")
}

fn push_envelope(body: &Value, message_id: &str) -> String {
    json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(body.to_string()),
            "messageId": message_id,
            "publishTime": "2026-11-23T10:00:00.000Z",
        },
        "subscription": "projects/demo/subscriptions/orders-push",
        "deliveryAttempt": 1
    })
    .to_string()
}

#[tokio::test]
async fn every_kind_of_delivery_moves_its_counter_by_exactly_one() {
    let project = project();
    let a = spawn_app_with(project.clone(), |c| c.core.max_in_flight = 1).await;
    // A second instance on the same database: its cache is empty, so it replays from Firestore.
    let b = spawn_app_with(project.clone(), |_| {}).await;
    a.seed("apple", 10).await;
    let (a0, b0) = (scrape(&a).await, scrape(&b).await);

    let order = json!({"order_id": "m-1", "item_id": "apple", "quantity": 2});
    assert_eq!(a.order(&order).await.status(), 200);
    assert_eq!(a.order(&order).await.status(), 200, "replay from the cache");
    assert_eq!(b.order(&order).await.status(), 200, "replay from Firestore");
    let reused = json!({"order_id": "m-1", "item_id": "apple", "quantity": 3});
    assert_eq!(a.order(&reused).await.status(), 422);
    let too_many = json!({"order_id": "m-2", "item_id": "apple", "quantity": 100});
    assert_eq!(a.order(&too_many).await.status(), 409);
    assert_eq!(a.order(&json!({"order_id": "m-3"})).await.status(), 400);
    // A push delivery that can never succeed: dead-lettered and acknowledged.
    let bad = push_envelope(&json!({"order_id": "m-4", "item_id": "apple"}), "msg-4");
    let r = a
        .http
        .post(a.url("/orders"))
        .header("content-type", "application/json")
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["outcome"], "dead_lettered");
    // Outcome unknown: an injected fault answers 503 before any work.
    a.faults.fail_next("m-5");
    let m5 = json!({"order_id": "m-5", "item_id": "apple", "quantity": 1});
    assert_eq!(a.order(&m5).await.status(), 503);
    // Shed: one request holds the only in-flight slot (its body still arriving), the next is
    // refused at once.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, std::io::Error>>();
    let slow = a
        .http
        .post(a.url("/orders"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(rx))
        .send();
    let slow = tokio::spawn(slow);
    tx.unbounded_send(Ok(Bytes::from_static(b"{\"order_id\":\"m-6\",")))
        .unwrap();
    // Wait until the slow request is inside the handler (it holds the slot by then).
    let mut held = false;
    for _ in 0..500 {
        if scrape(&a).await.get("once_in_flight_requests") == Some(&1.0) {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held, "the slow request never started");
    let r = a
        .order(&json!({"order_id": "m-7", "item_id": "apple", "quantity": 1}))
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    let shed = u8::from(body["detail"].as_str().unwrap_or("").contains("in flight"));
    assert_eq!(shed, 1, "no request was shed");
    tx.unbounded_send(Ok(Bytes::from_static(
        b"\"item_id\":\"apple\",\"quantity\":1}",
    )))
    .unwrap();
    drop(tx);
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);

    let (a1, b1) = (scrape(&a).await, scrape(&b).await);
    let expected = [
        (deliveries("http", "processed"), 2.0), // m-1 and m-6
        (deliveries("http", "replayed_cache"), 1.0),
        (deliveries("http", "key_reused"), 1.0),
        (deliveries("http", "rejected"), 1.0),
        (deliveries("http", "invalid"), 1.0),
        (deliveries("pubsub", "dead_lettered"), 1.0),
        (deliveries("http", "unknown"), 1.0),
        (deliveries("undecoded", "shed"), 1.0),
        (deliveries("http", "replayed_firestore"), 0.0),
        (
            "once_request_duration_seconds_count{kind=\"order\"}".into(),
            8.0,
        ),
        ("once_in_flight_requests".into(), 0.0),
        ("once_lease_takeovers_total".into(), 0.0),
    ];
    for (k, want) in &expected {
        assert_eq!(delta(&a0, &a1, k), *want, "{k} on instance a");
    }
    // The other instance saw exactly one delivery: the replay it read from Firestore.
    assert_eq!(
        delta(&b0, &b1, &deliveries("http", "replayed_firestore")),
        1.0
    );
    let b_total: f64 = b1
        .iter()
        .filter(|(k, _)| k.starts_with("once_deliveries_total"))
        .map(|(k, _)| delta(&b0, &b1, k))
        .sum();
    assert_eq!(b_total, 1.0);
    // Transactions: m-1, m-2 and m-6 each committed (batches of one here), plus b's replay read.
    assert!(delta(&a0, &a1, "once_batch_size_count") >= 3.0);
    assert_eq!(a.stock("apple").await, Some(7));
}

#[tokio::test]
async fn a_lease_taken_over_from_an_expired_holder_is_counted() {
    let project = project();
    let config = Config::default();
    let guard = guard_for(&project, &config, None).await;
    let takeovers = |g: &firestore_once_core::guard::Guard| {
        let text = g.metrics().encode().unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("once_lease_takeovers_total "))
            .map(|v| v.parse::<f64>().unwrap())
            .unwrap()
    };
    let ttl = Duration::from_millis(200);
    guard
        .acquire_lease("leases", "step-1", "first", ttl)
        .await
        .unwrap();
    // The same holder again, and a second holder while the lease is live: no takeover.
    guard
        .acquire_lease("leases", "step-1", "first", ttl)
        .await
        .unwrap();
    guard
        .acquire_lease("leases", "step-1", "second", ttl)
        .await
        .unwrap();
    assert_eq!(takeovers(&guard), 0.0);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let took = guard
        .acquire_lease("leases", "step-1", "second", ttl)
        .await
        .unwrap();
    assert!(matches!(
        took,
        firestore_once_core::guard::lease::LeaseOutcome::Acquired(_)
    ));
    assert_eq!(takeovers(&guard), 1.0);
}

#[tokio::test]
async fn metrics_off_means_no_endpoint() {
    let app = spawn_app_with(project(), |c| c.core.metrics = false).await;
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

/// An OTLP/HTTP receiver on 127.0.0.1 keeping every span it is sent.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let router = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut k = kept.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        k.extend(ss.spans);
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/v1/traces"), spans)
}

/// The real binary, as Cloud Run runs it, exporting to the in-test receiver through the
/// standard variable: its global subscriber sees every task's spans, whatever the other tests
/// running in parallel threads do.
#[tokio::test]
async fn a_request_span_joins_the_callers_trace_with_firestore_calls_as_children() {
    let (url, spans) = otlp_receiver().await;
    let project = project();
    let seeder = spawn_app_with(project.clone(), |_| {}).await;
    seeder.seed("pear", 5).await;
    let mut svc = Service::start(
        &project,
        emulator_host(),
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.as_str())],
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let r = seeder
        .http
        .post(format!("http://127.0.0.1:{}/orders", svc.port))
        .header("traceparent", format!("00-{trace_id}-{parent_span}-01"))
        .json(&json!({"order_id": "t-1", "item_id": "pear", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // SIGTERM: the binary flushes its span batch to the receiver before it exits.
    svc.sigterm();
    assert!(svc.exit(Duration::from_secs(30)).await.success());

    let spans = spans.lock().unwrap().clone();
    let hex = |b: &[u8]| hex::encode(b);
    let request = spans
        .iter()
        .find(|s| s.name == "POST /orders")
        .unwrap_or_else(|| {
            panic!(
                "no request span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(hex(&request.trace_id), trace_id);
    assert_eq!(hex(&request.parent_span_id), parent_span);
    // Firestore calls: in the same trace, descending from the request span.
    let by_id: BTreeMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let descends = |s: &Span| {
        let mut cur = s;
        for _ in 0..8 {
            if cur.parent_span_id == request.span_id {
                return true;
            }
            match by_id.get(&cur.parent_span_id) {
                Some(p) => cur = p,
                None => return false,
            }
        }
        false
    };
    let firestore: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("google.firestore.v1.Firestore/"))
        .filter(|s| hex(&s.trace_id) == trace_id && descends(s))
        .collect();
    assert!(
        firestore
            .iter()
            .any(|s| s.name.ends_with("/BatchGetDocuments")),
        "no Firestore read under the request: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert!(firestore.iter().any(|s| s.name.ends_with("/Commit")));
    // The decision log line names the same trace and span, as Cloud Logging links them.
    let decision = svc
        .json_lines()
        .into_iter()
        .find(|v| v["message"] == "decision")
        .expect("a decision line");
    assert!(decision["logging.googleapis.com/trace"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/traces/{trace_id}")));
    assert_eq!(
        decision["logging.googleapis.com/spanId"],
        hex(&request.span_id)
    );
}
