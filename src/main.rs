//! The Cloud Run binary: the core ([`firestore_once_core`]) serving the shop's kinds
//! ([`firestore_once_shop`]), configured from the environment, with JSON logs and graceful
//! shutdown bounded by `ONCE_SHUTDOWN_GRACE_MS`.
//!
//! `firestore-once` (no arguments) serves; `firestore-once redrive [...]` sends dead letters
//! back through the guard (see `firestore-once redrive --help`).

use anyhow::Context;
use firestore_once_core::config::Config;
use firestore_once_core::{redrive, server, telemetry, tracing_otel};
use firestore_once_shop::ShopConfig;

const REDRIVE_USAGE: &str =
    "usage: firestore-once redrive [--since RFC3339] [--route /orders|/tasks/KIND] \
[--reason REASON] [--limit N] [--dry-run]

Sends dead letters back through the same decode -> operation -> guard path, in process, and
prints one line per dead letter (id, route, reason, result). Reads the same environment as the
service (GOOGLE_CLOUD_PROJECT, FIRESTORE_DATABASE, ONCE_*_COLLECTION, FIRESTORE_EMULATOR_HOST).
Exit status: 0 when nothing still fails, 2 when some dead letter still failed, 1 on error.";

fn redrive_filter(args: &[String]) -> anyhow::Result<redrive::Filter> {
    let mut f = redrive::Filter::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value\n{REDRIVE_USAGE}"))
        };
        match a.as_str() {
            "--since" => {
                let v = value("--since")?;
                f.since = Some(
                    v.parse()
                        .with_context(|| format!("--since {v:?} is not an RFC 3339 time"))?,
                );
            }
            "--route" => f.route = Some(value("--route")?),
            "--reason" => f.reason = Some(value("--reason")?),
            "--limit" => {
                let v = value("--limit")?;
                f.limit = Some(v.parse().with_context(|| format!("--limit {v:?}"))?);
            }
            "--dry-run" => f.dry_run = true,
            "-h" | "--help" => {
                println!("{REDRIVE_USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{REDRIVE_USAGE}"),
        }
    }
    Ok(f)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let redrive = match args.first().map(String::as_str) {
        None => None,
        Some("redrive") => Some(redrive_filter(&args[1..])?),
        Some(other) => anyhow::bail!(
            "unknown command {other:?}; run without arguments to serve, or `redrive --help`"
        ),
    };
    let config = Config::from_env()?;
    let shop = ShopConfig::from_env(&config.instance_id)?;
    // Built before the runtime: the exporter sends from its own thread, never a request's.
    let traces = tracing_otel::from_env()?;
    telemetry::init_with(config.log_format, traces.as_ref());
    if let Some(filter) = redrive {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let still_failing = rt.block_on(run_redrive(config, shop, filter))?;
        if still_failing {
            std::process::exit(2);
        }
        return Ok(());
    }
    // One thread by default: the work is waiting on Firestore, and one thread saves the
    // cross-thread wake-ups that cost more CPU per order than the work itself (see docs/performance.md).
    let rt = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    let served = rt.block_on(async {
        if let Err(e) = run(config, shop).await {
            tracing::error!(error = format!("{e:#}"), "start-up failed");
            return Err(e);
        }
        Ok(())
    });
    // Send the spans still batched before exiting (bounded by the SDK's export timeout).
    if let Some(p) = traces {
        if let Err(e) = p.shutdown() {
            eprintln!("trace exporter shutdown: {e}");
        }
    }
    served
}

/// `firestore-once redrive`: true when some dead letter still failed.
async fn run_redrive(
    config: Config,
    shop: ShopConfig,
    filter: redrive::Filter,
) -> anyhow::Result<bool> {
    let state = firestore_once_shop::connect(config, shop).await?;
    let items = redrive::run(&state, &filter).await?;
    print!("{}", redrive::render(&items));
    Ok(items
        .iter()
        .any(|i| i.result == "failed" || i.result == "unavailable"))
}

async fn run(config: Config, shop: ShopConfig) -> anyhow::Result<()> {
    let (shards, own_shard) = (shop.stock_shards, shop.placement.shard());
    let state = firestore_once_shop::connect(config, shop).await?;
    let config = &state.config;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port))
        .await
        .with_context(|| format!("binding port {}", config.port))?;
    tracing::info!(
        port = config.port,
        project_id = %state.project_id,
        emulator = std::env::var("FIRESTORE_EMULATOR_HOST").ok(),
        instance_id = config.instance_id,
        stock_shards = shards,
        own_shard,
        "serving"
    );
    server::serve(listener, state, server::shutdown_signal()).await
}
