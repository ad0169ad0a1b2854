//! The Cloud Run binary: configuration from the environment, JSON logs, graceful shutdown
//! bounded by `ONCE_SHUTDOWN_GRACE_MS`.

use anyhow::Context;
use firestore::{FirestoreDb, FirestoreDbOptions};
use firestore_once::config::{resolve_project_id, Config};
use firestore_once::guard::{Guard, GuardConfig};
use firestore_once::{app, telemetry, tracing_otel, AppState};
use std::future::IntoFuture;

fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    // Built before the runtime: the exporter sends from its own thread, never a request's.
    let traces = tracing_otel::from_env()?;
    telemetry::init_with(config.log_format, traces.as_ref());
    // One thread by default: the work is waiting on Firestore, and one thread saves the
    // cross-thread wake-ups that cost more CPU per order than the work itself (see README).
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
        if let Err(e) = run(config).await {
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

async fn run(config: Config) -> anyhow::Result<()> {
    let project_id = resolve_project_id(&config).await?;
    let db = FirestoreDb::with_options(
        FirestoreDbOptions::new(project_id.clone())
            .with_database_id(config.database_id.clone())
            .with_request_timeout(config.firestore_timeout),
    )
    .await
    .context("connecting to Firestore")?;
    let guard = Guard::new(
        db,
        GuardConfig {
            operations: config.collections.operations.clone(),
            retention: config.retention,
            max_attempts: config.max_attempts,
            call_timeout: config.firestore_timeout,
            batch_max: config.batch_max,
            replay_cache_bytes: config.replay_cache_bytes,
        },
    );
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port))
        .await
        .with_context(|| format!("binding port {}", config.port))?;
    tracing::info!(
        port = config.port,
        project_id,
        emulator = std::env::var("FIRESTORE_EMULATOR_HOST").ok(),
        "serving"
    );
    let state = AppState::new(guard, config, project_id);
    // Two stages: on SIGTERM axum stops accepting and drains in-flight requests; the grace
    // timer bounds the drain, so the process exits 0 on its own before Cloud Run's SIGKILL
    // (10 s after SIGTERM) instead of being killed mid-write with unflushed logs.
    let grace = state.config.shutdown_grace;
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown_signal().await;
        let _ = signalled_tx.send(());
    };
    let server = axum::serve(listener, app(state))
        .with_graceful_shutdown(signal)
        .into_future();
    tokio::pin!(server);
    let deadline = async move {
        // A dropped sender means the server ended first; the select below has already
        // taken that branch, so waiting forever here is harmless.
        if signalled_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = &mut server => {
            served?;
            tracing::info!("stopped: every in-flight request finished");
        }
        _ = deadline => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "stopped: shutdown grace passed with requests still in flight; they are cut, \
                 and their redelivery settles them through the status documents"
            );
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
