//! Operating the service: log lines as Cloud Logging reads them, readiness, and the shutdown
//! Cloud Run asks for, the last on the real binary with a real SIGTERM.

use crate::helpers::{
    emulator_host, free_port, guard_for, op_id, project, shop_service, spawn_app_at,
    spawn_app_with, FaultProxy, Link, Settings,
};
use axum::body::Body;
use axum::http::Request;
use base64::Engine;
use firestore_once_core::config::Config;
use firestore_once_core::{app, telemetry};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::EnvFilter;

/// An in-memory log sink for the production JSON subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Every line, each of which must be one JSON object.
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// RFC 3339 in UTC, as Cloud Logging's `time` field wants it.
fn is_rfc3339_utc(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && t.ends_with('Z')
}

fn decision<'a>(lines: &'a [Value], operation_id: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["message"] == "decision" && l["operation_id"] == operation_id)
        .unwrap_or_else(|| panic!("no decision line for {operation_id} in {lines:#?}"))
}

#[tokio::test]
async fn json_logs_carry_severity_trace_and_the_decision_fields() {
    let project = project();
    let seeder = spawn_app_with(project.clone(), |_| {}).await;
    seeder.seed("apple", 10).await;
    let config = Config::default();
    let guard = guard_for(&project, &config, None).await;
    let settings = Settings {
        core: config,
        ..Settings::default()
    };
    let router = app(shop_service(guard, settings, &project));
    let sink = Captured::default();
    let writer = sink.clone();
    let dispatch = tracing::Dispatch::new(telemetry::json_subscriber(
        EnvFilter::new("info"),
        move || writer.clone(),
    ));
    let send = |req: Request<Body>| {
        router
            .clone()
            .oneshot(req)
            .with_subscriber(dispatch.clone())
    };

    // A direct call with W3C trace context.
    let r = send(
        Request::post("/orders")
            .header("content-type", "application/json")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(Body::from(
                json!({"order_id":"log-1","item_id":"apple","quantity":1}).to_string(),
            ))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // Eventarc delivering a Pub/Sub message, with Google's own trace header.
    let data = base64::engine::general_purpose::STANDARD
        .encode(json!({"order_id":"log-2","item_id":"apple","quantity":2}).to_string());
    let envelope = json!({
        "message": {"data": data, "messageId": "m-log-2", "attributes": {},
                    "publishTime": "2026-11-23T10:00:00Z"},
        "subscription": "projects/demo/subscriptions/eventarc-orders",
        "deliveryAttempt": 1
    });
    let r = send(
        Request::post("/orders")
            .header("content-type", "application/json")
            .header("ce-specversion", "1.0")
            .header("ce-id", "e-log-2")
            .header(
                "ce-source",
                "//pubsub.googleapis.com/projects/demo/topics/orders",
            )
            .header("ce-type", "google.cloud.pubsub.topic.v1.messagePublished")
            .header("ce-time", "2026-11-23T10:00:00Z")
            .header(
                "x-cloud-trace-context",
                "105445AA7843BC8BF206B12000100000/1;o=1",
            )
            .body(Body::from(envelope.to_string()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // Bad input, no trace header.
    let r = send(
        Request::post("/orders")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"order_id":"log-3","item_id":"apple","quantity":0}).to_string(),
            ))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::warn!(probe = "w", "a warning");
        tracing::error!(probe = "e", "an error");
    });

    let lines = sink.lines();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l["severity"].is_string(), "{l}");
        assert!(l["message"].is_string(), "{l}");
        assert!(l["time"].as_str().is_some_and(is_rfc3339_utc), "{l}");
    }
    let trace = "logging.googleapis.com/trace";

    let d1 = decision(&lines, &op_id("order", "log-1"));
    assert_eq!(d1["severity"], "INFO");
    assert_eq!(
        d1[trace],
        format!("projects/{project}/traces/4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(d1["outcome"], "processed");
    assert_eq!(d1["status"], 200);
    assert_eq!(d1["replayed"], false);
    assert_eq!(d1["delivery_source"], "http");
    assert!(d1["latency_ms"].is_number(), "{d1}");

    let d2 = decision(&lines, &op_id("order", "log-2"));
    assert_eq!(
        d2[trace],
        format!("projects/{project}/traces/105445aa7843bc8bf206b12000100000")
    );
    assert_eq!(d2["outcome"], "processed");
    assert_eq!(d2["status"], 200);
    let source = d2["delivery_source"].as_str().unwrap_or_default();
    assert!(!source.is_empty() && source != "http", "{d2}");
    assert!(
        d2["delivery_id"]
            .as_str()
            .is_some_and(|id| id.contains("e-log-2") || id.contains("m-log-2")),
        "{d2}"
    );

    let d3 = lines
        .iter()
        .find(|l| l["message"] == "decision" && l["status"] == 400)
        .expect("a decision line for the 400");
    assert_eq!(d3["outcome"], "invalid-field");
    assert_eq!(d3["severity"], "INFO");
    assert!(
        d3.get(trace).is_none(),
        "no trace header, no trace field: {d3}"
    );

    let sev = |probe: &str| {
        lines
            .iter()
            .find(|l| l["probe"] == probe)
            .map(|l| l["severity"].clone())
    };
    assert_eq!(sev("w"), Some(json!("WARNING")));
    assert_eq!(sev("e"), Some(json!("ERROR")));
}

#[tokio::test]
async fn readyz_follows_firestore_while_healthz_does_not() {
    let proxy = FaultProxy::start(emulator_host().to_string()).await;
    let app = spawn_app_at(
        project(),
        |c| c.core.firestore_timeout = Duration::from_millis(500),
        Some(proxy.url.clone()),
    )
    .await;
    let get = |path: &'static str| {
        let (http, url) = (app.http.clone(), app.url(path));
        async move { http.get(url).send().await.unwrap() }
    };
    // Ready once the client is connected (the very first call of a process can take longer
    // than this test's short Firestore deadline).
    let ready = || async {
        for _ in 0..60 {
            let r = get("/readyz").await;
            if r.status() == 200 {
                return r.text().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("/readyz never answered 200");
    };
    assert_eq!(ready().await, "ready");

    // Firestore unreachable: not ready, and says when to ask again; still alive.
    proxy.set(Link::Down);
    let r = get("/readyz").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "/problems/not-ready");
    assert_eq!(v["status"], 503);
    assert_eq!(get("/healthz").await.status(), 200);

    // Firestore too slow for its deadline: 503 at the deadline, not a hang.
    proxy.set(Link::Slow(Duration::from_secs(5)));
    let started = Instant::now();
    let r = get("/readyz").await;
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Back: ready again.
    proxy.set(Link::Up);
    assert_eq!(ready().await, "ready");
}

// ----------------------------------------------------------------------------------------
// The real binary
// ----------------------------------------------------------------------------------------

/// The `firestore-once` binary running as a child process, its output collected.
pub(crate) struct Service {
    child: tokio::process::Child,
    pub(crate) port: u16,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// From spawning the process to its first 200 on /healthz.
    ready_after: Duration,
}

fn collect(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stream).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            into.lock().unwrap().push(l);
        }
    })
}

impl Service {
    /// Start the binary for `project` against the Firestore at `firestore` (host:port) and
    /// wait until it answers /healthz.
    pub(crate) async fn start(project: &str, firestore: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let started = Instant::now();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_firestore-once"))
            .env_remove("RUST_LOG")
            .env("PORT", port.to_string())
            .env("GOOGLE_CLOUD_PROJECT", project)
            .env("FIRESTORE_EMULATOR_HOST", firestore)
            .env("ONCE_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn firestore-once");
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout)),
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/healthz");
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "firestore-once exited with {status} before serving: {:?}",
                    stderr.lock().unwrap()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "not serving after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Self {
            ready_after: started.elapsed(),
            child,
            port,
            stdout,
            stderr,
            readers,
        }
    }

    pub(crate) fn sigterm(&self) {
        let pid = self.child.id().expect("still running");
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM {pid}");
    }

    /// Wait for the exit and for the last of its output.
    pub(crate) async fn exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("still running {within:?} after SIGTERM"))
            .unwrap();
        for r in self.readers.drain(..) {
            let _ = r.await;
        }
        status
    }

    pub(crate) fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout not JSON ({e}): {l}"))
            })
            .collect()
    }
}

fn has_message(lines: &[Value], prefix: &str) -> bool {
    lines
        .iter()
        .any(|l| l["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0() {
    let project = project();
    let seeder = spawn_app_with(project.clone(), |_| {}).await;
    seeder.seed("apple", 5).await;
    let proxy = FaultProxy::start(emulator_host().to_string()).await;
    let mut svc = Service::start(
        &project,
        proxy.url.trim_start_matches("http://"),
        &[
            ("ONCE_SHUTDOWN_GRACE_MS", "20000"),
            ("ONCE_REQUEST_TIMEOUT_MS", "20000"),
            ("ONCE_FIRESTORE_TIMEOUT_MS", "10000"),
        ],
    )
    .await;
    eprintln!("binary serving {:?} after spawn", svc.ready_after);

    // Firestore slow, so the order is still waiting on it when SIGTERM arrives.
    proxy.set(Link::Slow(Duration::from_millis(600)));
    let url = format!("http://127.0.0.1:{}/orders", svc.port);
    let inflight = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .json(&json!({"order_id":"drain-1","item_id":"apple","quantity":1}))
            .send()
            .await
            .expect("the in-flight request gets an answer");
        let status = r.status().as_u16();
        (Instant::now(), status, r.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!inflight.is_finished(), "answered before SIGTERM");
    let term_at = Instant::now();
    svc.sigterm();

    // The listener closes at once: new connections are refused while the old one drains.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", svc.port))
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "still accepting connections after SIGTERM");
    assert!(
        !inflight.is_finished(),
        "test too slow: drained before the refusal check"
    );

    let (answered_at, status, body) = inflight.await.unwrap();
    assert!(answered_at > term_at);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["outcome"], "processed");
    assert_eq!(v["order_id"], "drain-1");
    assert_eq!(v["operation_id"], op_id("order", "drain-1"));

    let exit = svc.exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0), "{exit}");
    proxy.set(Link::Up);
    assert_eq!(seeder.stock("apple").await, Some(4));

    // Every stdout line is a Cloud Logging JSON object, the drain included.
    let lines = svc.json_lines();
    assert!(has_message(&lines, "serving"), "{lines:#?}");
    assert!(
        has_message(&lines, "shutdown signal received"),
        "{lines:#?}"
    );
    assert!(
        has_message(&lines, "stopped: every in-flight request finished"),
        "{lines:#?}"
    );
    let d = decision(&lines, &op_id("order", "drain-1"));
    assert_eq!(d["status"], 200);
    assert!(svc.stderr.lock().unwrap().is_empty());
}

#[tokio::test]
async fn shutdown_grace_is_bounded_and_still_exits_0() {
    let project = project();
    let mut svc = Service::start(
        &project,
        emulator_host(),
        &[("ONCE_SHUTDOWN_GRACE_MS", "1000")],
    )
    .await;
    // A request that never finishes: its body never completes.
    let mut stuck = tokio::net::TcpStream::connect(("127.0.0.1", svc.port))
        .await
        .unwrap();
    stuck
        .write_all(
            b"POST /orders HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
              content-length: 200\r\n\r\n{\"order_id\":",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term_at = Instant::now();
    svc.sigterm();
    let exit = svc.exit(Duration::from_secs(10)).await;
    let took = term_at.elapsed();
    assert_eq!(exit.code(), Some(0), "{exit}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM with a 1 s grace"
    );
    let lines = svc.json_lines();
    assert!(
        has_message(&lines, "stopped: shutdown grace passed"),
        "{lines:#?}"
    );
    // The cut request got no answer, only the end of the connection.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stuck.read_to_end(&mut rest)).await;
    assert!(!String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn text_logs_go_to_stderr_without_colours_when_not_a_terminal() {
    let mut svc = Service::start(&project(), emulator_host(), &[("ONCE_LOG_FORMAT", "text")]).await;
    svc.sigterm();
    let exit = svc.exit(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0), "{exit}");
    let err = svc.stderr.lock().unwrap().join("\n");
    assert!(err.contains("serving"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escapes in piped logs: {err:?}"
    );
    assert!(svc.stdout.lock().unwrap().is_empty());
}
