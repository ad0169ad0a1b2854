//! The guard inside your own axum app: your router, your route, your operation kind.
//!
//! `POST /polls/{poll}/votes/{vote_id}` counts a vote once per `vote_id`, however often a
//! client retries it. Run it against an emulator, then vote twice:
//! `FIRESTORE_EMULATOR_HOST=127.0.0.1:8081 cargo run --example embed`
//! `curl -i -X POST localhost:3000/polls/p1/votes/v1` (twice: the second is a replay).

use axum::extract::{Path, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::{response::IntoResponse, routing::post, Router};
use firestore_once_core::engine::{Decision, DeliveryMeta, DocRef, Fingerprint, OpError};
use firestore_once_core::engine::{Operation, Snapshot, Write};
use firestore_once_core::guard::{Guard, GuardError};
use serde_json::{json, Map};
use std::sync::Arc;

/// One vote for `poll`, counted once per `vote_id`.
pub struct Vote {
    poll: String,
    vote_id: String,
}

impl Operation for Vote {
    fn kind(&self) -> &'static str {
        "vote"
    }
    fn key(&self) -> &str {
        &self.vote_id
    }
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of("vote", &self.poll)
    }
    fn reads(&self) -> Vec<DocRef> {
        vec![DocRef::new("polls", &self.poll)]
    }
    fn decide(&self, snap: &Snapshot) -> Result<Decision, OpError> {
        let poll = DocRef::new("polls", &self.poll);
        let votes = snap
            .get::<serde_json::Value>(&poll)?
            .and_then(|p| p["votes"].as_i64());
        let votes = votes.unwrap_or(0) + 1;
        let mut result = Map::new();
        result.insert("votes".into(), json!(votes));
        let writes = vec![Write::set(poll, &json!({ "votes": votes }))?];
        Ok(Decision::Apply { writes, result })
    }
}

/// Your router, with the guard as its state.
pub fn router(guard: Guard) -> Router {
    Router::new()
        .route("/polls/{poll}/votes/{vote_id}", post(vote))
        .with_state(guard)
}

async fn vote(
    State(guard): State<Guard>,
    Path((poll, vote_id)): Path<(String, String)>,
) -> impl IntoResponse {
    let meta = DeliveryMeta {
        source: "http".into(),
        ..Default::default()
    };
    match guard.run(Arc::new(Vote { poll, vote_id }), meta).await {
        // The stored answer: the same bytes for the first delivery and every retry.
        Ok(o) => {
            let r = o.record.response;
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
            let replayed = if o.replayed { "true" } else { "false" };
            (
                status,
                [
                    (header::CONTENT_TYPE, r.content_type),
                    (
                        header::HeaderName::from_static("idempotent-replayed"),
                        replayed.into(),
                    ),
                ],
                r.body,
            )
        }
        // The same vote ID for another poll: bad input, not worth retrying.
        Err(e @ GuardError::KeyReused { .. }) => plain(StatusCode::UNPROCESSABLE_ENTITY, e),
        // Outcome unknown: nothing is half-written; the client retries the same request.
        Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

fn plain(status: StatusCode, e: GuardError) -> (StatusCode, [(HeaderName, String); 2], String) {
    let headers = [
        (header::CONTENT_TYPE, "text/plain".into()),
        (header::RETRY_AFTER, "1".into()),
    ];
    (status, headers, e.to_string())
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = firestore_once_core::config::Config::from_env()?;
    config.project_id.get_or_insert_with(|| "demo-embed".into());
    let registry = firestore_once_core::engine::Registry::default();
    let state = firestore_once_core::service::connect(config, registry).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, router(state.guard)).await?;
    Ok(())
}
