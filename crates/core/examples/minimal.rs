//! A whole service with a kind of your own: `POST /tasks/vote` counts a vote once per `vote_id`,
//! however often it is delivered. `GOOGLE_CLOUD_PROJECT=demo cargo run --example minimal`
use firestore_once_core::engine::*;
use firestore_once_core::{config::Config, server, service};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Poll {
    votes: i64,
}

/// `{"vote_id": "v-1", "poll": "p1"}`.
#[derive(Serialize, Deserialize)]
pub struct Vote {
    poll: DocId,
}

impl Kind for Vote {
    const KIND: &'static str = "vote";
    const KEY: &'static str = "vote_id";
    fn reads(&self) -> Vec<DocRef> {
        vec![DocRef::new("polls", &self.poll)]
    }
    fn decide(&self, snap: &Snapshot) -> Result<Decision, OpError> {
        let poll = DocRef::new("polls", &self.poll);
        let votes = snap.get::<Poll>(&poll)?.unwrap_or_default().votes + 1;
        Ok(Decision::apply(vec![Write::set(poll, &Poll { votes })?]))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut kinds = Registry::default();
    kinds.register_kind::<Vote>();
    server::run(service::connect(Config::from_env()?, kinds).await?).await
}
