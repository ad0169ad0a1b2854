//! `--old-bin`: which builds a scenario runs against, and this build ÷ the old one.

use crate::env::Env;
use crate::measure::{median, Row};
use crate::scenarios::Scenario;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The runs of scenario `sc` (number `n`): (binary, runner, run number). This build alone, or
/// with `--old-bin` both builds `rounds` times each, alternating which goes first.
pub(crate) fn runners<'a>(
    env: &'a Env,
    sc: &Scenario,
    n: usize,
    rounds: usize,
) -> Vec<(&'a PathBuf, &'static str, usize)> {
    // With --old-bin, each single-instance scenario runs against both builds, `rounds`
    // times; which goes first alternates, so neither always meets the emulator in the
    // warmer state.
    // Each round has its own projects and order IDs (`n + 1000 × round`).
    let mut runners: Vec<(&PathBuf, &'static str, usize)> = vec![(&env.service_bin, "service", n)];
    if let Some(old) = env.old_bin.as_ref().filter(|_| sc.compares()) {
        runners = (0..rounds)
            .flat_map(|r| {
                let run = n + 1000 * r;
                let mut pair = vec![(&env.service_bin, "service", run)];
                pair.insert((n + r) % 2, (old, "old", run));
                pair
            })
            .collect();
    }
    runners
}

/// With `--old-bin`: this build ÷ the old one for every figure of every scenario both ran.
/// Issue 12's bound: each single-instance figure within 10 % of the old build's. With
/// `--rounds R` a scenario has R rows per build, paired in the order they ran (each pair back
/// to back); every figure's ratio is the median of the R paired ratios, next to the median
/// figures of each build.
pub(crate) fn compare_old(s: &mut String, rows: &[Row]) {
    let key = |r: &Row| (r.scenario.clone(), r.clients, r.instances);
    let mut keys: Vec<(String, usize, usize)> = Vec::new();
    for r in rows.iter().filter(|r| r.runner == "old") {
        if !keys.contains(&key(r)) {
            keys.push(key(r));
        }
    }
    let of = |k: &(String, usize, usize), runner: &str| -> Vec<&Row> {
        rows.iter()
            .filter(|r| r.runner == runner && &key(r) == k)
            .collect()
    };
    let groups: Vec<(Vec<&Row>, Vec<&Row>)> = keys
        .iter()
        .map(|k| (of(k, "service"), of(k, "old")))
        .filter(|(n, o)| !n.is_empty() && n.len() == o.len())
        .collect();
    if groups.is_empty() {
        return;
    }
    let rounds = groups[0].0.len();
    let _ = writeln!(
        s,
        "\nThis build ÷ the old build (`--old-bin`), same run. Within 10 %: orders/s ≥ 0.90 ×, \
         p99, CPU per order and peak RSS ≤ 1.10 ×. Shown for reading, not targets: the peak \
         anonymous RSS (what the service allocated; peak RSS also counts the executable's clean \
         file pages) and the emulator's CPU per order (the database's work for the service's \
         calls).{}\n",
        if rounds > 1 {
            format!(" Medians of {rounds} rounds: each figure new / old, then the median of the {rounds} paired ratios.")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "| scenario | clients | orders/s new / old | × | p99 ms new / old | × | CPU ms/order new / old | × | peak RSS MB new / old | × | peak anon MB new / old | × | emulator CPU ms/order new / old | × |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut outside = Vec::new();
    type Figure = fn(&Row) -> f64;
    let figures: [(&str, Figure, usize, Option<bool>); 6] = [
        ("orders/s", |r| r.per_sec, 1, Some(true)),
        ("p99", |r| r.p99_ms, 1, Some(false)),
        (
            "CPU/order",
            |r| r.cpu_ms_per_order.unwrap_or(f64::NAN),
            3,
            Some(false),
        ),
        ("RSS", |r| r.peak_rss_mb.unwrap_or(f64::NAN), 1, Some(false)),
        ("anon", |r| r.peak_anon_mb.unwrap_or(f64::NAN), 1, None),
        (
            "emulator CPU/order",
            |r| r.emulator_cpu_ms_per_order.unwrap_or(f64::NAN),
            3,
            None,
        ),
    ];
    for (new, old) in &groups {
        let mut cells = Vec::new();
        for (name, f, prec, higher_is_better) in figures {
            let a = median(new.iter().map(|r| f(r)).collect());
            let b = median(old.iter().map(|r| f(r)).collect());
            let x = median(
                new.iter()
                    .zip(old)
                    .map(|(n, o)| f(n) / f(o).max(1e-9))
                    .collect(),
            );
            let ok = match higher_is_better {
                Some(true) => x >= 0.9,
                Some(false) => x <= 1.1,
                None => true,
            };
            if !ok {
                outside.push(format!(
                    "{} @{} {name} {x:.2} ×",
                    new[0].scenario, new[0].clients
                ));
            }
            let bold = if ok { "" } else { "**" };
            cells.push(format!("{a:.prec$} / {b:.prec$} | {bold}{x:.2}{bold} "));
        }
        let _ = writeln!(
            s,
            "| {} | {} | {}|",
            new[0].scenario,
            new[0].clients,
            cells.join("| ")
        );
    }
    let _ = writeln!(
        s,
        "Figures outside 10 % of the old build: {}",
        if outside.is_empty() {
            "none".to_string()
        } else {
            outside.join(", ")
        }
    );
}
