//! Runs a [`Workflow`]: each step through [`Guard::run`] with its own status document, the
//! outside calls under leases, the task record with the first step (see
//! [`crate::engine::workflow`] for the rules). One runner for every workflow, so a new one is
//! an implementation of the trait and a registration line, nothing here.

use super::lease::LeaseOutcome;
use super::{Guard, GuardError, Unavailable};
use crate::engine::record::Outcome;
use crate::engine::workflow::{StepOperation, TaskRecord};
use crate::engine::{DeliveryMeta, DocRef, OutcomeKind, StepReport, StepSpec, Workflow, Write};
use crate::faults::Faults;
use std::sync::Arc;
use std::time::Duration;

/// How long a delivery may hold a step's lease before another may take over.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// Where the runner keeps its own documents.
#[derive(Clone, Debug)]
pub struct Collections {
    /// Task records (`tasks/{task ID}`).
    pub tasks: String,
    /// Leases of steps that call out.
    pub leases: String,
}

/// Why a workflow stopped without an answer.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// Firestore or the outside call failed; redeliver the whole task.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// Another delivery is running a step's outside call.
    #[error("step {step} is being run by another delivery")]
    Busy {
        /// The leased step.
        step: &'static str,
        /// Until its lease expires.
        retry_after: Duration,
    },
    /// A test fault stopped the task after a committed step.
    #[error("injected fault after step {0}")]
    Injected(&'static str),
}

/// Run every unfinished step of `w` in order; stop at the first rejection.
pub async fn run(
    guard: &Guard,
    w: Arc<dyn Workflow>,
    collections: &Collections,
    delivery: &DeliveryMeta,
    faults: Option<&Faults>,
) -> Result<Vec<StepReport>, WorkflowError> {
    let steps = w.steps();
    let mut reports = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let outcome = if step.calls_out {
            call_out(guard, &w, step, i == 0, collections, delivery).await?
        } else {
            let op = step_operation(guard, &w, step, None, i == 0, collections);
            guard.run(op, delivery.clone()).await?
        };
        let rejected = outcome.record.outcome == OutcomeKind::Rejected;
        reports.push(StepReport {
            step: *step,
            outcome,
        });
        if rejected {
            break;
        }
        if faults.is_some_and(|f| f.take_crash(step.name)) {
            return Err(WorkflowError::Injected(step.name));
        }
    }
    Ok(reports)
}

/// The workflow's operation for `step`, with the runner's own writes added to its commit.
fn step_operation(
    guard: &Guard,
    w: &Arc<dyn Workflow>,
    step: &StepSpec,
    called: Option<&serde_json::Value>,
    first: bool,
    collections: &Collections,
) -> Arc<StepOperation> {
    let retention = guard.config().retention;
    let task_doc = first.then(|| {
        DocRef::new(
            &collections.tasks,
            crate::engine::workflow::task_id(w.as_ref()),
        )
    });
    let lease_doc = step
        .calls_out
        .then(|| DocRef::new(&collections.leases, step.operation_id(w.key())));
    let wf = w.clone();
    Arc::new(StepOperation {
        step: *step,
        key: w.key().to_string(),
        inner: w.step(step, called),
        extra: Arc::new(move |now| {
            let mut writes = Vec::new();
            if let Some(doc) = &task_doc {
                // Set, not create: a record left by an earlier, expired run is replaced.
                writes.push(Write::set(
                    doc.clone(),
                    &TaskRecord::new(wf.as_ref(), now, retention),
                )?);
            }
            if let Some(doc) = &lease_doc {
                // Released in the same commit that records the step as done.
                writes.push(Write::delete(doc.clone()));
            }
            Ok(writes)
        }),
    })
}

async fn call_out(
    guard: &Guard,
    w: &Arc<dyn Workflow>,
    step: &StepSpec,
    first: bool,
    collections: &Collections,
    delivery: &DeliveryMeta,
) -> Result<Outcome, WorkflowError> {
    let op_id = step.operation_id(w.key());
    let replay = |record| Outcome {
        operation_id: op_id.clone(),
        replayed: true,
        from_cache: false,
        record,
    };
    if let Some(done) = guard.lookup(&op_id).await? {
        return Ok(replay(done));
    }
    let holder = format!(
        "{}:{}:{:016x}",
        delivery.source,
        delivery.id.as_deref().unwrap_or("-"),
        fastrand::u64(..)
    );
    match guard
        .acquire_step_lease(&collections.leases, step.kind, w.key(), &holder, LEASE_TTL)
        .await?
    {
        LeaseOutcome::Done(done) => Ok(replay(done)),
        LeaseOutcome::Busy { retry_after } => Err(WorkflowError::Busy {
            step: step.name,
            retry_after,
        }),
        LeaseOutcome::Acquired(_) => {
            let called = match w.call(step, &op_id).await {
                Ok(v) => v,
                Err(message) => {
                    let _ = guard
                        .release_lease(&collections.leases, &op_id, &holder)
                        .await;
                    return Err(GuardError::Unavailable(Unavailable::Call {
                        step: step.name,
                        message,
                    })
                    .into());
                }
            };
            let op = step_operation(guard, w, step, Some(&called), first, collections);
            Ok(guard.run(op, delivery.clone()).await?)
        }
    }
}
