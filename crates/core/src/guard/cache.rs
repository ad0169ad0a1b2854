//! A bounded in-process cache of completed outcomes, so a redelivery of an operation this
//! instance already settled is answered without a Firestore round trip.
//!
//! Why this is safe: a status document, once committed, never changes (no code path updates
//! or deletes one; only the TTL policy removes it after `expire_at`). A cached copy of a
//! committed record is therefore exactly what a transaction would read. Records enter the
//! cache only after the transaction that wrote them (or read them) finished without an unknown
//! outcome, entries past their `expire_at` are ignored, and the fingerprint is still checked
//! on every hit by the guard, so a reused key with another payload stays a 422.
//!
//! Why it is bounded by bytes: a replay storm must not grow memory without limit; the least
//! useful entries are evicted (quick_cache's CLOCK-Pro policy) once the budget is spent.

use crate::engine::record::StatusRecord;
use firestore::FirestoreInstant;
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use std::sync::Arc;

/// A cached record with its size, computed once (the weighter must be cheap).
struct Entry {
    record: StatusRecord,
    weight: u64,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<String, Arc<Entry>> for ByBytes {
    fn weight(&self, _key: &String, val: &Arc<Entry>) -> u64 {
        val.weight
    }
}

/// Completed outcomes by operation ID, bounded by an estimate of the bytes they hold.
pub struct ReplayCache {
    cache: Option<Cache<String, Arc<Entry>, ByBytes>>,
}

/// Rough heap footprint of a record plus the cache's own bookkeeping, so the byte budget
/// tracks real memory within a small factor.
fn footprint(key: &str, r: &StatusRecord) -> u64 {
    let attrs: usize = r
        .delivery
        .attrs
        .iter()
        .map(|(k, v)| k.len() + v.len() + 64)
        .sum();
    let strings = r.operation_id.len()
        + r.kind.len()
        + r.key.len()
        + r.fingerprint.len()
        + r.reason.as_ref().map_or(0, String::len)
        + r.response.content_type.len()
        + r.response.body.len()
        + r.delivery.source.len()
        + r.delivery.id.as_ref().map_or(0, String::len);
    let fixed = std::mem::size_of::<Entry>() + std::mem::size_of::<String>() + 64;
    (key.len() + strings + attrs + fixed) as u64
}

impl ReplayCache {
    /// A cache holding at most about `max_bytes` of records; `0` disables it.
    pub fn new(max_bytes: u64) -> Self {
        let cache = (max_bytes > 0).then(|| {
            // quick_cache sizes its tables from this estimate; a record is about 700 bytes.
            let estimated_items = (max_bytes / 700).clamp(16, 1 << 20) as usize;
            Cache::with_weighter(estimated_items, max_bytes, ByBytes)
        });
        Self { cache }
    }

    /// The committed record of `operation_id`, if this instance has it and it has not expired.
    pub fn get(&self, operation_id: &str) -> Option<StatusRecord> {
        let entry = self.cache.as_ref()?.get(operation_id)?;
        if entry.record.expire_at <= FirestoreInstant::now() {
            return None;
        }
        Some(entry.record.clone())
    }

    /// Remember a record read from or committed to Firestore. Call only once its transaction
    /// has succeeded: a record whose commit outcome is unknown must never be served.
    pub fn insert(&self, record: &StatusRecord) {
        let Some(cache) = &self.cache else { return };
        let key = record.operation_id.clone();
        let weight = footprint(&key, record);
        cache.insert(
            key,
            Arc::new(Entry {
                record: record.clone(),
                weight,
            }),
        );
    }

    /// Entries held now (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::len)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated bytes held now; stays within the budget given to [`ReplayCache::new`].
    pub fn weight(&self) -> u64 {
        self.cache.as_ref().map_or(0, Cache::weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{OutcomeKind, StoredResponse};
    use std::time::Duration;

    fn record(id: &str, expire_in: Duration) -> StatusRecord {
        let now = FirestoreInstant::now();
        StatusRecord {
            operation_id: id.into(),
            kind: "vote".into(),
            key: id.into(),
            fingerprint: "f".repeat(64),
            outcome: OutcomeKind::Processed,
            reason: None,
            response: StoredResponse {
                status: 200,
                content_type: "application/json".into(),
                body: "x".repeat(300),
            },
            delivery: Default::default(),
            created_at: now,
            expire_at: now.saturating_add(expire_in).unwrap_or(now),
        }
    }

    #[test]
    fn hits_are_exact_copies_and_expired_records_are_ignored() {
        let c = ReplayCache::new(1 << 20);
        let r = record("a", Duration::from_secs(3600));
        c.insert(&r);
        assert_eq!(c.get("a"), Some(r));
        assert_eq!(c.get("b"), None);
        c.insert(&record("old", Duration::ZERO));
        assert_eq!(c.get("old"), None);
    }

    #[test]
    fn stays_within_its_byte_budget() {
        let budget = 64 * 1024;
        let c = ReplayCache::new(budget);
        for i in 0..2_000 {
            c.insert(&record(&format!("op-{i}"), Duration::from_secs(3600)));
        }
        assert!(c.weight() <= budget, "{} > {budget}", c.weight());
        assert!(c.len() < 2_000 && !c.is_empty(), "{}", c.len());
    }

    #[test]
    fn zero_disables_it() {
        let c = ReplayCache::new(0);
        c.insert(&record("a", Duration::from_secs(3600)));
        assert!(c.is_empty());
        assert_eq!(c.get("a"), None);
    }
}
