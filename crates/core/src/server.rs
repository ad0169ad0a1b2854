//! Serve a [`Service`] with its router until a shutdown signal, and drain within the grace.
//! The binary and the tests serve through this same path, so what the tests start is what
//! Cloud Run runs.

use crate::http::app;
use crate::service::Service;
use std::future::{Future, IntoFuture};

/// Serve `state` on `0.0.0.0:$PORT` (`config.port`) until SIGTERM or Ctrl-C, then drain: what
/// a Cloud Run service's `main` does.
pub async fn run(state: Service) -> anyhow::Result<()> {
    let port = state.config.port;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| anyhow::anyhow!("binding port {port}: {e}"))?;
    serve(listener, state, shutdown_signal()).await
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
    state: Service,
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
