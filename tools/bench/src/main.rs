//! `bench`: the service against the raw-transaction ceiling, side by side in one run.
//!
//! Starts its own Firestore emulator and, per scenario, a fresh release build of the service
//! (`firestore-once`, found next to this binary) on a fresh project, loads items through the
//! emulator's REST API, and drives HTTP load with a bounded number of keep-alive clients. The
//! **baseline** is the same logical transaction issued straight through the `firestore` crate
//! in this process (`run_transaction`: read `operations/{id}` and the items, write both), on
//! the same emulator with the same client counts. Prints a Markdown table plus the target
//! ratios.
//!
//! ```sh
//! cargo build --release --bins && target/release/bench            # the full table (~8 min)
//! cargo build --release --bins && target/release/bench --smoke    # CI: a few seconds
//! ```
//!
//! `--only redrive` runs the redrive scenario instead (`bench/redrive.rs`: 10,000 dead letters,
//! `--redrive-count N` to change it) and prints dead letters per second.
//!
//! Options: `--secs N` (measured seconds per run, default 5), `--smoke`, `--only 1,2,3b`
//! (some scenarios), `--service-env K=V` (extra environment for the service, for experiments),
//! `--out FILE` (also write the table there), `--old-bin PATH` (see below).
//! `ONCE_TEST_EMULATOR_HOST=host:port` reuses a
//! running emulator; an inherited `FIRESTORE_EMULATOR_HOST` is ignored (a gcloud shell leaves
//! it set, and a bench must not load someone's emulator by accident).
//! `BENCH_SERVICE_LOGS=DIR` keeps every service process's JSON log as
//! `DIR/{project}-{port}.log`, to read why an order failed.
//!
//! `--smoke` (CI, on the debug build) checks correctness only: zero failed service orders and
//! clean invariants after every scenario. The speed targets are for the release build's full
//! run, so a smoke run prints none.
//!
//! The service's CPU per order is its threads' run time (`/proc/<pid>/task/*/schedstat`, in ns;
//! utime+stime from `/proc/<pid>/stat` where that is missing) over the measured phase
//! divided by the orders answered; its peak RSS is `VmHWM` from `/proc/<pid>/status`. For the
//! baseline rows the CPU column is this process's own CPU (the in-process client's cost).
//!
//! `--old-bin PATH` compares two builds of the service in one run: every single-instance
//! scenario runs against this build's service (`service` rows) and against the binary at
//! PATH (`old` rows), back to back on fresh projects of the same emulator, the order of the two
//! alternating from one scenario to the next so neither always meets the warmer emulator. The
//! raw-transaction rows are skipped then, and the report ends with new ÷ old for every figure
//! (orders/s, p99, CPU per order, peak RSS) against the ±10 % bound of issue 12, plus two
//! figures to read it by: the peak anonymous RSS and the emulator's CPU per order.
//! `--rounds R` repeats every compared scenario R times per build (alternating which goes
//! first) and reports the median of the R paired ratios: on a 2-core machine one 4 s pair
//! moves by ±30 %.
//! `--rounds R` also repeats the N-instance rows (5, 5r) R times, N = 1, 2, 4 then 4, 2, 1,
//! …, and their targets take the median over the rounds of N = 4 ÷ that round's N = 1.

// One file per concern; a scenario family with a runner of its own (like `overhead.rs`) is one
// file with its runner on `Env` and its target lines, plus its rows in `scenarios.rs` and its
// branch in `run.rs`.
mod args;
mod baseline;
mod compare;
mod env;
mod limits;
mod load;
mod measure;
mod overhead;
mod process;
mod procfs;
mod redrive;
mod report;
mod run;
mod scale_out;
mod scenarios;
mod service;

use anyhow::Result;
use args::args;
use process::{service_binary, start_emulator};
use run::run;

fn main() -> Result<()> {
    let args = args()?;
    let service_bin = service_binary()?;
    if let Ok(h) = std::env::var("FIRESTORE_EMULATOR_HOST") {
        eprintln!(
            "note: ignoring FIRESTORE_EMULATOR_HOST={h}: the bench starts its own emulator \
             (set ONCE_TEST_EMULATOR_HOST to reuse a running one)"
        );
    }
    let emulator = match std::env::var("ONCE_TEST_EMULATOR_HOST") {
        Ok(h) if !h.is_empty() => h,
        _ => start_emulator()?,
    };
    // Set before the runtime and any client exist (the bench's own Firestore clients read it;
    // without it they would dial Google); the service children inherit it too.
    std::env::set_var("FIRESTORE_EMULATOR_HOST", &emulator);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args, service_bin, emulator))
}
