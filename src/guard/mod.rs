//! The guard: one Firestore transaction per operation (or per batch of operations on the same
//! documents) that reads the status document and the operation's documents, decides, and
//! commits the business writes together with the new status document.
//!
//! Guarantee: an operation's writes are committed at most once, and only together with its
//! status document; every later delivery finds that document and replays its stored response.
//! What the guard cannot promise: effects outside Firestore (see the multi-step tasks).
//!
//! Inside one instance, operations that read the same documents are queued on a *lane* and
//! folded into one transaction (group commit), and lanes that share a document take a striped
//! lock first. Firestore transactions alone keep several instances correct; the lanes only stop
//! one instance's transactions from fighting over a hot document (the emulator waits about
//! 2 s per lock conflict, production Firestore advises about one write per second per document).

pub mod cache;
pub mod key;
pub mod lease;
pub mod record;

use crate::delivery::DeliveryMeta;
use crate::metrics::Metrics;
use crate::ops::{Decision, DocRef, Fields, OpError, Operation, Snapshot, Write, WriteKind};
use crate::tracing_otel;
use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore::gcloud_sdk::tonic::Code;
use firestore::{FirestoreDb, FirestoreInstant};
use record::{RecordInput, StatusRecord};
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
    /// Most operations in one transaction.
    pub batch_max: usize,
    /// Byte budget of the in-process cache of completed outcomes (see [`cache`]); 0 disables it.
    pub replay_cache_bytes: u64,
}

/// The result of guarding one operation.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Hex sha256 of `kind:key`; the status document's ID.
    pub operation_id: String,
    /// True when an earlier delivery decided it and this one changed nothing.
    pub replayed: bool,
    /// True when the replay came from this instance's cache, without Firestore (metrics tell
    /// the two replays apart).
    pub from_cache: bool,
    /// The status document.
    pub record: StatusRecord,
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
    Unavailable(String),
    /// The operation could not read or write its documents (see [`OpError`]).
    #[error("{0}")]
    Operation(String),
}

impl From<OpError> for GuardError {
    fn from(e: OpError) -> Self {
        GuardError::Operation(e.to_string())
    }
}

type Reply = Result<Outcome, GuardError>;

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
    db: FirestoreDb,
    cfg: GuardConfig,
    lanes: Mutex<HashMap<Vec<DocRef>, VecDeque<Pending>>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    cache: cache::ReplayCache,
    metrics: Arc<Metrics>,
}

/// Runs operations exactly once in effect. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

/// Operation ID of `op`: hex sha256 of `kind:key`.
pub fn operation_id(op: &dyn Operation) -> String {
    key::hashed_id(op.kind(), op.key())
}

impl Guard {
    /// A guard over `db`.
    pub fn new(db: FirestoreDb, cfg: GuardConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                cache: cache::ReplayCache::new(cfg.replay_cache_bytes),
                metrics: Arc::new(Metrics::new()),
                cfg,
                lanes: Mutex::new(HashMap::new()),
                stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            }),
        }
    }

    /// The database this guard writes to.
    pub fn db(&self) -> &FirestoreDb {
        &self.inner.db
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
    /// transaction still finishes or fails cleanly; it is never cut between reads and commit.
    pub async fn run(&self, op: Arc<dyn Operation>, delivery: DeliveryMeta) -> Reply {
        let operation_id = operation_id(op.as_ref());
        // A committed status document never changes, so this instance's copy answers a
        // redelivery without Firestore; the fingerprint is checked exactly as in a transaction.
        if let Some(record) = self.inner.cache.get(&operation_id) {
            return if record.fingerprint == op.fingerprint().to_hex() {
                Ok(Outcome {
                    operation_id,
                    replayed: true,
                    from_cache: true,
                    record,
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
            span: if tracing_otel::active() {
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
            .unwrap_or_else(|_| Err(GuardError::Unavailable("the guard task ended".into())))
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

/// Drain one lane: take up to `batch_max` waiting operations, run them in one transaction,
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
/// that were folded into the same transaction.
fn batch_span(batch: &[Pending]) -> tracing::Span {
    let Some(first) = batch.first().filter(|_| tracing_otel::active()) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(parent: &first.span, "guard.batch", batch_size = batch.len());
    for p in &batch[1..] {
        span.follows_from(&p.span);
    }
    span
}

/// Why one transaction attempt did not finish.
enum Attempt {
    /// Nothing was committed; the attempt may be repeated (`retry` is the aborted transaction).
    Retry { why: String, retry: Option<Vec<u8>> },
}

fn backoff(attempt: u32) -> Duration {
    let cap = 20u64.saturating_mul(1 << attempt.min(6)).min(1000);
    Duration::from_millis(cap / 2 + fastrand::u64(0..=cap / 2))
}

/// The Firestore RPC behind a [`Inner::call`] label, for its trace span.
fn rpc_method(what: &str) -> &'static str {
    match what {
        "read" => "BatchGetDocuments",
        "begin" => "BeginTransaction",
        "rollback" => "Rollback",
        "create" => "Commit",
        _ => "Call",
    }
}

fn code_of(e: &firestore::gcloud_sdk::tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

impl Inner {
    fn status_ref(&self, operation_id: &str) -> DocRef {
        DocRef::new(&self.cfg.operations, operation_id)
    }

    async fn run_batch(&self, batch: &[Pending]) -> Vec<Reply> {
        let mut retry = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(batch, retry.take()).await {
                Ok(replies) => return replies,
                Err(Attempt::Retry { why, retry: r }) => {
                    if attempt >= self.cfg.max_attempts {
                        self.metrics.gave_up();
                        tracing::warn!(attempts = attempt, error = %why, "transaction gave up");
                        let e = GuardError::Unavailable(format!(
                            "transaction not settled after {attempt} attempts: {why}"
                        ));
                        return batch.iter().map(|_| Err(e.clone())).collect();
                    }
                    tracing::debug!(attempt, error = %why, "transaction retried");
                    self.metrics.retry(r.is_some());
                    retry = r;
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }

    async fn call<T, F>(&self, what: &str, fut: F) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, firestore::gcloud_sdk::tonic::Status>>,
    {
        let timed = tokio::time::timeout(self.cfg.call_timeout, fut);
        match timed
            .instrument(tracing_otel::firestore_span(rpc_method(what)))
            .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(status)) => Err(format!("{what}: {}", code_of(&status))),
            Err(_) => Err(format!(
                "{what}: no answer within {} ms",
                self.cfg.call_timeout.as_millis()
            )),
        }
    }

    /// Release a transaction's locks. Best effort: the server expires it anyway.
    async fn rollback(&self, tx: Vec<u8>) {
        let req = pb::RollbackRequest {
            database: self.db.get_database_path().clone(),
            transaction: tx,
            ..Default::default()
        };
        let mut client = self.db.client().get();
        if let Err(e) = self.call("rollback", client.rollback(req)).await {
            tracing::debug!(error = %e, "rollback failed");
        }
    }

    /// Read `docs` in one `BatchGetDocuments`, inside `tx` when given.
    async fn read(
        &self,
        tx: Option<&[u8]>,
        docs: &[DocRef],
    ) -> Result<HashMap<DocRef, Option<Fields>>, String> {
        let selector = tx
            .map(|t| pb::batch_get_documents_request::ConsistencySelector::Transaction(t.to_vec()));
        self.read_with(selector, docs).await.1
    }

    /// Start a read-write transaction with the read itself (`new_transaction`), saving the
    /// `BeginTransaction` round trip: one RPC fewer per batch, less CPU and latency per order.
    /// The transaction ID comes back even when the read fails, so it can be released.
    async fn begin_read(
        &self,
        retry: Option<Vec<u8>>,
        docs: &[DocRef],
    ) -> (
        Option<Vec<u8>>,
        Result<HashMap<DocRef, Option<Fields>>, String>,
    ) {
        let options = pb::TransactionOptions {
            mode: Some(pb::transaction_options::Mode::ReadWrite(
                pb::transaction_options::ReadWrite {
                    retry_transaction: retry.unwrap_or_default(),
                    ..Default::default()
                },
            )),
        };
        let selector =
            pb::batch_get_documents_request::ConsistencySelector::NewTransaction(options);
        match self.read_with(Some(selector), docs).await {
            (None, Ok(_)) => (None, Err("read: no transaction was started".into())),
            other => other,
        }
    }

    async fn read_with(
        &self,
        selector: Option<pb::batch_get_documents_request::ConsistencySelector>,
        docs: &[DocRef],
    ) -> (
        Option<Vec<u8>>,
        Result<HashMap<DocRef, Option<Fields>>, String>,
    ) {
        let root = self.db.get_documents_path();
        let by_path: HashMap<String, &DocRef> =
            docs.iter().map(|d| (d.full_path(root), d)).collect();
        let req = pb::BatchGetDocumentsRequest {
            database: self.db.get_database_path().clone(),
            documents: by_path.keys().cloned().collect(),
            consistency_selector: selector,
            ..Default::default()
        };
        let mut client = self.db.client().get();
        let mut tx: Option<Vec<u8>> = None;
        let collect = async {
            let mut stream = client.batch_get_documents(req).await?.into_inner();
            let mut out = HashMap::with_capacity(docs.len());
            while let Some(msg) = stream.message().await? {
                if !msg.transaction.is_empty() {
                    tx = Some(msg.transaction);
                }
                match msg.result {
                    Some(pb::batch_get_documents_response::Result::Found(d)) => {
                        if let Some(r) = by_path.get(&d.name) {
                            out.insert((*r).clone(), Some(d.fields));
                        }
                    }
                    Some(pb::batch_get_documents_response::Result::Missing(name)) => {
                        if let Some(r) = by_path.get(&name) {
                            out.insert((*r).clone(), None);
                        }
                    }
                    None => {}
                }
            }
            Ok(out)
        };
        let out = self.call("read", collect).await.and_then(|out| {
            if out.len() != by_path.len() {
                return Err(format!(
                    "read: {} of {} documents answered",
                    out.len(),
                    by_path.len()
                ));
            }
            Ok(out)
        });
        (tx, out)
    }

    fn to_pb(&self, w: Write) -> pb::Write {
        let name = w.doc.full_path(self.db.get_documents_path());
        let doc = |fields| pb::Document {
            name: name.clone(),
            fields,
            ..Default::default()
        };
        let exists = |e| {
            Some(pb::Precondition {
                condition_type: Some(pb::precondition::ConditionType::Exists(e)),
            })
        };
        match w.kind {
            WriteKind::Create(f) => pb::Write {
                operation: Some(pb::write::Operation::Update(doc(f))),
                current_document: exists(false),
                ..Default::default()
            },
            WriteKind::Set(f) => pb::Write {
                operation: Some(pb::write::Operation::Update(doc(f))),
                ..Default::default()
            },
            WriteKind::Update(f) => {
                let field_paths = f.keys().map(|k| field_path(k)).collect();
                pb::Write {
                    operation: Some(pb::write::Operation::Update(doc(f))),
                    update_mask: Some(pb::DocumentMask { field_paths }),
                    current_document: exists(true),
                    ..Default::default()
                }
            }
            WriteKind::Delete => pb::Write {
                operation: Some(pb::write::Operation::Delete(name.clone())),
                ..Default::default()
            },
        }
    }

    /// One transaction over the whole batch. `Ok` carries a reply per operation;
    /// `Err` means nothing was committed and the batch may run again.
    async fn attempt(
        &self,
        batch: &[Pending],
        retry: Option<Vec<u8>>,
    ) -> Result<Vec<Reply>, Attempt> {
        // Every read before any write: the status documents and the operations' documents,
        // read by the call that starts the transaction.
        let mut docs: Vec<DocRef> = Vec::new();
        let mut seen = HashSet::new();
        for p in batch {
            for d in std::iter::once(self.status_ref(&p.operation_id)).chain(p.op.reads()) {
                if seen.insert(d.clone()) {
                    docs.push(d);
                }
            }
        }
        let (tx, read) = match self.begin_read(retry, &docs).await {
            (Some(tx), Ok(r)) => (tx, r),
            (tx, result) => {
                if let Some(tx) = tx {
                    self.rollback(tx).await;
                }
                let why = result.err().unwrap_or_default();
                return Err(Attempt::Retry { why, retry: None });
            }
        };
        let now = FirestoreInstant::now();
        let mut snapshot = Snapshot::from_docs(now, read);
        // Second round: documents named by what the first round found, still before any write.
        let mut extra: Vec<DocRef> = Vec::new();
        for p in batch {
            for d in p.op.reads_after(&snapshot) {
                if !snapshot.has(&d) && seen.insert(d.clone()) {
                    extra.push(d);
                }
            }
        }
        if !extra.is_empty() {
            match self.read(Some(tx.as_slice()), &extra).await {
                Ok(r) => snapshot.extend(r),
                Err(why) => {
                    self.rollback(tx).await;
                    return Err(Attempt::Retry { why, retry: None });
                }
            }
        }

        // Decide each operation in order on the evolving snapshot.
        let mut writes: Vec<pb::Write> = Vec::new();
        let mut decided: HashMap<&str, StatusRecord> = HashMap::new();
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        let mut needs_commit: Vec<bool> = Vec::with_capacity(batch.len());
        for p in batch {
            let fingerprint = p.op.fingerprint().to_hex();
            let status_ref = self.status_ref(&p.operation_id);
            let (existing, in_batch) = match decided.get(p.operation_id.as_str()) {
                Some(r) => (Some(r.clone()), true),
                None => match snapshot.get::<StatusRecord>(&status_ref) {
                    Ok(r) => (r, false),
                    Err(e) => {
                        replies.push(Err(e.into()));
                        needs_commit.push(false);
                        continue;
                    }
                },
            };
            if let Some(record) = existing {
                needs_commit.push(in_batch);
                replies.push(if record.fingerprint == fingerprint {
                    Ok(Outcome {
                        operation_id: p.operation_id.clone(),
                        replayed: true,
                        from_cache: false,
                        record,
                    })
                } else {
                    Err(GuardError::KeyReused {
                        operation_id: p.operation_id.clone(),
                    })
                });
                continue;
            }
            let decision = match p.op.decide(&snapshot) {
                Ok(d) => d,
                Err(e) => {
                    replies.push(Err(e.into()));
                    needs_commit.push(false);
                    continue;
                }
            };
            let record = record::build(
                RecordInput {
                    operation_id: &p.operation_id,
                    kind: p.op.kind(),
                    key: p.op.key(),
                    fingerprint,
                    delivery: &p.delivery,
                    now,
                    retention: self.cfg.retention,
                },
                &decision,
            );
            let status_write = match Write::create(status_ref, &record) {
                Ok(w) => w,
                Err(e) => {
                    replies.push(Err(e.into()));
                    needs_commit.push(false);
                    continue;
                }
            };
            let op_writes = match decision {
                Decision::Apply { writes, .. } => writes,
                Decision::Reject(_) => Vec::new(),
            };
            for w in op_writes.into_iter().chain(std::iter::once(status_write)) {
                snapshot.apply(&w);
                writes.push(self.to_pb(w));
            }
            decided.insert(&p.operation_id, record.clone());
            replies.push(Ok(Outcome {
                operation_id: p.operation_id.clone(),
                replayed: false,
                from_cache: false,
                record,
            }));
            needs_commit.push(true);
        }

        if writes.is_empty() {
            self.rollback(tx).await;
            return Ok(replies);
        }
        let mut client = self.db.client().get();
        let commit = pb::CommitRequest {
            database: self.db.get_database_path().clone(),
            writes,
            transaction: tx.clone(),
            ..Default::default()
        };
        let committed = tokio::time::timeout(self.cfg.call_timeout, client.commit(commit))
            .instrument(tracing_otel::firestore_span("Commit"))
            .await;
        match committed {
            Ok(Ok(_)) => Ok(replies),
            Ok(Err(status)) if status.code() == Code::Aborted => Err(Attempt::Retry {
                why: format!("commit: {}", code_of(&status)),
                retry: Some(tx),
            }),
            failed => {
                // Not ABORTED: the commit may or may not have been applied. Answer "unknown"
                // for everything that depended on it; the redelivery reads the status document.
                let why = match failed {
                    Ok(Err(status)) => format!("commit: {}", code_of(&status)),
                    _ => format!(
                        "commit: no answer within {} ms",
                        self.cfg.call_timeout.as_millis()
                    ),
                };
                tracing::warn!(error = %why, "commit outcome unknown");
                self.rollback(tx).await;
                Ok(replies
                    .into_iter()
                    .zip(needs_commit)
                    .map(|(r, needed)| {
                        if needed {
                            Err(GuardError::Unavailable(why.clone()))
                        } else {
                            r
                        }
                    })
                    .collect())
            }
        }
    }
}

impl Inner {
    /// One small read-modify-write transaction outside the batching lanes (leases): read
    /// `docs`, let `decide` choose the writes, commit; retried on contention like the lanes.
    async fn transact<R>(
        &self,
        docs: &[DocRef],
        mut decide: impl FnMut(&Snapshot) -> Result<(Vec<Write>, R), GuardError>,
    ) -> Result<R, GuardError> {
        let mut retry: Option<Vec<u8>> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let why = match self.transact_once(docs, &mut decide, retry.take()).await {
                Ok(r) => return r,
                Err(Attempt::Retry { why, retry: r }) => {
                    self.metrics.retry(r.is_some());
                    retry = r;
                    why
                }
            };
            if attempt >= self.cfg.max_attempts {
                self.metrics.gave_up();
                return Err(GuardError::Unavailable(format!(
                    "transaction not settled after {attempt} attempts: {why}"
                )));
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    async fn transact_once<R>(
        &self,
        docs: &[DocRef],
        decide: &mut impl FnMut(&Snapshot) -> Result<(Vec<Write>, R), GuardError>,
        retry: Option<Vec<u8>>,
    ) -> Result<Result<R, GuardError>, Attempt> {
        let tx = self.begin(retry).await?;
        let read = match self.read(Some(tx.as_slice()), docs).await {
            Ok(r) => r,
            Err(why) => {
                self.rollback(tx).await;
                return Err(Attempt::Retry { why, retry: None });
            }
        };
        let snapshot = Snapshot::from_docs(FirestoreInstant::now(), read);
        let (writes, r) = match decide(&snapshot) {
            Ok(v) => v,
            Err(e) => {
                self.rollback(tx).await;
                return Ok(Err(e));
            }
        };
        if writes.is_empty() {
            self.rollback(tx).await;
            return Ok(Ok(r));
        }
        let commit = pb::CommitRequest {
            database: self.db.get_database_path().clone(),
            writes: writes.into_iter().map(|w| self.to_pb(w)).collect(),
            transaction: tx.clone(),
            ..Default::default()
        };
        let mut client = self.db.client().get();
        let committed = tokio::time::timeout(self.cfg.call_timeout, client.commit(commit))
            .instrument(tracing_otel::firestore_span("Commit"))
            .await;
        match committed {
            Ok(Ok(_)) => Ok(Ok(r)),
            Ok(Err(status)) if status.code() == Code::Aborted => Err(Attempt::Retry {
                why: format!("commit: {}", code_of(&status)),
                retry: Some(tx),
            }),
            Ok(Err(status)) => {
                self.rollback(tx).await;
                Ok(Err(GuardError::Unavailable(format!(
                    "commit: {}",
                    code_of(&status)
                ))))
            }
            Err(_) => {
                self.rollback(tx).await;
                Ok(Err(GuardError::Unavailable(
                    "commit: no answer in time".into(),
                )))
            }
        }
    }

    async fn begin(&self, retry: Option<Vec<u8>>) -> Result<Vec<u8>, Attempt> {
        let mut client = self.db.client().get();
        let begin = pb::BeginTransactionRequest {
            database: self.db.get_database_path().clone(),
            options: Some(pb::TransactionOptions {
                mode: Some(pb::transaction_options::Mode::ReadWrite(
                    pb::transaction_options::ReadWrite {
                        retry_transaction: retry.unwrap_or_default(),
                        ..Default::default()
                    },
                )),
            }),
            ..Default::default()
        };
        Ok(self
            .call("begin", client.begin_transaction(begin))
            .await
            .map_err(|why| Attempt::Retry { why, retry: None })?
            .into_inner()
            .transaction)
    }
}

impl Guard {
    /// The status document of `operation_id`, read outside any transaction. Safe because a
    /// committed status document never changes; used for status queries and to skip work
    /// that is already done.
    pub async fn lookup(&self, operation_id: &str) -> Result<Option<StatusRecord>, GuardError> {
        let doc = self.inner.status_ref(operation_id);
        let read = self
            .inner
            .read(None, std::slice::from_ref(&doc))
            .await
            .map_err(GuardError::Unavailable)?;
        let snapshot = Snapshot::from_docs(FirestoreInstant::now(), read);
        Ok(snapshot.get::<StatusRecord>(&doc)?)
    }

    /// Read any documents outside a transaction (status queries).
    pub async fn read_docs(&self, docs: &[DocRef]) -> Result<Snapshot, GuardError> {
        let read = self
            .inner
            .read(None, docs)
            .await
            .map_err(GuardError::Unavailable)?;
        Ok(Snapshot::from_docs(FirestoreInstant::now(), read))
    }

    /// Create `doc` unless it exists; `Ok(false)` when it already did. For records that must
    /// be written once per delivery (dead letters) without a status document of their own.
    pub async fn create_once<T: serde::Serialize>(
        &self,
        doc: DocRef,
        value: &T,
    ) -> Result<bool, GuardError> {
        let write = self.inner.to_pb(Write::create(doc, value)?);
        let commit = pb::CommitRequest {
            database: self.inner.db.get_database_path().clone(),
            writes: vec![write],
            ..Default::default()
        };
        let mut client = self.inner.db.client().get();
        match self.inner.call("create", client.commit(commit)).await {
            Ok(_) => Ok(true),
            Err(e) if e.contains("AlreadyExists") || e.contains("FailedPrecondition") => Ok(false),
            Err(e) => Err(GuardError::Unavailable(e)),
        }
    }

    /// Run a small read-modify-write transaction (see `lease`).
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
}

/// A top-level field name as a Firestore field path: simple names stay bare, others are
/// backquoted with `\` and `` ` `` escaped.
fn field_path(name: &str) -> String {
    let simple = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if simple {
        name.to_string()
    } else {
        format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_are_quoted_when_needed() {
        assert_eq!(field_path("stock"), "stock");
        assert_eq!(field_path("_a1"), "_a1");
        assert_eq!(field_path("1a"), "`1a`");
        assert_eq!(field_path("a.b"), "`a.b`");
        assert_eq!(field_path("a`b"), "`a\\`b`");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for a in 1..20 {
            let d = backoff(a);
            assert!(d <= Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(10));
        }
    }
}
