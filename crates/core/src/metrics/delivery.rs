//! The outcomes a delivery is counted under, apart from the series that count them (with or
//! without the `metrics` feature).

/// How one delivery ended, as counted. Every work request (`/tasks/{kind}`, kind routes) is
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
