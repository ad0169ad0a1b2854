//! Configuration, read once from the environment as Cloud Run provides it.

use crate::shop::stock::Placement;
use anyhow::{bail, Context};
use std::time::Duration;

/// Collection names, configurable so the service can share a database with other apps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collections {
    /// Business items with an integer `stock` (`ONCE_ITEMS_COLLECTION`, default `items`).
    pub items: String,
    /// Accepted orders (`ONCE_ORDERS_COLLECTION`, default `orders`).
    pub orders: String,
    /// One status document per operation (`ONCE_OPERATIONS_COLLECTION`, default `operations`).
    pub operations: String,
    /// Deliveries that can never succeed (`ONCE_DEAD_LETTERS_COLLECTION`, default `dead_letters`).
    pub dead_letters: String,
    /// Leases of task steps that call the outside world (`ONCE_LEASES_COLLECTION`, default
    /// `leases`).
    pub leases: String,
    /// Task records of workflows, the way from a task's ID to its steps
    /// (`ONCE_TASKS_COLLECTION`, default `tasks`).
    pub tasks: String,
    /// `fulfil_order` progress (`ONCE_FULFILMENTS_COLLECTION`, default `fulfilments`).
    pub fulfilments: String,
    /// `fulfil_order` invoices (`ONCE_INVOICES_COLLECTION`, default `invoices`).
    pub invoices: String,
    /// `fulfil_order` shipments (`ONCE_SHIPMENTS_COLLECTION`, default `shipments`).
    pub shipments: String,
    /// `ONCE_STOCK_SHARDS`: how many shard documents (`{items}/{id}/shards/{k}`) an item's
    /// stock may be spread over so several instances can sell one hot item without writing
    /// the same document (see docs/scale-out.md); 0 sells from `{items}/{id}.stock` alone.
    pub stock_shards: u32,
    /// Which items this instance sells from shards (those it met contended) and which shard
    /// it prefers: first `hash(ONCE_INSTANCE_ID) mod stock_shards` (the instance ID is random
    /// per process unless set), another one after repeated conflicts on it (see
    /// [`Placement`]).
    pub placement: Placement,
}

/// Default of `ONCE_STOCK_SHARDS`.
pub const DEFAULT_STOCK_SHARDS: u32 = 16;

/// The shard an instance called `instance` prefers among `shards`: a number is taken as the
/// shard itself (so a deployment can place instances by hand), anything else is hashed.
pub fn shard_of(instance: &str, shards: u32) -> u32 {
    if shards == 0 {
        return 0;
    }
    match instance.parse::<u32>() {
        Ok(n) => n % shards,
        Err(_) => {
            use sha2::{Digest, Sha256};
            let h = Sha256::digest(instance.as_bytes());
            u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % shards
        }
    }
}

impl Default for Collections {
    fn default() -> Self {
        Self {
            items: "items".into(),
            orders: "orders".into(),
            operations: "operations".into(),
            dead_letters: "dead_letters".into(),
            leases: "leases".into(),
            tasks: "tasks".into(),
            fulfilments: "fulfilments".into(),
            invoices: "invoices".into(),
            shipments: "shipments".into(),
            stock_shards: DEFAULT_STOCK_SHARDS,
            placement: Placement::new(0),
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, the fields Cloud Logging reads.
    Json,
    /// Human-readable, for a terminal.
    Text,
}

/// Everything the service reads from its environment. See docs/configuration.md.
#[derive(Clone, Debug)]
pub struct Config {
    /// `PORT`: where to listen (Cloud Run sets it).
    pub port: u16,
    /// `GOOGLE_CLOUD_PROJECT`; when unset the metadata server is asked at start-up.
    pub project_id: Option<String>,
    /// `FIRESTORE_DATABASE`: database ID, default `(default)`.
    pub database_id: String,
    /// Collection names.
    pub collections: Collections,
    /// `ONCE_RETENTION_DAYS`: how long status documents are kept (their `expire_at`).
    pub retention: Duration,
    /// `ONCE_REQUEST_TIMEOUT_MS`: a request's whole budget; past it the answer is 503.
    pub request_timeout: Duration,
    /// `ONCE_FIRESTORE_TIMEOUT_MS`: the budget of each Firestore call.
    pub firestore_timeout: Duration,
    /// `ONCE_MAX_ATTEMPTS`: commit attempts on conflicts or failed reads before answering
    /// 503. Eight: an instance whose refill of its shard meets another instance still
    /// selling the item from its main document wins a commit within a few attempts (then
    /// the other one meets the conflict and moves to its own shard); with five, one batch
    /// in several N-instance bench runs gave up at startup.
    pub max_attempts: u32,
    /// `ONCE_BATCH_MAX`: most operations folded into one transaction (group commit).
    pub batch_max: usize,
    /// `ONCE_WORKER_THREADS`: runtime threads; 1 (default) runs everything on one thread,
    /// which costs the least CPU per order, 0 means one per core.
    pub worker_threads: usize,
    /// `ONCE_REPLAY_CACHE_BYTES`: memory for completed outcomes kept in-process, so replays
    /// skip Firestore; 0 turns the cache off.
    pub replay_cache_bytes: u64,
    /// `ONCE_MAX_BODY_BYTES`: request bodies over this are refused with 413.
    pub max_body_bytes: usize,
    /// `ONCE_RETRY_AFTER_SECS`: the `Retry-After` sent with a 503.
    pub retry_after_secs: u64,
    /// `ONCE_MAX_IN_FLIGHT`: most `/orders` and `/tasks` requests one instance works on at
    /// once; the next is shed at once with 503 and `Retry-After`, before its body is read.
    /// The default (200) is 2.5 times Cloud Run's default concurrency (80), so on a default
    /// deployment Cloud Run's own limit bites first and this one only guards against a raised
    /// concurrency setting or a flood outside Cloud Run; at the 1 MiB body limit it bounds
    /// buffered bodies to 200 MiB, inside the smallest instance that runs this service well.
    pub max_in_flight: usize,
    /// `ONCE_LOG_FORMAT`: `json` or `text`; default json unless stdout is a terminal.
    pub log_format: LogFormat,
    /// `ONCE_METRICS`: `on` (default) serves `GET /metrics` and records the `once_*` series;
    /// `off` does neither.
    pub metrics: bool,
    /// `ONCE_SHUTDOWN_GRACE_MS`: after SIGTERM, how long in-flight requests may run before
    /// the process exits anyway. Cloud Run kills the instance 10 s after SIGTERM, so the
    /// default (9 s) leaves time to flush logs and exit 0 on our own terms.
    pub shutdown_grace: Duration,
    /// `ONCE_INSTANCE_ID`: this process's name for its stock shard (random when unset).
    pub instance_id: String,
    /// `ONCE_COMMIT_FROM_KNOWN`: `on` (default) lets a batch whose documents this instance
    /// wrote last commit without reading them first (`guard::known`); `off` reads before
    /// every commit, the behaviour before it (for comparison, and the lost-read fault test).
    pub commit_from_known: bool,
}

/// Most stock shards per item: a gather reads all of them in one call and verifies them in
/// one commit (Firestore allows 500 writes per commit).
pub const MAX_STOCK_SHARDS: u32 = 64;

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 8080,
            project_id: None,
            database_id: firestore::FIREBASE_DEFAULT_DATABASE_ID.to_string(),
            collections: Collections::default(),
            retention: Duration::from_secs(35 * 24 * 3600),
            request_timeout: Duration::from_secs(8),
            firestore_timeout: Duration::from_secs(3),
            max_attempts: 8,
            batch_max: 16,
            worker_threads: 1,
            replay_cache_bytes: 4 * 1024 * 1024,
            max_body_bytes: 1024 * 1024,
            retry_after_secs: 1,
            max_in_flight: 200,
            log_format: LogFormat::Json,
            metrics: true,
            shutdown_grace: Duration::from_millis(9000),
            instance_id: "0".into(),
            commit_from_known: true,
        }
    }
}

fn parse<T: std::str::FromStr>(name: &str, v: Option<String>, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match v {
        None => Ok(default),
        Some(s) => s
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={s:?} is not valid: {e}")),
    }
}

impl Config {
    /// Read the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        use std::io::IsTerminal;
        Self::from_lookup(|k| std::env::var(k).ok(), std::io::stdout().is_terminal())
    }

    /// Read configuration through `get`, so tests can supply their own environment.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        terminal: bool,
    ) -> anyhow::Result<Self> {
        let d = Self::default();
        let name = |k: &str, default: &str| -> anyhow::Result<String> {
            let v = get(k).unwrap_or_else(|| default.to_string());
            if v.is_empty() || v.contains('/') {
                bail!("{k}={v:?} is not a valid collection name");
            }
            Ok(v)
        };
        let ms = |k: &str, default: Duration| -> anyhow::Result<Duration> {
            let v: u64 = parse(k, get(k), default.as_millis() as u64)?;
            if v == 0 {
                bail!("{k} must be positive");
            }
            Ok(Duration::from_millis(v))
        };
        let log_format = match get("ONCE_LOG_FORMAT").as_deref() {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            None | Some("") if terminal => LogFormat::Text,
            None | Some("") => LogFormat::Json,
            Some(other) => bail!("ONCE_LOG_FORMAT={other:?}: use json or text"),
        };
        let retention_days: u64 = parse("ONCE_RETENTION_DAYS", get("ONCE_RETENTION_DAYS"), 35)?;
        let stock_shards: u32 = parse(
            "ONCE_STOCK_SHARDS",
            get("ONCE_STOCK_SHARDS"),
            DEFAULT_STOCK_SHARDS,
        )?;
        if stock_shards > MAX_STOCK_SHARDS {
            bail!("ONCE_STOCK_SHARDS={stock_shards}: at most {MAX_STOCK_SHARDS}");
        }
        let instance_id = get("ONCE_INSTANCE_ID")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("{:016x}", fastrand::u64(..)));
        let cfg = Self {
            port: parse("PORT", get("PORT"), d.port)?,
            project_id: get("GOOGLE_CLOUD_PROJECT").filter(|p| !p.is_empty()),
            database_id: get("FIRESTORE_DATABASE")
                .filter(|s| !s.is_empty())
                .unwrap_or(d.database_id),
            collections: Collections {
                items: name("ONCE_ITEMS_COLLECTION", "items")?,
                orders: name("ONCE_ORDERS_COLLECTION", "orders")?,
                operations: name("ONCE_OPERATIONS_COLLECTION", "operations")?,
                dead_letters: name("ONCE_DEAD_LETTERS_COLLECTION", "dead_letters")?,
                leases: name("ONCE_LEASES_COLLECTION", "leases")?,
                tasks: name("ONCE_TASKS_COLLECTION", "tasks")?,
                fulfilments: name("ONCE_FULFILMENTS_COLLECTION", "fulfilments")?,
                invoices: name("ONCE_INVOICES_COLLECTION", "invoices")?,
                shipments: name("ONCE_SHIPMENTS_COLLECTION", "shipments")?,
                stock_shards,
                placement: Placement::new(shard_of(&instance_id, stock_shards)),
            },
            instance_id,
            retention: Duration::from_secs(retention_days.max(1) * 24 * 3600),
            request_timeout: ms("ONCE_REQUEST_TIMEOUT_MS", d.request_timeout)?,
            firestore_timeout: ms("ONCE_FIRESTORE_TIMEOUT_MS", d.firestore_timeout)?,
            max_attempts: parse(
                "ONCE_MAX_ATTEMPTS",
                get("ONCE_MAX_ATTEMPTS"),
                d.max_attempts,
            )?
            .max(1),
            batch_max: parse("ONCE_BATCH_MAX", get("ONCE_BATCH_MAX"), d.batch_max)?.clamp(1, 100),
            worker_threads: parse(
                "ONCE_WORKER_THREADS",
                get("ONCE_WORKER_THREADS"),
                d.worker_threads,
            )?,
            replay_cache_bytes: parse(
                "ONCE_REPLAY_CACHE_BYTES",
                get("ONCE_REPLAY_CACHE_BYTES"),
                d.replay_cache_bytes,
            )?,
            max_body_bytes: parse(
                "ONCE_MAX_BODY_BYTES",
                get("ONCE_MAX_BODY_BYTES"),
                d.max_body_bytes,
            )?,
            retry_after_secs: parse(
                "ONCE_RETRY_AFTER_SECS",
                get("ONCE_RETRY_AFTER_SECS"),
                d.retry_after_secs,
            )?,
            max_in_flight: match parse(
                "ONCE_MAX_IN_FLIGHT",
                get("ONCE_MAX_IN_FLIGHT"),
                d.max_in_flight,
            )? {
                0 => bail!("ONCE_MAX_IN_FLIGHT must be positive"),
                n => n,
            },
            log_format,
            commit_from_known: match get("ONCE_COMMIT_FROM_KNOWN").as_deref().map(str::trim) {
                None | Some("on") | Some("true") | Some("1") => true,
                Some("off") | Some("false") | Some("0") => false,
                Some(other) => {
                    bail!("ONCE_COMMIT_FROM_KNOWN={other:?} is not valid: use on or off")
                }
            },
            metrics: match get("ONCE_METRICS").as_deref().map(str::trim) {
                None | Some("on") | Some("true") | Some("1") => true,
                Some("off") | Some("false") | Some("0") => false,
                Some(other) => bail!("ONCE_METRICS={other:?} is not valid: use on or off"),
            },
            shutdown_grace: ms("ONCE_SHUTDOWN_GRACE_MS", d.shutdown_grace)?,
        };
        Ok(cfg)
    }
}

/// The project ID: `GOOGLE_CLOUD_PROJECT` when set, else the metadata server, which is how
/// Cloud Run exposes it (the variable is not set there by default).
pub async fn resolve_project_id(config: &Config) -> anyhow::Result<String> {
    if let Some(p) = &config.project_id {
        return Ok(p.clone());
    }
    let url = std::env::var("GCE_METADATA_HOST")
        .map(|h| format!("http://{h}"))
        .unwrap_or_else(|_| "http://metadata.google.internal".into());
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?
        .get(format!("{url}/computeMetadata/v1/project/project-id"))
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .context("GOOGLE_CLOUD_PROJECT is not set and the metadata server did not answer")?
        .error_for_status()
        .context("the metadata server refused the project-id request")?;
    let id = resp.text().await?.trim().to_string();
    if id.is_empty() {
        bail!("the metadata server returned an empty project ID");
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned(), false)
    }

    #[test]
    fn defaults_and_overrides() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(
            c.collections,
            Collections {
                placement: c.collections.placement.clone(),
                ..Collections::default()
            }
        );
        assert!(c.collections.placement.shard() < DEFAULT_STOCK_SHARDS);
        let c = cfg(&[("ONCE_INSTANCE_ID", "5"), ("ONCE_STOCK_SHARDS", "4")]).unwrap();
        assert_eq!(
            (c.collections.stock_shards, c.collections.placement.shard()),
            (4, 1)
        );
        assert_eq!(shard_of("rev-abc", 0), 0);
        assert_eq!(shard_of("rev-abc", 8), shard_of("rev-abc", 8));
        assert_eq!(c.database_id, "(default)");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.retention, Duration::from_secs(35 * 86400));
        assert_eq!(c.shutdown_grace, Duration::from_secs(9));
        assert_eq!(c.max_in_flight, 200);
        let c = cfg(&[
            ("PORT", "9000"),
            ("GOOGLE_CLOUD_PROJECT", "p1"),
            ("ONCE_ITEMS_COLLECTION", "stock"),
            ("ONCE_REQUEST_TIMEOUT_MS", "250"),
            ("ONCE_LOG_FORMAT", "text"),
            ("ONCE_SHUTDOWN_GRACE_MS", "1500"),
            ("ONCE_MAX_IN_FLIGHT", "16"),
            ("ONCE_TASKS_COLLECTION", "t"),
            ("ONCE_FULFILMENTS_COLLECTION", "f"),
            ("ONCE_INVOICES_COLLECTION", "i"),
            ("ONCE_SHIPMENTS_COLLECTION", "s"),
        ])
        .unwrap();
        let cols = &c.collections;
        assert_eq!(
            [
                &cols.tasks,
                &cols.fulfilments,
                &cols.invoices,
                &cols.shipments
            ],
            ["t", "f", "i", "s"]
        );
        assert_eq!(c.port, 9000);
        assert_eq!(c.project_id.as_deref(), Some("p1"));
        assert_eq!(c.collections.items, "stock");
        assert_eq!(c.request_timeout, Duration::from_millis(250));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.shutdown_grace, Duration::from_millis(1500));
        assert_eq!(c.max_in_flight, 16);
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (k, v) in [
            ("PORT", "eighty"),
            ("ONCE_ITEMS_COLLECTION", "a/b"),
            ("ONCE_REQUEST_TIMEOUT_MS", "0"),
            ("ONCE_LOG_FORMAT", "xml"),
            ("ONCE_SHUTDOWN_GRACE_MS", "soon"),
            ("ONCE_MAX_IN_FLIGHT", "0"),
            ("ONCE_STOCK_SHARDS", "65"),
        ] {
            let e = cfg(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
    }
}
