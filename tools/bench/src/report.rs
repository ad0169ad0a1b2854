//! The report: the progress line per row, the Markdown table and the target checks.

use crate::args::Args;
use crate::compare::compare_old;
use crate::measure::Row;
use crate::scenarios::scenarios;
use crate::{overhead, scale_out};
use std::fmt::Write as _;
use std::path::PathBuf;

/// One row as a progress line on stderr.
pub(crate) fn row_line(r: &Row) -> String {
    format!(
        "  {:<3} {:>2} clients {} inst  {:<8} {:>6} orders {:>8.0}/s  p50 {:>6.1} ms  p99 {:>6.1} ms  failed {:>4}  cpu {}  rss {}",
        r.scenario,
        r.clients,
        r.instances,
        r.runner,
        r.orders,
        r.per_sec,
        r.p50_ms,
        r.p99_ms,
        r.failed,
        r.cpu_ms_per_order.map_or("-".into(), |c| format!("{c:.3} ms/order")),
        r.peak_rss_mb.map_or("-".into(), |m| format!("{m:.1} MB")),
    ) + &r
        .emulator_cpu_ms_per_order
        .map_or(String::new(), |c| format!("  emulator {c:.3} ms/order"))
        + &r.proxy.as_ref().map_or(String::new(), |p| {
            format!(
                "  proxy {}/s: ABORTED {} ({} after 10 s), RESOURCE_EXHAUSTED {}, busiest {} commits/s ({})",
                p.rate, p.aborted, p.aborted_late, p.database, p.busiest, p.busiest_doc
            )
        })
}

/// The single-instance row of scenario `id` at `clients` against `runner`.
pub(crate) fn find<'a>(rows: &'a [Row], id: &str, clients: usize, runner: &str) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.scenario == id && r.clients == clients && r.runner == runner && r.instances == 1
    })
}

/// A target's verdict, bold.
pub(crate) fn mark(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

/// How this binary was invoked, relative to the working directory when it is under it
/// (`target/debug/bench`, `target/release/bench`), so the report names the build it is.
fn bench_command() -> String {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("bench"));
    let rel = std::env::current_dir()
        .ok()
        .and_then(|d| exe.strip_prefix(d).ok().map(PathBuf::from));
    rel.unwrap_or(exe).display().to_string()
}

/// The report: the Markdown table, then the targets (none for a smoke run).
pub(crate) fn render(machine: &str, args: &Args, startup_ms: f64, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Machine: {machine}. Command: `{}{}` ({} build, {} s per run).\n",
        bench_command(),
        if args.smoke { " --smoke" } else { "" },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        args.secs
    );
    let _ = writeln!(
        s,
        "| scenario | clients | instances | runner | orders | orders/s | p50 ms | p99 ms | failed/5xx | CPU ms/order | peak RSS MB | emulator CPU ms/order |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows.iter().filter(|r| r.proxy.is_none()) {
        let title = scenarios(false, true, false, false, 1)
            .into_iter()
            .find(|x| x.id == r.scenario)
            .map_or("", |x| x.title);
        let _ = writeln!(
            s,
            "| {} {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} |",
            r.scenario,
            title,
            r.clients,
            r.instances,
            r.runner,
            r.orders,
            r.per_sec,
            r.p50_ms,
            r.p99_ms,
            match (r.rejected, r.note.is_empty()) {
                (0, true) => r.failed.to_string(),
                (0, false) => format!("{} ({})", r.failed, r.note),
                (n, _) => format!("{} (+{n} rejected) {}", r.failed, r.note),
            },
            r.cpu_ms_per_order.map_or("-".into(), |c| format!("{c:.3}")),
            r.peak_rss_mb.map_or("-".into(), |m| format!("{m:.1}")),
            r.emulator_cpu_ms_per_order
                .map_or("-".into(), |c| format!("{c:.3}")),
        );
    }
    crate::limits::table(&mut s, rows);
    if args.smoke {
        let _ = writeln!(
            s,
            "\nStart to first 200 on /healthz (median): {startup_ms:.1} ms.\n\
             Smoke run: checks zero failed service orders and clean invariants; the speed \
             targets apply to the release build's full run (`cargo build --release --bins && \
             target/release/bench`), so none is judged here."
        );
        return s;
    }
    let _ = writeln!(
        s,
        "\nStart to first 200 on /healthz (median): {startup_ms:.1} ms — target < 100 ms: {}",
        mark(startup_ms < 100.0)
    );
    let svc = |id, c| find(rows, id, c, "service");
    let raw = |id, c| find(rows, id, c, "baseline");
    if let (Some(sv), Some(b)) = (svc("1", 32), raw("1", 32)) {
        let t = sv.per_sec / b.per_sec.max(1e-9);
        let p = sv.p99_ms / b.p99_ms.max(1e-9);
        let _ = writeln!(s, "Scenario 1 @32: throughput {t:.2} × baseline (target ≥ 0.8: {}); p99 {p:.2} × baseline (target ≤ 1.5: {})", mark(t >= 0.8), mark(p <= 1.5));
    }
    if let (Some(h), Some(sp)) = (svc("2", 16), svc("1", 16)) {
        let t = h.per_sec / sp.per_sec.max(1e-9);
        let _ = writeln!(s, "Scenario 2 @16: hot item {t:.2} × the service's scenario 1 @16 (target ≥ 0.8: {}); failed {} (target 0: {}); p99 {:.1} ms (target < 250: {})", mark(t >= 0.8), h.failed, mark(h.failed == 0), h.p99_ms, mark(h.p99_ms < 250.0));
        if let Some(b) = raw("2", 16) {
            let _ = writeln!(
                s,
                "  (baseline on the hot item: {:.0} orders/s, {} of {} failed)",
                b.per_sec, b.failed, b.orders
            );
        }
    }
    if let (Some(r), Some(sp)) = (svc("3", 32), svc("1", 32)) {
        let t = r.per_sec / sp.per_sec.max(1e-9);
        let _ = writeln!(
            s,
            "Scenario 3 @32: replays {t:.1} × scenario 1 @32 (target ≥ 6: {})",
            mark(t >= 6.0)
        );
    }
    if let Some(r) = svc("3b", 32) {
        if let Some(sp) = svc("1", 32) {
            let _ = writeln!(
                s,
                "  (replays with the cache off: {:.1} × scenario 1 @32)",
                r.per_sec / sp.per_sec.max(1e-9)
            );
        }
    }
    scale_out::targets(&mut s, rows);
    crate::limits::targets(&mut s, rows);
    let s1: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario == "1" && r.runner == "service")
        .collect();
    for r in s1 {
        let cpu = r.cpu_ms_per_order.unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "CPU per order, scenario 1 @{}: {cpu:.3} ms (target ≤ 0.25: {})",
            r.clients,
            mark(cpu <= 0.25)
        );
    }
    overhead::target(&mut s, rows);
    if let Some(sv) = svc("1", 32) {
        let rss = sv.peak_rss_mb.unwrap_or(0.0);
        let _ = writeln!(
            s,
            "Peak RSS at 32 clients: {rss:.1} MB (target < 20: {})",
            mark(rss < 20.0)
        );
    }
    compare_old(&mut s, rows);
    s
}
