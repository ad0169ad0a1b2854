//! One batch of a lane, to its end: read (or commit from what this instance's own commits
//! left), fold, commit with preconditions, and retry on conflicts with a jittered back-off.
//! Also the small read-modify-write the leases use, done the same optimistic way.

use super::error::{DriverError, GuardError, Reply, Unavailable};
use super::{fold, known, lock, Inner, Load, Pending};
use crate::engine::{CommitReport, DocRef, Snapshot, Write};
use firestore::gcloud_sdk::tonic::Code;
use firestore::FirestoreInstant;
use std::collections::HashSet;
use std::time::Duration;

/// Why one attempt did not settle the batch.
enum Attempt {
    /// Nothing was written; decide again on fresh reads after a back-off.
    Conflict(DriverError),
    /// A read failed or went unanswered, or the database refused a commit for load: nothing
    /// was written; retry on fresh reads after a back-off.
    Failed(DriverError),
    /// Nothing was written; some operation needs more documents: read them and fold again
    /// at once (not contention, so no back-off).
    ReadMore,
    /// Nothing was sent: a document the commit writes has no budget left for this long.
    /// Wait, then read again: what was read before the wait is likely stale by then (another
    /// writer of a shared document commits in it), and committing it would only be refused.
    Throttled(Duration),
}

/// Jittered back-off before attempt `attempt + 1`: short, because a refused precondition
/// fails at once (no lock wait), and jittered so instances that collided spread out.
fn backoff(attempt: u32) -> Duration {
    let cap = 8u64.saturating_mul(1 << attempt.min(7)).min(1000);
    Duration::from_millis(cap / 4 + fastrand::u64(0..=cap * 3 / 4))
}

/// Longest an operation stays queued while its batch is held back for a document's budget
/// before it gives up. A request's own deadline (`ONCE_REQUEST_TIMEOUT_MS`, 8 s) ends its
/// wait first and takes it out of the lane; this bounds a caller that set none. A count of
/// give-backs would not do: at 10 commits a second, 16 of them are 1.6 s, well inside a
/// deadline (it failed 498 orders of a 4-instance bench row).
pub(super) const MAX_HELD_BACK: Duration = Duration::from_secs(60);

/// How [`Inner::run_batch`] ended.
pub(super) struct BatchEnd {
    /// A reply for each of the first `replies.len()` operations of the batch.
    pub(super) replies: Vec<Reply>,
    /// Nothing was sent: a document the commit writes has no budget for this long.
    pub(super) throttled: Option<Duration>,
}

/// Most rounds of extra reads one attempt of a batch may ask for (an operation may ask once
/// per document it spreads over).
const MAX_READ_ROUNDS: u32 = 8;

impl Inner {
    pub(super) fn status_ref(&self, operation_id: &str) -> DocRef {
        DocRef::new(&self.cfg.operations, operation_id)
    }

    /// Run `batch` to its end: a reply for each operation the commit held (the first
    /// `replies.len()`; the rest did not fit in its writes and go back to the lane). A batch
    /// held back by a document's budget ends with no replies and the wait: the whole batch
    /// goes back to its lane, whose leader waits, lets each operation replan (a kind may have
    /// moved it to a shard that commits sooner) and takes it again with what arrived
    /// meanwhile. Waiting here instead kept the batch out of the commits of the lane it
    /// had moved to, which took the token first every time, until every request timed out.
    pub(super) async fn run_batch(&self, batch: &[Pending], load: &Load) -> BatchEnd {
        let mut extra: Vec<DocRef> = Vec::new();
        let mut attempt = 0;
        let mut rounds = 0;
        let mut conflicts = 0;
        loop {
            let last = match self.attempt(batch, &mut extra, load).await {
                Ok(replies) => {
                    return BatchEnd {
                        replies,
                        throttled: None,
                    }
                }
                Err(Attempt::ReadMore) if rounds < MAX_READ_ROUNDS => {
                    rounds += 1;
                    continue;
                }
                Err(Attempt::Throttled(wait)) => {
                    return BatchEnd {
                        replies: Vec::new(),
                        throttled: Some(wait),
                    }
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
            rounds = 0;
            if attempt >= self.cfg.max_attempts {
                self.metrics.gave_up();
                let e = GuardError::Unavailable(Unavailable::NotSettled {
                    attempts: attempt,
                    last,
                });
                tracing::warn!(attempts = attempt, error = %e, "batch gave up");
                return BatchEnd {
                    replies: batch.iter().map(|_| Err(e.clone())).collect(),
                    throttled: None,
                };
            }
            // Under a write budget every writer of a document leaves gaps another can commit
            // in; only unthrottled writers (the emulator's terms) can starve one another.
            let unthrottled = self.budget.budget().is_none();
            if unthrottled
                && matches!(&last, Some(e) if e.is_conflict())
                && matches!(conflicts, 2 | 5)
            {
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
        load: &Load,
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
            if let Some(done) = self.attempt_known(batch, &docs, load).await {
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
        self.commit(batch, folded, &versions, false, load).await
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
        load: &Load,
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
        match self.commit(batch, folded, &versions, true, load).await {
            Err(Attempt::Conflict(e)) => {
                self.metrics.commit_without_read(true);
                tracing::debug!(error = %e, "commit from known versions refused; reading");
                None
            }
            throttled @ Err(Attempt::Throttled(_)) => Some(throttled),
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
                max_writes: self.cfg.max_writes,
            },
        )
    }

    /// Commit a fold's writes and turn the answer into replies; records what the commit
    /// left in [`known`] (or forgets it when the commit failed or its outcome is unknown).
    /// `from_known`: the fold used the record, not a read. Only documents the fold read
    /// (`read`) are recorded: the next batch reads those again; a document only created
    /// (a new record) is not.
    async fn commit(
        &self,
        batch: &[Pending],
        folded: fold::Folded,
        read: &fold::Versions,
        from_known: bool,
        load: &Load,
    ) -> Result<Vec<Reply>, Attempt> {
        // Every business document this commit writes (or verifies) spends a token of its
        // budget, a created one too (a shard a refill creates is written again at once);
        // status documents are written once each, never hot.
        let budgeted: Vec<DocRef> = folded
            .writes
            .iter()
            .map(fold::Guarded::doc)
            .filter(|d| d.collection != self.cfg.operations)
            .cloned()
            .collect();
        let budgeted: Vec<&DocRef> = budgeted.iter().collect();
        self.budget.take(&budgeted).map_err(Attempt::Throttled)?;
        let throttled = load.throttled;
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
        let writes = folded.writes.len();
        let committed = self.driver.commit(folded.writes).await;
        // A commit from the record refused only because a status document exists (a
        // redelivery decided elsewhere) says nothing about contention on the documents.
        let contended = match &committed {
            Err(e) if from_known => e.is_conflict() && e.code != Some(Code::AlreadyExists),
            Err(e) => e.is_conflict(),
            Ok(_) => false,
        };
        if matches!(&committed, Err(e) if e.code == Some(Code::Aborted)) {
            // Firestore's own contention refusal: give these documents a full interval.
            self.budget.rest(&budgeted);
        }
        let report = CommitReport {
            conflict: contended,
            throttled,
            waiting: load.waiting + (batch.len() - folded.taken),
            taken: folded.taken,
            full: load.full || folded.taken < batch.len(),
            capacity: capacity(
                folded.taken,
                writes,
                self.cfg.max_writes,
                self.cfg.batch_max,
            ),
        };
        // Once per commit: every operation of a lane read the same documents.
        if let Some((p, _)) = batch.iter().zip(&folded.needs_commit).find(|(_, n)| **n) {
            p.op.committed(&report);
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
            Err(e) if e.is_overloaded() => {
                self.known.forget(docs());
                Err(Attempt::Failed(e))
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
    pub(super) async fn transact<R>(
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

/// Operations one commit holds at `taken` operations in `writes` writes (writes one document
/// shares, such as a stock counter, are counted as if each operation had its own, so this
/// errs low).
fn capacity(taken: usize, writes: usize, max_writes: usize, batch_max: usize) -> usize {
    if taken == 0 || writes == 0 {
        return batch_max;
    }
    (taken * max_writes / writes).clamp(taken.min(batch_max), batch_max)
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

    #[test]
    fn capacity_from_the_writes_per_operation() {
        // 30 orders in 61 writes (a status document and an order each, one shared counter).
        assert_eq!(capacity(30, 61, 500, 500), 245);
        // The batch limit bounds it, and a full commit holds what it took.
        assert_eq!(capacity(30, 61, 500, 100), 100);
        assert_eq!(capacity(249, 499, 500, 500), 249);
        assert_eq!(capacity(0, 0, 500, 16), 16);
    }
}
