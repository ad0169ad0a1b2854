//! The Cloud Run binary: configuration from the environment, JSON logs, graceful shutdown.

use anyhow::Context;
use firestore::{FirestoreDb, FirestoreDbOptions};
use firestore_once::config::{resolve_project_id, Config};
use firestore_once::guard::{Guard, GuardConfig};
use firestore_once::{app, telemetry, AppState};
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    telemetry::init(config.log_format);
    if let Err(e) = run(config).await {
        tracing::error!(error = format!("{e:#}"), "start-up failed");
        return Err(e);
    }
    Ok(())
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
    let state = AppState {
        guard,
        config: Arc::new(config),
        project_id: project_id.into(),
    };
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("stopped");
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
