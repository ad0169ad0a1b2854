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
//! lock first so one instance never conflicts with itself. Across instances, a kind spreads
//! hot data over shard documents (told how its commits fare, `Operation::committed`) so
//! instances write different documents.

mod batch;
pub mod budget;
pub mod cache;
pub mod driver;
mod error;
pub mod fold;
mod known;
pub mod lease;
pub mod workflow;

pub use budget::Budget;
pub use error::{DriverError, GuardError, Reply, Unavailable};

use crate::engine::record::{Outcome, StatusRecord};
use crate::engine::DeliveryMeta;
use crate::engine::{DocRef, Operation, Snapshot, Write};
use crate::metrics::Metrics;
use driver::Driver;
use firestore::gcloud_sdk::tonic::Code;
use firestore::{FirestoreDb, FirestoreInstant};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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
    /// Most writes in one commit: Firestore refuses a commit of more than 500.
    pub max_writes: usize,
    /// The commit budget of each document (see [`budget`]); `None`: unlimited, as the
    /// emulator allows.
    pub budget: Option<Budget>,
    /// Byte budget of the in-process cache of completed outcomes (see [`cache`]); 0 disables it.
    pub replay_cache_bytes: u64,
    /// Commit from what this instance's own commits left, without reading, where that is
    /// safe (a record of the versions its own commits answered, checked by the same
    /// preconditions as a read).
    pub commit_from_known: bool,
}

struct Pending {
    op: Arc<dyn Operation>,
    operation_id: String,
    delivery: DeliveryMeta,
    reply: oneshot::Sender<Reply>,
    /// The request's span, parent of the batch's trace spans (`Span::none()` when not tracing).
    span: tracing::Span,
    /// How many times its batch went back to the lane for a document's budget.
    throttled: u32,
    /// When it was queued.
    queued: Instant,
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
    budget: budget::Buckets,
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
                budget: budget::Buckets::new(cfg.budget),
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
        let lane = lane_of(op.as_ref());
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            op,
            operation_id,
            delivery,
            reply,
            throttled: 0,
            queued: Instant::now(),
            span: if crate::tracing_otel::active() {
                tracing::Span::current()
            } else {
                tracing::Span::none()
            },
        };
        let start_leader = enqueue(&mut lock(&self.inner.lanes), lane.clone(), pending);
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

/// The documents `op` reads, sorted: its lane.
fn lane_of(op: &dyn Operation) -> Vec<DocRef> {
    let mut lane = op.reads();
    lane.sort();
    lane.dedup();
    lane
}

/// Queue `p` on `lane`; true when the lane is new and needs a leader.
fn enqueue(
    lanes: &mut HashMap<Vec<DocRef>, VecDeque<Pending>>,
    lane: Vec<DocRef>,
    p: Pending,
) -> bool {
    match lanes.get_mut(&lane) {
        Some(q) => {
            q.push_back(p);
            false
        }
        None => {
            lanes.insert(lane, VecDeque::from([p]));
            true
        }
    }
}

/// What a leader knows about its lane when it takes a batch.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Load {
    /// Operations left queued after the batch was taken.
    pub(crate) waiting: usize,
    /// The lane waited for its documents' budget before taking the batch.
    pub(crate) throttled: bool,
    /// The batch took as many operations as one commit may hold.
    pub(crate) full: bool,
}

/// Drain one lane: wait for its documents' budget (what arrives meanwhile joins the batch),
/// take up to `batch_max` waiting operations, run them in one commit (those that did not fit
/// in its writes go back to the front), repeat until the lane is empty.
fn lead(inner: Arc<Inner>, lane: Vec<DocRef>) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(lead_lane(inner, lane))
}

async fn lead_lane(inner: Arc<Inner>, lane: Vec<DocRef>) {
    let _cleanup = LaneCleanup {
        inner: inner.clone(),
        lane: lane.clone(),
    };
    let mut stripes: Vec<usize> = lane.iter().map(stripe_of).collect();
    stripes.sort_unstable();
    stripes.dedup();
    let lane_docs: Vec<&DocRef> = lane.iter().collect();
    // How long the last batch was told to wait for a document outside the lane (a refill's
    // main document): the lane's own budget does not know it.
    let mut held_back = Duration::ZERO;
    loop {
        let wait = inner.budget.wait(&lane_docs).max(held_back);
        held_back = Duration::ZERO;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let mut new_lanes = Vec::new();
        let taken = {
            let mut lanes = lock(&inner.lanes);
            let Some(q) = lanes.get_mut(&lane) else {
                return;
            };
            // A caller that stopped waiting has already answered 503; skip its work.
            q.retain(|p| !p.reply.is_closed());
            // An operation whose kind moved it to other documents since it queued (a hot
            // document spread over more shards) goes to its new lane.
            let mut moved = Vec::new();
            let mut stay = VecDeque::with_capacity(q.len());
            for p in q.drain(..) {
                p.op.replan();
                let now = lane_of(p.op.as_ref());
                if now == lane {
                    stay.push_back(p);
                } else {
                    moved.push((now, p));
                }
            }
            *q = stay;
            let batch = if q.is_empty() {
                None
            } else {
                let n = q.len().min(inner.cfg.batch_max);
                let batch: Vec<Pending> = q.drain(..n).collect();
                let load = Load {
                    waiting: q.len(),
                    throttled: !wait.is_zero(),
                    full: n == inner.cfg.batch_max,
                };
                Some((batch, load))
            };
            if batch.is_none() {
                lanes.remove(&lane);
            }
            for (to, p) in moved {
                if enqueue(&mut lanes, to.clone(), p) {
                    new_lanes.push(to);
                }
            }
            batch
        };
        for l in new_lanes {
            tokio::spawn(lead(inner.clone(), l));
        }
        let Some((mut batch, load)) = taken else {
            return;
        };
        // Lanes sharing a document serialize here, in stripe order, so they never deadlock.
        let mut held = Vec::with_capacity(stripes.len());
        for &s in &stripes {
            held.push(inner.stripes[s].lock().await);
        }
        let end = inner
            .run_batch(&batch, &load)
            .instrument(batch_span(&batch))
            .await;
        drop(held);
        let replies = end.replies;
        let mut rest = batch.split_off(replies.len().min(batch.len()));
        if let Some(wait) = end.throttled {
            held_back = wait;
            // Held back, nothing of it written: an operation whose caller stopped waiting (its
            // deadline answered 503) leaves the lane, and one held back for longer than any
            // caller waits is answered as not settled (503 and Retry-After), never queued for
            // ever.
            let (keep, give_up): (Vec<Pending>, Vec<Pending>) = rest
                .into_iter()
                .filter(|p| !p.reply.is_closed())
                .map(|mut p| {
                    p.throttled += 1;
                    p
                })
                .partition(|p| p.queued.elapsed() <= batch::MAX_HELD_BACK);
            rest = keep;
            for p in give_up {
                inner.metrics.gave_up();
                let e = GuardError::Unavailable(Unavailable::NotSettled {
                    attempts: p.throttled,
                    last: None,
                });
                tracing::warn!(operation_id = %p.operation_id, error = %e, "held back by the write budget too often");
                let _ = p.reply.send(Err(e));
            }
        } else {
            inner.metrics.batch(replies.len());
        }
        // What the commit could not hold waits at the front of the lane for the next one.
        if !rest.is_empty() {
            let mut lanes = lock(&inner.lanes);
            let q = lanes.entry(lane.clone()).or_default();
            for p in rest.into_iter().rev() {
                q.push_front(p);
            }
        }
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

/// A one-shot hook run between the fold and the commit (tests force conflicts with it).
pub type CommitHook =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

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
