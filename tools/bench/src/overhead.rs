//! Scenario 1m: the metrics overhead, two services (metrics off and on) side by side.

use crate::env::Env;
use crate::load::{Answer, Target};
use crate::measure::{Measured, Row};
use crate::procfs::{cpu_secs, peak_rss_mb};
use crate::report::{find, mark};
use crate::scenarios::Scenario;
use anyhow::{bail, Result};
use std::fmt::Write as _;
use std::time::Duration;

/// One mode of the metrics-overhead pair, over both rounds.
#[derive(Default)]
struct ModeTotal {
    answers: Vec<(Answer, u32)>,
    /// Seconds driven.
    elapsed: Duration,
    /// CPU seconds of the service.
    cpu: f64,
    /// Peak RSS, MB.
    rss: f64,
}

impl Env {
    /// The metrics overhead: one service with `ONCE_METRICS=off` and one with it on, each on
    /// its own project with `sc.clients` clients, driven at the same time against the same
    /// emulator, twice (places swapped), summed per mode. Run one after the other, the second
    /// met a different emulator (warmer JIT, more data, other group-commit batch sizes) and
    /// that moved CPU per order by ±10 %, more than the metrics themselves cost
    /// (`scripts/metrics-callgrind`: about 0.2 %); side by side, both meet the same
    /// conditions. Rows: runner `metrics off`, `metrics on`.
    pub(crate) async fn overhead(&self, sc: &Scenario, n: usize) -> Result<Vec<Row>> {
        let ids = Self::items_for(sc.shape);
        let duration = Duration::from_secs_f64(self.secs);
        let mut total: [ModeTotal; 2] = Default::default();
        // Two rounds with the modes' places swapped (started first, polled first), so neither
        // mode keeps a positional advantage.
        for (round, modes) in [[0usize, 1], [1, 0]].into_iter().enumerate() {
            let mut runs = Vec::new();
            for &i in &modes {
                let mode = ["off", "on"][i];
                let project = self.project(n, &format!("metrics-{mode}-{round}"));
                self.seed(&project, &ids).await?;
                let svc = self
                    .start_service(&self.service_bin, &project, &[("ONCE_METRICS", mode)])
                    .await?;
                let target = Target::Http {
                    http: self.http.clone(),
                    url: format!("{}/orders", svc.url),
                };
                let cpu0 = cpu_secs(svc.child.id())?;
                runs.push((
                    i,
                    project,
                    svc,
                    target,
                    format!("svc{n}{mode}{round}"),
                    cpu0,
                ));
            }
            let (first, second) = tokio::join!(
                Self::drive(
                    &runs[0].3,
                    sc.shape,
                    sc.clients,
                    &runs[0].4,
                    None,
                    duration,
                    usize::MAX
                ),
                Self::drive(
                    &runs[1].3,
                    sc.shape,
                    sc.clients,
                    &runs[1].4,
                    None,
                    duration,
                    usize::MAX
                ),
            );
            for ((i, project, svc, _, _, cpu0), m) in runs.into_iter().zip([first, second]) {
                let cpu = cpu_secs(svc.child.id())? - cpu0;
                let rss = peak_rss_mb(svc.child.id())?;
                drop(svc);
                let taken = self.units_taken(&project, &ids).await?;
                let unknown = m.answers.iter().any(|a| a.0 == Answer::Failed);
                if taken != m.processed_units && !(unknown && taken > m.processed_units) {
                    bail!(
                        "metrics {}: stock moved by {taken}, answers say {}",
                        ["off", "on"][i],
                        m.processed_units
                    );
                }
                let t = &mut total[i];
                t.answers.extend(m.answers);
                t.elapsed += m.elapsed;
                t.cpu += cpu;
                t.rss = t.rss.max(rss);
            }
        }
        let mut rows = Vec::new();
        for (runner, t) in ["metrics off", "metrics on"].into_iter().zip(total) {
            let (cpu, rss) = (t.cpu, t.rss);
            let m = Measured {
                answers: t.answers,
                elapsed: t.elapsed,
                processed_units: 0,
            };
            let mut row = self.row(sc, runner, &m);
            row.cpu_ms_per_order = Some(cpu * 1000.0 / row.orders.max(1) as f64);
            row.peak_rss_mb = Some(rss);
            rows.push(row);
        }
        Ok(rows)
    }
}

/// The target of 1m: metrics on costs at most 5 % more CPU per order than metrics off.
pub(crate) fn target(s: &mut String, rows: &[Row]) {
    if let (Some(on), Some(off)) = (
        find(rows, "1m", 16, "metrics on"),
        find(rows, "1m", 16, "metrics off"),
    ) {
        let (a, b) = (
            on.cpu_ms_per_order.unwrap_or(f64::NAN),
            off.cpu_ms_per_order.unwrap_or(f64::NAN),
        );
        let pct = (a / b - 1.0) * 100.0;
        let _ = writeln!(
            s,
            "Metrics overhead, 1m (two services side by side, 16 clients each): {a:.3} ms on vs {b:.3} ms off CPU per order = {pct:+.1} % (target ≤ 5 %: {})",
            mark(pct <= 5.0)
        );
    }
}
