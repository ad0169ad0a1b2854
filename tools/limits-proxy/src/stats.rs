//! The counts the proxy keeps, as served on `GET /stats` and returned by
//! [`Proxy::stats`](crate::Proxy::stats): one struct, so a test in the same process and a
//! benchmark reading the JSON see the same figures.

use crate::Limits;
use serde::{Deserialize, Serialize};

/// Everything counted since the start or the last reset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The limits in force, so a figure carries what it was measured under.
    pub limits: Limits,
    /// Seconds since the start or the last reset.
    pub elapsed_secs: f64,
    /// Totals over the whole period.
    pub totals: Totals,
    /// Commits forwarded and refused in each second since the start or reset, index = second
    /// (`per_second[10..]` is "after the first 10 s"); dense up to the current second.
    pub per_second: Vec<Second>,
    /// The most commits forwarded to one document within one sliding window
    /// (`limits.window_ms`), and which document: how hot the hottest document ran.
    pub busiest_window: Option<BusiestWindow>,
    /// How many distinct documents were committed to (forwarded or refused).
    pub documents_seen: usize,
    /// Per document, most forwarded first (ties: most refused, then name); the top N asked
    /// for, or all.
    pub documents: Vec<DocumentCounts>,
}

/// Totals since the start or the last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// `Commit` calls sent on to the emulator.
    pub commits_forwarded: u64,
    /// Commits refused with `ABORTED` because a document had no token left (per-document rate).
    pub commits_refused_rate: u64,
    /// Commits refused with `INVALID_ARGUMENT` for carrying too many writes.
    pub commits_refused_size: u64,
    /// Commits refused with `RESOURCE_EXHAUSTED` by the database-wide write rate.
    pub commits_refused_database: u64,
    /// Commits refused with `INTERNAL` because their body could not be read (compressed,
    /// malformed, not a `CommitRequest`).
    pub commits_refused_unreadable: u64,
    /// `Write`s in the forwarded commits (a field transform not counted apart).
    pub writes_forwarded: u64,
    /// Calls other than `Commit`, forwarded untouched.
    pub other_calls_forwarded: u64,
    /// Of those, calls of writing methods the proxy does not limit (`UpdateDocument`,
    /// `CreateDocument`, `DeleteDocument`, `BatchWrite`, `Write`): writes that escape the
    /// model. The `firestore-once` service commits only through `Commit`; non-zero means
    /// something else writes.
    pub unlimited_write_calls_forwarded: u64,
    /// `Rollback`s the proxy sent for refused transactional commits, so the emulator does not
    /// keep the transaction's locks for a minute (production ends an aborted transaction).
    pub rollbacks_sent: u64,
    /// Of those, how many the emulator did not answer `OK`.
    pub rollbacks_failed: u64,
    /// Calls that could not reach the emulator (answered `UNAVAILABLE`), and inbound
    /// connections for which no upstream connection could be made.
    pub upstream_errors: u64,
}

/// One second of the timeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the start or reset (the index in `per_second`).
    pub second: u64,
    /// Commits forwarded in that second.
    pub forwarded: u64,
    /// Commits refused in that second for size, rate or the database rate (an unreadable
    /// commit is only in the totals).
    pub refused: u64,
    /// Of those, refused for the per-document rate (`ABORTED`).
    pub refused_rate: u64,
}

/// The hottest document's busiest window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusiestWindow {
    /// Full document name (`projects/…/documents/items/x`).
    pub document: String,
    /// Commits forwarded to it within one window.
    pub commits: u64,
    /// The window's length.
    pub window_ms: u64,
}

/// One document's commits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentCounts {
    /// Full document name.
    pub document: String,
    /// Forwarded commits that wrote it.
    pub forwarded: u64,
    /// Commits that wrote it and were refused for the per-document rate (whichever document
    /// ran short).
    pub refused: u64,
    /// Of those, the refusals where this document was one without a token: the hot one.
    pub short: u64,
}

impl Stats {
    /// The counts of one document: by full name, or by the path under `documents/`
    /// (`"items/x"`). `None` when it was never committed to or is not among the top N served.
    pub fn document(&self, name: &str) -> Option<&DocumentCounts> {
        self.documents.iter().find(|d| {
            d.document == name
                || d.document
                    .strip_suffix(name)
                    .is_some_and(|head| head.ends_with("/documents/"))
        })
    }

    /// Commits refused (any reason) from second `from` on: "refusals after the first 10 s".
    pub fn refused_from(&self, from: usize) -> u64 {
        self.per_second.iter().skip(from).map(|s| s.refused).sum()
    }

    /// Commits forwarded from second `from` on.
    pub fn forwarded_from(&self, from: usize) -> u64 {
        self.per_second.iter().skip(from).map(|s| s.forwarded).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_found_by_full_name_or_by_path() {
        let s = Stats {
            documents: vec![DocumentCounts {
                document: "projects/p/databases/(default)/documents/items/x".into(),
                forwarded: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(s.document("items/x").is_some());
        assert!(s
            .document("projects/p/databases/(default)/documents/items/x")
            .is_some());
        assert!(s.document("x").is_none());
        assert!(s.document("ems/x").is_none());
        assert!(s.document("items/y").is_none());
    }

    #[test]
    fn the_json_round_trips() {
        let s = Stats {
            per_second: vec![Second {
                second: 0,
                forwarded: 1,
                refused: 2,
                refused_rate: 2,
            }],
            busiest_window: Some(BusiestWindow {
                document: "d".into(),
                commits: 3,
                window_ms: 1000,
            }),
            ..Default::default()
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Stats>(&json).unwrap(), s);
        assert_eq!(s.refused_from(0), 2);
        assert_eq!(s.refused_from(1), 0);
        assert_eq!(s.forwarded_from(0), 1);
    }
}
