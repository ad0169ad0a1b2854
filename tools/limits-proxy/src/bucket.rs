//! A token bucket, the model of "about one sustained write per second per document, short
//! bursts tolerated": `rate` tokens a second, at most `capacity` saved up.
//!
//! The bucket holds only its level and when it was last brought up to date; rate and capacity
//! are passed in, so a map of one bucket per document costs 24 bytes a document plus the key.

use std::time::Instant;

/// One bucket's level. Starts full; refills continuously, never above the capacity.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens at `now`: a document never written (or written long
    /// ago) may take a whole burst.
    pub fn full(capacity: f64, now: Instant) -> Self {
        Self {
            tokens: capacity,
            at: now,
        }
    }

    /// The tokens the bucket holds at `now` without changing it, so a caller can check several
    /// buckets before taking from any (a commit takes from all of its documents or from none).
    /// A `now` earlier than the last update counts as no time passed.
    pub fn available(&self, rate: f64, capacity: f64, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + secs * rate).min(capacity)
    }

    /// Whether `n` tokens are there at `now`.
    pub fn has(&self, n: f64, rate: f64, capacity: f64, now: Instant) -> bool {
        self.available(rate, capacity, now) >= n
    }

    /// Take `n` tokens at `now` (after refilling). Only call it after [`has`](Self::has) said
    /// yes; the level may otherwise go below zero, which then simply takes longer to refill.
    pub fn take(&mut self, n: f64, rate: f64, capacity: f64, now: Instant) {
        self.tokens = self.available(rate, capacity, now) - n;
        if now > self.at {
            self.at = now;
        }
    }

    /// Take `n` tokens if they are there: the check and the take in one.
    pub fn try_take(&mut self, n: f64, rate: f64, capacity: f64, now: Instant) -> bool {
        if !self.has(n, rate, capacity, now) {
            return false;
        }
        self.take(n, rate, capacity, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3.0, t0);
        assert!(b.try_take(1.0, 1.0, 3.0, t0));
        assert!(b.try_take(1.0, 1.0, 3.0, t0));
        assert!(b.try_take(1.0, 1.0, 3.0, t0));
        assert!(!b.try_take(1.0, 1.0, 3.0, t0));
    }

    #[test]
    fn refills_at_the_rate_and_no_further_than_the_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(2.0, t0);
        assert!(b.try_take(2.0, 1.0, 2.0, t0));
        assert!(!b.has(1.0, 1.0, 2.0, t0 + ms(999)));
        assert!(b.has(1.0, 1.0, 2.0, t0 + ms(1000)));
        assert!(!b.has(2.0, 1.0, 2.0, t0 + ms(1999)));
        // An idle hour saves no more than the capacity.
        assert_eq!(b.available(1.0, 2.0, t0 + Duration::from_secs(3600)), 2.0);
    }

    #[test]
    fn fractional_rates_refill_fractionally() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(1.0, t0);
        assert!(b.try_take(1.0, 0.5, 1.0, t0));
        // 0.5 a second: one token takes two seconds.
        assert!(!b.has(1.0, 0.5, 1.0, t0 + ms(1990)));
        assert!(b.try_take(1.0, 0.5, 1.0, t0 + ms(2000)));
        // 2.5 a second: a token every 400 ms.
        let mut fast = TokenBucket::full(1.0, t0);
        assert!(fast.try_take(1.0, 2.5, 1.0, t0));
        assert!(!fast.has(1.0, 2.5, 1.0, t0 + ms(390)));
        assert!(fast.try_take(1.0, 2.5, 1.0, t0 + ms(400)));
        let level = fast.available(2.5, 1.0, t0 + ms(600));
        assert!((level - 0.5).abs() < 1e-9, "{level}");
    }

    #[test]
    fn a_refused_check_takes_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(1.0, t0);
        assert!(b.try_take(1.0, 1.0, 1.0, t0));
        assert!(!b.try_take(1.0, 1.0, 1.0, t0 + ms(500)));
        // The refused try did not spend the half token that had come back.
        assert!(b.try_take(1.0, 1.0, 1.0, t0 + ms(1000)));
    }

    #[test]
    fn time_going_backwards_counts_as_none() {
        let t0 = Instant::now();
        let later = t0 + ms(500);
        let mut b = TokenBucket::full(1.0, later);
        assert!(b.try_take(1.0, 1.0, 1.0, later));
        assert!(!b.has(1.0, 1.0, 1.0, t0));
        assert_eq!(b.available(1.0, 1.0, t0), 0.0);
    }
}
