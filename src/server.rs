//! The service as a library: connect to Firestore from a [`Config`], serve the router until a
//! shutdown signal, drain within the grace. `main.rs` and the tests serve through this same
//! path, so what the tests start is what Cloud Run runs.

use crate::config::{resolve_project_id, Config};
use crate::guard::{Guard, GuardConfig};
use crate::{app, AppState};
use anyhow::Context;
use firestore::{FirestoreDb, FirestoreDbOptions};
use std::future::{Future, IntoFuture};

impl From<&Config> for GuardConfig {
    fn from(c: &Config) -> Self {
        GuardConfig {
            operations: c.collections.operations.clone(),
            retention: c.retention,
            max_attempts: c.max_attempts,
            call_timeout: c.firestore_timeout,
            batch_max: c.batch_max,
            replay_cache_bytes: c.replay_cache_bytes,
            commit_from_known: c.commit_from_known,
        }
    }
}

/// A Firestore client for `project` (the emulator when `FIRESTORE_EMULATOR_HOST` is set).
/// `api_url` sends it elsewhere: a fault proxy in the tests.
pub async fn connect_db(
    config: &Config,
    project: &str,
    api_url: Option<String>,
) -> anyhow::Result<FirestoreDb> {
    let mut opts = FirestoreDbOptions::new(project.to_string())
        .with_database_id(config.database_id.clone())
        .with_request_timeout(config.firestore_timeout);
    opts.firebase_api_url = api_url;
    FirestoreDb::with_options(opts)
        .await
        .context("connecting to Firestore")
}

/// The service's state for `config`: its project resolved (the environment, then the
/// metadata server), a Firestore client, and one guard.
pub async fn connect(config: Config) -> anyhow::Result<AppState> {
    let project_id = resolve_project_id(&config).await?;
    let db = connect_db(&config, &project_id, None).await?;
    let guard = Guard::new(db, GuardConfig::from(&config));
    Ok(AppState::new(guard, config, project_id))
}

/// Serve `state` on `listener` until `shutdown` resolves, then drain in-flight requests for
/// at most `ONCE_SHUTDOWN_GRACE_MS`.
///
/// Two stages: on the signal axum stops accepting and drains; the grace timer bounds the
/// drain, so the process exits 0 on its own before Cloud Run's SIGKILL (10 s after SIGTERM)
/// instead of being killed mid-write with unflushed logs. A request cut by the grace is
/// settled by its redelivery through the status documents.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = state.config.shutdown_grace;
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
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

/// SIGTERM (Cloud Run's scale-in and deploys) or Ctrl-C.
pub async fn shutdown_signal() {
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
