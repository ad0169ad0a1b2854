//! Configuration, read once from the environment as Cloud Run provides it.

use crate::guard::Budget;
use anyhow::{bail, Context};
use std::time::Duration;

/// Collection names of the core's own documents, configurable so the service can share a
/// database with other apps. Your kinds name their own collections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collections {
    /// One status document per operation (`ONCE_OPERATIONS_COLLECTION`, default `operations`).
    pub operations: String,
    /// Deliveries that can never succeed (`ONCE_DEAD_LETTERS_COLLECTION`, default `dead_letters`).
    pub dead_letters: String,
    /// Leases of workflow steps that call the outside world (`ONCE_LEASES_COLLECTION`,
    /// default `leases`).
    pub leases: String,
    /// Task records of workflows, the way from a task's ID to its steps
    /// (`ONCE_TASKS_COLLECTION`, default `tasks`).
    pub tasks: String,
}

impl Default for Collections {
    fn default() -> Self {
        Self {
            operations: "operations".into(),
            dead_letters: "dead_letters".into(),
            leases: "leases".into(),
            tasks: "tasks".into(),
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
    /// 503. Eight: a batch that keeps meeting another instance's commits on the same
    /// documents wins within a few attempts (then the other one yields, see
    /// `Operation::contention_marks`); with five, one batch in several N-instance bench runs
    /// gave up at startup.
    pub max_attempts: u32,
    /// `ONCE_BATCH_MAX`: most operations folded into one commit (group commit), 1 to 500.
    /// Large by default: under a document's write budget a hot document's lane commits about
    /// once a second, and that commit must carry everything that arrived meanwhile.
    pub batch_max: usize,
    /// `ONCE_MAX_COMMIT_WRITES`: most writes in one commit, at most 500 (Firestore's limit);
    /// operations that do not fit wait for the next commit of their lane.
    pub max_commit_writes: usize,
    /// `ONCE_DOC_COMMITS_PER_SEC` and `ONCE_DOC_COMMIT_BURST`: the commit budget of each
    /// document (default one a second, burst two: production Firestore's sustained figure,
    /// see `guard::budget`); `ONCE_DOC_COMMITS_PER_SEC=off` lifts it, as the emulator does.
    pub doc_budget: Option<Budget>,
    /// `ONCE_WORKER_THREADS`: runtime threads; 1 (default) runs everything on one thread,
    /// which costs the least CPU per operation, 0 means one per core.
    pub worker_threads: usize,
    /// `ONCE_REPLAY_CACHE_BYTES`: memory for completed outcomes kept in-process, so replays
    /// skip Firestore; 0 turns the cache off.
    pub replay_cache_bytes: u64,
    /// `ONCE_MAX_BODY_BYTES`: request bodies over this are refused with 413.
    pub max_body_bytes: usize,
    /// `ONCE_RETRY_AFTER_SECS`: the `Retry-After` sent with a 503.
    pub retry_after_secs: u64,
    /// `ONCE_MAX_IN_FLIGHT`: most work requests (`/tasks/{kind}` and every kind route) one
    /// instance works on at once; the next is shed at once with 503 and `Retry-After`, before
    /// its body is read. The default (1,000) is Cloud Run's highest concurrency per instance:
    /// under a document's write budget a hot document's requests wait up to about a second
    /// for their commit, so a burst of demand needs that many in flight (Little's law: 1,000/s
    /// at 1 s each). Cloud Run's own concurrency setting (80 by default) bites first; at the
    /// 1 MiB body limit, 1,000 buffered bodies are 1 GiB, so deploy with 2 GiB when you raise
    /// it (docs/deploy.md).
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
    /// `ONCE_INSTANCE_ID`: this process's name (random when unset), for kinds that place
    /// their data per instance.
    pub instance_id: String,
    /// `ONCE_COMMIT_FROM_KNOWN`: `on` (default) lets a batch whose documents this instance
    /// wrote last commit without reading them first (`guard::known`); `off` reads before
    /// every commit, the behaviour before it (for comparison, and the lost-read fault test).
    pub commit_from_known: bool,
}

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
            batch_max: 500,
            max_commit_writes: 500,
            doc_budget: Some(Budget::PRODUCTION),
            worker_threads: 1,
            replay_cache_bytes: 4 * 1024 * 1024,
            max_body_bytes: 1024 * 1024,
            retry_after_secs: 1,
            max_in_flight: 1000,
            log_format: LogFormat::Json,
            metrics: true,
            shutdown_grace: Duration::from_millis(9000),
            instance_id: "0".into(),
            commit_from_known: true,
        }
    }
}

/// The collection name in variable `k` (else `default`): non-empty, no `/`. For kinds that
/// read their own collection names the same way.
pub fn collection_name(
    get: impl Fn(&str) -> Option<String>,
    k: &str,
    default: &str,
) -> anyhow::Result<String> {
    let v = get(k).unwrap_or_else(|| default.to_string());
    if v.is_empty() || v.contains('/') {
        bail!("{k}={v:?} is not a valid collection name");
    }
    Ok(v)
}

/// The value of variable `name` as read through a lookup (`v`), else `default`; an error
/// that names the variable when it does not parse.
pub fn parse<T: std::str::FromStr>(name: &str, v: Option<String>, default: T) -> anyhow::Result<T>
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
        let name = |k: &str, default: &str| collection_name(&get, k, default);
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
                operations: name("ONCE_OPERATIONS_COLLECTION", "operations")?,
                dead_letters: name("ONCE_DEAD_LETTERS_COLLECTION", "dead_letters")?,
                leases: name("ONCE_LEASES_COLLECTION", "leases")?,
                tasks: name("ONCE_TASKS_COLLECTION", "tasks")?,
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
            batch_max: parse("ONCE_BATCH_MAX", get("ONCE_BATCH_MAX"), d.batch_max)?.clamp(1, 500),
            max_commit_writes: match parse(
                "ONCE_MAX_COMMIT_WRITES",
                get("ONCE_MAX_COMMIT_WRITES"),
                d.max_commit_writes,
            )? {
                n @ 3..=500 => n,
                n => bail!("ONCE_MAX_COMMIT_WRITES={n}: from 3 to 500 (Firestore's limit)"),
            },
            doc_budget: doc_budget(&get)?,
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

/// `ONCE_DOC_COMMITS_PER_SEC` (a positive number, or `off`) and `ONCE_DOC_COMMIT_BURST`.
fn doc_budget(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Budget>> {
    let d = Budget::PRODUCTION;
    let rate = get("ONCE_DOC_COMMITS_PER_SEC");
    if matches!(rate.as_deref().map(str::trim), Some("off")) {
        return Ok(None);
    }
    let per_sec: f64 = parse("ONCE_DOC_COMMITS_PER_SEC", rate, d.per_sec)?;
    if !(per_sec > 0.0 && per_sec.is_finite()) {
        bail!("ONCE_DOC_COMMITS_PER_SEC={per_sec}: a positive number of commits a second, or off");
    }
    let burst: f64 = parse(
        "ONCE_DOC_COMMIT_BURST",
        get("ONCE_DOC_COMMIT_BURST"),
        d.burst,
    )?;
    if !(burst >= 1.0 && burst.is_finite()) {
        bail!("ONCE_DOC_COMMIT_BURST={burst}: at least 1");
    }
    Ok(Some(Budget { per_sec, burst }))
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
        assert_eq!(c.collections, Collections::default());
        assert_eq!(c.database_id, "(default)");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.retention, Duration::from_secs(35 * 86400));
        assert_eq!(c.shutdown_grace, Duration::from_secs(9));
        assert_eq!(c.max_in_flight, 1000);
        assert_eq!(c.doc_budget, Some(Budget::PRODUCTION));
        assert_eq!((c.batch_max, c.max_commit_writes), (500, 500));
        let c = cfg(&[
            ("PORT", "9000"),
            ("GOOGLE_CLOUD_PROJECT", "p1"),
            ("ONCE_OPERATIONS_COLLECTION", "ops"),
            ("ONCE_REQUEST_TIMEOUT_MS", "250"),
            ("ONCE_LOG_FORMAT", "text"),
            ("ONCE_SHUTDOWN_GRACE_MS", "1500"),
            ("ONCE_MAX_IN_FLIGHT", "16"),
            ("ONCE_TASKS_COLLECTION", "t"),
            ("ONCE_LEASES_COLLECTION", "l"),
            ("ONCE_INSTANCE_ID", "rev-1"),
            ("ONCE_DOC_COMMITS_PER_SEC", "10"),
            ("ONCE_DOC_COMMIT_BURST", "4"),
        ])
        .unwrap();
        let cols = &c.collections;
        assert_eq!(
            [&cols.operations, &cols.tasks, &cols.leases],
            ["ops", "t", "l"]
        );
        assert_eq!(c.port, 9000);
        assert_eq!(c.project_id.as_deref(), Some("p1"));
        assert_eq!(c.instance_id, "rev-1");
        assert_eq!(c.request_timeout, Duration::from_millis(250));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.shutdown_grace, Duration::from_millis(1500));
        assert_eq!(c.max_in_flight, 16);
        assert_eq!(
            c.doc_budget,
            Some(Budget {
                per_sec: 10.0,
                burst: 4.0
            })
        );
        let off = cfg(&[("ONCE_DOC_COMMITS_PER_SEC", "off")]).unwrap();
        assert_eq!(off.doc_budget, None);
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (k, v) in [
            ("PORT", "eighty"),
            ("ONCE_DEAD_LETTERS_COLLECTION", "a/b"),
            ("ONCE_REQUEST_TIMEOUT_MS", "0"),
            ("ONCE_LOG_FORMAT", "xml"),
            ("ONCE_SHUTDOWN_GRACE_MS", "soon"),
            ("ONCE_MAX_IN_FLIGHT", "0"),
            ("ONCE_DOC_COMMITS_PER_SEC", "0"),
            ("ONCE_DOC_COMMITS_PER_SEC", "fast"),
            ("ONCE_DOC_COMMIT_BURST", "0.5"),
            ("ONCE_MAX_COMMIT_WRITES", "501"),
        ] {
            let e = cfg(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
    }
}
