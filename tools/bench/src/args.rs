//! The command line: flags, defaults, `--help`.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// The command line, parsed.
pub(crate) struct Args {
    /// Extra environment for every service process (`--service-env K=V`, for experiments).
    pub(crate) service_env: Vec<(String, String)>,
    /// Scenario IDs to run (all when empty).
    pub(crate) only: Vec<String>,
    /// Measured seconds per run (`--secs`, default 5; at most 2 with `--smoke`).
    pub(crate) secs: f64,
    /// `--smoke`: correctness only, on the debug build (CI).
    pub(crate) smoke: bool,
    /// `--long`: N = 8 too in the N-instance scenarios.
    pub(crate) long: bool,
    /// `--out FILE`: also write the report there.
    pub(crate) out: Option<PathBuf>,
    /// Dead letters of the redrive scenario (`--only redrive`).
    pub(crate) redrive_count: usize,
    /// `--old-bin PATH`: a second service binary run beside this one (single-instance rows).
    pub(crate) old_bin: Option<PathBuf>,
    /// `--rounds R`: with `--old-bin`, each compared scenario runs R times against each
    /// build, alternating; the comparison takes the median of the R paired ratios. The
    /// N-instance rows run R times too (N = 1, 2, 4, then 4, 2, 1, …), each N = k against
    /// its round's N = 1, and the targets take the median ratio.
    pub(crate) rounds: usize,
    /// Measured seconds of a row through the limits proxy (`--limit-secs`, default 20; 3 with
    /// `--smoke`): long enough to judge what happens after the first 10 s.
    pub(crate) limit_secs: f64,
}

/// Parse the command line (`--help` prints the usage and exits).
pub(crate) fn args() -> Result<Args> {
    let mut a = Args {
        service_env: Vec::new(),
        only: Vec::new(),
        secs: 5.0,
        smoke: false,
        long: false,
        out: None,
        redrive_count: 10_000,
        old_bin: None,
        rounds: 1,
        limit_secs: 20.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => a.smoke = true,
            "--long" => a.long = true,
            "--secs" => {
                a.secs = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .context("--secs needs a number")?
            }
            "--only" => {
                a.only = it
                    .next()
                    .context("--only needs scenario IDs, e.g. 1,3")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--service-env" => {
                let kv = it.next().context("--service-env needs K=V")?;
                let (k, v) = kv.split_once('=').context("--service-env needs K=V")?;
                a.service_env.push((k.to_string(), v.to_string()));
            }
            "--out" => a.out = Some(it.next().context("--out needs a file")?.into()),
            "--old-bin" => {
                let p = PathBuf::from(it.next().context("--old-bin needs a service binary")?);
                if !p.is_file() {
                    bail!("--old-bin {}: no such file", p.display());
                }
                a.old_bin = Some(p);
            }
            "--rounds" => {
                a.rounds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|r| *r >= 1)
                    .context("--rounds needs a number ≥ 1")?
            }
            "--limit-secs" => {
                a.limit_secs = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| *s > 0.0)
                    .context("--limit-secs needs a positive number")?
            }
            "--redrive-count" => {
                a.redrive_count = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .context("--redrive-count needs a number")?
            }
            "-h" | "--help" => {
                println!("usage: bench [--smoke] [--long] [--secs N] [--limit-secs N] [--only 1,2,3,3b,4,4r,5,5r,6,6r] [--service-env K=V]... [--out FILE] [--old-bin PATH] [--rounds R]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if a.smoke {
        a.secs = a.secs.min(2.0);
        a.limit_secs = a.limit_secs.min(3.0);
    }
    Ok(a)
}
