//! The raw-transaction baseline: the same transaction through the `firestore` crate, in process.

use crate::env::Env;
use crate::load::{Order, Target};
use crate::measure::Row;
use crate::procfs::cpu_secs;
use crate::scenarios::{Scenario, Shape};
use anyhow::{anyhow, Result};
use firestore::{FirestoreDb, FirestoreDbOptions};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

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
pub(crate) async fn raw_transaction(
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

impl Env {
    /// The baseline row of `sc`: [`raw_transaction`] on a fresh project, CPU from this process,
    /// the stock checked against the answers.
    pub(crate) async fn baseline(&self, sc: &Scenario, n: usize) -> Result<Row> {
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
}
