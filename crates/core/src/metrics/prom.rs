//! The `once_*` series on `prometheus-client` (the official Rust client): the exposition
//! format is the crate's, not ours.

use super::delivery::Delivery;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
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

/// Labels of the latency histogram: the operation kind (`unknown` for a
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

/// The registered series.
pub(super) struct Series {
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

/// Latency buckets in seconds: a replay from the cache is well under a millisecond, a first
/// processing a few ms to tens of ms, a contended or failing one up to the request deadline.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Series {
    pub(super) fn new() -> Self {
        let mut registry = Registry::with_prefix("once");
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Work requests (/tasks/{kind} and kind routes), by delivery source and how they ended",
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
            "Work requests (/tasks/{kind} and kind routes) being worked on now",
            in_flight.clone(),
        );
        Self {
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

    pub(super) fn delivery(
        &self,
        source: &'static str,
        outcome: Delivery,
        kind: &str,
        took: Duration,
    ) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                source,
                outcome: outcome.label(),
            })
            .inc();
        if !kind.is_empty() {
            self.latency
                .get_or_create(&KindLabels {
                    kind: kind.to_string(),
                })
                .observe(took.as_secs_f64());
        }
    }

    pub(super) fn in_flight(&self, by: i64) {
        self.in_flight.inc_by(by);
    }

    pub(super) fn batch(&self, n: usize) {
        self.batch_size.observe(n as f64);
    }

    pub(super) fn retry(&self, reason: &'static str) {
        self.retries.get_or_create(&RetryLabels { reason }).inc();
    }

    pub(super) fn commit_without_read(&self, result: &'static str) {
        self.known.get_or_create(&KnownLabels { result }).inc();
    }

    pub(super) fn contention_marked(&self) {
        self.contention_marks.inc();
    }

    pub(super) fn gave_up(&self) {
        self.gave_up.inc();
    }

    pub(super) fn lease_takeover(&self) {
        self.lease_takeovers.inc();
    }

    pub(super) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
