//! Operations: what to do, under which key, and the pure decision that does it.
//!
//! An [`Operation`] never touches Firestore. It names the documents it needs
//! ([`Operation::reads`]), and from a [`Snapshot`] of them returns a [`Decision`]: the writes
//! to make and the result to store, or a durable rejection. The [guard](crate::guard) runs
//! the commit around it, so an operation cannot forget the status document, the
//! read-before-write rule, retries or replay.
//!
//! Because `decide` is pure, the guard can fold several operations over one evolving snapshot
//! and commit them together (group commit for a hot document), and tests need no emulator.

use crate::engine::key::Fingerprint;
use firestore::gcloud_sdk::google::firestore::v1::{Document, Value};
use firestore::{FirestoreDb, FirestoreInstant};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;

/// A document by collection and ID, relative to the database's documents root.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocRef {
    /// Collection ID, e.g. `polls`.
    pub collection: String,
    /// Document ID; must already be a valid Firestore ID (see [`crate::engine::key`]).
    pub id: String,
}

impl DocRef {
    /// Shorthand used by operations.
    pub fn new(collection: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            collection: collection.into(),
            id: id.into(),
        }
    }

    /// Full resource name under `documents_path` (`projects/P/databases/D/documents`).
    pub fn full_path(&self, documents_path: &str) -> String {
        format!("{documents_path}/{}/{}", self.collection, self.id)
    }
}

/// Fields of one document, as Firestore stores them.
pub type Fields = HashMap<String, Value>;

/// An operation failed in a way that is neither a business rejection nor transient: stored
/// data it cannot read, or a value it cannot write. Nothing is committed for it.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A document the operation read does not have the shape it expects.
    #[error("document {collection}/{id} cannot be read: {message}")]
    BadDocument {
        /// Collection of the document.
        collection: String,
        /// Its ID.
        id: String,
        /// What the deserializer said.
        message: String,
    },
    /// A value could not be turned into Firestore fields.
    #[error("cannot serialize a write to {collection}/{id}: {message}")]
    Serialize {
        /// Collection of the document.
        collection: String,
        /// Its ID.
        id: String,
        /// What the serializer said.
        message: String,
    },
    /// The snapshot lacks a document the operation did not list in `reads`.
    #[error("document {collection}/{id} was not read; list it in Operation::reads")]
    NotRead {
        /// Collection of the document.
        collection: String,
        /// Its ID.
        id: String,
    },
    /// The decision needs these documents too, which only this snapshot showed (a counter
    /// spread over shards reads them all when the first ones cannot cover it). Not an error:
    /// the guard reads them and decides again, still before any write.
    #[error("needs {} more documents", docs.len())]
    ReadMore {
        /// The documents to read as well.
        docs: Vec<DocRef>,
    },
}

/// The documents an operation asked for, as read before the commit, with the writes of
/// operations decided earlier in the same batch already applied.
#[derive(Clone, Debug)]
pub struct Snapshot {
    docs: HashMap<DocRef, Option<Fields>>,
    now: FirestoreInstant,
}

impl Snapshot {
    /// Build a snapshot from documents already read; `None` means the document does not exist.
    pub fn from_docs(
        now: FirestoreInstant,
        docs: impl IntoIterator<Item = (DocRef, Option<Fields>)>,
    ) -> Self {
        Self {
            docs: docs.into_iter().collect(),
            now,
        }
    }

    /// The decision time, fixed by the guard for the whole batch so `decide` stays pure.
    pub fn now(&self) -> FirestoreInstant {
        self.now
    }

    /// Whether `doc` exists. Errors when it was not read, which is a bug in the operation.
    pub fn exists(&self, doc: &DocRef) -> Result<bool, OpError> {
        Ok(self.fields(doc)?.is_some())
    }

    /// Raw fields of `doc`, `None` when it does not exist.
    pub fn fields(&self, doc: &DocRef) -> Result<Option<&Fields>, OpError> {
        match self.docs.get(doc) {
            Some(f) => Ok(f.as_ref()),
            None => Err(OpError::NotRead {
                collection: doc.collection.clone(),
                id: doc.id.clone(),
            }),
        }
    }

    /// `doc` deserialized into `T` (with the `firestore` crate's serde), `None` when missing.
    pub fn get<T: DeserializeOwned>(&self, doc: &DocRef) -> Result<Option<T>, OpError> {
        let Some(fields) = self.fields(doc)? else {
            return Ok(None);
        };
        let document = Document {
            name: doc.id.clone(),
            fields: fields.clone(),
            ..Default::default()
        };
        FirestoreDb::deserialize_doc_to::<T>(&document)
            .map(Some)
            .map_err(|e| OpError::BadDocument {
                collection: doc.collection.clone(),
                id: doc.id.clone(),
                message: e.to_string(),
            })
    }

    /// `Ok` when every one of `docs` was read; else [`OpError::ReadMore`] naming the others,
    /// so the guard reads them and calls `decide` again.
    pub fn require(&self, docs: &[DocRef]) -> Result<(), OpError> {
        let missing: Vec<DocRef> = docs
            .iter()
            .filter(|d| !self.docs.contains_key(*d))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(OpError::ReadMore { docs: missing })
        }
    }

    /// Add documents read in a second round, still before any write.
    pub(crate) fn extend(&mut self, docs: impl IntoIterator<Item = (DocRef, Option<Fields>)>) {
        self.docs.extend(docs);
    }

    /// Apply `write` so the next operation in a batch sees it, exactly as Firestore would; a
    /// kind's own tests use it to check a decision against what an earlier one left.
    pub fn apply(&mut self, write: &Write) {
        let entry = self.docs.entry(write.doc.clone()).or_insert(None);
        match &write.kind {
            WriteKind::Create(f) | WriteKind::Set(f) => *entry = Some(f.clone()),
            WriteKind::Update(f) => {
                if let Some(existing) = entry {
                    existing.extend(f.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
            WriteKind::Delete => *entry = None,
        }
    }
}

/// How a [`Write`] changes its document; each maps to one Firestore write with a precondition.
#[derive(Clone, Debug)]
pub enum WriteKind {
    /// Create; the commit fails if the document exists (a bug guard: the decision saw it missing).
    Create(Fields),
    /// Replace the whole document.
    Set(Fields),
    /// Replace only the listed top-level fields; the document must exist.
    Update(Fields),
    /// Delete the document.
    Delete,
}

/// One document write, committed atomically with the status document.
#[derive(Clone, Debug)]
pub struct Write {
    /// Target document.
    pub doc: DocRef,
    /// What to do to it.
    pub kind: WriteKind,
}

fn to_fields<T: Serialize>(doc: &DocRef, value: &T) -> Result<Fields, OpError> {
    FirestoreDb::serialize_to_doc(&doc.id, value)
        .map(|d| d.fields)
        .map_err(|e| OpError::Serialize {
            collection: doc.collection.clone(),
            id: doc.id.clone(),
            message: e.to_string(),
        })
}

impl Write {
    /// Create `doc` from `value`.
    pub fn create<T: Serialize>(doc: DocRef, value: &T) -> Result<Self, OpError> {
        let f = to_fields(&doc, value)?;
        Ok(Self {
            doc,
            kind: WriteKind::Create(f),
        })
    }

    /// Replace `doc` with `value`.
    pub fn set<T: Serialize>(doc: DocRef, value: &T) -> Result<Self, OpError> {
        let f = to_fields(&doc, value)?;
        Ok(Self {
            doc,
            kind: WriteKind::Set(f),
        })
    }

    /// Overwrite the fields `value` serializes to and keep every other field of `doc`: how an
    /// operation changes one field without dropping fields it does not know about.
    pub fn update<T: Serialize>(doc: DocRef, value: &T) -> Result<Self, OpError> {
        let f = to_fields(&doc, value)?;
        Ok(Self {
            doc,
            kind: WriteKind::Update(f),
        })
    }

    /// Delete `doc`.
    pub fn delete(doc: DocRef) -> Self {
        Self {
            doc,
            kind: WriteKind::Delete,
        }
    }

    /// Whether this write can be merged into an earlier create, replace or update of the
    /// same document in one commit: an update, whose fields then win.
    pub fn mergeable(&self) -> bool {
        matches!(self.kind, WriteKind::Update(_))
    }

    /// Merge `later`, an update of the same document, into this write: the document ends as
    /// Firestore applying both in order would leave it, written once.
    pub fn merge(&mut self, later: Write) {
        if let WriteKind::Update(fields) = later.kind {
            match &mut self.kind {
                WriteKind::Create(m) | WriteKind::Set(m) | WriteKind::Update(m) => m.extend(fields),
                WriteKind::Delete => {}
            }
        }
    }
}

/// A rejection the business rules made: durable, stored and replayed, never retried.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// Machine-readable reason, e.g. `poll_closed`; also the problem type's last segment.
    pub reason: String,
    /// One sentence for a human.
    pub detail: String,
    /// Extra JSON members for the problem body (e.g. `poll`, `closed_at`).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Rejection {
    /// A rejection whose problem body gains the members of `extra` (a JSON object).
    pub fn new(reason: &str, detail: String, extra: serde_json::Value) -> Self {
        let extra = match extra {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        Self {
            reason: reason.to_string(),
            detail,
            extra,
        }
    }
}

/// What an operation decided from its snapshot.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Make these writes; `result` members are added to the stored response body.
    Apply {
        /// Writes to commit with the status document.
        writes: Vec<Write>,
        /// Members merged into the response body.
        result: serde_json::Map<String, serde_json::Value>,
    },
    /// Change nothing but the status document, which records this rejection.
    Reject(Rejection),
}

impl Decision {
    /// Shorthand for `Decision::Apply` with nothing added to the response body.
    pub fn apply(writes: Vec<Write>) -> Self {
        Decision::Apply {
            writes,
            result: serde_json::Map::new(),
        }
    }

    /// Shorthand for `Decision::Reject(Rejection::new(..))`.
    pub fn reject(reason: &str, detail: String, extra: serde_json::Value) -> Self {
        Decision::Reject(Rejection::new(reason, detail, extra))
    }
}

/// What one commit attempt said about the load on the documents of its batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Another writer came first: a precondition refused the commit, or Firestore answered
    /// it with contention. Nothing was written; the batch is decided again on fresh reads.
    pub conflict: bool,
    /// The commit waited for a document's write budget: the documents are as busy as one
    /// document may be.
    pub throttled: bool,
    /// Operations left waiting on the same documents when the batch was taken, those the
    /// commit could not hold included.
    pub waiting: usize,
    /// Operations the commit held.
    pub taken: usize,
    /// The batch was as large as one commit may be (operations or writes).
    pub full: bool,
    /// Operations like these one commit holds: `taken` when `full`, else as many as the
    /// write limit allows at this commit's writes per operation (at most the batch limit).
    /// Under a write budget a document takes one commit a second, so this is how many a
    /// document's next commit can still carry.
    pub capacity: usize,
}

/// A unit of work that must take effect exactly once.
///
/// Implement it for your own kind and hand it to [`crate::guard::Guard::run`]: the guard reads
/// the status document and [`reads`](Operation::reads), calls
/// [`decide`](Operation::decide) only if the status document is absent, and commits the
/// decision's writes together with the new status document.
pub trait Operation: Send + Sync + 'static {
    /// Namespace of the key (the kind's name, `vote`); part of the operation ID.
    fn kind(&self) -> &'static str;
    /// Domain identity: the same for every delivery of the same work (a `vote_id`).
    fn key(&self) -> &str;
    /// sha256 of the canonical payload: a reused key with another payload is refused.
    fn fingerprint(&self) -> Fingerprint;
    /// Every document `decide` may look at. Read before any write.
    fn reads(&self) -> Vec<DocRef>;
    /// Documents whose names are only known from the first reads (a cancellation learns the
    /// lines from the record it undoes). Read in a second round, still before any write.
    fn reads_after(&self, _first: &Snapshot) -> Vec<DocRef> {
        Vec::new()
    }
    /// Pure: no I/O, no clock, no randomness; the guard may call it again on a retried
    /// transaction, or fold it over a batch.
    fn decide(&self, snapshot: &Snapshot) -> Result<Decision, OpError>;
    /// Told after each commit attempt of a batch this operation's reply depended on (once per
    /// commit, on the batch's first such operation: all of a batch read the same documents),
    /// with what the attempt said about the load on those documents: refused by another
    /// writer, held back by a document's write budget, more work waiting than one commit
    /// holds. A kind that spreads hot data uses it to move or spread it (over shard
    /// documents); most operations ignore it.
    fn committed(&self, _report: &CommitReport) {}
    /// Called by its lane's leader while the operation is still queued (never once it is in
    /// a batch): the moment to choose other documents if the kind's placement changed since
    /// it was parsed (a hot document spread over more shards). The guard then reads
    /// [`reads`](Operation::reads) again and moves it to the lane of its new documents.
    fn replan(&self) {}
    /// Writes that tell other writers this instance is being refused: committed alone,
    /// best effort, after a batch's commits were refused twice in a row (and again later).
    /// Optimistic commits have no fairness: an instance that commits from what it knows
    /// (`guard::known`) never meets the conflict it causes, so a refused one changes a
    /// document the other's next commit depends on. A kind selling from shards marks the
    /// main document they are spread from; most operations need none.
    fn contention_marks(&self) -> Vec<Write> {
        Vec::new()
    }
}
