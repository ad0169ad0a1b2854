//! The real binary as a child process (its memory, its decision lines, SIGKILL), and an
//! emulator of a scenario's own that can be paused.

use crate::helpers::*;
use serde_json::Value;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// Peak and current resident memory of a process, in MiB (`/proc/PID/status`).
pub(super) fn memory_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Decision lines the child logged.
#[derive(Default)]
pub(super) struct LogCount {
    /// Decision lines.
    pub(super) decisions: AtomicUsize,
    /// Decisions that were replays.
    pub(super) replayed: AtomicUsize,
    /// Decisions answered with a 5xx.
    pub(super) failed: AtomicUsize,
    /// Stock shard moves (`outcome` = `shard_moved`).
    pub(super) shard_moves: AtomicUsize,
}

/// The real service binary as a child process on a fixed port.
pub(super) struct Instance {
    child: tokio::process::Child,
    /// `http://127.0.0.1:{port}`.
    pub(super) url: String,
}

impl Instance {
    /// Start the binary on `port` for `project` against the emulator at `firestore`, with
    /// `extra` environment, counting its decision lines into `log`; wait for `/healthz`.
    pub(super) async fn start(
        port: u16,
        project: &str,
        firestore: &str,
        extra: &[(&str, &str)],
        log: Arc<LogCount>,
    ) -> Self {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_firestore-once"));
        cmd.env("PORT", port.to_string())
            .env("GOOGLE_CLOUD_PROJECT", project)
            .env("FIRESTORE_EMULATOR_HOST", firestore)
            .env("ONCE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the service binary");
        let out = child.stdout.take().expect("stdout");
        // Read every line, or a full pipe would block the service's logging.
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["outcome"] == "shard_moved" {
                    log.shard_moves.fetch_add(1, Ordering::Relaxed);
                }
                if v["message"] == "decision" {
                    log.decisions.fetch_add(1, Ordering::Relaxed);
                    if v["replayed"] == true {
                        log.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    if v["status"].as_u64().is_some_and(|s| s >= 500) {
                        log.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{url}/healthz")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the service did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, url }
    }

    /// The process ID.
    pub(super) fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// SIGKILL, and wait for the process to end.
    pub(super) async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// Send `signal` to the process group `pgid`.
pub(super) fn signal_group(pgid: &str, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {signal} -{pgid}");
}

/// A Firestore emulator of the scenario's own, so it can be paused without touching the one
/// every other test shares. Resumed and stopped on drop.
pub(super) struct OwnEmulator {
    /// `127.0.0.1:{port}`.
    pub(super) host: String,
    port: String,
    /// The process group of the emulator (its launcher and its JVM).
    pub(super) pgid: String,
}

impl OwnEmulator {
    /// Start one with `emulator/start`.
    pub(super) async fn start() -> Self {
        let host = tokio::task::spawn_blocking(|| start_emulator("firestore"))
            .await
            .unwrap();
        let port = host.rsplit(':').next().unwrap().to_string();
        // emulator/start's default: this checkout's target/emulators.
        let dir = std::env::var("EMULATOR_STATE_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/emulators").into());
        let pgid = std::fs::read_to_string(format!("{dir}/firestore-{port}.pid"))
            .unwrap()
            .trim()
            .to_string();
        Self { host, port, pgid }
    }
}

impl Drop for OwnEmulator {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", "--", &format!("-{}", self.pgid)])
            .status();
        let _ = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/emulator/stop"))
            .args(["firestore", &self.port])
            .status();
    }
}
