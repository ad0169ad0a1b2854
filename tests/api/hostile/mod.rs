//! Hostile input (issue 8, scenario 5): every decoder fuzzed with proptest, the whole router
//! driven with generated requests, and hostile keys checked to reach Firestore only hashed.
//!
//! No panic anywhere, and only the documented answers: for a direct caller 200, 400, 404
//! (unknown task kind), 409, 413, 415 or 422; for a platform delivery 200 (processed,
//! rejected, skipped or dead-lettered) or 413. `PROPTEST_CASES` raises the number of cases
//! (`RELIABILITY=long` multiplies the defaults by ten).

mod decoders;
mod keys;
mod router;
mod strategies;

use proptest::test_runner::{Config as PtConfig, TestRunner};

fn cases(short: u32) -> u32 {
    let long = std::env::var("RELIABILITY").as_deref() == Ok("long");
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(if long { short * 10 } else { short })
}

fn runner(short: u32) -> TestRunner {
    TestRunner::new(PtConfig {
        cases: cases(short),
        failure_persistence: None,
        ..PtConfig::default()
    })
}

fn is_hex64(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}
