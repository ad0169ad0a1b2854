//! Configuration, read once from the environment as Cloud Run provides it.

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
    /// `ONCE_MAX_IN_FLIGHT`: most work requests (`/tasks/{kind}` and every kind route) one instance works on at
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
        assert_eq!(c.collections, Collections::default());
        assert_eq!(c.database_id, "(default)");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.retention, Duration::from_secs(35 * 86400));
        assert_eq!(c.shutdown_grace, Duration::from_secs(9));
        assert_eq!(c.max_in_flight, 200);
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
        ] {
            let e = cfg(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
    }
}
