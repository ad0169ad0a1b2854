//! The guard: per operation (or per batch of operations on the same documents) read the
//! status document and the operation's documents, decide, and commit the business writes
//! together with the new status document in ONE atomic Firestore commit.
//!
//! Guarantee: an operation's writes are committed at most once, and only together with its
//! status document; every later delivery finds that document and replays its stored response.
//! What the guard cannot promise: effects outside Firestore (see the multi-step tasks).
//!
//! Concurrency control is optimistic ([`fold`], [`driver`]): reads happen outside any
//! transaction, and the commit carries preconditions (`exists: false` on each new status
//! document, `update_time == read` on each business document written or, for a rejection,
//! verified). A conflict fails the commit at once with nothing written and the batch is
//! decided again on fresh reads. Nothing is ever locked between a read and a commit, so a
//! crashed instance or a lost answer strands nothing (docs/scale-out.md).
//!
//! Inside one instance, operations that read the same documents are queued on a *lane* and
//! folded into one commit (group commit), and lanes that share a document take a striped
//! lock first so one instance never conflicts with itself. Across instances, hot items are
//! spread over stock shards (`shop::stock`) so instances write different documents.

pub mod cache;
pub mod driver;
pub mod fold;
mod known;
pub mod lease;
pub mod workflow;

use crate::engine::record::{Outcome, StatusRecord};
use crate::engine::DeliveryMeta;
use crate::engine::{DocRef, OpError, Operation, Snapshot, Write};
use crate::metrics::Metrics;
use driver::{Driver, DriverError};
use firestore::gcloud_sdk::tonic::Code;
use firestore::{FirestoreDb, FirestoreInstant};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::Instrument;

/// How the guard talks to Firestore.
#[derive(Clone, Debug)]
pub struct GuardConfig {
    /// Collection of status documents.
    pub operations: String,
    /// How long status documents are kept (`expire_at`).
    pub retention: Duration,
    /// Transaction attempts on contention before giving up with [`GuardError::Unavailable`].
    pub max_attempts: u32,
    /// Deadline of each Firestore call.
    pub call_timeout: Duration,
    /// Most operations in one commit (group commit).
    pub batch_max: usize,
    /// Byte budget of the in-process cache of completed outcomes (see [`cache`]); 0 disables it.
    pub replay_cache_bytes: u64,
    /// Commit from what this instance's own commits left, without reading, where that is
    /// safe (see [`known`]).
    pub commit_from_known: bool,
}

/// Why the guard could not produce an [`Outcome`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    /// The key was used before with a different payload; nothing was changed.
    #[error("operation {operation_id} was first seen with a different payload")]
    KeyReused {
        /// The operation ID.
        operation_id: String,
    },
    /// Firestore did not answer, contention was not resolved, or a commit's outcome is unknown.
    /// Nothing is half-written; a redelivery settles it.
    #[error("outcome unknown: {0}")]
    Unavailable(Unavailable),
    /// The operation could not read or write its documents (see [`OpError`]).
    #[error("{0}")]
    Operation(String),
}

impl From<OpError> for GuardError {
    fn from(e: OpError) -> Self {
        GuardError::Operation(e.to_string())
    }
}

/// Why an outcome is unknown. Keeps the Firestore call's gRPC code, so a caller (and a log
/// reader) can tell a conflict that never settled from a call that went unanswered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// A Firestore call failed or went unanswered.
    #[error(transparent)]
    Firestore(#[from] DriverError),
    /// Conflicts or failed reads did not settle within the configured attempts.
    #[error("not settled after {attempts} attempts: {}", .last.as_ref().map_or("too many rounds of reads".to_string(), |e| e.to_string()))]
    NotSettled {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error; `None` when operations kept asking for more reads.
        last: Option<DriverError>,
    },
    /// A placeholder inside one fold: the decision waits on documents read in another round
    /// (never answered; the batch is folded again, or gives up with `NotSettled`).
    #[error("decided on a later read")]
    ReadMore,
    /// The batch's task ended without answering (it panicked).
    #[error("the guard task ended")]
    TaskEnded,
    /// A workflow step's outside call failed; its lease was released.
    #[error("step {step}: outside call failed: {message}")]
    Call {
        /// The step.
        step: &'static str,
        /// What the outside system said.
        message: String,
    },
}

impl Unavailable {
    /// The gRPC code Firestore answered with, when it answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Unavailable::Firestore(e) | Unavailable::NotSettled { last: Some(e), .. } => e.code,
            _ => None,
        }
    }
}

impl From<DriverError> for GuardError {
    fn from(e: DriverError) -> Self {
        GuardError::Unavailable(Unavailable::Firestore(e))
    }
}

/// What the guard answers for one operation.
pub type Reply = Result<Outcome, GuardError>;

struct Pending {
    op: Arc<dyn Operation>,
    operation_id: String,
    delivery: DeliveryMeta,
    reply: oneshot::Sender<Reply>,
    /// The request's span, parent of the batch's trace spans (`Span::none()` when not tracing).
    span: tracing::Span,
}

const STRIPES: usize = 1024;

struct Inner {
    driver: Driver,
    cfg: GuardConfig,
    before_commit: Mutex<Option<CommitHook>>,
    lanes: Mutex<HashMap<Vec<DocRef>, VecDeque<Pending>>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    cache: cache::ReplayCache,
    known: known::Known,
    metrics: Arc<Metrics>,
}

/// Runs operations exactly once in effect. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

/// Operation ID of `op`: hex sha256 of `kind:key`.
pub fn operation_id(op: &dyn Operation) -> String {
    crate::engine::hashed_id(op.kind(), op.key())
}

impl Guard {
    /// A guard over `db`.
    pub fn new(db: FirestoreDb, cfg: GuardConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                driver: Driver::new(db, cfg.call_timeout),
                before_commit: Mutex::new(None),
                cache: cache::ReplayCache::new(cfg.replay_cache_bytes),
                known: known::Known::default(),
                metrics: Arc::new(Metrics::new()),
                cfg,
                lanes: Mutex::new(HashMap::new()),
                stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            }),
        }
    }

    /// The database this guard writes to.
    pub fn db(&self) -> &FirestoreDb {
        self.inner.driver.db()
    }

    /// The Firestore calls the guard makes, for the few writes outside an operation that
    /// need the same preconditions and error codes (the redrive's claim on a dead letter).
    pub fn driver(&self) -> &Driver {
        &self.inner.driver
    }

    /// The guard's configuration.
    pub fn config(&self) -> &GuardConfig {
        &self.inner.cfg
    }

    /// The `once_*` series this guard and the handlers using it record.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The cache of completed outcomes, so tests and diagnostics can see it stays bounded.
    pub fn replay_cache(&self) -> &cache::ReplayCache {
        &self.inner.cache
    }

    /// Run `op` exactly once in effect and return its outcome, first or replayed.
    ///
    /// The work runs on a background task: if the caller stops waiting (a deadline), the
    /// batch still finishes or fails cleanly; it is never cut between reads and commit.
    pub async fn run(&self, op: Arc<dyn Operation>, delivery: DeliveryMeta) -> Reply {
        let operation_id = operation_id(op.as_ref());
        // A committed status document never changes, so this instance's copy answers a
        // redelivery without Firestore; the fingerprint is checked exactly as in a batch.
        if let Some(record) = self.inner.cache.get(&operation_id) {
            return if record.fingerprint == op.fingerprint().to_hex() {
                Ok(Outcome {
                    operation_id,
                    replayed: true,
                    record,
                    from_cache: true,
                })
            } else {
                Err(GuardError::KeyReused { operation_id })
            };
        }
        let mut lane: Vec<DocRef> = op.reads();
        lane.sort();
        lane.dedup();
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            op,
            operation_id,
            delivery,
            reply,
            span: if crate::tracing_otel::active() {
                tracing::Span::current()
            } else {
                tracing::Span::none()
            },
        };
        let start_leader = {
            let mut lanes = lock(&self.inner.lanes);
            match lanes.get_mut(&lane) {
                Some(q) => {
                    q.push_back(pending);
                    false
                }
                None => {
                    lanes.insert(lane.clone(), VecDeque::from([pending]));
                    true
                }
            }
        };
        if start_leader {
            tokio::spawn(lead(self.inner.clone(), lane));
        }
        rx.await
            .unwrap_or(Err(GuardError::Unavailable(Unavailable::TaskEnded)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes a lane whose leader died by panic, so its waiters fail fast instead of hanging.
struct LaneCleanup {
    inner: Arc<Inner>,
    lane: Vec<DocRef>,
}

impl Drop for LaneCleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(&self.inner.lanes).remove(&self.lane);
        }
    }
}

fn stripe_of(doc: &DocRef) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    doc.hash(&mut h);
    (h.finish() as usize) % STRIPES
}

/// Drain one lane: take up to `batch_max` waiting operations, run them in one commit,
/// repeat until the lane is empty.
async fn lead(inner: Arc<Inner>, lane: Vec<DocRef>) {
    let _cleanup = LaneCleanup {
        inner: inner.clone(),
        lane: lane.clone(),
    };
    let mut stripes: Vec<usize> = lane.iter().map(stripe_of).collect();
    stripes.sort_unstable();
    stripes.dedup();
    loop {
        let batch: Vec<Pending> = {
            let mut lanes = lock(&inner.lanes);
            let Some(q) = lanes.get_mut(&lane) else {
                return;
            };
            // A caller that stopped waiting has already answered 503; skip its work.
            q.retain(|p| !p.reply.is_closed());
            if q.is_empty() {
                lanes.remove(&lane);
                return;
            }
            let n = q.len().min(inner.cfg.batch_max);
            q.drain(..n).collect()
        };
        // Lanes sharing a document serialize here, in stripe order, so they never deadlock.
        let mut held = Vec::with_capacity(stripes.len());
        for &s in &stripes {
            held.push(inner.stripes[s].lock().await);
        }
        inner.metrics.batch(batch.len());
        let replies = inner.run_batch(&batch).instrument(batch_span(&batch)).await;
        drop(held);
        // Every `Ok` here is a record Firestore holds: committed by this batch, or read from a
        // committed status document. Unknown commit outcomes are errors and are never cached.
        for r in replies.iter().flatten() {
            inner.cache.insert(&r.record);
        }
        for (p, r) in batch.into_iter().zip(replies) {
            let _ = p.reply.send(r);
        }
    }
}

/// The trace span of one batch: a child of its first request's span, linked from the others
/// that were folded into the same commit.
fn batch_span(batch: &[Pending]) -> tracing::Span {
    let Some(first) = batch.first().filter(|_| crate::tracing_otel::active()) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(parent: &first.span, "guard.batch", batch_size = batch.len());
    for p in &batch[1..] {
        span.follows_from(&p.span);
    }
    span
}

/// Why one attempt did not settle the batch.
enum Attempt {
    /// Nothing was written; decide again on fresh reads after a back-off.
    Conflict(DriverError),
    /// A read failed or went unanswered: nothing was written; retry after a back-off.
    Failed(DriverError),
    /// Nothing was written; some operation needs more documents: read them and fold again
    /// at once (not contention, so no back-off).
    ReadMore,
}

/// Jittered back-off before attempt `attempt + 1`: short, because a refused precondition
/// fails at once (no lock wait), and jittered so instances that collided spread out.
fn backoff(attempt: u32) -> Duration {
    let cap = 8u64.saturating_mul(1 << attempt.min(7)).min(1000);
    Duration::from_millis(cap / 4 + fastrand::u64(0..=cap * 3 / 4))
}

/// A one-shot hook run between the fold and the commit (tests force conflicts with it).
pub type CommitHook =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// Most rounds of extra reads one batch may ask for (an order gathers once per line).
const MAX_READ_ROUNDS: u32 = 8;

impl Inner {
    fn status_ref(&self, operation_id: &str) -> DocRef {
        DocRef::new(&self.cfg.operations, operation_id)
    }

    async fn run_batch(&self, batch: &[Pending]) -> Vec<Reply> {
        let mut extra: Vec<DocRef> = Vec::new();
        let mut attempt = 0;
        let mut rounds = 0;
        let mut conflicts = 0;
        loop {
            let last = match self.attempt(batch, &mut extra).await {
                Ok(replies) => return replies,
                Err(Attempt::ReadMore) if rounds < MAX_READ_ROUNDS => {
                    rounds += 1;
                    continue;
                }
                Err(Attempt::ReadMore) => None,
                Err(Attempt::Conflict(e)) => {
                    self.metrics.retry(true);
                    conflicts += 1;
                    Some(e)
                }
                Err(Attempt::Failed(e)) => {
                    self.metrics.retry(false);
                    Some(e)
                }
            };
            attempt += 1;
            if attempt >= self.cfg.max_attempts {
                self.metrics.gave_up();
                let e = GuardError::Unavailable(Unavailable::NotSettled {
                    attempts: attempt,
                    last,
                });
                tracing::warn!(attempts = attempt, error = %e, "batch gave up");
                return batch.iter().map(|_| Err(e.clone())).collect();
            }
            if matches!(&last, Some(e) if e.is_conflict()) && matches!(conflicts, 2 | 5) {
                self.mark_contention(batch).await;
            }
            tracing::debug!(attempt, error = ?last.map(|e| e.to_string()), "batch retried on fresh reads");
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// Commit the batch's [`Operation::contention_marks`] alone (each must exist; nothing else
    /// is checked, they change no business value), so a writer that never reads meets a
    /// conflict and yields. Best effort: a failure is only logged.
    async fn mark_contention(&self, batch: &[Pending]) {
        let mut seen = HashSet::new();
        let marks: Vec<fold::Guarded> = batch
            .iter()
            .flat_map(|p| p.op.contention_marks())
            .filter(|w| seen.insert(w.doc.clone()))
            .map(|write| fold::Guarded::Write {
                write,
                precondition: fold::Precondition::Exists(true),
            })
            .collect();
        if marks.is_empty() {
            return;
        }
        self.known.forget(marks.iter().map(|w| w.doc()));
        let docs: Vec<String> = marks.iter().map(|w| w.doc().id.clone()).collect();
        match self.driver.commit(marks).await {
            Ok(_) => {
                self.metrics.contention_marked();
                tracing::info!(
                    operation_id = %batch.first().map_or("", |p| p.operation_id.as_str()),
                    batch = batch.len(),
                    docs = ?docs,
                    outcome = "contention_marked",
                    "refused repeatedly: marked the contended documents"
                )
            }
            Err(e) => tracing::debug!(error = %e, "contention mark not written"),
        }
    }

    /// Read everything `docs` names plus what the operations ask for after a first look.
    async fn read_all(
        &self,
        docs: Vec<DocRef>,
        now: FirestoreInstant,
        after: impl Fn(&Snapshot) -> Vec<DocRef>,
    ) -> Result<(Snapshot, fold::Versions), Attempt> {
        let read = self.driver.read(&docs).await.map_err(Attempt::Failed)?;
        let (first, mut versions) = fold::split(read);
        let mut snapshot = Snapshot::from_docs(now, first);
        let extra: Vec<DocRef> = after(&snapshot)
            .into_iter()
            .filter(|d| !versions.contains_key(d))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !extra.is_empty() {
            let more = self.driver.read(&extra).await.map_err(Attempt::Failed)?;
            let (more, more_versions) = fold::split(more);
            snapshot.extend(more);
            versions.extend(more_versions);
        }
        Ok((snapshot, versions))
    }

    /// One optimistic attempt over the whole batch: read outside any transaction, fold,
    /// commit once with preconditions. `Ok` carries a reply per operation; `Err` means
    /// nothing was written and the batch may run again.
    async fn attempt(
        &self,
        batch: &[Pending],
        extra: &mut Vec<DocRef>,
    ) -> Result<Vec<Reply>, Attempt> {
        let mut docs: Vec<DocRef> = Vec::new();
        let mut seen = HashSet::new();
        for p in batch {
            for d in std::iter::once(self.status_ref(&p.operation_id)).chain(p.op.reads()) {
                if seen.insert(d.clone()) {
                    docs.push(d);
                }
            }
        }
        docs.extend(extra.iter().filter(|d| seen.insert((*d).clone())).cloned());
        if extra.is_empty() && self.cfg.commit_from_known {
            if let Some(done) = self.attempt_known(batch, &docs).await {
                return done;
            }
        }
        let now = FirestoreInstant::now();
        let (snapshot, versions) = self
            .read_all(docs, now, |snap| {
                batch.iter().flat_map(|p| p.op.reads_after(snap)).collect()
            })
            .await?;
        let folded = self.fold(batch, snapshot, &versions, now);
        if !folded.more_reads.is_empty() {
            extra.extend(folded.more_reads);
            return Err(Attempt::ReadMore);
        }
        if folded.writes.is_empty() {
            return Ok(folded.replies);
        }
        self.commit(batch, folded, &versions, false).await
    }

    /// The batch committed straight from what this instance's own commits left
    /// ([`known`]), without reading: only when every document it would read is known, the
    /// fold needs nothing more, every operation commits, and every document the fold used
    /// carries a precondition in the commit (so the commit succeeds only if the record was
    /// still true: the same as a fresh read). `None`: not applicable, or refused (nothing
    /// written, the record of those documents forgotten); the caller reads as usual.
    async fn attempt_known(
        &self,
        batch: &[Pending],
        docs: &[DocRef],
    ) -> Option<Result<Vec<Reply>, Attempt>> {
        let status: HashSet<DocRef> = batch
            .iter()
            .map(|p| self.status_ref(&p.operation_id))
            .collect();
        let business: Vec<DocRef> = docs
            .iter()
            .filter(|d| !status.contains(*d))
            .cloned()
            .collect();
        let mut known = self.known.get_all(&business)?;
        // New operations: their status documents are taken as missing, which the commit's
        // `exists: false` checks.
        known.extend(
            status
                .into_iter()
                .map(|d| (d, (None, fold::Version::Missing))),
        );
        let now = FirestoreInstant::now();
        let versions: fold::Versions = known
            .iter()
            .map(|(d, (_, v))| (d.clone(), v.clone()))
            .collect();
        let snapshot = Snapshot::from_docs(now, known.into_iter().map(|(d, (f, _))| (d, f)));
        let after: Vec<DocRef> = batch
            .iter()
            .flat_map(|p| p.op.reads_after(&snapshot))
            .collect();
        if after.iter().any(|d| !versions.contains_key(d)) {
            return None;
        }
        let folded = self.fold(batch, snapshot, &versions, now);
        let guarded: HashSet<&DocRef> = folded.writes.iter().map(|w| w.doc()).collect();
        let usable = folded.more_reads.is_empty()
            && !folded.writes.is_empty()
            && folded.needs_commit.iter().all(|n| *n)
            && versions.keys().all(|d| guarded.contains(d));
        if !usable {
            return None;
        }
        match self.commit(batch, folded, &versions, true).await {
            Err(Attempt::Conflict(e)) => {
                self.metrics.commit_without_read(true);
                tracing::debug!(error = %e, "commit from known versions refused; reading");
                None
            }
            done => {
                self.metrics.commit_without_read(false);
                Some(done)
            }
        }
    }

    fn fold(
        &self,
        batch: &[Pending],
        snapshot: Snapshot,
        versions: &fold::Versions,
        now: FirestoreInstant,
    ) -> fold::Folded {
        let entries: Vec<fold::Entry<'_>> = batch
            .iter()
            .map(|p| fold::Entry {
                op: p.op.as_ref(),
                operation_id: &p.operation_id,
                delivery: &p.delivery,
            })
            .collect();
        fold::fold(
            &entries,
            snapshot,
            versions,
            &fold::FoldCtx {
                operations: &self.cfg.operations,
                retention: self.cfg.retention,
                now,
            },
        )
    }

    /// Commit a fold's writes and turn the answer into replies; records what the commit
    /// left in [`known`] (or forgets it when the commit failed or its outcome is unknown).
    /// `from_known`: the fold used the record, not a read. Only documents the fold read
    /// (`read`) are recorded: the next batch reads those again; a document only created
    /// (an order) is not.
    async fn commit(
        &self,
        batch: &[Pending],
        folded: fold::Folded,
        read: &fold::Versions,
        from_known: bool,
    ) -> Result<Vec<Reply>, Attempt> {
        let hook = lock(&self.before_commit).take();
        if let Some(hook) = hook {
            hook().await;
        }
        // Business documents written, with their place in the commit (its write results
        // come in the same order).
        let written: Vec<(usize, DocRef)> = folded
            .writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| match w {
                fold::Guarded::Write { write, .. }
                    if write.doc.collection != self.cfg.operations
                        && read.contains_key(&write.doc) =>
                {
                    Some((i, write.doc.clone()))
                }
                _ => None,
            })
            .collect();
        let committed = self.driver.commit(folded.writes).await;
        // A commit from the record refused only because a status document exists (a
        // redelivery decided elsewhere) says nothing about contention on the item.
        let contended = match &committed {
            Err(e) if from_known => e.is_conflict() && e.code != Some(Code::AlreadyExists),
            Err(e) => e.is_conflict(),
            Ok(_) => false,
        };
        // Once per commit: every operation of a lane read the same documents.
        if let Some((p, _)) = batch.iter().zip(&folded.needs_commit).find(|(_, n)| **n) {
            p.op.committed(contended);
        }
        let docs = || written.iter().map(|(_, d)| d);
        match committed {
            Ok(times) => {
                let snapshot = &folded.snapshot;
                let left: Vec<(DocRef, known::KnownDoc)> = written
                    .iter()
                    .filter_map(|(i, d)| {
                        let at = times.get(*i).cloned().flatten()?;
                        let fields = snapshot.fields(d).ok().flatten().cloned();
                        let version = match fields {
                            Some(_) => fold::Version::At(at),
                            None => fold::Version::Missing,
                        };
                        Some((d.clone(), (fields, version)))
                    })
                    .collect();
                if left.len() == written.len() {
                    self.known.record(left);
                } else {
                    self.known.forget(docs());
                }
                Ok(folded.replies)
            }
            Err(e) if e.is_conflict() => {
                self.known.forget(docs());
                Err(Attempt::Conflict(e))
            }
            Err(e) => {
                self.known.forget(docs());
                // No answer, or a refusal that is not a conflict: the commit may or may not
                // have been applied. Answer "unknown" for everything that depended on it; the
                // redelivery reads the status document.
                tracing::warn!(error = %e, "commit outcome unknown");
                Ok(folded
                    .replies
                    .into_iter()
                    .zip(folded.needs_commit)
                    .map(|(r, needed)| {
                        if needed {
                            Err(GuardError::from(e.clone()))
                        } else {
                            r
                        }
                    })
                    .collect())
            }
        }
    }

    /// One small read-modify-write outside the batching lanes (leases), done the same
    /// optimistic way: read `docs`, let `decide` choose the writes, commit them with
    /// preconditions on every document read (written or verified); retried on conflict.
    async fn transact<R>(
        &self,
        docs: &[DocRef],
        mut decide: impl FnMut(&Snapshot) -> Result<(Vec<Write>, R), GuardError>,
    ) -> Result<R, GuardError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (last, conflict) = match self.driver.read(docs).await {
                Err(e) => (e, false),
                Ok(read) => {
                    let (snap, versions) = fold::split(read);
                    let snapshot = Snapshot::from_docs(FirestoreInstant::now(), snap);
                    let (writes, r) = decide(&snapshot)?;
                    if writes.is_empty() {
                        return Ok(r);
                    }
                    let guarded = fold::guard(writes, &versions, |_| true);
                    // Whatever happens, these documents changed (or may have) outside the
                    // batch path's record.
                    self.known.forget(guarded.iter().map(|w| w.doc()));
                    match self.driver.commit(guarded).await {
                        Ok(_) => return Ok(r),
                        Err(e) if e.is_conflict() => (e, true),
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            self.metrics.retry(conflict);
            if attempt >= self.cfg.max_attempts {
                self.metrics.gave_up();
                return Err(GuardError::Unavailable(Unavailable::NotSettled {
                    attempts: attempt,
                    last: Some(last),
                }));
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
}

impl Guard {
    /// The status document of `operation_id`, read outside any transaction. Safe because a
    /// committed status document never changes; used for status queries and to skip work
    /// that is already done.
    pub async fn lookup(&self, operation_id: &str) -> Result<Option<StatusRecord>, GuardError> {
        let doc = self.inner.status_ref(operation_id);
        let snapshot = self.read_docs(std::slice::from_ref(&doc)).await?;
        Ok(snapshot.get::<StatusRecord>(&doc)?)
    }

    /// Read any documents outside a transaction (status queries).
    pub async fn read_docs(&self, docs: &[DocRef]) -> Result<Snapshot, GuardError> {
        let read = self
            .inner
            .driver
            .read(docs)
            .await
            .map_err(GuardError::from)?;
        let (docs, _) = fold::split(read);
        Ok(Snapshot::from_docs(FirestoreInstant::now(), docs))
    }

    /// Create `doc` unless it exists; `Ok(false)` when it already did. For records that must
    /// be written once per delivery (dead letters) without a status document of their own.
    pub async fn create_once<T: serde::Serialize>(
        &self,
        doc: DocRef,
        value: &T,
    ) -> Result<bool, GuardError> {
        let write = fold::Guarded::Write {
            write: Write::create(doc, value)?,
            precondition: fold::Precondition::Exists(false),
        };
        match self.inner.driver.commit(vec![write]).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.code, Some(Code::AlreadyExists | Code::FailedPrecondition)) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Run a small read-modify-write (see `lease`).
    pub(crate) async fn transact<R>(
        &self,
        docs: &[DocRef],
        decide: impl FnMut(&Snapshot) -> Result<(Vec<Write>, R), GuardError>,
    ) -> Result<R, GuardError> {
        self.inner.transact(docs, decide).await
    }

    /// Where status documents live.
    pub fn status_ref(&self, operation_id: &str) -> DocRef {
        self.inner.status_ref(operation_id)
    }

    /// Test seam: run `hook` once, between the next batch's fold and its commit, so a test can
    /// change a document the batch read and prove the conflict is retried on fresh reads.
    pub fn before_next_commit(&self, hook: CommitHook) {
        *lock(&self.inner.before_commit) = Some(hook);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for a in 1..20 {
            let d = backoff(a);
            assert!(d <= Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(2));
        }
    }
}
