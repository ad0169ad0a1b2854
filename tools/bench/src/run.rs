//! One run: the chosen scenarios against their runners, then the report and the smoke verdict.

use crate::args::Args;
use crate::compare;
use crate::env::Env;
use crate::measure::Row;
use crate::process::stop_children_on_signal;
use crate::procfs::machine;
use crate::redrive;
use crate::report::{render, row_line};
use crate::scenarios::scenarios;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

/// Run the chosen scenarios (or the redrive one), print the report, and fail on broken
/// invariants (and, for `--smoke`, on any failed service order).
pub(crate) async fn run(args: Args, service_bin: PathBuf, emulator: String) -> Result<()> {
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
        limit_secs: args.limit_secs,
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
    let only_limits = !args.only.is_empty() && args.only.iter().all(|o| o == "6" || o == "6r");
    let chosen = scenarios(args.smoke, args.long, only_scale, only_limits, args.rounds)
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
        for (bin, runner, run) in compare::runners(&env, &sc, n, args.rounds) {
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
