//! The limits the proxy enforces, one field per command-line flag; echoed back in the stats
//! so a published figure carries the limits it was measured under.

use serde::{Deserialize, Serialize};

/// Production Firestore's write limits, as the proxy models them. `Default` is production's
/// published figures (see the crate README for each source); a test loosens or tightens them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Most writes one commit may carry, field transforms counted as writes of their own
    /// (`--max-writes-per-commit`, 500; 0 turns the check off). Above it: `INVALID_ARGUMENT`
    /// "maximum 500 writes allowed per request", never forwarded.
    pub max_writes_per_commit: usize,
    /// Sustained commits a second per document (`--doc-writes-per-sec`, 1.0; 0 turns the
    /// per-document limit off). Above it: `ABORTED` "Too much contention…".
    pub doc_writes_per_sec: f64,
    /// Commits one document may take at once before the sustained rate applies
    /// (`--doc-burst`, 5; at least 1).
    pub doc_burst: f64,
    /// Sustained writes a second over the whole proxy (`--database-writes-per-sec`, 10,000;
    /// 0 turns it off). Above it: `RESOURCE_EXHAUSTED`.
    pub database_writes_per_sec: f64,
    /// Writes the database bucket holds (`--database-burst`, one second's worth by default).
    pub database_burst: f64,
    /// How long a contention refusal waits before it is answered (`--refuse-delay-ms`, 100):
    /// production answers contention after a lock wait, not at once, and a client that retries
    /// at once would otherwise spin.
    pub refuse_delay_ms: u64,
    /// The sliding window of the "most commits one document took in a window" figure
    /// (`--window-ms`, 1000).
    pub window_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_writes_per_commit: 500,
            doc_writes_per_sec: 1.0,
            doc_burst: 5.0,
            database_writes_per_sec: 10_000.0,
            database_burst: 10_000.0,
            refuse_delay_ms: 100,
            window_ms: 1000,
        }
    }
}

/// Why a set of limits cannot be enforced.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid limits: {0}")]
pub struct InvalidLimits(pub String);

impl Limits {
    /// Refuse limits that would make every commit fail or the arithmetic meaningless: a rate
    /// must be finite and not negative, and a bucket in use must hold at least one token.
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        let rate = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(InvalidLimits(format!(
                    "{name} must be a number >= 0, not {v}"
                )))
            }
        };
        rate("doc_writes_per_sec", self.doc_writes_per_sec)?;
        rate("database_writes_per_sec", self.database_writes_per_sec)?;
        if self.doc_writes_per_sec > 0.0 && !(self.doc_burst.is_finite() && self.doc_burst >= 1.0) {
            return Err(InvalidLimits(format!(
                "doc_burst must be at least 1 (a document must be writable once), not {}",
                self.doc_burst
            )));
        }
        if self.database_writes_per_sec > 0.0
            && !(self.database_burst.is_finite() && self.database_burst >= 1.0)
        {
            return Err(InvalidLimits(format!(
                "database_burst must be at least 1, not {}",
                self.database_burst
            )));
        }
        if self.window_ms == 0 {
            return Err(InvalidLimits("window_ms must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_not() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let bad = [
            Limits {
                doc_burst: 0.5,
                ..Limits::default()
            },
            Limits {
                doc_writes_per_sec: -1.0,
                ..Limits::default()
            },
            Limits {
                database_writes_per_sec: f64::NAN,
                ..Limits::default()
            },
            Limits {
                database_burst: 0.0,
                ..Limits::default()
            },
            Limits {
                window_ms: 0,
                ..Limits::default()
            },
        ];
        for l in bad {
            assert!(l.validate().is_err(), "{l:?}");
        }
        // A limit turned off needs no burst.
        let off = Limits {
            doc_writes_per_sec: 0.0,
            doc_burst: 0.0,
            database_writes_per_sec: 0.0,
            database_burst: 0.0,
            ..Limits::default()
        };
        assert_eq!(off.validate(), Ok(()));
    }
}
