//! Load generation: orders, where they go (HTTP or the raw transaction), the client loops.

use crate::baseline::raw_transaction;
use crate::env::Env;
use crate::measure::Measured;
use crate::scenarios::{Scenario, Shape};
use anyhow::{anyhow, bail, Result};
use firestore::{FirestoreDb, FirestoreDbOptions};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One order: its ID and its lines (item, quantity).
#[derive(Clone, Debug)]
pub(crate) struct Order {
    /// The caller's order ID.
    pub(crate) order_id: String,
    /// (item ID, quantity) per line.
    pub(crate) lines: Vec<(String, i64)>,
}

impl Order {
    fn body(&self) -> Vec<u8> {
        let v = if self.lines.len() == 1 {
            json!({"order_id": self.order_id, "item_id": self.lines[0].0, "quantity": self.lines[0].1})
        } else {
            let items: Vec<Value> = self
                .lines
                .iter()
                .map(|(i, q)| json!({"item_id": i, "quantity": q}))
                .collect();
            json!({"order_id": self.order_id, "items": items})
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

/// What one request or transaction ended as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Ok,
    Rejected,
    Failed,
}

/// Where orders go: the service over HTTP or the raw transaction in-process.
#[derive(Clone)]
pub(crate) enum Target {
    Http {
        http: reqwest::Client,
        url: String,
    },
    Raw {
        db: FirestoreDb,
    },
    /// Several service instances: client `c` talks to instance `c mod n` only.
    Spread(Vec<Target>),
}

impl Target {
    /// The target client `c` uses.
    fn for_client(&self, c: usize) -> Target {
        match self {
            Target::Spread(all) if !all.is_empty() => all[c % all.len()].for_client(c),
            t => t.clone(),
        }
    }

    async fn send(&self, o: &Order) -> Answer {
        match self {
            Target::Spread(all) => match all.first() {
                Some(t) => Box::pin(t.send(o)).await,
                None => Answer::Failed,
            },
            Target::Http { http, url } => {
                match http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(o.body())
                    .send()
                    .await
                {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        // Drain the body so the connection is reused.
                        let _ = r.bytes().await;
                        match s {
                            200 => Answer::Ok,
                            409 => Answer::Rejected,
                            _ => Answer::Failed,
                        }
                    }
                    Err(_) => Answer::Failed,
                }
            }
            Target::Raw { db } => match raw_transaction(db, o).await {
                Ok(true) => Answer::Ok,
                Ok(false) => Answer::Rejected,
                Err(_) => Answer::Failed,
            },
        }
    }
}

/// The 100 item IDs, `item-000` to `item-099`.
pub(crate) fn item_ids() -> &'static [String] {
    static IDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    IDS.get_or_init(|| (0..100).map(|i| format!("item-{i:03}")).collect())
}

/// Order `seq` of client `client` of `clients`. Items are partitioned between clients (client
/// `c` uses items `c`, `c + clients`, …) so concurrent transactions never touch the same item:
/// the baseline's ceiling is then the emulator's, not its 2 s lock waits. `SpreadRandom` picks
/// from all items, as real traffic does.
fn new_order(shape: Shape, prefix: &str, client: usize, clients: usize, seq: usize) -> Order {
    let ids = item_ids();
    let own: Vec<usize> = (client % ids.len()..ids.len())
        .step_by(clients.max(1))
        .collect();
    let order_id = format!("{prefix}-{client}-{seq}");
    let pick = |n: usize, from: &[usize]| -> Vec<(String, i64)> {
        let mut picked: Vec<usize> = Vec::with_capacity(n);
        while picked.len() < n {
            let i = from[fastrand::usize(..from.len())];
            if !picked.contains(&i) {
                picked.push(i);
            }
        }
        picked.into_iter().map(|i| (ids[i].clone(), 1)).collect()
    };
    let all: Vec<usize> = (0..ids.len()).collect();
    let lines = match shape {
        Shape::Hot => vec![("hot".to_string(), 1)],
        Shape::Spread | Shape::Replay => pick(1, &own),
        Shape::SpreadRandom => pick(1, &all),
        Shape::Multi if own.len() >= 5 => pick(5, &own),
        Shape::Multi | Shape::MultiRandom => pick(5, &all),
    };
    Order { order_id, lines }
}

impl Env {
    /// Drive `clients` concurrent loops for the configured time. New orders unless `replay`
    /// lists orders to send again (round robin).
    pub(crate) async fn drive(
        target: &Target,
        shape: Shape,
        clients: usize,
        prefix: &str,
        replay: Option<Arc<Vec<Order>>>,
        duration: Duration,
        max_per_client: usize,
    ) -> Measured {
        let start = Instant::now();
        let deadline = start + duration;
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let target = target.for_client(c);
            let replay = replay.clone();
            let next = next.clone();
            let prefix = prefix.to_string();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                let mut units = 0i64;
                let mut seq = 0;
                while Instant::now() < deadline && seq < max_per_client {
                    let o = match &replay {
                        Some(list) => {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            list[i % list.len()].clone()
                        }
                        None => new_order(shape, &prefix, c, clients, seq),
                    };
                    seq += 1;
                    let t = Instant::now();
                    let a = target.send(&o).await;
                    let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    if a == Answer::Ok && replay.is_none() {
                        units += o.lines.iter().map(|l| l.1).sum::<i64>();
                    }
                    out.push((a, us));
                }
                (out, units)
            }));
        }
        let mut answers = Vec::new();
        let mut processed_units = 0;
        for t in tasks {
            if let Ok((a, u)) = t.await {
                answers.extend(a);
                processed_units += u;
            }
        }
        Measured {
            answers,
            elapsed: start.elapsed(),
            processed_units,
        }
    }

    /// Orders to replay: created first (not measured), then sent again in the measured phase.
    pub(crate) async fn preload(&self, target: &Target, prefix: &str) -> Result<Arc<Vec<Order>>> {
        let n = 2_000;
        let per = n / 32;
        // Clients take orders round robin, so consecutive orders use consecutive items: the
        // 32 in flight at any moment touch 32 different items (no lock waits for the baseline).
        let ids = item_ids();
        let list: Vec<Order> = (0..n)
            .map(|i| Order {
                order_id: format!("{prefix}-r-{i}"),
                lines: vec![(ids[i % ids.len()].clone(), 1)],
            })
            .collect();
        let list = Arc::new(list);
        let m = Self::drive(
            target,
            Shape::Replay,
            32,
            prefix,
            Some(list.clone()),
            Duration::from_secs(120),
            per,
        )
        .await;
        let bad = m.answers.iter().filter(|a| a.0 != Answer::Ok).count();
        if bad > 0 {
            bail!("preloading the orders to replay: {bad} of {n} failed");
        }
        Ok(list)
    }

    /// Unmeasured load on a throw-away project: the raw transaction, then the service.
    pub(crate) async fn warm_up(&self) -> Result<()> {
        eprintln!("warming up the emulator…");
        let sc = Scenario {
            id: "warm-up",
            title: "",
            shape: Shape::Spread,
            clients: 16,
            env: Vec::new(),
            baseline: true,
            instances: 1,
            round: 0,
            limits: None,
        };
        let secs = Duration::from_secs(4);
        let project = format!("{}-warm", self.run_id);
        self.seed(&project, item_ids()).await?;
        let db = FirestoreDb::with_options(
            FirestoreDbOptions::new(project.clone()).with_request_timeout(Duration::from_secs(10)),
        )
        .await
        .map_err(|e| anyhow!("baseline client: {e}"))?;
        let raw = Target::Raw { db };
        Self::drive(
            &raw,
            sc.shape,
            sc.clients,
            "warm-raw",
            None,
            secs,
            usize::MAX,
        )
        .await;
        let bins = std::iter::once(&self.service_bin).chain(self.old_bin.as_ref());
        for (i, bin) in bins.enumerate() {
            let svc = self.start_service(bin, &project, &[]).await?;
            let http = Target::Http {
                http: self.http.clone(),
                url: format!("{}/orders", svc.url),
            };
            Self::drive(
                &http,
                sc.shape,
                sc.clients,
                &format!("warm-svc{i}"),
                None,
                secs,
                usize::MAX,
            )
            .await;
        }
        Ok(())
    }
}
