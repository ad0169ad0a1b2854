//! Fault switches for tests: make the service behave as if it crashed at a chosen point, so
//! redelivery paths can be proven. Empty by default; production code never arms them.

use std::collections::HashSet;
use std::sync::Mutex;

/// Armed faults, each consumed by the first request that meets it.
#[derive(Default, Debug)]
pub struct Faults {
    fail_keys: Mutex<HashSet<String>>,
    crash_after: Mutex<HashSet<String>>,
}

fn lock(m: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Faults {
    /// The next delivery of the operation keyed `key` answers 503 before doing anything.
    pub fn fail_next(&self, key: &str) {
        lock(&self.fail_keys).insert(key.to_string());
    }

    /// Consume the fault for `key`, if armed.
    pub fn take_fail(&self, key: &str) -> bool {
        lock(&self.fail_keys).remove(key)
    }

    /// The next multi-step task answers 503 right after committing `step`, as if the
    /// instance died there.
    pub fn crash_after(&self, step: &str) {
        lock(&self.crash_after).insert(step.to_string());
    }

    /// Consume the crash fault for `step`, if armed.
    pub fn take_crash(&self, step: &str) -> bool {
        lock(&self.crash_after).remove(step)
    }
}
