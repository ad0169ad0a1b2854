//! Test fixture: one Firestore emulator per test binary, a fresh project per test, and the
//! real service on `127.0.0.1:0`.

use firestore_once_core::config::Config;
use firestore_once_core::faults::Faults;
use firestore_once_core::guard::{Guard, GuardConfig};
use firestore_once_core::{server, service, Service};
use firestore_once_shop::ShopConfig;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

static EMULATOR: OnceLock<String> = OnceLock::new();

/// Start a `kind` emulator with `emulator/start`, tied to this process's life; its host:port.
/// If it cannot start (no Java, no emulator package, a crash), the whole test binary stops at
/// once with the script's one-line reason: every test needs it, so fifty panics would only
/// repeat that line.
pub fn start_emulator(kind: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/emulator/start");
    let out = match std::process::Command::new(script)
        .arg(kind)
        .env("EMULATOR_OWNER_PID", std::process::id().to_string())
        .output()
    {
        Ok(out) => out,
        Err(e) => fatal(&format!("cannot run {script}: {e}")),
    };
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        fatal(&format!(
            "emulator/start {kind} failed (run emulator/check): {}",
            why.trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Stop the test binary with one line on stderr: for set-up failures every test shares.
fn fatal(line: &str) -> ! {
    say(&format!("error: {line}"));
    std::process::exit(1)
}

/// One line straight to stderr: `eprintln!` in a test is captured, and lost on `exit`.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Reuse an emulator that is already running instead of starting one (e.g.
/// `ONCE_TEST_EMULATOR_HOST=127.0.0.1:8085 cargo test`): an explicit opt-in, unlike the
/// `FIRESTORE_EMULATOR_HOST` a gcloud shell leaves set, which the tests never follow.
pub const REUSE_VAR: &str = "ONCE_TEST_EMULATOR_HOST";

/// Host:port of the shared emulator, started on first use (or `ONCE_TEST_EMULATOR_HOST`).
/// The emulator is stopped when this process exits.
pub fn emulator_host() -> &'static str {
    EMULATOR.get_or_init(|| {
        if let Ok(h) = std::env::var("FIRESTORE_EMULATOR_HOST") {
            say(&format!(
                "note: ignoring FIRESTORE_EMULATOR_HOST={h}: the tests start their own emulator \
                 (set {REUSE_VAR} to reuse a running one)"
            ));
        }
        let host = match std::env::var(REUSE_VAR) {
            Ok(h) if !h.is_empty() => h,
            _ => start_emulator("firestore"),
        };
        // Set once, before any client exists; every test reaches this through the OnceLock.
        std::env::set_var("FIRESTORE_EMULATOR_HOST", &host);
        host
    })
}

/// A running service with its own project on the shared emulator.
pub struct TestApp {
    /// Where the service listens.
    pub addr: SocketAddr,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The service's fault switches.
    pub faults: Arc<Faults>,
    /// The service's guard (for its test seams).
    pub guard: Guard,
    /// Emulator REST root of this project's documents.
    pub rest: String,
}

/// A port nothing listens on right now, for a child process that must keep its port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh project ID.
pub fn project() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// The binary's configuration, both halves, as a test changes it before the service starts.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The core's (`ONCE_*` of the guard, the server, collections of status documents…).
    pub core: Config,
    /// The shop's (its collections, stock shards and placement).
    pub shop: ShopConfig,
}

/// The service the binary serves (the shop on the core), on `guard`.
pub fn shop_service(guard: Guard, settings: Settings, project: &str) -> Service {
    firestore_once_shop::service(guard, settings.core, settings.shop, project.to_string())
}

/// Start the service with default configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(project(), |_| {}).await
}

/// Build the guard for `project` with `config`; `api_url` overrides the emulator address.
pub async fn guard_for(project: &str, config: &Config, api_url: Option<String>) -> Guard {
    emulator_host();
    let db = service::connect_db(config, project, api_url)
        .await
        .expect("firestore client");
    Guard::new(db, GuardConfig::from(config))
}

/// Start the service on `project` after `tweak` adjusts the configuration.
pub async fn spawn_app_with(project: String, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_at(project, tweak, None).await
}

/// Start the service; `api_url` points its Firestore client elsewhere (a dead port).
pub async fn spawn_app_at(
    project: String,
    tweak: impl FnOnce(&mut Settings),
    api_url: Option<String>,
) -> TestApp {
    spawn_app_full(project, tweak, api_url, |s| s).await
}

/// Start the service, letting `customize` change its state (task kinds, a carrier).
pub async fn spawn_app_full(
    project: String,
    tweak: impl FnOnce(&mut Settings),
    api_url: Option<String>,
    customize: impl FnOnce(Service) -> Service,
) -> TestApp {
    let host = emulator_host();
    let mut settings = Settings::default();
    tweak(&mut settings);
    let guard = guard_for(&project, &settings.core, api_url).await;
    let faults = Arc::new(Faults::default());
    let state = shop_service(guard.clone(), settings, &project).with_faults(faults.clone());
    let state = customize(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(listener, state, std::future::pending()));
    TestApp {
        addr,
        rest: format!("http://{host}/v1/projects/{project}/databases/(default)/documents"),
        http: reqwest::Client::new(),
        faults,
        guard,
    }
}

impl TestApp {
    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POST a JSON order.
    pub async fn order(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/orders"))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Create `items/{id}` with `stock`, through the emulator's REST API.
    pub async fn seed(&self, id: &str, stock: i64) {
        let r = self
            .http
            .post(format!("{}/items", self.rest))
            .query(&[("documentId", id)])
            .json(&serde_json::json!({"fields": {"stock": {"integerValue": stock.to_string()}}}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "seed {id}: {}",
            r.text().await.unwrap()
        );
    }

    /// A document's REST representation, `None` when missing.
    pub async fn doc(&self, collection: &str, id: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/{collection}/{}", self.rest, urlencode(id)))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            return None;
        }
        assert!(r.status().is_success());
        Some(r.json().await.unwrap())
    }

    /// The service's `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics_text(&self.http, &format!("http://{}", self.addr)).await
    }

    /// Current total stock of an item: its main document plus every stock shard.
    pub async fn stock(&self, id: &str) -> Option<i64> {
        let d = self.doc("items", id).await?;
        let main: i64 = d["fields"]["stock"]["integerValue"]
            .as_str()?
            .parse()
            .ok()?;
        Some(main + shard_units(&self.http, &self.rest, id).await)
    }

    /// Every document of a collection (REST, paged).
    pub async fn list(&self, collection: &str) -> Vec<Value> {
        list_documents(&self.http, &self.rest, collection, None).await
    }
}

/// Every document of `collection` under the REST root `rest`, paged; `mask` names the one
/// field to return (`__name__` for names alone: cheap counts of large collections).
pub async fn list_documents(
    http: &reqwest::Client,
    rest: &str,
    collection: &str,
    mask: Option<&str>,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut q = vec![("pageSize".to_string(), "500".to_string())];
        if let Some(field) = mask {
            q.push(("mask.fieldPaths".into(), field.into()));
        }
        if let Some(t) = &token {
            q.push(("pageToken".into(), t.clone()));
        }
        let v: Value = http
            .get(format!("{rest}/{collection}"))
            .query(&q)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(docs) = v["documents"].as_array() {
            out.extend(docs.iter().cloned());
        }
        match v["nextPageToken"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return out,
        }
    }
}

/// Units held by the stock shards `items/{id}/shards/*` (0 when there are none).
pub async fn shard_units(http: &reqwest::Client, rest: &str, id: &str) -> i64 {
    let col = format!("items/{}/shards", urlencode(id));
    list_documents(http, rest, &col, Some("stock"))
        .await
        .iter()
        .filter_map(|d| {
            d["fields"]["stock"]["integerValue"]
                .as_str()?
                .parse::<i64>()
                .ok()
        })
        .sum()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// sha256 hex of `kind:key`, computed independently of the crate.
pub fn op_id(kind: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("{kind}:{key}").as_bytes()))
}

impl TestApp {
    /// POST an order and return only its status code (for fan-out with `join_all`).
    pub async fn order_owned(&self, body: Value) -> u16 {
        self.order(&body).await.status().as_u16()
    }
}

/// What the [`FaultProxy`] does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Forward everything.
    Up,
    /// Cut every connection and refuse new ones: Firestore is unavailable.
    Down,
    /// Forward everything, each chunk sent towards the emulator this much later: Firestore
    /// is slow, so a request can be caught in flight.
    Slow(std::time::Duration),
    /// Forward requests, drop every answer: the service's reads and commits reach Firestore
    /// (a commit is applied) but it never learns their outcome. A connection that lost an
    /// answer stays deaf; once the link is `Up` again it is closed towards the service, so
    /// the service reconnects (its upstream end is kept open, as a front end would).
    DropAnswers,
}

/// A TCP proxy in front of the emulator that a test can cut, to make Firestore fail for one
/// service without touching the shared emulator.
pub struct FaultProxy {
    /// `http://127.0.0.1:port`, for `FirestoreDbOptions::firebase_api_url`.
    pub url: String,
    link: tokio::sync::watch::Sender<Link>,
}

/// How long a held upstream connection outlives its client (longer than Firestore's 60 s
/// idle expiry of a transaction, so nothing the client left open is released early).
const HOLD_UPSTREAM: std::time::Duration = std::time::Duration::from_secs(90);

impl FaultProxy {
    /// Start a proxy to `upstream` (host:port).
    pub async fn start(upstream: String) -> Self {
        Self::start_with(upstream, false).await
    }

    /// Start a proxy that keeps each upstream connection open after its client is gone (a
    /// killed instance): on production a dead instance's connection ends at Google's front
    /// end, not at Firestore, so the emulator must not learn of the death either.
    pub async fn start_holding(upstream: String) -> Self {
        Self::start_with(upstream, true).await
    }

    async fn start_with(upstream: String, hold: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (link, rx) = tokio::sync::watch::channel(Link::Up);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *rx.borrow() == Link::Down {
                    continue;
                }
                let upstream = upstream.clone();
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (from_client, to_client) = inbound.split();
                    let (from_upstream, to_upstream) = out.split();
                    let link = rx.clone();
                    let back_link = rx.clone();
                    let both_ways = async {
                        let back = answers(from_upstream, to_client, back_link);
                        tokio::join!(delayed_copy(from_client, to_upstream, link, hold), back)
                    };
                    tokio::select! {
                        _ = both_ways => {}
                        _ = rx.wait_for(|l| *l == Link::Down) => {}
                    }
                    if hold {
                        tokio::time::sleep(HOLD_UPSTREAM).await;
                    }
                    drop(out);
                });
            }
        });
        Self { url, link }
    }

    /// Change what the proxy does.
    pub fn set(&self, l: Link) {
        let _ = self.link.send(l);
    }
}

/// Copy Firestore's answers to the client, unless [`Link::DropAnswers`] swallows them (then
/// the connection stays deaf, and is closed towards the client once the link is back up).
async fn answers(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut link: tokio::sync::watch::Receiver<Link>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let mut deaf = *link.borrow() == Link::DropAnswers;
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            changed = link.changed(), if deaf => {
                if changed.is_err() || *link.borrow() != Link::DropAnswers {
                    break;
                }
                continue;
            }
        };
        if *link.borrow() == Link::DropAnswers {
            deaf = true;
        }
        if deaf {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Copy `from` to `to`, holding each chunk back by the delay of [`Link::Slow`] when it is
/// read. Chunks keep their order and are delayed in parallel (pure latency, no throttling).
/// With `hold`, the end of `from` is not passed on (the upstream never sees the client go).
async fn delayed_copy(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    link: tokio::sync::watch::Receiver<Link>,
    hold: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let delay = match *link.borrow() {
                        Link::Slow(d) => d,
                        _ => std::time::Duration::ZERO,
                    };
                    let due = tokio::time::Instant::now() + delay;
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        if !hold {
            let _ = to.shutdown().await;
        }
    };
    tokio::join!(reader, writer);
}

static PUBSUB: OnceLock<String> = OnceLock::new();

/// Host:port of the shared Pub/Sub emulator, started on first use (`PUBSUB_EMULATOR_HOST`
/// names an existing one) and stopped when this process exits.
pub fn pubsub_host() -> &'static str {
    PUBSUB.get_or_init(|| {
        std::env::var("PUBSUB_EMULATOR_HOST").unwrap_or_else(|_| start_emulator("pubsub"))
    })
}

/// The Pub/Sub emulator's REST API for one project: topics, push subscriptions, publishing.
pub struct PubSub {
    http: reqwest::Client,
    base: String,
    project: String,
}

impl PubSub {
    /// A client for `project` on the shared emulator.
    pub fn new(project: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{}/v1/projects/{project}", pubsub_host()),
            project: project.to_string(),
        }
    }

    async fn put(&self, path: &str, body: Value) {
        let r = self
            .http
            .put(format!("{}/{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    /// The project ID.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// Create `topic`.
    pub async fn topic(&self, topic: &str) {
        self.put(&format!("topics/{topic}"), serde_json::json!({}))
            .await;
    }

    /// Create a push subscription on `topic` delivering to `endpoint`.
    pub async fn push_subscription(&self, name: &str, topic: &str, endpoint: &str) {
        self.push_subscription_with(name, topic, serde_json::json!({"pushEndpoint": endpoint}))
            .await;
    }

    /// Create a push subscription on `topic` with this `pushConfig` (payload unwrapping…).
    pub async fn push_subscription_with(&self, name: &str, topic: &str, push_config: Value) {
        let body = serde_json::json!({
            "topic": format!("projects/{}/topics/{topic}", self.project),
            "ackDeadlineSeconds": 10,
            "pushConfig": push_config
        });
        self.put(&format!("subscriptions/{name}"), body).await;
    }

    /// Publish raw messages (`{"data": base64, "attributes": {...}}`); their message IDs.
    pub async fn publish_messages(&self, topic: &str, messages: &[Value]) -> Vec<String> {
        let r = self
            .http
            .post(format!("{}/topics/{topic}:publish", self.base))
            .json(&serde_json::json!({ "messages": messages }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let v: Value = r.json().await.unwrap();
        v["messageIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    }

    /// Delete a subscription (stops its pushes); best effort.
    pub async fn delete_subscription(&self, name: &str) {
        let _ = self
            .http
            .delete(format!("{}/subscriptions/{name}", self.base))
            .send()
            .await;
    }

    /// Publish each payload as one message (base64 JSON `data`), in batches the API accepts.
    pub async fn publish(&self, topic: &str, payloads: &[Value]) {
        use base64::Engine;
        let messages: Vec<Value> = payloads
            .iter()
            .map(|p| {
                let data = base64::engine::general_purpose::STANDARD.encode(p.to_string());
                serde_json::json!({ "data": data })
            })
            .collect();
        for batch in messages.chunks(500) {
            let r = self
                .http
                .post(format!("{}/topics/{topic}:publish", self.base))
                .json(&serde_json::json!({ "messages": batch }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
    }
}

/// Run `tests/clients/encode.py` with the real client libraries (pinned in
/// `tests/clients/requirements.txt`) in a virtualenv cached under `target/clients-venv`, and
/// return what it printed: case name → `{"headers": {...}, "body_base64": "..."}`.
pub fn client_encoded(item: &str) -> serde_json::Map<String, Value> {
    use std::process::Command;
    let root = env!("CARGO_MANIFEST_DIR");
    let venv = format!("{root}/target/clients-venv");
    let reqs = format!("{root}/tests/clients/requirements.txt");
    let pins = std::fs::read_to_string(&reqs).expect("tests/clients/requirements.txt");
    let stamp = format!("{venv}/.pins");
    let python = format!("{venv}/bin/python");
    let fresh = std::fs::read_to_string(&stamp).ok().as_deref() == Some(pins.as_str())
        && std::path::Path::new(&python).exists();
    if !fresh {
        let ok = Command::new("python3")
            .args(["-m", "venv", "--clear", &venv])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "the client-encoder tests need python3 with venv (Debian: python3-venv)"
        );
        let out = Command::new(format!("{venv}/bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                &reqs,
            ])
            .output()
            .expect("run pip");
        assert!(
            out.status.success(),
            "pip could not install tests/clients/requirements.txt (PyPI reachable?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&stamp, &pins).unwrap();
    }
    let out = Command::new(&python)
        .args([&format!("{root}/tests/clients/encode.py"), item])
        .output()
        .expect("run encode.py");
    assert!(
        out.status.success(),
        "encode.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("encode.py prints JSON")
}

impl TestApp {
    /// POST `body` with `headers` to `path`.
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut r = self.http.post(self.url(path));
        for (k, v) in headers {
            r = r.header(k.as_str(), v.as_str());
        }
        r.body(body).send().await.unwrap()
    }
}

/// The headers and body bytes of one encoded case.
pub fn encoded_case(
    cases: &serde_json::Map<String, Value>,
    name: &str,
) -> (Vec<(String, String)>, Vec<u8>) {
    use base64::Engine;
    let c = &cases[name];
    let headers = c["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let body = base64::engine::general_purpose::STANDARD
        .decode(c["body_base64"].as_str().unwrap())
        .unwrap();
    (headers, body)
}

/// A document's field as plain text (string, integer or boolean), `None` when absent.
pub fn field<'a>(doc: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut v = &doc["fields"];
    for (i, p) in path.iter().enumerate() {
        v = &v[*p];
        if i + 1 < path.len() {
            v = &v["mapValue"]["fields"];
        }
    }
    let typed = v.as_object()?;
    typed.values().next()
}

/// The `/metrics` text of the service at `base` (`http://host:port`).
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
