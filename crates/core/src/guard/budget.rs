//! The write budget of each document: production Firestore sustains about one write per
//! second to one document (short bursts are tolerated) and answers a document written more
//! often with ABORTED "Too much contention". The guard never plans past it: every commit
//! takes one token from each document it rewrites, a lane waits for its documents' tokens
//! before it takes a batch (folding everything that arrived meanwhile into that one commit),
//! and a document Firestore refused for contention is given a full interval of rest.
//!
//! A token bucket per document: `per_sec` tokens a second, at most `burst` held. Every
//! business document a commit writes is counted; status documents are not (each is created
//! once, never hot). The buckets are this instance's; instances keep to the budget together
//! by writing different documents (a kind spreads a hot document over shards, see
//! `Operation::committed`).

use crate::engine::DocRef;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The sustained commit rate the guard allows one document, and the burst on top of it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Commits a second, sustained.
    pub per_sec: f64,
    /// Commits a document may take at once after a quiet spell (the bucket's size, ≥ 1).
    pub burst: f64,
}

impl Budget {
    /// Google's published sustained figure (one write a second to one document), with a
    /// burst of two: well inside what production tolerates, so a lane that just waited can
    /// commit at once and an idle document answers without delay.
    pub const PRODUCTION: Budget = Budget {
        per_sec: 1.0,
        burst: 2.0,
    };

    /// The time one token takes to come back.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_sec.max(1e-6))
    }
}

/// Buckets kept at most; past it, full buckets are dropped first (a dropped bucket is a full
/// one, so forgetting it changes nothing).
const MAX_DOCS: usize = 50_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of one guard. `None` budget: unlimited (every call answers at once).
#[derive(Debug)]
pub struct Buckets {
    budget: Option<Budget>,
    docs: Mutex<HashMap<DocRef, Bucket>>,
}

impl Buckets {
    /// Buckets for `budget`; `None` never waits.
    pub fn new(budget: Option<Budget>) -> Self {
        Self {
            budget,
            docs: Mutex::new(HashMap::new()),
        }
    }

    /// The budget, when there is one.
    pub fn budget(&self) -> Option<Budget> {
        self.budget
    }

    fn level(b: &Budget, bucket: Option<&Bucket>, now: Instant) -> f64 {
        match bucket {
            None => b.burst,
            Some(k) => {
                let refill = now.saturating_duration_since(k.at).as_secs_f64() * b.per_sec;
                (k.tokens + refill).min(b.burst)
            }
        }
    }

    /// How long until every one of `docs` has a token (zero: now).
    pub fn wait(&self, docs: &[&DocRef]) -> Duration {
        let Some(b) = self.budget else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let map = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        docs.iter()
            .map(|d| {
                let level = Self::level(&b, map.get(*d), now);
                if level >= 1.0 {
                    Duration::ZERO
                } else {
                    Duration::from_secs_f64((1.0 - level) / b.per_sec.max(1e-6))
                }
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Take a token from each of `docs` if every one has one; else take none and answer how
    /// long until they all will. All or nothing, so two lanes of this instance that share a
    /// document (a shard's refill writes the document it is spread from) never both spend it.
    pub fn take(&self, docs: &[&DocRef]) -> Result<(), Duration> {
        let Some(b) = self.budget else {
            return Ok(());
        };
        let now = Instant::now();
        let mut map = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = Duration::ZERO;
        for d in docs {
            let level = Self::level(&b, map.get(*d), now);
            if level < 1.0 {
                wait = wait.max(Duration::from_secs_f64((1.0 - level) / b.per_sec.max(1e-6)));
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        if map.len() >= MAX_DOCS {
            map.retain(|_, k| Self::level(&b, Some(k), now) < b.burst);
        }
        for d in docs {
            let tokens = Self::level(&b, map.get(*d), now) - 1.0;
            map.insert((*d).clone(), Bucket { tokens, at: now });
        }
        Ok(())
    }

    /// Firestore refused a commit of `docs` for contention: empty their buckets, so the next
    /// commit waits a full interval.
    pub fn rest(&self, docs: &[&DocRef]) {
        if self.budget.is_none() {
            return;
        }
        let now = Instant::now();
        let mut map = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        for d in docs {
            map.insert(
                (*d).clone(),
                Bucket {
                    tokens: 0.0,
                    at: now,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str) -> DocRef {
        DocRef::new("counters", id)
    }

    #[test]
    fn a_burst_then_the_sustained_rate_all_or_nothing() {
        let b = Buckets::new(Some(Budget {
            per_sec: 10.0,
            burst: 2.0,
        }));
        let (a, c) = (doc("a"), doc("c"));
        assert!(b.take(&[&a]).is_ok());
        assert!(b.take(&[&a]).is_ok());
        let wait = b.take(&[&a, &c]).unwrap_err();
        assert!(wait > Duration::from_millis(50) && wait <= Duration::from_millis(100));
        // Refused as a whole: `c` kept its burst.
        assert!(b.take(&[&c]).is_ok() && b.take(&[&c]).is_ok());
        assert!(b.wait(&[&c]) > Duration::ZERO);
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(b.wait(&[&a]), Duration::ZERO);
        assert!(b.take(&[&a]).is_ok());
        assert!(b.take(&[&a]).is_err());
        // Rest after a contention refusal: a full interval, whatever the bucket held.
        std::thread::sleep(Duration::from_millis(250));
        b.rest(&[&a]);
        assert!(b.wait(&[&a]) > Duration::from_millis(90));
    }

    #[test]
    fn no_budget_never_waits() {
        let b = Buckets::new(None);
        let a = doc("a");
        for _ in 0..1000 {
            assert!(b.take(&[&a]).is_ok());
        }
        assert_eq!(b.wait(&[&a]), Duration::ZERO);
    }
}
