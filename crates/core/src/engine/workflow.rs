//! Workflows: work that takes several commits, each step exactly once, some behind a call to
//! the outside world (a payment API, a mail service) that cannot join a Firestore commit.
//!
//! A [`Workflow`] names its steps and, for each, the [`Operation`] that commits it. The
//! runner ([`crate::guard::workflow`]) does the rest, the same way for every workflow:
//!
//! - every step has its own operation ID (`sha256("<kind>.<step>:" + key)`) and status
//!   document, so a redelivery after a crash between steps replays the finished ones and
//!   resumes at the first unfinished one;
//! - the first step's commit also writes the task record `tasks/{sha256("<kind>:" + key)}`,
//!   the one way from the task's ID back to its steps (an ID is a hash and cannot be inverted);
//! - a step with [`StepSpec::calls_out`] runs its [`Workflow::call`] under a lease, so two
//!   deliveries never call out at once, and its commit releases the lease; the step's
//!   operation ID is the call's idempotency key, so a call repeated after a crash mid-call
//!   is a no-op at an outside system that honours keys;
//! - a rejected step stops the workflow, and its stored answer is the workflow's answer.

use super::key::hashed_id;
use super::operation::{Decision, DocRef, OpError, Operation, Snapshot, Write};
use super::record::Outcome;
use super::Fingerprint;
use firestore::FirestoreInstant;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// One step, as the runner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepSpec {
    /// Step name, unique in its workflow (`reserve`).
    pub name: &'static str,
    /// Operation kind of the step (`{workflow}.{step}`, e.g. `refund.pay`); part of its operation ID.
    pub kind: &'static str,
    /// The step calls the outside world before it commits ([`Workflow::call`]).
    pub calls_out: bool,
}

impl StepSpec {
    /// Operation ID of this step for the workflow keyed `key`.
    pub fn operation_id(&self, key: &str) -> String {
        hashed_id(self.kind, key)
    }
}

/// How one step went.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Which step.
    pub step: StepSpec,
    /// Its outcome (first or replayed).
    pub outcome: Outcome,
}

/// A multi-step task, registered with [`super::Registry::register_workflow`] and served under
/// `POST /tasks/{kind}` like a single-step kind.
pub trait Workflow: Send + Sync + 'static {
    /// The task kind; the task's operation ID is `sha256("<kind>:" + key)`.
    fn kind(&self) -> &'static str;
    /// Domain identity of this run (a `refund_id`), the same for every delivery.
    fn key(&self) -> &str;
    /// The steps, in order.
    fn steps(&self) -> &'static [StepSpec];
    /// The operation that commits `step`. `called` is what the step's [`Workflow::call`]
    /// returned, for a step that calls out; `None` otherwise.
    fn step(&self, step: &StepSpec, called: Option<&Value>) -> Arc<dyn Operation>;
    /// The outside call of a step with [`StepSpec::calls_out`]. `idempotency_key` is the
    /// step's operation ID: identical on every attempt at the same step.
    fn call<'a>(
        &'a self,
        _step: &'a StepSpec,
        _idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<Value, String>> {
        Box::pin(async { Ok(Value::Null) })
    }
    /// Members the answer adds to `operation_id`, `kind`, `outcome` and `steps` once every
    /// step is done (a payment's reference).
    fn answer(&self, _reports: &[StepReport]) -> Map<String, Value> {
        Map::new()
    }
}

/// Operation ID of a workflow run: `sha256("<kind>:" + key)`.
pub fn task_id(w: &dyn Workflow) -> String {
    hashed_id(w.kind(), w.key())
}

/// `tasks/{task ID}`: written with the first step's commit, so a status query given the task's
/// ID (the one its answer and its log line carry) can list the steps. A task rejected at its
/// first step has none: its answer named that step's operation ID, which has a status
/// document of its own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskRecord {
    /// The task's own operation ID; also the document ID.
    pub operation_id: String,
    /// The workflow's kind.
    pub kind: String,
    /// The raw key (the workflow run's domain ID).
    pub key: String,
    /// Every step, in order, with its operation ID.
    pub steps: Vec<TaskStep>,
    /// When the first step committed.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub created_at: FirestoreInstant,
    /// TTL field, as for status documents.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub expire_at: FirestoreInstant,
}

/// One step named in a [`TaskRecord`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskStep {
    /// Step name.
    pub step: String,
    /// The step's operation ID.
    pub operation_id: String,
}

impl TaskRecord {
    /// The record of `w`, created at `now`.
    pub fn new(w: &dyn Workflow, now: FirestoreInstant, retention: Duration) -> Self {
        Self {
            operation_id: task_id(w),
            kind: w.kind().to_string(),
            key: w.key().to_string(),
            steps: w
                .steps()
                .iter()
                .map(|s| TaskStep {
                    step: s.name.to_string(),
                    operation_id: s.operation_id(w.key()),
                })
                .collect(),
            created_at: now,
            expire_at: now.saturating_add(retention).unwrap_or(now),
        }
    }
}

/// A step's operation as the runner commits it: under the step's kind and the workflow's key
/// (so its operation ID is the one the runner looks up and leases, whatever the inner
/// operation says), plus the runner's own writes (the task record on the first step, the
/// lease release on a step that called out). Only an applied step gets them: a rejection
/// writes nothing but its status document.
pub struct StepOperation {
    /// The step.
    pub step: StepSpec,
    /// The workflow's key.
    pub key: String,
    /// The workflow's own operation for the step.
    pub inner: Arc<dyn Operation>,
    /// Written with the step when it applies; built from the decision time.
    pub extra: Arc<dyn Fn(FirestoreInstant) -> Result<Vec<Write>, OpError> + Send + Sync>,
}

impl Operation for StepOperation {
    fn kind(&self) -> &'static str {
        self.step.kind
    }
    fn key(&self) -> &str {
        &self.key
    }
    fn fingerprint(&self) -> Fingerprint {
        self.inner.fingerprint()
    }
    fn reads(&self) -> Vec<DocRef> {
        self.inner.reads()
    }
    fn reads_after(&self, first: &Snapshot) -> Vec<DocRef> {
        self.inner.reads_after(first)
    }
    fn decide(&self, snapshot: &Snapshot) -> Result<Decision, OpError> {
        match self.inner.decide(snapshot)? {
            Decision::Apply { mut writes, result } => {
                writes.extend((self.extra)(snapshot.now())?);
                Ok(Decision::Apply { writes, result })
            }
            reject => Ok(reject),
        }
    }
}
