//! The service rows: one or N instances of a build on a fresh project, then the invariants.

use crate::env::{Env, PLENTY};
use crate::load::{Answer, Target};
use crate::measure::Row;
use crate::procfs::{cpu_secs, emulator_cpu_secs, peak_anon_mb, peak_rss_mb};
use crate::scenarios::{Scenario, Shape};
use anyhow::{anyhow, Result};
use firestore::{FirestoreDb, FirestoreDbOptions};
use std::path::PathBuf;
use std::time::Duration;

impl Env {
    /// The row of `sc` against `bin` (`runner`): `sc.instances` processes on a fresh project,
    /// their CPU, RSS and the emulator's CPU over the measured phase; then the invariants (the
    /// stock against the answers, and the shop's checker), `Err` with what broke.
    pub(crate) async fn service(
        &self,
        sc: &Scenario,
        n: usize,
        bin: &PathBuf,
        runner: &'static str,
    ) -> Result<(Row, Result<(), String>)> {
        let project = self.project(n, runner);
        let ids = Self::items_for(sc.shape);
        self.seed(&project, &ids).await?;
        // Family 6 goes through the limits proxy with the service's budget at its rate; every
        // other row talks to the emulator on its terms, with no budget.
        let proxy = sc.limits.map(|rate| self.start_proxy(rate)).transpose()?;
        let rate = sc.limits.map(|r| r.to_string());
        let mut services = Vec::with_capacity(sc.instances);
        for i in 0..sc.instances {
            let mut env = sc.env.clone();
            let id = i.to_string();
            env.push(("ONCE_INSTANCE_ID", id.as_str()));
            if let (Some(p), Some(rate)) = (&proxy, &rate) {
                env.push(("FIRESTORE_EMULATOR_HOST", p.addr.as_str()));
                env.push(("ONCE_DOC_COMMITS_PER_SEC", rate.as_str()));
            }
            services.push(self.start_service(bin, &project, &env).await?);
        }
        if let Some(p) = &proxy {
            self.reset_proxy(p).await?;
        }
        let pids: Vec<u32> = services.iter().map(|s| s.child.id()).collect();
        let targets: Vec<Target> = services
            .iter()
            .map(|svc| Target::Http {
                http: self.http.clone(),
                url: format!("{}/orders", svc.url),
            })
            .collect();
        let target = if targets.len() == 1 {
            targets[0].clone()
        } else {
            Target::Spread(targets)
        };
        let prefix = format!("{runner}{n}");
        let replay = match sc.shape {
            Shape::Replay => Some(self.preload(&target, &prefix).await?),
            _ => None,
        };
        let cpu_of = |pids: &[u32]| -> Result<f64> {
            pids.iter().map(|p| cpu_secs(*p)).sum::<Result<f64>>()
        };
        let cpu0 = cpu_of(&pids)?;
        let emu0 = emulator_cpu_secs(&self.emulator);
        let (stop_sampling, sampled) = tokio::sync::oneshot::channel::<()>();
        let sampler = tokio::spawn(peak_anon_mb(pids.clone(), sampled));
        let m = Self::drive(
            &target,
            sc.shape,
            sc.clients,
            &prefix,
            replay.clone(),
            Duration::from_secs_f64(if proxy.is_some() {
                self.limit_secs
            } else {
                self.secs
            }),
            usize::MAX,
        )
        .await;
        let figures = match (&proxy, sc.limits) {
            (Some(p), Some(rate)) => Some(self.proxy_figures(p, rate).await?),
            _ => None,
        };
        let cpu = cpu_of(&pids)? - cpu0;
        let emu = emulator_cpu_secs(&self.emulator)
            .zip(emu0)
            .map(|(b, a)| b - a);
        let _ = stop_sampling.send(());
        let anon = sampler.await.ok();
        let rss = pids
            .iter()
            .map(|p| peak_rss_mb(*p))
            .collect::<Result<Vec<f64>>>()?
            .into_iter()
            .fold(0.0, f64::max);
        drop(services);
        drop(proxy);
        let mut row = self.row(sc, runner, &m);
        row.proxy = figures;
        row.cpu_ms_per_order = Some(cpu * 1000.0 / row.orders.max(1) as f64);
        row.emulator_cpu_ms_per_order = emu.map(|e| e * 1000.0 / row.orders.max(1) as f64);
        row.peak_rss_mb = Some(rss);
        row.peak_anon_mb = anon;
        // Invariant: stock taken = units of the orders answered 200 (each exactly once); for
        // replays, nothing moves beyond the preloaded orders.
        let taken = self.units_taken(&project, &ids).await?;
        let expected = match &replay {
            Some(list) => list
                .iter()
                .map(|o| o.lines.iter().map(|l| l.1).sum::<i64>())
                .sum(),
            None => m.processed_units,
        };
        let unknown = m.answers.iter().any(|a| a.0 == Answer::Failed);
        let mut invariant = if taken == expected || (unknown && taken > expected) {
            Ok(())
        } else {
            Err(format!(
                "initial stock - current stock = {taken}, but the answers account for {expected}"
            ))
        };
        // And the project's own checker over every item, order and status document.
        let initial: firestore_once_shop::invariants::StockMap =
            ids.iter().map(|id| (id.clone(), PLENTY)).collect();
        let db = FirestoreDb::with_options(
            FirestoreDbOptions::new(project.clone()).with_request_timeout(Duration::from_secs(30)),
        )
        .await
        .map_err(|e| anyhow!("invariant checker client: {e}"))?;
        let report = firestore_once_shop::invariants::verify(
            &db,
            &firestore_once_shop::ShopConfig::default(),
            &initial,
        )
        .await
        .map_err(|e| anyhow!("reading the database for the invariant checker: {e}"))?;
        if invariant.is_ok() && !report.ok() {
            invariant = Err(format!("invariant checker: {report}"));
        }
        if let Err(e) = &invariant {
            row.note = e.clone();
        }
        Ok((row, invariant))
    }
}
