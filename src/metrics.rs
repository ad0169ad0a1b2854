//! Metrics: the `once_*` series, exposed as Prometheus text on `GET /metrics` for the collector
//! sidecar to scrape (docs/observability.md shows the route to Cloud Monitoring).
//!
//! Built on `prometheus-client` (the official Rust client): the exposition format is the
//! crate's, not ours. One [`Metrics`] per guard, so every test's service counts only its own
//! deliveries and can assert exact deltas. Recording costs an atomic add and, for labelled
//! series, one read-locked hash lookup; `ONCE_METRICS=off` skips even that (see the bench's
//! `--overhead`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Labels of `once_deliveries_total`: who delivered it and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `http`, `pubsub`, `eventarc`, `firestore_event`, `cloudtasks`, or `undecoded` when the
    /// request ended before its envelope was read (shed, body too large, unknown kind).
    pub source: &'static str,
    /// One of [`Delivery::label`].
    pub outcome: &'static str,
}

/// Labels of the latency histogram: the operation kind (`order`, `restock`, …; `unknown` for a
/// kind the registry does not know, so a caller cannot grow the series without bound).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Operation kind.
    pub kind: String,
}

/// Labels of `once_transaction_retries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// `conflict` (a precondition no longer held: another writer came first) or `error` (a read
    /// failed or went unanswered).
    pub reason: &'static str,
}

/// Labels of `once_commits_without_read_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KnownLabels {
    /// `committed`, or `refused` (the record was stale: the batch was read and decided again).
    pub result: &'static str,
}

/// How one delivery ended, as counted. Every request to `/orders` or `/tasks/{kind}` is
/// counted exactly once with one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// First processing: the writes were committed.
    Processed,
    /// First processing: a business rule refused it (recorded, replayed from now on).
    Rejected,
    /// Answered from this instance's replay cache, without Firestore.
    ReplayedCache,
    /// Answered from the status document read in Firestore.
    ReplayedFirestore,
    /// The key was first used with another payload (direct caller: 422).
    KeyReused,
    /// A push delivery that can never succeed, recorded as a dead letter and acknowledged.
    DeadLettered,
    /// Nothing to do (a Firestore delete event).
    Skipped,
    /// Refused before any work: the instance was at its in-flight limit (503).
    Shed,
    /// The outcome is not known yet (503 + `Retry-After`): contention, a deadline, Firestore.
    Unknown,
    /// A step another delivery holds the lease of (409 `in-progress`).
    Busy,
    /// Bad direct input (4xx other than a key reuse); nothing was written.
    Invalid,
}

impl Delivery {
    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Delivery::Processed => "processed",
            Delivery::Rejected => "rejected",
            Delivery::ReplayedCache => "replayed_cache",
            Delivery::ReplayedFirestore => "replayed_firestore",
            Delivery::KeyReused => "key_reused",
            Delivery::DeadLettered => "dead_lettered",
            Delivery::Skipped => "skipped",
            Delivery::Shed => "shed",
            Delivery::Unknown => "unknown",
            Delivery::Busy => "busy",
            Delivery::Invalid => "invalid",
        }
    }
}

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
    registry: Registry,
    deliveries: Family<DeliveryLabels, Counter>,
    latency: Family<KindLabels, Histogram>,
    batch_size: Histogram,
    retries: Family<RetryLabels, Counter>,
    gave_up: Counter,
    lease_takeovers: Counter,
    in_flight: Gauge,
    known: Family<KnownLabels, Counter>,
    contention_marks: Counter,
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

/// Latency buckets in seconds: a replay from the cache is well under a millisecond, a first
/// processing a few ms to tens of ms, a contended or failing one up to the request deadline.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// All series registered, recording on.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("once");
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Requests to /orders and /tasks/{kind}, by delivery source and how they ended",
            deliveries.clone(),
        );
        let latency = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        registry.register(
            "request_duration_seconds",
            "Time from the request to its answer, by operation kind",
            latency.clone(),
        );
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        registry.register(
            "batch_size",
            "Operations folded into one Firestore transaction (group commit)",
            batch_size.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "transaction_retries",
            "Commit attempts repeated on fresh reads: a conflict, or a failed read",
            retries.clone(),
        );
        let gave_up = Counter::default();
        registry.register(
            "transactions_abandoned",
            "Transactions given up after ONCE_MAX_ATTEMPTS attempts (answered 503)",
            gave_up.clone(),
        );
        let lease_takeovers = Counter::default();
        registry.register(
            "lease_takeovers",
            "Step leases taken over after their holder's lease expired unfinished",
            lease_takeovers.clone(),
        );
        let known = Family::<KnownLabels, Counter>::default();
        registry.register(
            "commits_without_read",
            "Batches committed from what this instance's own last commit left, without a read",
            known.clone(),
        );
        let contention_marks = Counter::default();
        registry.register(
            "contention_marks",
            "Commits that marked documents contended after a batch was refused repeatedly",
            contention_marks.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests to /orders and /tasks/{kind} being worked on now",
            in_flight.clone(),
        );
        Self {
            enabled: AtomicBool::new(true),
            registry,
            deliveries,
            latency,
            batch_size,
            retries,
            gave_up,
            lease_takeovers,
            in_flight,
            known,
            contention_marks,
        }
    }

    /// Turn recording on or off (`ONCE_METRICS`); off, every record call returns at once.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Whether recording is on.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Count one delivery and, when its kind is known, its latency.
    pub fn delivery(&self, source: &'static str, outcome: Delivery, kind: &str, took: Duration) {
        if !self.enabled() {
            return;
        }
        self.deliveries
            .get_or_create(&DeliveryLabels {
                source,
                outcome: outcome.label(),
            })
            .inc();
        self.latency
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Count a request shed at the in-flight limit (its envelope was never read).
    pub fn shed(&self) {
        if !self.enabled() {
            return;
        }
        self.deliveries
            .get_or_create(&DeliveryLabels {
                source: "undecoded",
                outcome: Delivery::Shed.label(),
            })
            .inc();
    }

    /// Count a request in flight until the returned guard is dropped (answered, or abandoned
    /// by its client).
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        let on = self.enabled();
        if on {
            self.in_flight.inc();
        }
        InFlight {
            metrics: on.then(|| self.clone()),
        }
    }

    /// One transaction of `n` operations was attempted.
    pub fn batch(&self, n: usize) {
        if self.enabled() {
            self.batch_size.observe(n as f64);
        }
    }

    /// An attempt will be repeated on fresh reads; `conflict` when the commit's preconditions failed.
    pub fn retry(&self, conflict: bool) {
        if self.enabled() {
            let reason = if conflict { "conflict" } else { "error" };
            self.retries.get_or_create(&RetryLabels { reason }).inc();
        }
    }

    /// A batch committed without a read (`refused`: its record was stale).
    pub fn commit_without_read(&self, refused: bool) {
        if self.enabled() {
            let result = if refused { "refused" } else { "committed" };
            self.known.get_or_create(&KnownLabels { result }).inc();
        }
    }

    /// Documents were marked contended after a batch was refused repeatedly.
    pub fn contention_marked(&self) {
        if self.enabled() {
            self.contention_marks.inc();
        }
    }

    /// A transaction ran out of attempts.
    pub fn gave_up(&self) {
        if self.enabled() {
            self.gave_up.inc();
        }
    }

    /// A step lease was taken over from an expired holder.
    pub fn lease_takeover(&self) {
        if self.enabled() {
            self.lease_takeovers.inc();
        }
    }

    /// The Prometheus text exposition (format 0.0.4 plus `# EOF`, which Prometheus and the
    /// OpenTelemetry Collector's prometheus receiver both read).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// A request counted in `once_in_flight_requests`; dropping it ends the count.
pub struct InFlight {
    metrics: Option<Arc<Metrics>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.in_flight.dec();
        }
    }
}

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_prefixed_counted_and_off_means_off() {
        let m = Metrics::new();
        m.delivery(
            "pubsub",
            Delivery::ReplayedCache,
            "order",
            Duration::from_millis(2),
        );
        m.batch(3);
        m.retry(true);
        m.lease_takeover();
        let text = m.encode().unwrap();
        assert!(
            text.contains("once_deliveries_total{source=\"pubsub\",outcome=\"replayed_cache\"} 1")
        );
        assert!(text.contains("once_request_duration_seconds_count{kind=\"order\"} 1"));
        assert!(text.contains("once_batch_size_sum 3"));
        assert!(text.contains("once_transaction_retries_total{reason=\"conflict\"} 1"));
        assert!(text.contains("once_lease_takeovers_total 1"));
        m.set_enabled(false);
        m.delivery("pubsub", Delivery::ReplayedCache, "order", Duration::ZERO);
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
