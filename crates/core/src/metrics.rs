//! Metrics: the `once_*` series, exposed as Prometheus text on `GET /metrics` for the collector
//! sidecar to scrape (docs/observability.md shows the route to Cloud Monitoring).
//!
//! Built on `prometheus-client` (the official Rust client): the exposition format is the
//! crate's, not ours. One [`Metrics`] per guard, so every test's service counts only its own
//! deliveries and can assert exact deltas. Recording costs an atomic add and, for labelled
//! series, one read-locked hash lookup; `ONCE_METRICS=off` skips even that (see the bench's
//! `--overhead`). Built without the `metrics` feature, every record call is a no-op and
//! there is no `/metrics` route.

mod delivery;
pub use delivery::Delivery;

#[cfg(feature = "metrics")]
mod prom;
#[cfg(feature = "metrics")]
use prom::Series;

#[cfg(not(feature = "metrics"))]
mod off;
#[cfg(not(feature = "metrics"))]
use off::Series;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bounded `source` label from a delivery's `source` and CloudEvent type: a Firestore document
/// event comes through Eventarc but is counted apart, since it is a different client.
pub fn source_label(source: &str, ce_type: Option<&str>) -> &'static str {
    match source {
        "http" => "http",
        "pubsub" => "pubsub",
        "cloudtasks" => "cloudtasks",
        "eventarc" if ce_type.is_some_and(|t| t.starts_with("google.cloud.firestore.")) => {
            "firestore_event"
        }
        "eventarc" => "eventarc",
        "" => "undecoded",
        _ => "other",
    }
}

/// Every `once_*` series of one service instance.
pub struct Metrics {
    enabled: AtomicBool,
    series: Series,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All series registered, recording on (off, and nothing registered, without the
    /// `metrics` feature).
    pub fn new() -> Self {
        Self {
            enabled: AtomicBool::new(cfg!(feature = "metrics")),
            series: Series::new(),
        }
    }

    /// Turn recording on or off (`ONCE_METRICS`); off, every record call returns at once.
    pub fn set_enabled(&self, on: bool) {
        self.enabled
            .store(on && cfg!(feature = "metrics"), Ordering::Relaxed);
    }

    /// Whether recording is on.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Count one delivery and, when its kind is known, its latency.
    pub fn delivery(&self, source: &'static str, outcome: Delivery, kind: &str, took: Duration) {
        if self.enabled() {
            self.series.delivery(source, outcome, kind, took);
        }
    }

    /// Count a request shed at the in-flight limit (its envelope was never read).
    pub fn shed(&self) {
        if self.enabled() {
            self.series
                .delivery("undecoded", Delivery::Shed, "", Duration::ZERO);
        }
    }

    /// Count a request in flight until the returned guard is dropped (answered, or abandoned
    /// by its client).
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        let on = self.enabled();
        if on {
            self.series.in_flight(1);
        }
        InFlight {
            metrics: on.then(|| self.clone()),
        }
    }

    /// One transaction of `n` operations was attempted.
    pub fn batch(&self, n: usize) {
        if self.enabled() {
            self.series.batch(n);
        }
    }

    /// An attempt will be repeated on fresh reads; `conflict` when the commit's preconditions failed.
    pub fn retry(&self, conflict: bool) {
        if self.enabled() {
            self.series
                .retry(if conflict { "conflict" } else { "error" });
        }
    }

    /// A batch committed without a read (`refused`: its record was stale).
    pub fn commit_without_read(&self, refused: bool) {
        if self.enabled() {
            self.series
                .commit_without_read(if refused { "refused" } else { "committed" });
        }
    }

    /// Documents were marked contended after a batch was refused repeatedly.
    pub fn contention_marked(&self) {
        if self.enabled() {
            self.series.contention_marked();
        }
    }

    /// A transaction ran out of attempts.
    pub fn gave_up(&self) {
        if self.enabled() {
            self.series.gave_up();
        }
    }

    /// A step lease was taken over from an expired holder.
    pub fn lease_takeover(&self) {
        if self.enabled() {
            self.series.lease_takeover();
        }
    }

    /// The Prometheus text exposition (format 0.0.4 plus `# EOF`, which Prometheus and the
    /// OpenTelemetry Collector's prometheus receiver both read).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.series.encode()
    }
}

/// A request counted in `once_in_flight_requests`; dropping it ends the count.
pub struct InFlight {
    metrics: Option<Arc<Metrics>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.series.in_flight(-1);
        }
    }
}

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn series_are_prefixed_counted_and_off_means_off() {
        let m = Metrics::new();
        m.delivery(
            "pubsub",
            Delivery::ReplayedCache,
            "vote",
            Duration::from_millis(2),
        );
        m.batch(3);
        m.retry(true);
        m.lease_takeover();
        let text = m.encode().unwrap();
        assert!(
            text.contains("once_deliveries_total{source=\"pubsub\",outcome=\"replayed_cache\"} 1")
        );
        assert!(text.contains("once_request_duration_seconds_count{kind=\"vote\"} 1"));
        assert!(text.contains("once_batch_size_sum 3"));
        assert!(text.contains("once_transaction_retries_total{reason=\"conflict\"} 1"));
        assert!(text.contains("once_lease_takeovers_total 1"));
        m.set_enabled(false);
        m.delivery("pubsub", Delivery::ReplayedCache, "vote", Duration::ZERO);
        assert!(m
            .encode()
            .unwrap()
            .contains("once_deliveries_total{source=\"pubsub\",outcome=\"replayed_cache\"} 1"));
    }

    #[test]
    fn firestore_events_are_their_own_source() {
        assert_eq!(
            source_label(
                "eventarc",
                Some("google.cloud.firestore.document.v1.created")
            ),
            "firestore_event"
        );
        assert_eq!(
            source_label(
                "eventarc",
                Some("google.cloud.pubsub.topic.v1.messagePublished")
            ),
            "eventarc"
        );
        assert_eq!(source_label("", None), "undecoded");
        assert_eq!(source_label("weird", None), "other");
    }
}
