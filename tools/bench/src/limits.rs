//! Scenario family 6: the service measured through the limits proxy (tools/limits-proxy),
//! which enforces production Firestore's per-document commit rate, its 500 writes per
//! commit and its 10,000 writes a second per database in front of the emulator. The service
//! runs with its write budget set to the proxy's rate, as it would be set to production's;
//! the row adds what only the proxy sees: the ABORTED answers it gave (all, and after the
//! first 10 s), the RESOURCE_EXHAUSTED ones (the database's writes per second), and the most
//! commits one document received in one second.

use crate::env::Env;
use crate::measure::Row;
use crate::report::mark;
use anyhow::{bail, Context, Result};
use limits_proxy::Stats;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Seconds after which the proxy should refuse nothing: the run's start-up (first refills,
/// items spreading to shards) is over.
pub(crate) const SETTLED_AFTER_SECS: usize = 10;

/// What the proxy counted over one row.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProxyFigures {
    /// The commit rate per document it allowed (and the service's budget).
    pub(crate) rate: f64,
    /// The burst it allowed on top (`--doc-burst`, production's tolerance; the service's own
    /// burst is smaller).
    pub(crate) burst: f64,
    /// Commits it refused with ABORTED for the per-document rate: answers the service saw.
    pub(crate) aborted: u64,
    /// Of those, refused after the first [`SETTLED_AFTER_SECS`] seconds.
    pub(crate) aborted_late: u64,
    /// Commits it refused for carrying more than 500 writes.
    pub(crate) too_large: u64,
    /// Commits it refused with RESOURCE_EXHAUSTED for the database's writes per second.
    pub(crate) database: u64,
    /// The most commits one document received within one second.
    pub(crate) busiest: u64,
    /// That document, under `documents/`.
    pub(crate) busiest_doc: String,
}

/// The `limits-proxy` binary next to this one.
pub(crate) fn proxy_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let bin = exe
        .parent()
        .context("the bench binary has no directory")?
        .join("limits-proxy");
    if !bin.exists() {
        bail!(
            "the proxy binary {} is missing: build it with `cargo build --release --bins`",
            bin.display()
        );
    }
    Ok(bin)
}

/// A proxy child process, killed when dropped.
pub(crate) struct Proxy {
    child: Child,
    /// Where the services send their Firestore calls (`FIRESTORE_EMULATOR_HOST`).
    pub(crate) addr: String,
    admin: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Env {
    /// Start a proxy in front of this run's emulator allowing `rate` commits a second per
    /// document (its other limits at their defaults: production's), ready when it says so.
    pub(crate) fn start_proxy(&self, rate: f64) -> Result<Proxy> {
        let bin = proxy_binary()?;
        let mut child = Command::new(&bin)
            .args(["--upstream", &self.emulator, "--doc-writes-per-sec"])
            .arg(rate.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let out = child.stdout.take().context("the proxy's stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        // `limits-proxy listening on HOST:PORT admin HOST:PORT`
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(admin)) = (words.get(3), words.get(5)) else {
            let _ = child.kill();
            bail!("the limits proxy did not start: {line:?}");
        };
        Ok(Proxy {
            addr: addr.to_string(),
            admin: admin.to_string(),
            child,
        })
    }

    /// Zero the proxy's counts (after seeding, before the measured phase).
    pub(crate) async fn reset_proxy(&self, p: &Proxy) -> Result<()> {
        self.http
            .post(format!("http://{}/reset", p.admin))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// What the proxy counted since its reset.
    pub(crate) async fn proxy_figures(&self, p: &Proxy, rate: f64) -> Result<ProxyFigures> {
        let stats: Stats = self
            .http
            .get(format!("http://{}/stats?top=1", p.admin))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let late: u64 = stats
            .per_second
            .iter()
            .skip(SETTLED_AFTER_SECS)
            .map(|s| s.refused_rate)
            .sum();
        let (busiest, busiest_doc) = stats.busiest_window.map_or((0, String::new()), |b| {
            let short = b
                .document
                .split_once("/documents/")
                .map_or(b.document.clone(), |(_, d)| d.to_string());
            (b.commits, short)
        });
        Ok(ProxyFigures {
            rate,
            burst: stats.limits.doc_burst,
            aborted: stats.totals.commits_refused_rate,
            aborted_late: late,
            too_large: stats.totals.commits_refused_size,
            database: stats.totals.commits_refused_database,
            busiest,
            busiest_doc,
        })
    }
}

/// Whether every document stayed inside production's budget, by the proxy's own count. The
/// proxy forwards nothing past a document's bucket (at most burst + rate commits in one
/// second), so what shows a service pressing past it is a refusal: any ABORTED after the
/// start-up, or a commit over 500 writes. The busiest document's second is printed against
/// that bound for the reader; each instance keeps its own budget, so instances sharing a
/// document at start-up can together reach the proxy's burst.
fn inside_budget(p: &ProxyFigures) -> bool {
    p.aborted_late == 0 && p.too_large == 0 && (p.busiest as f64) <= p.rate + p.burst
}

/// The table of the rows through the proxy.
pub(crate) fn table(s: &mut String, rows: &[Row]) {
    let limited: Vec<&Row> = rows.iter().filter(|r| r.proxy.is_some()).collect();
    if limited.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nThrough the limits proxy (production's per-document commit rate and 500 writes per \
         commit; the service's budget set to the same rate):\n"
    );
    let _ = writeln!(
        s,
        "| scenario | commits/s/doc | clients | instances | orders | orders/s | p50 ms | p99 ms | failed/5xx | ABORTED (after {SETTLED_AFTER_SECS} s) | RESOURCE_EXHAUSTED | most commits/s on one document |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for r in limited {
        let Some(p) = &r.proxy else { continue };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {}{} | {} ({}) | {} | {} ({}) |",
            r.scenario,
            p.rate,
            r.clients,
            r.instances,
            r.orders,
            r.per_sec,
            r.p50_ms,
            r.p99_ms,
            r.failed,
            if r.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.note)
            },
            p.aborted,
            p.aborted_late,
            p.database,
            p.busiest,
            p.busiest_doc,
        );
    }
}

/// The targets of issue 21, from the rows through the proxy.
pub(crate) fn targets(s: &mut String, rows: &[Row]) {
    let find = |id: &str, rate: f64, clients: usize, instances: usize| {
        rows.iter().find(|r| {
            r.scenario == id
                && r.clients == clients
                && r.instances == instances
                && r.proxy.as_ref().is_some_and(|p| p.rate == rate)
        })
    };
    for n in [1, 4] {
        if let Some(r) = find("6", 1.0, 1000, n) {
            let Some(p) = &r.proxy else { continue };
            let _ = writeln!(
                s,
                "Scenario 6, 1 commit/s/doc, 1000 clients, {n} instance(s): {:.0} orders/s \
                 (target ≥ 1000: {}), p99 {:.0} ms (target ≤ 2500: {}), failed {} (target 0: {}), \
                 ABORTED after {SETTLED_AFTER_SECS} s {} (target 0: {}), busiest document {} \
                 commits in one second of the {} production allows (burst {} + rate {}; \
                 inside the budget, by the proxy's count: {})",
                r.per_sec,
                mark(r.per_sec >= 1000.0),
                r.p99_ms,
                mark(r.p99_ms <= 2500.0),
                r.failed,
                mark(r.failed == 0),
                p.aborted_late,
                mark(p.aborted_late == 0),
                p.busiest,
                p.burst + p.rate,
                p.burst,
                p.rate,
                mark(inside_budget(p)),
            );
        }
        if let Some(r) = find("6", 10.0, 1000, n) {
            let _ = writeln!(
                s,
                "Scenario 6, 10 commits/s/doc, 1000 clients, {n} instance(s): {:.0} orders/s \
                 (target ≥ 2000: {}), p99 {:.0} ms (target ≤ 1000: {}), failed {} (target 0: {})",
                r.per_sec,
                mark(r.per_sec >= 2000.0),
                r.p99_ms,
                mark(r.p99_ms <= 1000.0),
                r.failed,
                mark(r.failed == 0),
            );
        }
    }
    let all: Vec<&Row> = rows.iter().filter(|r| r.proxy.is_some()).collect();
    if !all.is_empty() {
        let failed: usize = all.iter().map(|r| r.failed).sum();
        let outside = all
            .iter()
            .filter(|r| r.proxy.as_ref().is_some_and(|p| !inside_budget(p)))
            .count();
        let _ = writeln!(
            s,
            "Every row through the proxy: {failed} failed orders (target 0: {}), {outside} rows with \
             a document outside its budget or refused after {SETTLED_AFTER_SECS} s (target 0: {}), \
             invariants checked after each row",
            mark(failed == 0),
            mark(outside == 0),
        );
    }
}
