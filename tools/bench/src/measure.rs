//! What a run measured, and the row it becomes: latency percentiles, medians.

use crate::env::Env;
use crate::load::Answer;
use crate::scenarios::Scenario;
use std::time::Duration;

/// One row of the report: a scenario at a client count, against one runner.
#[derive(Default, Debug, Clone)]
pub(crate) struct Row {
    /// The scenario ID (`1`, `3b`, `5r`…).
    pub(crate) scenario: String,
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// Service instances.
    pub(crate) instances: usize,
    /// `baseline`, `service`, `old`, `metrics off` or `metrics on`.
    pub(crate) runner: &'static str,
    /// Answers in the measured phase.
    pub(crate) orders: usize,
    /// Answers per second.
    pub(crate) per_sec: f64,
    /// Median latency, ms.
    pub(crate) p50_ms: f64,
    /// 99th percentile latency, ms.
    pub(crate) p99_ms: f64,
    /// Answers that were neither 200 nor 409 (or transactions that failed).
    pub(crate) failed: usize,
    /// Answers 409 (out of stock).
    pub(crate) rejected: usize,
    /// CPU of the runner per order, ms.
    pub(crate) cpu_ms_per_order: Option<f64>,
    /// The emulator's CPU over the same phase, per order: where the service's calls cost
    /// the database (on production Firestore, not this machine's CPU).
    pub(crate) emulator_cpu_ms_per_order: Option<f64>,
    /// Peak RSS (`VmHWM`) of the service, MB.
    pub(crate) peak_rss_mb: Option<f64>,
    /// The largest `RssAnon` seen (sampled every 20 ms): the memory the service itself
    /// allocated, without the executable's clean file pages that `VmHWM` also counts.
    pub(crate) peak_anon_mb: Option<f64>,
    /// The round of an N-instance row (`--rounds`).
    pub(crate) round: usize,
    /// What went wrong with the invariant, if anything.
    pub(crate) note: String,
    /// What the limits proxy counted (scenario family 6).
    pub(crate) proxy: Option<crate::limits::ProxyFigures>,
}

/// The answers of one measured phase.
pub(crate) struct Measured {
    /// Each answer and its latency in µs.
    pub(crate) answers: Vec<(Answer, u32)>,
    /// How long the phase took.
    pub(crate) elapsed: Duration,
    /// Quantities answered 200 for new orders, by order index, for the invariant.
    pub(crate) processed_units: i64,
}

/// The median of `v` (NaN when empty): one 4 s run moves by ±30 % here, so repeated runs are
/// summed up by their median.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

impl Env {
    /// The row of `m`: counts, throughput and latency percentiles.
    pub(crate) fn row(&self, sc: &Scenario, runner: &'static str, m: &Measured) -> Row {
        let mut lat: Vec<u32> = m.answers.iter().map(|a| a.1).collect();
        lat.sort_unstable();
        let failed = m.answers.iter().filter(|a| a.0 == Answer::Failed).count();
        let rejected = m.answers.iter().filter(|a| a.0 == Answer::Rejected).count();
        Row {
            scenario: sc.id.into(),
            clients: sc.clients,
            instances: sc.instances,
            runner,
            orders: m.answers.len(),
            per_sec: m.answers.len() as f64 / m.elapsed.as_secs_f64().max(1e-9),
            p50_ms: percentile(&lat, 0.50),
            p99_ms: percentile(&lat, 0.99),
            failed,
            rejected,
            round: sc.round,
            ..Row::default()
        }
    }
}
