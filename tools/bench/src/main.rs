//! `bench`: the service against the raw-transaction ceiling, side by side in one run.
//!
//! Starts its own Firestore emulator and, per scenario, a fresh release build of the service
//! (`firestore-once`, found next to this binary) on a fresh project, loads items through the
//! emulator's REST API, and drives HTTP load with a bounded number of keep-alive clients. The
//! **baseline** is the same logical transaction issued straight through the `firestore` crate
//! in this process (`run_transaction`: read `operations/{id}` and the items, write both), on
//! the same emulator with the same client counts. Prints a Markdown table plus the target
//! ratios.
//!
//! ```sh
//! cargo build --release --bins && target/release/bench            # the full table (~8 min)
//! cargo build --release --bins && target/release/bench --smoke    # CI: a few seconds
//! ```
//!
//! `--only redrive` runs the redrive scenario instead (`bench/redrive.rs`: 10,000 dead letters,
//! `--redrive-count N` to change it) and prints dead letters per second.
//!
//! Options: `--secs N` (measured seconds per run, default 5), `--smoke`, `--only 1,2,3b`
//! (some scenarios), `--service-env K=V` (extra environment for the service, for experiments),
//! `--out FILE` (also write the table there), `--old-bin PATH` (see below).
//! `ONCE_TEST_EMULATOR_HOST=host:port` reuses a
//! running emulator; an inherited `FIRESTORE_EMULATOR_HOST` is ignored (a gcloud shell leaves
//! it set, and a bench must not load someone's emulator by accident).
//! `BENCH_SERVICE_LOGS=DIR` keeps every service process's JSON log as
//! `DIR/{project}-{port}.log`, to read why an order failed.
//!
//! `--smoke` (CI, on the debug build) checks correctness only: zero failed service orders and
//! clean invariants after every scenario. The speed targets are for the release build's full
//! run, so a smoke run prints none.
//!
//! The service's CPU per order is its threads' run time (`/proc/<pid>/task/*/schedstat`, in ns;
//! utime+stime from `/proc/<pid>/stat` where that is missing) over the measured phase
//! divided by the orders answered; its peak RSS is `VmHWM` from `/proc/<pid>/status`. For the
//! baseline rows the CPU column is this process's own CPU (the in-process client's cost).
//!
//! `--old-bin PATH` compares two builds of the service in one run: every single-instance
//! scenario runs against this build's service (`service` rows) and against the binary at
//! PATH (`old` rows), back to back on fresh projects of the same emulator, the order of the two
//! alternating from one scenario to the next so neither always meets the warmer emulator. The
//! raw-transaction rows are skipped then, and the report ends with new ÷ old for every figure
//! (orders/s, p99, CPU per order, peak RSS) against the ±10 % bound of issue 12, plus two
//! figures to read it by: the peak anonymous RSS and the emulator's CPU per order.
//! `--rounds R` repeats every compared scenario R times per build (alternating which goes
//! first) and reports the median of the R paired ratios: on a 2-core machine one 4 s pair
//! moves by ±30 %.
//! `--rounds R` also repeats the N-instance rows (5, 5r) R times, N = 1, 2, 4 then 4, 2, 1,
//! …, and their targets take the median over the rounds of N = 4 ÷ that round's N = 1.

mod redrive;

use anyhow::{anyhow, bail, Context, Result};
use firestore::{FirestoreDb, FirestoreDbOptions};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stock given to every item: never runs out during a run.
const PLENTY: i64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One line on one of 100 items, each client on its own items.
    Spread,
    /// One line on one of 100 items picked at random: concurrent orders collide.
    SpreadRandom,
    /// One line, always the same item.
    Hot,
    /// Orders already processed, sent again.
    Replay,
    /// Five lines on distinct items among 100 (each client on its own items when it has 5).
    Multi,
    /// Five lines on distinct items picked at random among 100: orders overlap.
    MultiRandom,
}

#[derive(Clone, Debug)]
struct Scenario {
    id: &'static str,
    title: &'static str,
    shape: Shape,
    clients: usize,
    /// Extra environment for the service (e.g. the cache switched off).
    env: Vec<(&'static str, &'static str)>,
    /// Whether the baseline runs too (skipped for a service-only variant).
    baseline: bool,
    /// Service processes sharing the project; the clients are split evenly over them.
    instances: usize,
    /// Which round of the N-instance rows this is (`--rounds`), 0 otherwise.
    round: usize,
}

impl Scenario {
    /// Whether `--old-bin` runs this scenario against the old build too: every
    /// single-instance one except the metrics-off twin (older builds may have no metrics).
    fn compares(&self) -> bool {
        self.instances == 1 && self.id != "1m"
    }
}

#[derive(Clone, Debug)]
struct Order {
    order_id: String,
    lines: Vec<(String, i64)>,
}

impl Order {
    fn body(&self) -> Vec<u8> {
        let v = if self.lines.len() == 1 {
            json!({"order_id": self.order_id, "item_id": self.lines[0].0, "quantity": self.lines[0].1})
        } else {
            let items: Vec<Value> = self
                .lines
                .iter()
                .map(|(i, q)| json!({"item_id": i, "quantity": q}))
                .collect();
            json!({"order_id": self.order_id, "items": items})
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

/// What one request or transaction ended as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Ok,
    Rejected,
    Failed,
}

#[derive(Default, Debug, Clone)]
struct Row {
    scenario: String,
    clients: usize,
    instances: usize,
    runner: &'static str,
    orders: usize,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: usize,
    rejected: usize,
    cpu_ms_per_order: Option<f64>,
    /// The emulator's CPU over the same phase, per order: where the service's calls cost
    /// the database (on production Firestore, not this machine's CPU).
    emulator_cpu_ms_per_order: Option<f64>,
    peak_rss_mb: Option<f64>,
    /// The largest `RssAnon` seen (sampled every 20 ms): the memory the service itself
    /// allocated, without the executable's clean file pages that `VmHWM` also counts.
    peak_anon_mb: Option<f64>,
    /// The round of an N-instance row (`--rounds`).
    round: usize,
    note: String,
}

struct Args {
    /// Extra environment for every service process (`--service-env K=V`, for experiments).
    service_env: Vec<(String, String)>,
    /// Scenario IDs to run (all when empty).
    only: Vec<String>,
    secs: f64,
    smoke: bool,
    /// `--long`: N = 8 too in the N-instance scenarios.
    long: bool,
    out: Option<PathBuf>,
    /// Dead letters of the redrive scenario (`--only redrive`).
    redrive_count: usize,
    /// `--old-bin PATH`: a second service binary run beside this one (single-instance rows).
    old_bin: Option<PathBuf>,
    /// `--rounds R`: with `--old-bin`, each compared scenario runs R times against each
    /// build, alternating; the comparison takes the median of the R paired ratios. The
    /// N-instance rows run R times too (N = 1, 2, 4, then 4, 2, 1, …), each N = k against
    /// its round's N = 1, and the targets take the median ratio.
    rounds: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        service_env: Vec::new(),
        only: Vec::new(),
        secs: 5.0,
        smoke: false,
        long: false,
        out: None,
        redrive_count: 10_000,
        old_bin: None,
        rounds: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => a.smoke = true,
            "--long" => a.long = true,
            "--secs" => {
                a.secs = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .context("--secs needs a number")?
            }
            "--only" => {
                a.only = it
                    .next()
                    .context("--only needs scenario IDs, e.g. 1,3")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--service-env" => {
                let kv = it.next().context("--service-env needs K=V")?;
                let (k, v) = kv.split_once('=').context("--service-env needs K=V")?;
                a.service_env.push((k.to_string(), v.to_string()));
            }
            "--out" => a.out = Some(it.next().context("--out needs a file")?.into()),
            "--old-bin" => {
                let p = PathBuf::from(it.next().context("--old-bin needs a service binary")?);
                if !p.is_file() {
                    bail!("--old-bin {}: no such file", p.display());
                }
                a.old_bin = Some(p);
            }
            "--rounds" => {
                a.rounds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|r| *r >= 1)
                    .context("--rounds needs a number ≥ 1")?
            }
            "--redrive-count" => {
                a.redrive_count = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .context("--redrive-count needs a number")?
            }
            "-h" | "--help" => {
                println!("usage: bench [--smoke] [--long] [--secs N] [--only 1,2,3,3b,4,4r,5,5r] [--service-env K=V]... [--out FILE] [--old-bin PATH] [--rounds R]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if a.smoke {
        a.secs = a.secs.min(2.0);
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = args()?;
    let service_bin = service_binary()?;
    if let Ok(h) = std::env::var("FIRESTORE_EMULATOR_HOST") {
        eprintln!(
            "note: ignoring FIRESTORE_EMULATOR_HOST={h}: the bench starts its own emulator \
             (set ONCE_TEST_EMULATOR_HOST to reuse a running one)"
        );
    }
    let emulator = match std::env::var("ONCE_TEST_EMULATOR_HOST") {
        Ok(h) if !h.is_empty() => h,
        _ => start_emulator()?,
    };
    // Set before the runtime and any client exist (the bench's own Firestore clients read it;
    // without it they would dial Google); the service children inherit it too.
    std::env::set_var("FIRESTORE_EMULATOR_HOST", &emulator);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args, service_bin, emulator))
}

fn service_binary() -> Result<PathBuf> {
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

fn start_emulator() -> Result<String> {
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

fn machine() -> String {
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

/// The scenarios to run; `long` adds N = 8 to the N-instance ones, `only_scale` keeps those
/// alone.
fn scenarios(smoke: bool, long: bool, only_scale: bool, rounds: usize) -> Vec<Scenario> {
    let s = |id, title, shape, clients| Scenario {
        id,
        title,
        shape,
        clients,
        env: Vec::new(),
        baseline: true,
        instances: 1,
        round: 0,
    };
    let scale = |id, title, shape, instances| Scenario {
        baseline: false,
        instances,
        ..s(id, title, shape, 16)
    };
    if smoke {
        return vec![
            s("1", "100 items, distinct orders", Shape::Spread, 8),
            scale("5", "one hot item, N instances", Shape::Hot, 2),
        ];
    }
    let mut n_instances = vec![1, 2, 4];
    if long {
        n_instances.push(8);
    }
    // Rounds run N = 1, 2, 4 then 4, 2, 1, …: the emulator's state drifts during a run (its
    // heap grows), and no N should always run in the same place.
    let mut scaled = Vec::new();
    for (id, title, shape) in [
        ("5", "one hot item, N instances", Shape::Hot),
        (
            "5r",
            "100 items at random, N instances",
            Shape::SpreadRandom,
        ),
    ] {
        for round in 0..rounds.max(1) {
            let mut order = n_instances.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for &n in &order {
                scaled.push(Scenario {
                    round,
                    ..scale(id, title, shape, n)
                });
            }
        }
    }
    if only_scale {
        return scaled;
    }
    let mut all = vec![
        s("1", "100 items, distinct orders", Shape::Spread, 1),
        s("1", "100 items, distinct orders", Shape::Spread, 8),
        // Two services side by side (`Env::overhead`), not one run after the other.
        Scenario {
            baseline: false,
            ..s(
                "1m",
                "as 1, metrics off and on side by side (overhead)",
                Shape::Spread,
                16,
            )
        },
        s("1", "100 items, distinct orders", Shape::Spread, 16),
        s("1", "100 items, distinct orders", Shape::Spread, 32),
        s("1r", "100 items picked at random", Shape::SpreadRandom, 32),
        s("2", "one hot item, distinct orders", Shape::Hot, 16),
        s("3", "replays (all duplicates)", Shape::Replay, 32),
        Scenario {
            env: vec![("ONCE_REPLAY_CACHE_BYTES", "0")],
            baseline: false,
            ..s("3b", "replays, replay cache off", Shape::Replay, 32)
        },
        s("4", "5-line orders over 100 items", Shape::Multi, 16),
        s(
            "4r",
            "5-line orders, items at random",
            Shape::MultiRandom,
            32,
        ),
    ];
    all.extend(scaled);
    all
}

async fn run(args: Args, service_bin: PathBuf, emulator: String) -> Result<()> {
    tokio::spawn(stop_children_on_signal());
    if args.only.iter().any(|o| o == "redrive") {
        let line = redrive::run(args.redrive_count, &service_bin, &emulator).await?;
        if let Some(path) = &args.out {
            std::fs::write(path, format!("{line}\n"))?;
        }
        return Ok(());
    }
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let env = Env {
        http: http.clone(),
        emulator: emulator.clone(),
        service_bin,
        old_bin: args.old_bin.clone(),
        secs: args.secs,
        service_env: args.service_env.clone(),
        run_id: format!("b{:08x}", fastrand::u32(..)),
    };
    let machine = machine();
    eprintln!("machine: {machine}; emulator at {emulator}");

    let startup = env.startup_ms(if args.smoke { 3 } else { 7 }).await?;
    eprintln!("start to first 200 on /healthz: median {startup:.1} ms");

    if !args.smoke {
        // The emulator is a JVM: let the JIT settle before anything is measured, so the first
        // row is not also the slowest.
        env.warm_up().await?;
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut broken: Vec<String> = Vec::new();
    let only_scale = !args.only.is_empty() && args.only.iter().all(|o| o == "5" || o == "5r");
    let chosen = scenarios(args.smoke, args.long, only_scale, args.rounds)
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s.id));
    for (n, sc) in chosen.enumerate() {
        if sc.baseline && env.old_bin.is_none() {
            let row = env.baseline(&sc, n).await?;
            eprintln!("{}", row_line(&row));
            rows.push(row);
        }
        if sc.id == "1m" {
            for row in env.overhead(&sc, n).await? {
                eprintln!("{}", row_line(&row));
                rows.push(row);
            }
            continue;
        }
        // With --old-bin, each single-instance scenario runs against both builds, `rounds`
        // times; which goes first alternates, so neither always meets the emulator in the
        // warmer state.
        // Each round has its own projects and order IDs (`n + 1000 × round`).
        let mut runners: Vec<(&PathBuf, &'static str, usize)> =
            vec![(&env.service_bin, "service", n)];
        if let Some(old) = env.old_bin.as_ref().filter(|_| sc.compares()) {
            runners = (0..args.rounds)
                .flat_map(|r| {
                    let run = n + 1000 * r;
                    let mut pair = vec![(&env.service_bin, "service", run)];
                    pair.insert((n + r) % 2, (old, "old", run));
                    pair
                })
                .collect();
        }
        for (bin, runner, run) in runners {
            let (row, invariant) = env.service(&sc, run, bin, runner).await?;
            eprintln!("{}", row_line(&row));
            if let Err(e) = invariant {
                broken.push(format!(
                    "scenario {} ({} clients, {} instances, {runner}): {e}",
                    sc.id, sc.clients, sc.instances
                ));
            }
            rows.push(row);
        }
    }

    let report = render(&machine, &args, startup, &rows);
    println!("{report}");
    if let Some(path) = &args.out {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    let failed: usize = rows
        .iter()
        .filter(|r| r.runner == "service")
        .map(|r| r.failed)
        .sum();
    if !broken.is_empty() {
        bail!("invariants broken:\n  {}", broken.join("\n  "));
    }
    if args.smoke {
        if failed > 0 {
            bail!("smoke: {failed} service orders failed");
        }
        if rows.iter().any(|r| r.runner == "service" && r.orders == 0) {
            bail!("smoke: the service answered no orders");
        }
        let orders: usize = rows
            .iter()
            .filter(|r| r.runner == "service")
            .map(|r| r.orders)
            .sum();
        eprintln!(
            "smoke: ok: {orders} service orders, 0 failed; invariants clean after every scenario"
        );
    }
    Ok(())
}

fn row_line(r: &Row) -> String {
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
}

struct Env {
    http: reqwest::Client,
    emulator: String,
    service_bin: PathBuf,
    /// `--old-bin`: the build compared with this one.
    old_bin: Option<PathBuf>,
    secs: f64,
    service_env: Vec<(String, String)>,
    run_id: String,
}

/// A service child process, killed when dropped so no run leaks one.
struct Service {
    child: Child,
    url: String,
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
async fn stop_children_on_signal() {
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

/// CPU time of `pid` in seconds: the sum of its threads' run time in nanoseconds
/// (`/proc/<pid>/task/*/schedstat`), else utime + stime, which come in clock ticks (10 ms: on
/// a run of a few hundred ms of CPU that rounding alone moved a row by ±5 %). A thread that
/// exits during a run takes its time with it; the service's runtime threads live as long as
/// it does.
fn cpu_secs(pid: u32) -> Result<f64> {
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
fn emulator_cpu_secs(host: &str) -> Option<f64> {
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

/// The median of `v` (NaN when empty): one 4 s run moves by ±30 % here, so repeated runs are
/// summed up by their median.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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
fn peak_rss_mb(pid: u32) -> Result<f64> {
    let kb =
        proc_kb(&format!("/proc/{pid}/status"), "VmHWM:").context("no VmHWM in /proc status")?;
    Ok(kb / 1024.0)
}

/// The largest `RssAnon` of any of `pids`, in MB, sampled every 20 ms until `stop`.
async fn peak_anon_mb(pids: Vec<u32>, mut stop: tokio::sync::oneshot::Receiver<()>) -> f64 {
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

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// Where orders go: the service over HTTP or the raw transaction in-process.
#[derive(Clone)]
enum Target {
    Http {
        http: reqwest::Client,
        url: String,
    },
    Raw {
        db: FirestoreDb,
    },
    /// Several service instances: client `c` talks to instance `c mod n` only.
    Spread(Vec<Target>),
}

/// One mode of the metrics-overhead pair, over both rounds.
#[derive(Default)]
struct ModeTotal {
    answers: Vec<(Answer, u32)>,
    /// Seconds driven.
    elapsed: Duration,
    /// CPU seconds of the service.
    cpu: f64,
    /// Peak RSS, MB.
    rss: f64,
}

struct Measured {
    answers: Vec<(Answer, u32)>,
    elapsed: Duration,
    /// Quantities answered 200 for new orders, by order index, for the invariant.
    processed_units: i64,
}

impl Target {
    /// The target client `c` uses.
    fn for_client(&self, c: usize) -> Target {
        match self {
            Target::Spread(all) if !all.is_empty() => all[c % all.len()].for_client(c),
            t => t.clone(),
        }
    }

    async fn send(&self, o: &Order) -> Answer {
        match self {
            Target::Spread(all) => match all.first() {
                Some(t) => Box::pin(t.send(o)).await,
                None => Answer::Failed,
            },
            Target::Http { http, url } => {
                match http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(o.body())
                    .send()
                    .await
                {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        // Drain the body so the connection is reused.
                        let _ = r.bytes().await;
                        match s {
                            200 => Answer::Ok,
                            409 => Answer::Rejected,
                            _ => Answer::Failed,
                        }
                    }
                    Err(_) => Answer::Failed,
                }
            }
            Target::Raw { db } => match raw_transaction(db, o).await {
                Ok(true) => Answer::Ok,
                Ok(false) => Answer::Rejected,
                Err(_) => Answer::Failed,
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
struct RawStatus {
    outcome: String,
    body: String,
}

#[derive(Serialize, Deserialize)]
struct RawItem {
    stock: i64,
}

/// The article's pattern, done with the `firestore` crate and nothing else: in one
/// transaction read the status document and the items, and if the operation is new write the
/// items' stock and the status document. `Ok(true)` processed or replayed, `Ok(false)` rejected.
async fn raw_transaction(
    db: &FirestoreDb,
    o: &Order,
) -> Result<bool, firestore::errors::FirestoreError> {
    let op_id = firestore_once_core::engine::key::hashed_id("order", &o.order_id);
    let lines = Arc::new(o.lines.clone());
    db.run_transaction(|db, tx| {
        let op_id = op_id.clone();
        let lines = lines.clone();
        async move {
            let status = db
                .fluent()
                .select()
                .by_id_in("operations")
                .obj::<RawStatus>()
                .one(&op_id);
            let items = futures::future::try_join_all(lines.iter().map(|(id, _)| {
                db.fluent()
                    .select()
                    .by_id_in("items")
                    .obj::<RawItem>()
                    .one(id.as_str())
            }));
            let (status, items) = futures::try_join!(status, items)?;
            if let Some(s) = status {
                return Ok(s.outcome == "processed");
            }
            let enough = items
                .iter()
                .zip(lines.iter())
                .all(|(i, (_, q))| i.as_ref().is_some_and(|i| i.stock >= *q));
            if enough {
                for (item, (id, q)) in items.iter().zip(lines.iter()) {
                    let stock = item.as_ref().map_or(0, |i| i.stock) - q;
                    db.fluent()
                        .update()
                        .in_col("items")
                        .document_id(id)
                        .object(&RawItem { stock })
                        .add_to_transaction(tx)?;
                }
            }
            let outcome = if enough { "processed" } else { "rejected" };
            db.fluent()
                .update()
                .in_col("operations")
                .document_id(&op_id)
                .object(&RawStatus {
                    outcome: outcome.into(),
                    body: format!("{{\"operation_id\":\"{op_id}\",\"outcome\":\"{outcome}\"}}"),
                })
                .add_to_transaction(tx)?;
            Ok::<bool, firestore::errors::BackoffError<firestore::errors::FirestoreError>>(enough)
        }
        .boxed()
    })
    .await
}

fn item_ids() -> &'static [String] {
    static IDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    IDS.get_or_init(|| (0..100).map(|i| format!("item-{i:03}")).collect())
}

/// Order `seq` of client `client` of `clients`. Items are partitioned between clients (client
/// `c` uses items `c`, `c + clients`, …) so concurrent transactions never touch the same item:
/// the baseline's ceiling is then the emulator's, not its 2 s lock waits. `SpreadRandom` picks
/// from all items, as real traffic does.
fn new_order(shape: Shape, prefix: &str, client: usize, clients: usize, seq: usize) -> Order {
    let ids = item_ids();
    let own: Vec<usize> = (client % ids.len()..ids.len())
        .step_by(clients.max(1))
        .collect();
    let order_id = format!("{prefix}-{client}-{seq}");
    let pick = |n: usize, from: &[usize]| -> Vec<(String, i64)> {
        let mut picked: Vec<usize> = Vec::with_capacity(n);
        while picked.len() < n {
            let i = from[fastrand::usize(..from.len())];
            if !picked.contains(&i) {
                picked.push(i);
            }
        }
        picked.into_iter().map(|i| (ids[i].clone(), 1)).collect()
    };
    let all: Vec<usize> = (0..ids.len()).collect();
    let lines = match shape {
        Shape::Hot => vec![("hot".to_string(), 1)],
        Shape::Spread | Shape::Replay => pick(1, &own),
        Shape::SpreadRandom => pick(1, &all),
        Shape::Multi if own.len() >= 5 => pick(5, &own),
        Shape::Multi | Shape::MultiRandom => pick(5, &all),
    };
    Order { order_id, lines }
}

impl Env {
    fn rest(&self, project: &str) -> String {
        format!(
            "http://{}/v1/projects/{project}/databases/(default)/documents",
            self.emulator
        )
    }

    fn project(&self, n: usize, runner: &str) -> String {
        format!("{}-{n}-{runner}", self.run_id)
    }

    /// Create the items in one commit through the emulator's REST API.
    async fn seed(&self, project: &str, ids: &[String]) -> Result<()> {
        let root = format!("projects/{project}/databases/(default)/documents");
        let writes: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({"update": {"name": format!("{root}/items/{id}"),
                    "fields": {"stock": {"integerValue": PLENTY.to_string()}}}})
            })
            .collect();
        let r = self
            .http
            .post(format!("{}:commit", self.rest(project)))
            .json(&json!({ "writes": writes }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("seeding items: {} {}", r.status(), r.text().await?);
        }
        Ok(())
    }

    /// The documents of `collection` (one page of up to 1000), through the emulator's REST API.
    async fn documents(&self, project: &str, collection: &str) -> Result<Vec<Value>> {
        let v: Value = self
            .http
            .get(format!("{}/{collection}", self.rest(project)))
            .query(&[("pageSize", "1000")])
            .send()
            .await?
            .json()
            .await?;
        Ok(v["documents"].as_array().cloned().unwrap_or_default())
    }

    /// Units taken from stock: initial total minus what the items hold now.
    async fn units_taken(&self, project: &str, ids: &[String]) -> Result<i64> {
        let stock = |d: &Value, what: &str| {
            d["fields"]["stock"]["integerValue"]
                .as_str()
                .and_then(|s| s.parse::<i64>().ok())
                .with_context(|| format!("{what} without an integer stock"))
        };
        let docs = self.documents(project, "items").await?;
        if docs.len() != ids.len() {
            bail!("{} items found, {} seeded", docs.len(), ids.len());
        }
        let mut left = 0i64;
        for d in &docs {
            left += stock(d, "an item")?;
        }
        // Plus what the items' stock shards hold (`items/{id}/shards/{k}`).
        for id in ids {
            for d in self
                .documents(project, &format!("items/{id}/shards"))
                .await?
            {
                left += stock(&d, "a shard")?;
            }
        }
        Ok(PLENTY * ids.len() as i64 - left)
    }

    async fn start_service(
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
    async fn startup_ms(&self, runs: usize) -> Result<f64> {
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

    /// Drive `clients` concurrent loops for the configured time. New orders unless `replay`
    /// lists orders to send again (round robin).
    async fn drive(
        target: &Target,
        shape: Shape,
        clients: usize,
        prefix: &str,
        replay: Option<Arc<Vec<Order>>>,
        duration: Duration,
        max_per_client: usize,
    ) -> Measured {
        let start = Instant::now();
        let deadline = start + duration;
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let target = target.for_client(c);
            let replay = replay.clone();
            let next = next.clone();
            let prefix = prefix.to_string();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                let mut units = 0i64;
                let mut seq = 0;
                while Instant::now() < deadline && seq < max_per_client {
                    let o = match &replay {
                        Some(list) => {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            list[i % list.len()].clone()
                        }
                        None => new_order(shape, &prefix, c, clients, seq),
                    };
                    seq += 1;
                    let t = Instant::now();
                    let a = target.send(&o).await;
                    let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    if a == Answer::Ok && replay.is_none() {
                        units += o.lines.iter().map(|l| l.1).sum::<i64>();
                    }
                    out.push((a, us));
                }
                (out, units)
            }));
        }
        let mut answers = Vec::new();
        let mut processed_units = 0;
        for t in tasks {
            if let Ok((a, u)) = t.await {
                answers.extend(a);
                processed_units += u;
            }
        }
        Measured {
            answers,
            elapsed: start.elapsed(),
            processed_units,
        }
    }

    fn items_for(shape: Shape) -> Vec<String> {
        match shape {
            Shape::Hot => vec!["hot".into()],
            _ => item_ids().to_vec(),
        }
    }

    /// Orders to replay: created first (not measured), then sent again in the measured phase.
    async fn preload(&self, target: &Target, prefix: &str) -> Result<Arc<Vec<Order>>> {
        let n = 2_000;
        let per = n / 32;
        // Clients take orders round robin, so consecutive orders use consecutive items: the
        // 32 in flight at any moment touch 32 different items (no lock waits for the baseline).
        let ids = item_ids();
        let list: Vec<Order> = (0..n)
            .map(|i| Order {
                order_id: format!("{prefix}-r-{i}"),
                lines: vec![(ids[i % ids.len()].clone(), 1)],
            })
            .collect();
        let list = Arc::new(list);
        let m = Self::drive(
            target,
            Shape::Replay,
            32,
            prefix,
            Some(list.clone()),
            Duration::from_secs(120),
            per,
        )
        .await;
        let bad = m.answers.iter().filter(|a| a.0 != Answer::Ok).count();
        if bad > 0 {
            bail!("preloading the orders to replay: {bad} of {n} failed");
        }
        Ok(list)
    }

    fn row(&self, sc: &Scenario, runner: &'static str, m: &Measured) -> Row {
        let mut lat: Vec<u32> = m.answers.iter().map(|a| a.1).collect();
        lat.sort_unstable();
        let failed = m.answers.iter().filter(|a| a.0 == Answer::Failed).count();
        let rejected = m.answers.iter().filter(|a| a.0 == Answer::Rejected).count();
        Row {
            scenario: sc.id.into(),
            clients: sc.clients,
            instances: sc.instances,
            runner,
            orders: m.answers.len(),
            per_sec: m.answers.len() as f64 / m.elapsed.as_secs_f64().max(1e-9),
            p50_ms: percentile(&lat, 0.50),
            p99_ms: percentile(&lat, 0.99),
            failed,
            rejected,
            round: sc.round,
            ..Row::default()
        }
    }

    /// Unmeasured load on a throw-away project: the raw transaction, then the service.
    async fn warm_up(&self) -> Result<()> {
        eprintln!("warming up the emulator…");
        let sc = Scenario {
            id: "warm-up",
            title: "",
            shape: Shape::Spread,
            clients: 16,
            env: Vec::new(),
            baseline: true,
            instances: 1,
            round: 0,
        };
        let secs = Duration::from_secs(4);
        let project = format!("{}-warm", self.run_id);
        self.seed(&project, item_ids()).await?;
        let db = FirestoreDb::with_options(
            FirestoreDbOptions::new(project.clone()).with_request_timeout(Duration::from_secs(10)),
        )
        .await
        .map_err(|e| anyhow!("baseline client: {e}"))?;
        let raw = Target::Raw { db };
        Self::drive(
            &raw,
            sc.shape,
            sc.clients,
            "warm-raw",
            None,
            secs,
            usize::MAX,
        )
        .await;
        let bins = std::iter::once(&self.service_bin).chain(self.old_bin.as_ref());
        for (i, bin) in bins.enumerate() {
            let svc = self.start_service(bin, &project, &[]).await?;
            let http = Target::Http {
                http: self.http.clone(),
                url: format!("{}/orders", svc.url),
            };
            Self::drive(
                &http,
                sc.shape,
                sc.clients,
                &format!("warm-svc{i}"),
                None,
                secs,
                usize::MAX,
            )
            .await;
        }
        Ok(())
    }

    async fn baseline(&self, sc: &Scenario, n: usize) -> Result<Row> {
        let project = self.project(n, "raw");
        let ids = Self::items_for(sc.shape);
        self.seed(&project, &ids).await?;
        let db = FirestoreDb::with_options(
            FirestoreDbOptions::new(project.clone()).with_request_timeout(Duration::from_secs(10)),
        )
        .await
        .map_err(|e| anyhow!("baseline client: {e}"))?;
        let target = Target::Raw { db };
        let prefix = format!("raw{n}");
        let replay = match sc.shape {
            Shape::Replay => Some(self.preload(&target, &prefix).await?),
            _ => None,
        };
        let cpu0 = cpu_secs(std::process::id())?;
        let m = Self::drive(
            &target,
            sc.shape,
            sc.clients,
            &prefix,
            replay,
            Duration::from_secs_f64(self.secs),
            usize::MAX,
        )
        .await;
        let cpu = cpu_secs(std::process::id())? - cpu0;
        let mut row = self.row(sc, "baseline", &m);
        row.cpu_ms_per_order = Some(cpu * 1000.0 / row.orders.max(1) as f64);
        if sc.shape != Shape::Replay {
            let taken = self.units_taken(&project, &ids).await?;
            if taken != m.processed_units {
                row.note = format!("stock moved by {taken}, answers say {}", m.processed_units);
            }
        }
        Ok(row)
    }

    /// The metrics overhead: one service with `ONCE_METRICS=off` and one with it on, each on
    /// its own project with `sc.clients` clients, driven at the same time against the same
    /// emulator, twice (places swapped), summed per mode. Run one after the other, the second
    /// met a different emulator (warmer JIT, more data, other group-commit batch sizes) and
    /// that moved CPU per order by ±10 %, more than the metrics themselves cost
    /// (`scripts/metrics-callgrind`: about 0.2 %); side by side, both meet the same
    /// conditions. Rows: runner `metrics off`, `metrics on`.
    async fn overhead(&self, sc: &Scenario, n: usize) -> Result<Vec<Row>> {
        let ids = Self::items_for(sc.shape);
        let duration = Duration::from_secs_f64(self.secs);
        let mut total: [ModeTotal; 2] = Default::default();
        // Two rounds with the modes' places swapped (started first, polled first), so neither
        // mode keeps a positional advantage.
        for (round, modes) in [[0usize, 1], [1, 0]].into_iter().enumerate() {
            let mut runs = Vec::new();
            for &i in &modes {
                let mode = ["off", "on"][i];
                let project = self.project(n, &format!("metrics-{mode}-{round}"));
                self.seed(&project, &ids).await?;
                let svc = self
                    .start_service(&self.service_bin, &project, &[("ONCE_METRICS", mode)])
                    .await?;
                let target = Target::Http {
                    http: self.http.clone(),
                    url: format!("{}/orders", svc.url),
                };
                let cpu0 = cpu_secs(svc.child.id())?;
                runs.push((
                    i,
                    project,
                    svc,
                    target,
                    format!("svc{n}{mode}{round}"),
                    cpu0,
                ));
            }
            let (first, second) = tokio::join!(
                Self::drive(
                    &runs[0].3,
                    sc.shape,
                    sc.clients,
                    &runs[0].4,
                    None,
                    duration,
                    usize::MAX
                ),
                Self::drive(
                    &runs[1].3,
                    sc.shape,
                    sc.clients,
                    &runs[1].4,
                    None,
                    duration,
                    usize::MAX
                ),
            );
            for ((i, project, svc, _, _, cpu0), m) in runs.into_iter().zip([first, second]) {
                let cpu = cpu_secs(svc.child.id())? - cpu0;
                let rss = peak_rss_mb(svc.child.id())?;
                drop(svc);
                let taken = self.units_taken(&project, &ids).await?;
                let unknown = m.answers.iter().any(|a| a.0 == Answer::Failed);
                if taken != m.processed_units && !(unknown && taken > m.processed_units) {
                    bail!(
                        "metrics {}: stock moved by {taken}, answers say {}",
                        ["off", "on"][i],
                        m.processed_units
                    );
                }
                let t = &mut total[i];
                t.answers.extend(m.answers);
                t.elapsed += m.elapsed;
                t.cpu += cpu;
                t.rss = t.rss.max(rss);
            }
        }
        let mut rows = Vec::new();
        for (runner, t) in ["metrics off", "metrics on"].into_iter().zip(total) {
            let (cpu, rss) = (t.cpu, t.rss);
            let m = Measured {
                answers: t.answers,
                elapsed: t.elapsed,
                processed_units: 0,
            };
            let mut row = self.row(sc, runner, &m);
            row.cpu_ms_per_order = Some(cpu * 1000.0 / row.orders.max(1) as f64);
            row.peak_rss_mb = Some(rss);
            rows.push(row);
        }
        Ok(rows)
    }

    async fn service(
        &self,
        sc: &Scenario,
        n: usize,
        bin: &PathBuf,
        runner: &'static str,
    ) -> Result<(Row, Result<(), String>)> {
        let project = self.project(n, runner);
        let ids = Self::items_for(sc.shape);
        self.seed(&project, &ids).await?;
        let mut services = Vec::with_capacity(sc.instances);
        for i in 0..sc.instances {
            let mut env = sc.env.clone();
            let id = i.to_string();
            env.push(("ONCE_INSTANCE_ID", id.as_str()));
            services.push(self.start_service(bin, &project, &env).await?);
        }
        let pids: Vec<u32> = services.iter().map(|s| s.child.id()).collect();
        let targets: Vec<Target> = services
            .iter()
            .map(|svc| Target::Http {
                http: self.http.clone(),
                url: format!("{}/orders", svc.url),
            })
            .collect();
        let target = if targets.len() == 1 {
            targets[0].clone()
        } else {
            Target::Spread(targets)
        };
        let prefix = format!("{runner}{n}");
        let replay = match sc.shape {
            Shape::Replay => Some(self.preload(&target, &prefix).await?),
            _ => None,
        };
        let cpu_of = |pids: &[u32]| -> Result<f64> {
            pids.iter().map(|p| cpu_secs(*p)).sum::<Result<f64>>()
        };
        let cpu0 = cpu_of(&pids)?;
        let emu0 = emulator_cpu_secs(&self.emulator);
        let (stop_sampling, sampled) = tokio::sync::oneshot::channel::<()>();
        let sampler = tokio::spawn(peak_anon_mb(pids.clone(), sampled));
        let m = Self::drive(
            &target,
            sc.shape,
            sc.clients,
            &prefix,
            replay.clone(),
            Duration::from_secs_f64(self.secs),
            usize::MAX,
        )
        .await;
        let cpu = cpu_of(&pids)? - cpu0;
        let emu = emulator_cpu_secs(&self.emulator)
            .zip(emu0)
            .map(|(b, a)| b - a);
        let _ = stop_sampling.send(());
        let anon = sampler.await.ok();
        let rss = pids
            .iter()
            .map(|p| peak_rss_mb(*p))
            .collect::<Result<Vec<f64>>>()?
            .into_iter()
            .fold(0.0, f64::max);
        drop(services);
        let mut row = self.row(sc, runner, &m);
        row.cpu_ms_per_order = Some(cpu * 1000.0 / row.orders.max(1) as f64);
        row.emulator_cpu_ms_per_order = emu.map(|e| e * 1000.0 / row.orders.max(1) as f64);
        row.peak_rss_mb = Some(rss);
        row.peak_anon_mb = anon;
        // Invariant: stock taken = units of the orders answered 200 (each exactly once); for
        // replays, nothing moves beyond the preloaded orders.
        let taken = self.units_taken(&project, &ids).await?;
        let expected = match &replay {
            Some(list) => list
                .iter()
                .map(|o| o.lines.iter().map(|l| l.1).sum::<i64>())
                .sum(),
            None => m.processed_units,
        };
        let unknown = m.answers.iter().any(|a| a.0 == Answer::Failed);
        let mut invariant = if taken == expected || (unknown && taken > expected) {
            Ok(())
        } else {
            Err(format!(
                "initial stock - current stock = {taken}, but the answers account for {expected}"
            ))
        };
        // And the project's own checker over every item, order and status document.
        let initial: firestore_once_shop::invariants::StockMap =
            ids.iter().map(|id| (id.clone(), PLENTY)).collect();
        let db = FirestoreDb::with_options(
            FirestoreDbOptions::new(project.clone()).with_request_timeout(Duration::from_secs(30)),
        )
        .await
        .map_err(|e| anyhow!("invariant checker client: {e}"))?;
        let report = firestore_once_shop::invariants::verify(
            &db,
            &firestore_once_shop::ShopConfig::default(),
            &initial,
        )
        .await
        .map_err(|e| anyhow!("reading the database for the invariant checker: {e}"))?;
        if invariant.is_ok() && !report.ok() {
            invariant = Err(format!("invariant checker: {report}"));
        }
        if let Err(e) = &invariant {
            row.note = e.clone();
        }
        Ok((row, invariant))
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

fn find<'a>(rows: &'a [Row], id: &str, clients: usize, runner: &str) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.scenario == id && r.clients == clients && r.runner == runner && r.instances == 1
    })
}

fn mark(ok: bool) -> &'static str {
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

fn render(machine: &str, args: &Args, startup_ms: f64, rows: &[Row]) -> String {
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
    for r in rows {
        let title = scenarios(false, true, false, 1)
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
    for id in ["5", "5r"] {
        // Per round, N = k against that round's N = 1; the median over the rounds.
        let rounds: Vec<usize> = {
            let mut r: Vec<usize> = rows
                .iter()
                .filter(|r| r.scenario == id && r.runner == "service")
                .map(|r| r.round)
                .collect();
            r.sort_unstable();
            r.dedup();
            r
        };
        let at = |n: usize, round: usize| {
            rows.iter().find(|r| {
                r.scenario == id && r.runner == "service" && r.instances == n && r.round == round
            })
        };
        // (ratios, p99s, failed) of N = n over every round that has it and N = 1.
        let of = |n: usize| {
            let mut ratios = Vec::new();
            let mut p99 = Vec::new();
            let mut failed = 0;
            for &round in &rounds {
                if let (Some(one), Some(r)) = (at(1, round), at(n, round)) {
                    ratios.push(r.per_sec / one.per_sec.max(1e-9));
                    p99.push(r.p99_ms);
                    failed += r.failed;
                }
            }
            (ratios, p99, failed)
        };
        let each = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (ratios, p99, failed) = of(4);
        if !ratios.is_empty() {
            let t = median(ratios.clone());
            let worst_p99 = p99.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "Scenario {id}: N=4 = {t:.2} × N=1 orders/s{} (target ≥ 0.8: {}); p99 at N=4 ≤ {worst_p99:.1} ms (target ≤ 250: {}); failed {failed} (target 0: {})",
                if ratios.len() > 1 {
                    format!(" (median of {} rounds: {})", ratios.len(), each(&ratios))
                } else {
                    String::new()
                },
                mark(t >= 0.8),
                mark(worst_p99 <= 250.0),
                mark(failed == 0)
            );
        }
        for n in [2, 8] {
            let (ratios, p99, failed) = of(n);
            if !ratios.is_empty() {
                let _ = writeln!(
                    s,
                    "  (N={n}: {:.2} × N=1{}, p99 ≤ {:.1} ms, failed {failed})",
                    median(ratios.clone()),
                    if ratios.len() > 1 {
                        format!(" [{}]", each(&ratios))
                    } else {
                        String::new()
                    },
                    p99.iter().copied().fold(0.0, f64::max),
                );
            }
        }
    }
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
    if let (Some(on), Some(off)) = (
        find(rows, "1m", 16, "metrics on"),
        find(rows, "1m", 16, "metrics off"),
    ) {
        let (a, b) = (
            on.cpu_ms_per_order.unwrap_or(f64::NAN),
            off.cpu_ms_per_order.unwrap_or(f64::NAN),
        );
        let pct = (a / b - 1.0) * 100.0;
        let _ = writeln!(
            s,
            "Metrics overhead, 1m (two services side by side, 16 clients each): {a:.3} ms on vs {b:.3} ms off CPU per order = {pct:+.1} % (target ≤ 5 %: {})",
            mark(pct <= 5.0)
        );
    }
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

/// With `--old-bin`: this build ÷ the old one for every figure of every scenario both ran.
/// Issue 12's bound: each single-instance figure within 10 % of the old build's. With
/// `--rounds R` a scenario has R rows per build, paired in the order they ran (each pair back
/// to back); every figure's ratio is the median of the R paired ratios, next to the median
/// figures of each build.
fn compare_old(s: &mut String, rows: &[Row]) {
    let key = |r: &Row| (r.scenario.clone(), r.clients, r.instances);
    let mut keys: Vec<(String, usize, usize)> = Vec::new();
    for r in rows.iter().filter(|r| r.runner == "old") {
        if !keys.contains(&key(r)) {
            keys.push(key(r));
        }
    }
    let of = |k: &(String, usize, usize), runner: &str| -> Vec<&Row> {
        rows.iter()
            .filter(|r| r.runner == runner && &key(r) == k)
            .collect()
    };
    let groups: Vec<(Vec<&Row>, Vec<&Row>)> = keys
        .iter()
        .map(|k| (of(k, "service"), of(k, "old")))
        .filter(|(n, o)| !n.is_empty() && n.len() == o.len())
        .collect();
    if groups.is_empty() {
        return;
    }
    let rounds = groups[0].0.len();
    let _ = writeln!(
        s,
        "\nThis build ÷ the old build (`--old-bin`), same run. Within 10 %: orders/s ≥ 0.90 ×, \
         p99, CPU per order and peak RSS ≤ 1.10 ×. Shown for reading, not targets: the peak \
         anonymous RSS (what the service allocated; peak RSS also counts the executable's clean \
         file pages) and the emulator's CPU per order (the database's work for the service's \
         calls).{}\n",
        if rounds > 1 {
            format!(" Medians of {rounds} rounds: each figure new / old, then the median of the {rounds} paired ratios.")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "| scenario | clients | orders/s new / old | × | p99 ms new / old | × | CPU ms/order new / old | × | peak RSS MB new / old | × | peak anon MB new / old | × | emulator CPU ms/order new / old | × |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut outside = Vec::new();
    type Figure = fn(&Row) -> f64;
    let figures: [(&str, Figure, usize, Option<bool>); 6] = [
        ("orders/s", |r| r.per_sec, 1, Some(true)),
        ("p99", |r| r.p99_ms, 1, Some(false)),
        (
            "CPU/order",
            |r| r.cpu_ms_per_order.unwrap_or(f64::NAN),
            3,
            Some(false),
        ),
        ("RSS", |r| r.peak_rss_mb.unwrap_or(f64::NAN), 1, Some(false)),
        ("anon", |r| r.peak_anon_mb.unwrap_or(f64::NAN), 1, None),
        (
            "emulator CPU/order",
            |r| r.emulator_cpu_ms_per_order.unwrap_or(f64::NAN),
            3,
            None,
        ),
    ];
    for (new, old) in &groups {
        let mut cells = Vec::new();
        for (name, f, prec, higher_is_better) in figures {
            let a = median(new.iter().map(|r| f(r)).collect());
            let b = median(old.iter().map(|r| f(r)).collect());
            let x = median(
                new.iter()
                    .zip(old)
                    .map(|(n, o)| f(n) / f(o).max(1e-9))
                    .collect(),
            );
            let ok = match higher_is_better {
                Some(true) => x >= 0.9,
                Some(false) => x <= 1.1,
                None => true,
            };
            if !ok {
                outside.push(format!(
                    "{} @{} {name} {x:.2} ×",
                    new[0].scenario, new[0].clients
                ));
            }
            let bold = if ok { "" } else { "**" };
            cells.push(format!("{a:.prec$} / {b:.prec$} | {bold}{x:.2}{bold} "));
        }
        let _ = writeln!(
            s,
            "| {} | {} | {}|",
            new[0].scenario,
            new[0].clients,
            cells.join("| ")
        );
    }
    let _ = writeln!(
        s,
        "Figures outside 10 % of the old build: {}",
        if outside.is_empty() {
            "none".to_string()
        } else {
            outside.join(", ")
        }
    );
}
