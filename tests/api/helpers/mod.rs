//! Test fixture: one Firestore emulator per test binary, a fresh project per test, and the
//! real service on `127.0.0.1:0`. The fault proxy, the Pub/Sub client, the REST readers and
//! the client libraries' encodings are in the submodules, re-exported here.

mod client_encodings;
mod fault_proxy;
mod pubsub;
mod rest;

pub use client_encodings::{client_encoded, encoded_case};
pub use fault_proxy::{FaultProxy, Link};
pub use pubsub::PubSub;
pub use rest::{field, list_documents, metrics_text, op_id, shard_units};

use firestore_once_core::config::Config;
use firestore_once_core::faults::Faults;
use firestore_once_core::guard::{Guard, GuardConfig};
use firestore_once_core::{server, service, Service};
use firestore_once_shop::ShopConfig;
use rest::urlencode;
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

static PUBSUB: OnceLock<String> = OnceLock::new();

/// Host:port of the shared Pub/Sub emulator, started on first use (`PUBSUB_EMULATOR_HOST`
/// names an existing one) and stopped when this process exits.
pub fn pubsub_host() -> &'static str {
    PUBSUB.get_or_init(|| {
        std::env::var("PUBSUB_EMULATOR_HOST").unwrap_or_else(|_| start_emulator("pubsub"))
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

/// A fresh project ID. Every test asks for one first, so this is also where the process gets
/// its global subscriber (see [`AskEveryTime`]).
pub fn project() -> String {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        let _ = tracing::subscriber::set_global_default(AskEveryTime);
    });
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

impl TestApp {
    /// POST an order and return only its status code (for fan-out with `join_all`).
    pub async fn order_owned(&self, body: Value) -> u16 {
        self.order(&body).await.status().as_u16()
    }
}

/// The test binary's global subscriber: records nothing, but tells every callsite to ask the
/// current dispatcher each time. Without it, `tracing-core` caches a callsite's interest from
/// whichever dispatcher the registering thread has: a callsite first met on a test thread with
/// none is "never" for the whole process, and the JSON-log test's scoped dispatcher (the only
/// one) would miss events from callsites another test met first, depending on the order the
/// parallel tests ran in.
struct AskEveryTime;

impl tracing::Subscriber for AskEveryTime {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
