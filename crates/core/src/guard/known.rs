//! What this instance's own commits left in Firestore: each business document it wrote last,
//! with the fields it wrote and the `update_time` the commit answered.
//!
//! An instance that keeps writing the same documents (a hot counter, its own shard of one)
//! knows their state without reading them: nobody else writes them, or rarely.
//! The guard then skips the read round trip and commits straight from this record, with the
//! same preconditions a fresh read would carry (`update_time` as recorded, `exists: false`
//! for each new status document). If anything changed meanwhile (another instance wrote the
//! document, the status document of a redelivery exists), the precondition refuses the
//! commit, nothing is written, and the batch is read and decided as usual. So the record can
//! be stale, never wrong: correctness rests on the preconditions, as for any read.

use super::fold::Version;
use crate::engine::{DocRef, Fields};
use std::collections::HashMap;
use std::sync::Mutex;

/// Documents kept at most; past it the record starts again empty (a stale or missing entry
/// only costs a read).
const MAX_DOCS: usize = 10_000;

/// A document as this instance's last commit of it left it.
pub type KnownDoc = (Option<Fields>, Version);

/// The record, shared by every lane of one guard.
#[derive(Default)]
pub struct Known {
    docs: Mutex<HashMap<DocRef, KnownDoc>>,
}

impl Known {
    /// Every one of `docs` as last committed here, or `None` if any is not known.
    pub fn get_all(&self, docs: &[DocRef]) -> Option<Vec<(DocRef, KnownDoc)>> {
        let map = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        docs.iter()
            .map(|d| map.get(d).map(|k| (d.clone(), k.clone())))
            .collect()
    }

    /// Remember what a commit just made of these documents.
    pub fn record(&self, docs: impl IntoIterator<Item = (DocRef, KnownDoc)>) {
        let mut map = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_DOCS {
            map.clear();
        }
        map.extend(docs);
    }

    /// Forget these documents: a commit of them failed or its outcome is unknown.
    pub fn forget<'a>(&self, docs: impl IntoIterator<Item = &'a DocRef>) {
        let mut map = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        for d in docs {
            map.remove(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firestore::gcloud_sdk::prost_types::Timestamp;

    fn doc(id: &str) -> DocRef {
        DocRef::new("counters", id)
    }

    #[test]
    fn all_or_nothing_and_forgotten_on_failure() {
        let k = Known::default();
        let at = Version::At(Timestamp {
            seconds: 1,
            nanos: 2,
        });
        k.record([(doc("a"), (Some(Fields::new()), at.clone()))]);
        assert!(k.get_all(&[doc("a")]).is_some());
        assert!(k.get_all(&[doc("a"), doc("b")]).is_none());
        k.forget([&doc("a")]);
        assert!(k.get_all(&[doc("a")]).is_none());
    }
}
