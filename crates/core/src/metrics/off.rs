//! Built without the `metrics` feature: nothing is registered and nothing recorded.

use super::delivery::Delivery;
use std::time::Duration;

/// No series.
pub(super) struct Series;

impl Series {
    pub(super) fn new() -> Self {
        Series
    }
    pub(super) fn delivery(&self, _: &'static str, _: Delivery, _: &str, _: Duration) {}
    pub(super) fn in_flight(&self, _: i64) {}
    pub(super) fn batch(&self, _: usize) {}
    pub(super) fn retry(&self, _: &'static str) {}
    pub(super) fn commit_without_read(&self, _: &'static str) {}
    pub(super) fn contention_marked(&self) {}
    pub(super) fn gave_up(&self) {}
    pub(super) fn lease_takeover(&self) {}
    pub(super) fn encode(&self) -> Result<String, std::fmt::Error> {
        Ok("# EOF\n".to_string())
    }
}
