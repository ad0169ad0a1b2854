//! Readers of `/proc`: CPU time (service, bench, emulator), peak and anonymous RSS, the machine.

use anyhow::{Context, Result};
use std::process::Command;
use std::time::Duration;

/// Cores, CPU model and memory of this machine, for the report.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = proc_kb("/proc/meminfo", "MemTotal:")
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB RAM")
}

/// CPU time of `pid` in seconds: the sum of its threads' run time in nanoseconds
/// (`/proc/<pid>/task/*/schedstat`), else utime + stime, which come in clock ticks (10 ms: on
/// a run of a few hundred ms of CPU that rounding alone moved a row by ±5 %). A thread that
/// exits during a run takes its time with it; the service's runtime threads live as long as
/// it does.
pub(crate) fn cpu_secs(pid: u32) -> Result<f64> {
    if let Some(ns) = run_time_ns(pid) {
        return Ok(ns as f64 / 1e9);
    }
    stat_cpu_secs(pid)
}

/// utime + stime of `pid` in seconds: counts the threads that already exited too (a JVM
/// starts and ends threads during a run, so its per-thread sum can go down).
fn stat_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unreadable /proc stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; `after` starts at field 3 (state).
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / clock_ticks())
}

fn run_time_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread may exit between the listing and the read: it no longer counts.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds of the emulator serving `host` (`127.0.0.1:PORT`): every process of the
/// session `emulator/start` made for it (the launcher script and its JVM), found through the
/// pid file it wrote. `None` for an emulator this bench did not start.
pub(crate) fn emulator_cpu_secs(host: &str) -> Option<f64> {
    let port = host.rsplit(':').next()?;
    let dir = std::env::var("EMULATOR_STATE_DIR").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/emulators").to_string()
    });
    let leader: u32 = std::fs::read_to_string(format!("{dir}/firestore-{port}.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After "pid (comm) ": state ppid pgrp session …
        let session = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(3))
            .and_then(|s| s.parse::<u32>().ok());
        if session == Some(leader) {
            total += stat_cpu_secs(pid).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// The number after `key` (e.g. `VmHWM:`) in a `/proc` file of `key value kB` lines.
fn proc_kb(path: &str, key: &str) -> Option<f64> {
    std::fs::read_to_string(path).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    })
}

/// Peak resident set (`VmHWM`) of `pid` in MB.
pub(crate) fn peak_rss_mb(pid: u32) -> Result<f64> {
    let kb =
        proc_kb(&format!("/proc/{pid}/status"), "VmHWM:").context("no VmHWM in /proc status")?;
    Ok(kb / 1024.0)
}

/// The largest `RssAnon` of any of `pids`, in MB, sampled every 20 ms until `stop`.
pub(crate) async fn peak_anon_mb(
    pids: Vec<u32>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> f64 {
    let mut peak = 0.0_f64;
    loop {
        for pid in &pids {
            let kb = proc_kb(&format!("/proc/{pid}/status"), "RssAnon:");
            peak = peak.max(kb.unwrap_or(0.0) / 1024.0);
        }
        tokio::select! {
            _ = &mut stop => return peak,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}
