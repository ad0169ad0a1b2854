//! A new operation kind in one file: award loyalty points once per `award_id`.
//!
//! Implement [`Operation`], register a parser, and the guard brings the rest: the status
//! document, the transaction, retries, replay, the answers for every delivery path.
//!
//! Run it against an emulator (prints the first outcome, then the replay):
//! `FIRESTORE_EMULATOR_HOST=127.0.0.1:8085 cargo run --example award_points`

use firestore_once_core::engine::{
    doc_id_field, object, positive_field, Decision, DocRef, Fingerprint, OpError, Operation,
    ParseCtx, Registry, Snapshot, ValidationError, Write,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// `{award_id, customer_id, points}`: `customers/{customer_id}.points += points`, once.
#[derive(Debug)]
pub struct AwardPoints {
    award_id: String,
    customer_id: String,
    points: i64,
}

#[derive(Serialize, Deserialize, Default)]
struct Customer {
    points: i64,
}

impl AwardPoints {
    /// Validate a request.
    pub fn parse(body: &Value, ctx: &ParseCtx<'_>) -> Result<Self, ValidationError> {
        object(body)?;
        let customer_id = doc_id_field(body, "customer_id")?;
        let points = positive_field(body, "points", 1_000_000)?;
        let (award_id, _) = ctx.key(body, "award_id", || {
            Fingerprint::of(KIND, &(&customer_id, points))
        })?;
        Ok(Self {
            award_id,
            customer_id,
            points,
        })
    }

    fn customer(&self) -> DocRef {
        DocRef::new("customers", &self.customer_id)
    }
}

impl Operation for AwardPoints {
    fn kind(&self) -> &'static str {
        KIND
    }
    fn key(&self) -> &str {
        &self.award_id
    }
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(
            self.kind(),
            &(&self.award_id, &self.customer_id, self.points),
        )
    }
    fn reads(&self) -> Vec<DocRef> {
        vec![self.customer()]
    }
    fn decide(&self, snapshot: &Snapshot) -> Result<Decision, OpError> {
        let current = snapshot
            .get::<Customer>(&self.customer())?
            .unwrap_or_default();
        let total = current.points + self.points;
        let mut result = Map::new();
        result.insert("customer_id".into(), json!(self.customer_id));
        result.insert("points".into(), json!(total));
        Ok(Decision::Apply {
            writes: vec![Write::set(self.customer(), &Customer { points: total })?],
            result,
        })
    }
}

/// The kind's name: the registry's and the operation ID's.
pub const KIND: &str = "award_points";

/// Serve the kind at `POST /tasks/award_points`.
pub fn register(registry: &mut Registry) {
    registry.register(KIND, AwardPoints::parse);
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use firestore_once_core::config::Config;
    use firestore_once_core::engine::DeliveryMeta;
    use firestore_once_core::guard::{Guard, GuardConfig};
    let project = std::env::var("GOOGLE_CLOUD_PROJECT").unwrap_or_else(|_| "demo-award".into());
    let config = Config::default();
    let db = firestore_once_core::service::connect_db(&config, &project, None).await?;
    let guard = Guard::new(db, GuardConfig::from(&config));
    let award = Arc::new(AwardPoints {
        award_id: "a-1".into(),
        customer_id: "c-1".into(),
        points: 10,
    });
    let meta = DeliveryMeta {
        source: "example".into(),
        ..Default::default()
    };
    for _ in 0..2 {
        let o = guard.run(award.clone(), meta.clone()).await?;
        println!("replayed={} {}", o.replayed, o.record.response.body);
    }
    Ok(())
}
