//! The run's shared state (`Env`), and each project's data through the emulator's REST API.

use crate::load::item_ids;
use crate::scenarios::Shape;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Stock given to every item: never runs out during a run.
pub(crate) const PLENTY: i64 = 1_000_000_000;

/// What every scenario of one run shares: the HTTP client, the emulator, the builds, the
/// settings from the command line.
pub(crate) struct Env {
    /// Keep-alive HTTP client for the services and the emulator's REST API.
    pub(crate) http: reqwest::Client,
    /// The emulator, `host:port`.
    pub(crate) emulator: String,
    /// This build of the service (`firestore-once` next to the bench binary).
    pub(crate) service_bin: PathBuf,
    /// `--old-bin`: the build compared with this one.
    pub(crate) old_bin: Option<PathBuf>,
    /// Measured seconds per run.
    pub(crate) secs: f64,
    /// Measured seconds of a row through the limits proxy.
    pub(crate) limit_secs: f64,
    /// `--service-env`: extra environment for every service process.
    pub(crate) service_env: Vec<(String, String)>,
    /// Prefix of every project of this run, so runs never share one.
    pub(crate) run_id: String,
}

impl Env {
    fn rest(&self, project: &str) -> String {
        format!(
            "http://{}/v1/projects/{project}/databases/(default)/documents",
            self.emulator
        )
    }

    /// The project of run `n` of `runner`.
    pub(crate) fn project(&self, n: usize, runner: &str) -> String {
        format!("{}-{n}-{runner}", self.run_id)
    }

    /// Create the items in one commit through the emulator's REST API.
    pub(crate) async fn seed(&self, project: &str, ids: &[String]) -> Result<()> {
        let root = format!("projects/{project}/databases/(default)/documents");
        let writes: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({"update": {"name": format!("{root}/items/{id}"),
                    "fields": {"stock": {"integerValue": PLENTY.to_string()}}}})
            })
            .collect();
        let r = self
            .http
            .post(format!("{}:commit", self.rest(project)))
            .json(&json!({ "writes": writes }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("seeding items: {} {}", r.status(), r.text().await?);
        }
        Ok(())
    }

    /// The documents of `collection` (one page of up to 1000), through the emulator's REST API.
    async fn documents(&self, project: &str, collection: &str) -> Result<Vec<Value>> {
        let v: Value = self
            .http
            .get(format!("{}/{collection}", self.rest(project)))
            .query(&[("pageSize", "1000")])
            .send()
            .await?
            .json()
            .await?;
        Ok(v["documents"].as_array().cloned().unwrap_or_default())
    }

    /// Units taken from stock: initial total minus what the items hold now.
    pub(crate) async fn units_taken(&self, project: &str, ids: &[String]) -> Result<i64> {
        let stock = |d: &Value, what: &str| {
            d["fields"]["stock"]["integerValue"]
                .as_str()
                .and_then(|s| s.parse::<i64>().ok())
                .with_context(|| format!("{what} without an integer stock"))
        };
        let docs = self.documents(project, "items").await?;
        if docs.len() != ids.len() {
            bail!("{} items found, {} seeded", docs.len(), ids.len());
        }
        let mut left = 0i64;
        for d in &docs {
            left += stock(d, "an item")?;
        }
        // Plus what the items' stock shards hold (`items/{id}/shards/{k}`).
        for id in ids {
            for d in self
                .documents(project, &format!("items/{id}/shards"))
                .await?
            {
                left += stock(&d, "a shard")?;
            }
        }
        Ok(PLENTY * ids.len() as i64 - left)
    }

    /// The items a shape orders from: `hot` alone, or the 100 items.
    pub(crate) fn items_for(shape: Shape) -> Vec<String> {
        match shape {
            Shape::Hot => vec!["hot".into()],
            _ => item_ids().to_vec(),
        }
    }
}
