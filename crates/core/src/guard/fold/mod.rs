//! The batch fold, as a pure function: from the operations of one batch and the documents
//! they read (with each document's version), decide every operation in order on an evolving
//! snapshot and produce the per-operation replies plus the writes of ONE commit, each write
//! carrying the precondition that makes the commit valid only if nothing it relied on
//! changed since the read.
//!
//! The preconditions are what replaces a read-write transaction (see docs/scale-out.md):
//! - a new status document is created with `exists: false`, so a concurrent delivery of the
//!   same operation that committed first fails this commit, and the re-read replays it;
//! - the first write to every business document read carries `update_time == read` (or
//!   `exists: false` when it was read missing), so a lost update is impossible;
//! - a batch that stores a rejection also *verifies* every business document it read and does
//!   not write (see [`Guarded::Verify`]), so no rejection rests on a stale read.
//!
//! The commit stays inside Firestore's limit of writes per commit: the writes of one batch
//! to the same document are merged into one (a hot counter is written once per commit,
//! however many operations it serves), and operations past the limit are left for the next
//! batch ([`Folded::taken`]). An operation that alone needs more writes than one commit can
//! hold is refused durably (`too_many_writes`), since no retry could ever apply it.
//!
//! No I/O, no clock: `now` is given, so the fold is tested here without an emulator.

use super::{GuardError, Reply, Unavailable};
use crate::engine::record::Outcome;
use crate::engine::record::{self, RecordInput, StatusRecord};
use crate::engine::DeliveryMeta;
use crate::engine::{Decision, DocRef, Fields, OpError, Operation, Snapshot, Write, WriteKind};
use firestore::gcloud_sdk::prost_types::Timestamp;
use firestore::FirestoreInstant;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// The version of a document as read.
#[derive(Clone, Debug, PartialEq)]
pub enum Version {
    /// The document did not exist.
    Missing,
    /// Its `update_time`.
    At(Timestamp),
}

/// A document as read: its fields and version, `None` when it does not exist.
pub type ReadDoc = Option<(Fields, Version)>;

/// What must hold at commit time for a write to be applied (else the whole commit fails and
/// nothing is written).
#[derive(Clone, Debug, PartialEq)]
pub enum Precondition {
    /// None (a replace or delete of a document that was not read).
    None,
    /// The document exists (`true`) or does not (`false`).
    Exists(bool),
    /// The document's `update_time` is still this one.
    UpdateTime(Timestamp),
}

impl From<Version> for Precondition {
    fn from(v: Version) -> Self {
        match v {
            Version::Missing => Precondition::Exists(false),
            Version::At(t) => Precondition::UpdateTime(t),
        }
    }
}

/// One write of the commit.
#[derive(Clone, Debug)]
pub enum Guarded {
    /// A business or status write with its precondition.
    Write {
        /// The write.
        write: Write,
        /// What must still hold.
        precondition: Precondition,
    },
    /// Change nothing, but fail the commit unless `doc` is still at `version` (an update with
    /// an empty mask for an existing document, a delete with `exists: false` for a missing
    /// one; both checked on the emulator to leave the document and its update_time as is).
    Verify {
        /// The document.
        doc: DocRef,
        /// Its version as read.
        version: Version,
    },
}

impl Guarded {
    /// The document this write touches.
    pub fn doc(&self) -> &DocRef {
        match self {
            Guarded::Write { write, .. } => &write.doc,
            Guarded::Verify { doc, .. } => doc,
        }
    }
}

/// One operation of the batch.
pub struct Entry<'a> {
    /// The operation.
    pub op: &'a dyn Operation,
    /// Its ID (status document ID).
    pub operation_id: &'a str,
    /// The delivery, recorded on a new status document.
    pub delivery: &'a DeliveryMeta,
}

/// What the fold needs besides the batch and its reads.
pub struct FoldCtx<'a> {
    /// Collection of status documents.
    pub operations: &'a str,
    /// How long status documents are kept.
    pub retention: Duration,
    /// Decision time of the whole batch.
    pub now: FirestoreInstant,
    /// Most writes one commit may carry (Firestore: 500).
    pub max_writes: usize,
}

/// The fold's result.
#[derive(Debug)]
pub struct Folded {
    /// How many operations, from the first, this commit serves; the rest did not fit in
    /// `max_writes` and wait for the next batch.
    pub taken: usize,
    /// One reply per operation taken, valid once the commit succeeds (if `needs_commit`).
    pub replies: Vec<Reply>,
    /// Whether each reply depends on the commit (a fresh decision, or a replay of an
    /// operation decided earlier in the same batch).
    pub needs_commit: Vec<bool>,
    /// The commit; empty when nothing needs writing.
    pub writes: Vec<Guarded>,
    /// Documents some operation needs before it can decide (see [`OpError::ReadMore`]):
    /// when not empty, the fold is void; read these too and fold again.
    pub more_reads: Vec<DocRef>,
    /// The documents as the commit leaves them (what was read, with every write applied).
    pub snapshot: Snapshot,
}

/// Split what was read into the documents (for a [`Snapshot`]) and their versions.
pub fn split(read: HashMap<DocRef, ReadDoc>) -> (Vec<(DocRef, Option<Fields>)>, Versions) {
    let mut docs = Vec::with_capacity(read.len());
    let mut versions = HashMap::with_capacity(read.len());
    for (d, r) in read {
        match r {
            Some((f, v)) => {
                versions.insert(d.clone(), v);
                docs.push((d, Some(f)));
            }
            None => {
                versions.insert(d.clone(), Version::Missing);
                docs.push((d, None));
            }
        }
    }
    (docs, versions)
}

/// Version of every document read.
pub type Versions = HashMap<DocRef, Version>;

/// Writes of a commit being built: one per document where they merge (see `push`).
#[derive(Default)]
struct PendingWrites {
    writes: Vec<Write>,
    /// Index in `writes` of each document's mergeable write.
    at: HashMap<DocRef, usize>,
}

impl PendingWrites {
    /// How many entries `ws` would add (an update of a document already written merges).
    fn added(&self, ws: &[Write]) -> usize {
        let mut local: HashSet<&DocRef> = HashSet::new();
        let mut gone: HashSet<&DocRef> = HashSet::new();
        let mut n = 0;
        for w in ws {
            let target =
                local.contains(&w.doc) || (self.at.contains_key(&w.doc) && !gone.contains(&w.doc));
            if w.mergeable() && target {
                continue;
            }
            n += 1;
            match w.kind {
                WriteKind::Delete => {
                    local.remove(&w.doc);
                    gone.insert(&w.doc);
                }
                _ => {
                    local.insert(&w.doc);
                }
            }
        }
        n
    }

    /// Add `w`: an update of a document this commit already creates, replaces or updates is
    /// merged into that write (the later value of each field wins, as Firestore applying
    /// both in order would leave it), so the document is written once.
    fn push(&mut self, w: Write) {
        if w.mergeable() {
            if let Some(&i) = self.at.get(&w.doc) {
                self.writes[i].merge(w);
                return;
            }
        }
        match w.kind {
            WriteKind::Create(_) | WriteKind::Set(_) | WriteKind::Update(_) => {
                self.at.insert(w.doc.clone(), self.writes.len());
            }
            WriteKind::Delete => {
                self.at.remove(&w.doc);
            }
        }
        self.writes.push(w);
    }
}

/// Decide every entry in order on one evolving `snapshot` of what was read at `versions`,
/// taking entries while their writes fit in `ctx.max_writes`.
pub fn fold(
    entries: &[Entry<'_>],
    mut snapshot: Snapshot,
    versions: &Versions,
    ctx: &FoldCtx<'_>,
) -> Folded {
    let mut writes = PendingWrites::default();
    let mut decided: HashMap<&str, StatusRecord> = HashMap::new();
    let mut replies: Vec<Reply> = Vec::with_capacity(entries.len());
    let mut needs_commit: Vec<bool> = Vec::with_capacity(entries.len());
    let mut more_reads: BTreeSet<DocRef> = BTreeSet::new();
    let mut rejected = false;
    // Business documents read: a commit with a rejection verifies those it does not write.
    let read_business = versions
        .keys()
        .filter(|d| d.collection != ctx.operations)
        .count();
    let mut taken = 0;
    for e in entries {
        let fingerprint = e.op.fingerprint().to_hex();
        let status_ref = DocRef::new(ctx.operations, e.operation_id);
        let (existing, in_batch) = match decided.get(e.operation_id) {
            Some(r) => (Some(r.clone()), true),
            None => match snapshot.get::<StatusRecord>(&status_ref) {
                Ok(r) => (r, false),
                Err(err) => {
                    replies.push(Err(err.into()));
                    needs_commit.push(false);
                    taken += 1;
                    continue;
                }
            },
        };
        if let Some(record) = existing {
            needs_commit.push(in_batch);
            replies.push(if record.fingerprint == fingerprint {
                Ok(Outcome {
                    operation_id: e.operation_id.to_string(),
                    replayed: true,
                    record,
                    from_cache: false,
                })
            } else {
                Err(GuardError::KeyReused {
                    operation_id: e.operation_id.to_string(),
                })
            });
            taken += 1;
            continue;
        }
        let mut decision = match e.op.decide(&snapshot) {
            Ok(d) => d,
            Err(OpError::ReadMore { docs }) => {
                more_reads.extend(docs.into_iter().filter(|d| !versions.contains_key(d)));
                replies.push(Err(GuardError::Unavailable(Unavailable::ReadMore)));
                needs_commit.push(false);
                taken += 1;
                continue;
            }
            Err(err) => {
                replies.push(Err(err.into()));
                needs_commit.push(false);
                taken += 1;
                continue;
            }
        };
        // Room for this operation: its writes, its status document, and (for a rejection)
        // a verification of every business document read, counted whole to stay on the
        // safe side.
        let (op_writes, rejects) = match &decision {
            Decision::Apply { writes, .. } => (writes.as_slice(), false),
            Decision::Reject(_) => (&[][..], true),
        };
        let verify = if rejected || rejects {
            read_business
        } else {
            0
        };
        let needed = writes.writes.len() + writes.added(op_writes) + 1 + verify;
        if needed > ctx.max_writes {
            if taken > 0 {
                break;
            }
            // Alone and still too big: no commit could ever hold it.
            let n = op_writes.len() + 1;
            decision = Decision::reject(
                "too_many_writes",
                format!(
                    "this operation writes {n} documents; one Firestore commit holds at most {}",
                    ctx.max_writes
                ),
                serde_json::json!({"writes": n, "max_writes": ctx.max_writes}),
            );
        }
        let record = record::build(
            RecordInput {
                operation_id: e.operation_id,
                kind: e.op.kind(),
                key: e.op.key(),
                fingerprint,
                delivery: e.delivery,
                now: ctx.now,
                retention: ctx.retention,
            },
            &decision,
        );
        let status_write = match Write::create(status_ref, &record) {
            Ok(w) => w,
            Err(err) => {
                replies.push(Err(err.into()));
                needs_commit.push(false);
                taken += 1;
                continue;
            }
        };
        let op_writes = match decision {
            Decision::Apply { writes, .. } => writes,
            Decision::Reject(_) => {
                rejected = true;
                Vec::new()
            }
        };
        for w in op_writes.into_iter().chain(std::iter::once(status_write)) {
            snapshot.apply(&w);
            writes.push(w);
        }
        decided.insert(e.operation_id, record.clone());
        replies.push(Ok(Outcome {
            operation_id: e.operation_id.to_string(),
            replayed: false,
            record,
            from_cache: false,
        }));
        needs_commit.push(true);
        taken += 1;
    }
    let more_reads: Vec<DocRef> = more_reads.into_iter().collect();
    let writes = if writes.writes.is_empty() || !more_reads.is_empty() {
        Vec::new()
    } else {
        let operations = ctx.operations;
        guard(writes.writes, versions, |d| {
            rejected && d.collection != operations
        })
    };
    Folded {
        taken,
        replies,
        needs_commit,
        writes,
        more_reads,
        snapshot,
    }
}

/// Attach preconditions to `writes`: the first write to each document that was read carries
/// its read version; later writes to the same document in the commit (which Firestore applies
/// in order, each seeing the one before) keep their own. Documents that were read, not
/// written, and for which `verify` says so, get a [`Guarded::Verify`].
pub fn guard(
    writes: Vec<Write>,
    versions: &Versions,
    verify: impl Fn(&DocRef) -> bool,
) -> Vec<Guarded> {
    let mut written: HashSet<DocRef> = HashSet::new();
    let mut out = Vec::with_capacity(writes.len());
    for write in writes {
        let natural = match write.kind {
            WriteKind::Create(_) => Precondition::Exists(false),
            WriteKind::Update(_) => Precondition::Exists(true),
            WriteKind::Set(_) | WriteKind::Delete => Precondition::None,
        };
        let first = written.insert(write.doc.clone());
        let precondition = match (first, versions.get(&write.doc), &write.kind) {
            // An update of a document read missing must still fail, never create it.
            (true, Some(Version::Missing), WriteKind::Update(_)) => natural,
            (true, Some(v), _) => v.clone().into(),
            _ => natural,
        };
        out.push(Guarded::Write {
            write,
            precondition,
        });
    }
    let mut unwritten: Vec<(&DocRef, &Version)> = versions
        .iter()
        .filter(|(d, _)| !written.contains(*d) && verify(d))
        .collect();
    unwritten.sort_by(|a, b| a.0.cmp(b.0));
    out.extend(unwritten.into_iter().map(|(d, v)| Guarded::Verify {
        doc: d.clone(),
        version: v.clone(),
    }));
    out
}

#[cfg(test)]
mod tests;
