//! The emulator and service processes: started, probed, timed, and stopped on exit or signal.

use crate::env::Env;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The service binary next to this one (`firestore-once`).
pub(crate) fn service_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let bin = exe
        .parent()
        .context("the bench binary has no directory")?
        .join("firestore-once");
    if !bin.exists() {
        bail!(
            "the service binary {} is missing: build both with `cargo build --release --bins`",
            bin.display()
        );
    }
    Ok(bin)
}

/// Start a Firestore emulator with `emulator/start`, stopped when this process exits; its
/// `host:port`.
pub(crate) fn start_emulator() -> Result<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../emulator/start");
    eprintln!("starting the Firestore emulator ({script} firestore)…");
    let out = Command::new(script)
        .arg("firestore")
        .env("EMULATOR_OWNER_PID", std::process::id().to_string())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!("emulator/start failed (see above)");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A service child process, killed when dropped so no run leaks one.
pub(crate) struct Service {
    /// The process.
    pub(crate) child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
}

/// Service processes alive now, so an interrupted bench can stop them (Drop does not run then).
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

impl Service {
    fn new(child: Child, url: String) -> Self {
        if let Ok(mut c) = CHILDREN.lock() {
            c.push(child.id());
        }
        Self { child, url }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(mut c) = CHILDREN.lock() {
            c.retain(|p| *p != self.child.id());
        }
    }
}

/// On Ctrl-C or SIGTERM, stop the services this bench started, then exit.
pub(crate) async fn stop_children_on_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let pids = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
    for pid in pids {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    eprintln!("interrupted; stopped the services this bench started");
    std::process::exit(130);
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Env {
    /// Start `bin` on `project` with `extra` environment, and wait for its `200` on `/healthz`.
    pub(crate) async fn start_service(
        &self,
        bin: &PathBuf,
        project: &str,
        extra: &[(&str, &str)],
    ) -> Result<Service> {
        let port = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.env("FIRESTORE_EMULATOR_HOST", &self.emulator)
            .env("GOOGLE_CLOUD_PROJECT", project)
            .env("PORT", port.to_string())
            .env("ONCE_LOG_FORMAT", "json")
            // The emulator's terms unless a row says otherwise (family 6 sets the proxy's
            // rate): it never throttles a document, and these rows measure the engine.
            .env("ONCE_DOC_COMMITS_PER_SEC", "off")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // `BENCH_SERVICE_LOGS=DIR`: keep each service's JSON log as DIR/{project}-{port}.log,
        // to read why an order failed.
        if let Some(dir) = std::env::var_os("BENCH_SERVICE_LOGS") {
            let path = PathBuf::from(dir).join(format!("{project}-{port}.log"));
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        for (k, v) in &self.service_env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let svc = Service::new(child, format!("http://127.0.0.1:{port}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", svc.url)).send().await {
                if r.status() == 200 {
                    return Ok(svc);
                }
            }
            if Instant::now() > deadline {
                bail!("the service did not answer /healthz within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Median time from spawning the service to its first `200` on `/healthz`, polled with a
    /// bare socket every millisecond so the probe itself adds little.
    pub(crate) async fn startup_ms(&self, runs: usize) -> Result<f64> {
        let mut times = Vec::new();
        for i in 0..runs {
            let port = free_port()?;
            let bin = self.service_bin.clone();
            let emulator = self.emulator.clone();
            let project = format!("{}-start-{i}", self.run_id);
            let ms = tokio::task::spawn_blocking(move || -> Result<f64> {
                let t0 = Instant::now();
                let child = Command::new(&bin)
                    .env("FIRESTORE_EMULATOR_HOST", emulator)
                    .env("GOOGLE_CLOUD_PROJECT", project)
                    .env("PORT", port.to_string())
                    .env("ONCE_LOG_FORMAT", "json")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
                let mut svc = Service::new(child, String::new());
                loop {
                    if healthz_ok(port) {
                        return Ok(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                    if t0.elapsed() > Duration::from_secs(10) {
                        bail!("no 200 on /healthz within 10 s");
                    }
                    if let Ok(Some(st)) = svc.child.try_wait() {
                        bail!("the service exited during start-up: {st}");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
            .await??;
            times.push(ms);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
}

fn healthz_ok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[9..12] == b"200")
}
