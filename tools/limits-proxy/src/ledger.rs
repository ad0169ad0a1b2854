//! The bookkeeping behind every decision: one token bucket per document, one for the
//! database, and the counts. One `Mutex<Ledger>` for the whole proxy; each decision is a few
//! hash lookups, so the lock is held for microseconds.

use crate::bucket::TokenBucket;
use crate::commit::CommitSummary;
use crate::stats::{BusiestWindow, DocumentCounts, Second, Stats, Totals};
use crate::Limits;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What happens to one commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it on; its tokens are taken.
    Forward,
    /// A document it writes has no token: `ABORTED`, after the refuse delay.
    Contention,
    /// More writes than one commit may carry: `INVALID_ARGUMENT`.
    TooManyWrites,
    /// The database-wide write rate is spent: `RESOURCE_EXHAUSTED`.
    DatabaseRate,
}

/// What the proxy knows of one document.
#[derive(Debug)]
struct Doc {
    bucket: TokenBucket,
    forwarded: u64,
    refused: u64,
    short: u64,
    /// When the forwarded commits of the last window were decided, oldest first.
    recent: VecDeque<Instant>,
}

impl Doc {
    fn new(burst: f64, now: Instant) -> Self {
        Self {
            bucket: TokenBucket::full(burst, now),
            forwarded: 0,
            refused: 0,
            short: 0,
            recent: VecDeque::new(),
        }
    }
}

/// The proxy's state: limits, buckets and counts since the start or last reset.
#[derive(Debug)]
pub struct Ledger {
    limits: Limits,
    since: Instant,
    docs: HashMap<String, Doc>,
    database: TokenBucket,
    totals: Totals,
    seconds: Vec<Second>,
    busiest: Option<BusiestWindow>,
}

impl Ledger {
    /// A fresh ledger at `now`: every bucket full.
    pub fn new(limits: Limits, now: Instant) -> Self {
        let database = TokenBucket::full(limits.database_burst, now);
        Self {
            limits,
            since: now,
            docs: HashMap::new(),
            database,
            totals: Totals::default(),
            seconds: Vec::new(),
            busiest: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Zero every count and refill every bucket, as if started at `now`.
    pub fn reset(&mut self, now: Instant) {
        *self = Self::new(self.limits.clone(), now);
    }

    /// Decide `commit` at `now` and record the decision. The checks, in order: size, then
    /// every document's token (all or nothing), then the database rate. Only a forwarded
    /// commit takes tokens.
    pub fn decide(&mut self, commit: &CommitSummary, now: Instant) -> Verdict {
        let verdict = self.judge(commit, now);
        match verdict {
            Verdict::TooManyWrites => self.totals.commits_refused_size += 1,
            Verdict::DatabaseRate => self.totals.commits_refused_database += 1,
            Verdict::Contention => {
                self.totals.commits_refused_rate += 1;
                let (rate, burst) = (self.limits.doc_writes_per_sec, self.limits.doc_burst);
                for name in &commit.documents {
                    self.with_doc(name, now, |d| {
                        d.refused += 1;
                        if !d.bucket.has(1.0, rate, burst, now) {
                            d.short += 1;
                        }
                    });
                }
            }
            Verdict::Forward => self.forward(commit, now),
        }
        self.count_second(now, |s| {
            s.refused += u64::from(verdict != Verdict::Forward);
            s.refused_rate += u64::from(verdict == Verdict::Contention);
            s.forwarded += u64::from(verdict == Verdict::Forward);
        });
        verdict
    }

    fn judge(&self, commit: &CommitSummary, now: Instant) -> Verdict {
        let l = &self.limits;
        if l.max_writes_per_commit > 0 && commit.counted_writes > l.max_writes_per_commit {
            return Verdict::TooManyWrites;
        }
        if l.doc_writes_per_sec > 0.0 {
            let short = commit.documents.iter().any(|name| {
                self.docs
                    .get(name.as_str())
                    .is_some_and(|d| !d.bucket.has(1.0, l.doc_writes_per_sec, l.doc_burst, now))
            });
            if short {
                return Verdict::Contention;
            }
        }
        if l.database_writes_per_sec > 0.0
            && !self.database.has(
                commit.writes as f64,
                l.database_writes_per_sec,
                l.database_burst,
                now,
            )
        {
            return Verdict::DatabaseRate;
        }
        Verdict::Forward
    }

    fn forward(&mut self, commit: &CommitSummary, now: Instant) {
        let l = self.limits.clone();
        let window = Duration::from_millis(l.window_ms);
        let mut busiest: Option<(u64, &str)> = None;
        for name in &commit.documents {
            self.with_doc(name, now, |d| {
                if l.doc_writes_per_sec > 0.0 {
                    d.bucket.take(1.0, l.doc_writes_per_sec, l.doc_burst, now);
                }
                d.forwarded += 1;
                while d
                    .recent
                    .front()
                    .is_some_and(|&t| now.saturating_duration_since(t) >= window)
                {
                    d.recent.pop_front();
                }
                d.recent.push_back(now);
                let n = d.recent.len() as u64;
                if busiest.is_none_or(|(m, _)| n > m) {
                    busiest = Some((n, name));
                }
            });
        }
        if let Some((n, name)) = busiest {
            if self.busiest.as_ref().is_none_or(|b| n > b.commits) {
                self.busiest = Some(BusiestWindow {
                    document: name.to_string(),
                    commits: n,
                    window_ms: l.window_ms,
                });
            }
        }
        if l.database_writes_per_sec > 0.0 {
            self.database.take(
                commit.writes as f64,
                l.database_writes_per_sec,
                l.database_burst,
                now,
            );
        }
        self.totals.commits_forwarded += 1;
        self.totals.writes_forwarded += commit.writes as u64;
    }

    /// Run `f` on the document `name`, created with a full bucket on first sight. (Two
    /// lookups instead of an `entry` call: no key is allocated for a known document.)
    fn with_doc(&mut self, name: &str, now: Instant, f: impl FnOnce(&mut Doc)) {
        if !self.docs.contains_key(name) {
            self.docs
                .insert(name.to_string(), Doc::new(self.limits.doc_burst, now));
        }
        if let Some(d) = self.docs.get_mut(name) {
            f(d);
        }
    }

    /// Run `f` on the timeline entry of `now`, the timeline filled up to it. (`now` may be a
    /// little older than the last entry: callers take the time before the lock.)
    fn count_second(&mut self, now: Instant, f: impl FnOnce(&mut Second)) {
        let index = now.saturating_duration_since(self.since).as_secs() as usize;
        self.fill_to(index);
        if let Some(s) = self.seconds.get_mut(index) {
            f(s);
        }
    }

    fn fill_to(&mut self, index: usize) {
        while self.seconds.len() <= index {
            let second = self.seconds.len() as u64;
            self.seconds.push(Second {
                second,
                ..Second::default()
            });
        }
    }

    /// The totals, for the counters the forwarding path keeps.
    pub fn totals_mut(&mut self) -> &mut Totals {
        &mut self.totals
    }

    /// The stats at `now`: the timeline filled up to the current second, and the `top`
    /// documents by forwarded commits (`None`: every document).
    pub fn stats(&mut self, top: Option<usize>, now: Instant) -> Stats {
        let index = now.saturating_duration_since(self.since).as_secs() as usize;
        self.fill_to(index);
        let mut documents: Vec<DocumentCounts> = self
            .docs
            .iter()
            .map(|(name, d)| DocumentCounts {
                document: name.clone(),
                forwarded: d.forwarded,
                refused: d.refused,
                short: d.short,
            })
            .collect();
        documents.sort_by(|a, b| {
            (b.forwarded, b.refused)
                .cmp(&(a.forwarded, a.refused))
                .then_with(|| a.document.cmp(&b.document))
        });
        if let Some(top) = top {
            documents.truncate(top);
        }
        Stats {
            limits: self.limits.clone(),
            elapsed_secs: now.saturating_duration_since(self.since).as_secs_f64(),
            totals: self.totals.clone(),
            per_second: self.seconds.clone(),
            busiest_window: self.busiest.clone(),
            documents_seen: self.docs.len(),
            documents,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: f64) -> Limits {
        Limits {
            doc_writes_per_sec: rate,
            doc_burst: burst,
            ..Limits::default()
        }
    }

    fn commit(docs: &[&str]) -> CommitSummary {
        CommitSummary {
            writes: docs.len(),
            counted_writes: docs.len(),
            documents: docs.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_commit_takes_a_token_from_every_document_or_from_none() {
        let t0 = Instant::now();
        let mut l = Ledger::new(limits(1.0, 1.0), t0);
        assert_eq!(l.decide(&commit(&["a"]), t0), Verdict::Forward);
        // "a" is spent: a commit of a and b is refused, and b keeps its token.
        assert_eq!(l.decide(&commit(&["b", "a"]), t0), Verdict::Contention);
        assert_eq!(l.decide(&commit(&["b"]), t0), Verdict::Forward);
        assert_eq!(l.decide(&commit(&["b"]), t0), Verdict::Contention);
        let s = l.stats(None, t0);
        let b = s.document("b").unwrap();
        assert_eq!((b.forwarded, b.refused, b.short), (1, 2, 1));
        let a = s.document("a").unwrap();
        assert_eq!((a.forwarded, a.refused, a.short), (1, 1, 1));
        assert_eq!(s.totals.commits_forwarded, 2);
        assert_eq!(s.totals.commits_refused_rate, 2);
        // A second later both have a token again.
        assert_eq!(
            l.decide(&commit(&["a", "b"]), at(t0, 1000)),
            Verdict::Forward
        );
    }

    #[test]
    fn two_writes_of_one_document_in_one_commit_take_one_token() {
        let t0 = Instant::now();
        let mut l = Ledger::new(limits(1.0, 2.0), t0);
        let twice = crate::commit::summarize(gcloud_sdk::google::firestore::v1::CommitRequest {
            writes: vec![
                crate::commit::tests::update("d/a"),
                crate::commit::tests::update("d/a"),
            ],
            ..Default::default()
        });
        assert_eq!(twice.writes, 2);
        assert_eq!(l.decide(&twice, t0), Verdict::Forward);
        assert_eq!(l.decide(&twice, t0), Verdict::Forward);
        assert_eq!(l.decide(&twice, t0), Verdict::Contention);
        let s = l.stats(None, t0);
        assert_eq!(s.totals.writes_forwarded, 4);
        assert_eq!(s.document("d/a").unwrap().forwarded, 2);
    }

    #[test]
    fn too_many_writes_are_refused_before_any_token_is_taken() {
        let t0 = Instant::now();
        let mut l = Ledger::new(limits(1.0, 1.0), t0);
        let mut big = commit(&["a"]);
        big.counted_writes = 501;
        assert_eq!(l.decide(&big, t0), Verdict::TooManyWrites);
        big.counted_writes = 500;
        assert_eq!(l.decide(&big, t0), Verdict::Forward);
        assert_eq!(l.stats(None, t0).totals.commits_refused_size, 1);
    }

    #[test]
    fn the_database_rate_counts_writes() {
        let t0 = Instant::now();
        let mut l = Ledger::new(
            Limits {
                database_writes_per_sec: 10.0,
                database_burst: 10.0,
                ..limits(0.0, 1.0)
            },
            t0,
        );
        let six = commit(&["a", "b", "c", "d", "e", "f"]);
        assert_eq!(l.decide(&six, t0), Verdict::Forward);
        assert_eq!(l.decide(&six, t0), Verdict::DatabaseRate);
        // 200 ms later 2 more tokens: 6 in all.
        assert_eq!(l.decide(&six, at(t0, 200)), Verdict::Forward);
        let s = l.stats(None, at(t0, 200));
        assert_eq!(s.totals.commits_refused_database, 1);
        // With the per-document rate off, documents are still counted.
        assert_eq!(s.document("a").unwrap().forwarded, 2);
    }

    #[test]
    fn the_busiest_window_is_the_most_commits_within_one_window() {
        let t0 = Instant::now();
        let mut l = Ledger::new(limits(0.0, 1.0), t0);
        for ms in [0, 100, 200] {
            l.decide(&commit(&["warm"]), at(t0, ms));
        }
        // Five commits to "hot" but never more than four within one second.
        for ms in [1000, 1300, 1600, 1900, 2000] {
            l.decide(&commit(&["hot"]), at(t0, ms));
        }
        let b = l.stats(None, at(t0, 2000)).busiest_window.unwrap();
        assert_eq!(
            (b.document.as_str(), b.commits, b.window_ms),
            ("hot", 4, 1000)
        );
        // A burst of five within 999 ms beats it.
        for ms in [3000, 3100, 3200, 3300, 3999] {
            l.decide(&commit(&["burst"]), at(t0, ms));
        }
        let b = l.stats(None, at(t0, 4000)).busiest_window.unwrap();
        assert_eq!((b.document.as_str(), b.commits), ("burst", 5));
    }

    #[test]
    fn refused_commits_do_not_count_toward_the_busiest_window() {
        let t0 = Instant::now();
        let mut l = Ledger::new(limits(1.0, 2.0), t0);
        for _ in 0..5 {
            l.decide(&commit(&["a"]), t0);
        }
        assert_eq!(l.stats(None, t0).busiest_window.unwrap().commits, 2);
    }

    #[test]
    fn the_timeline_counts_each_second_and_is_dense() {
        let t0 = Instant::now();
        let mut l = Ledger::new(limits(1.0, 1.0), t0);
        l.decide(&commit(&["a"]), at(t0, 10));
        l.decide(&commit(&["a"]), at(t0, 20));
        l.decide(&commit(&["a"]), at(t0, 2500));
        let s = l.stats(None, at(t0, 4100));
        let seconds: Vec<(u64, u64, u64)> = s
            .per_second
            .iter()
            .map(|s| (s.second, s.forwarded, s.refused))
            .collect();
        assert_eq!(
            seconds,
            [(0, 1, 1), (1, 0, 0), (2, 1, 0), (3, 0, 0), (4, 0, 0)]
        );
        assert_eq!(s.refused_from(1), 0);
        assert_eq!(s.per_second[0].refused_rate, 1);
    }

    #[test]
    fn top_n_keeps_the_most_forwarded_and_reset_forgets_everything() {
        let t0 = Instant::now();
        let mut l = Ledger::new(limits(0.0, 1.0), t0);
        for (doc, n) in [("x", 1), ("y", 3), ("z", 2)] {
            for _ in 0..n {
                l.decide(&commit(&[doc]), t0);
            }
        }
        let s = l.stats(Some(2), t0);
        let names: Vec<&str> = s.documents.iter().map(|d| d.document.as_str()).collect();
        assert_eq!(names, ["y", "z"]);
        assert_eq!(s.documents_seen, 3);
        let mut l = Ledger::new(limits(1.0, 1.0), t0);
        l.decide(&commit(&["a"]), t0);
        assert_eq!(l.decide(&commit(&["a"]), t0), Verdict::Contention);
        l.reset(at(t0, 5));
        assert_eq!(l.decide(&commit(&["a"]), at(t0, 5)), Verdict::Forward);
        let s = l.stats(None, at(t0, 5));
        assert_eq!(s.totals.commits_forwarded, 1);
        assert_eq!(s.totals.commits_refused_rate, 0);
        assert_eq!(s.per_second.len(), 1);
    }
}
