//! The N-instance scenarios (5, 5r): their targets, N = 4 against N = 1 per round.

use crate::measure::{median, Row};
use crate::report::mark;
use std::fmt::Write as _;

/// The target lines of the N-instance rows (5, 5r), for the report.
pub(crate) fn targets(s: &mut String, rows: &[Row]) {
    for id in ["5", "5r"] {
        // Per round, N = k against that round's N = 1; the median over the rounds.
        let rounds: Vec<usize> = {
            let mut r: Vec<usize> = rows
                .iter()
                .filter(|r| r.scenario == id && r.runner == "service")
                .map(|r| r.round)
                .collect();
            r.sort_unstable();
            r.dedup();
            r
        };
        let at = |n: usize, round: usize| {
            rows.iter().find(|r| {
                r.scenario == id && r.runner == "service" && r.instances == n && r.round == round
            })
        };
        // (ratios, p99s, failed) of N = n over every round that has it and N = 1.
        let of = |n: usize| {
            let mut ratios = Vec::new();
            let mut p99 = Vec::new();
            let mut failed = 0;
            for &round in &rounds {
                if let (Some(one), Some(r)) = (at(1, round), at(n, round)) {
                    ratios.push(r.per_sec / one.per_sec.max(1e-9));
                    p99.push(r.p99_ms);
                    failed += r.failed;
                }
            }
            (ratios, p99, failed)
        };
        let each = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (ratios, p99, failed) = of(4);
        if !ratios.is_empty() {
            let t = median(ratios.clone());
            let worst_p99 = p99.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "Scenario {id}: N=4 = {t:.2} × N=1 orders/s{} (target ≥ 0.8: {}); p99 at N=4 ≤ {worst_p99:.1} ms (target ≤ 250: {}); failed {failed} (target 0: {})",
                if ratios.len() > 1 {
                    format!(" (median of {} rounds: {})", ratios.len(), each(&ratios))
                } else {
                    String::new()
                },
                mark(t >= 0.8),
                mark(worst_p99 <= 250.0),
                mark(failed == 0)
            );
        }
        for n in [2, 8] {
            let (ratios, p99, failed) = of(n);
            if !ratios.is_empty() {
                let _ = writeln!(
                    s,
                    "  (N={n}: {:.2} × N=1{}, p99 ≤ {:.1} ms, failed {failed})",
                    median(ratios.clone()),
                    if ratios.len() > 1 {
                        format!(" [{}]", each(&ratios))
                    } else {
                        String::new()
                    },
                    p99.iter().copied().fold(0.0, f64::max),
                );
            }
        }
    }
}
