//! `GET /operations/{operation_id}`: what happened to an operation, answered from the
//! documents the guard already keeps, so an operator can ask without reading Firestore.
//!
//! Read-only by construction: it only reads (outside any transaction, which is safe because a
//! status document never changes once committed) and never creates a document, so asking
//! about an operation can never start, block or alter it.
//!
//! Where the answer comes from, in order:
//! 1. `operations/{id}`: the status document of a finished operation (processed or rejected);
//! 2. `leases/{id}`: a step that calls the outside world and is running (`in_progress`) or
//!    whose holder died before finishing (`pending`, the next delivery takes it over);
//! 3. `tasks/{id}`: a multi-step task (a workflow), answered with each step's state.
//!
//! Nothing found is a 404: the ID was never seen, its status document expired, or it is a task
//! rejected at its first step (whose answer named that step's operation ID instead).

use super::error::ApiError;
use crate::engine::{
    hashed_id, DeliveryMeta, DocRef, Registry, Snapshot, TaskRecord, ValidationError,
};
use crate::engine::{OutcomeKind, StatusRecord};
use crate::guard::lease::Lease;
use crate::guard::GuardError;
use crate::service::Service;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use firestore::FirestoreInstant;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Where an operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusOutcome {
    /// Its writes were committed; every redelivery replays the stored response.
    Processed,
    /// A business rule refused it; the refusal is stored and replayed.
    Rejected,
    /// A delivery holds the step's lease right now.
    InProgress,
    /// Not finished and nobody is running it (a task step not reached yet, or a lease whose
    /// holder died); the next delivery runs it.
    Pending,
}

impl From<OutcomeKind> for StatusOutcome {
    fn from(o: OutcomeKind) -> Self {
        match o {
            OutcomeKind::Processed => StatusOutcome::Processed,
            OutcomeKind::Rejected => StatusOutcome::Rejected,
        }
    }
}

/// The transport identity of the delivery that first processed the operation.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct DeliveryStatus {
    /// `http`, `pubsub`, `eventarc` or `cloudtasks`.
    pub source: String,
    /// The transport's ID of that delivery: CloudEvent `ce-id`, Pub/Sub `messageId`, Cloud
    /// Tasks task name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Delivery attempt as the transport counted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i64>,
    /// Other correlation fields: `subscription`, `message_id`, `ce_source`, `ce_type`,
    /// `queue`, `idempotency_key`…
    pub attrs: BTreeMap<String, String>,
}

impl From<DeliveryMeta> for DeliveryStatus {
    fn from(d: DeliveryMeta) -> Self {
        Self {
            source: d.source,
            id: d.id,
            attempt: d.attempt,
            attrs: d.attrs,
        }
    }
}

/// The stored first answer, which every delivery of the operation gets.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ResponseStatus {
    /// HTTP status given to a direct caller (a platform delivery got 200).
    pub status: u16,
    /// `application/json` or `application/problem+json`.
    pub content_type: String,
    /// The body, parsed back into JSON (kept as a string if it is not JSON).
    pub body: Value,
}

/// A lease on a step that calls the outside world.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct LeaseStatus {
    /// Who holds it: `source:delivery-id:random`.
    pub holder: String,
    /// When it was taken (RFC 3339).
    #[schema(format = DateTime)]
    pub acquired_at: String,
    /// When another delivery may take it over (RFC 3339).
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// True when `expires_at` has passed: the holder stopped without finishing.
    pub expired: bool,
}

impl LeaseStatus {
    fn of(l: &Lease, now: FirestoreInstant) -> Self {
        Self {
            holder: l.holder.clone(),
            acquired_at: l.acquired_at.to_string(),
            expires_at: l.expires_at.to_string(),
            expired: l.expires_at <= now,
        }
    }
}

/// The multi-step task a step belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct TaskRef {
    /// The task's kind (the workflow's).
    pub kind: String,
    /// The task's operation ID (ask for it to see every step).
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub operation_id: String,
    /// This step's name.
    pub step: String,
}

/// One step of a multi-step task.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct StepStatus {
    /// `reserve`, `invoice` or `ship`.
    pub step: String,
    /// The step's own operation ID.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub operation_id: String,
    /// Where the step stands.
    pub outcome: StatusOutcome,
    /// Rejection reason, when rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the step committed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    /// The step's lease, while one exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
}

/// What happened to an operation.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct OperationStatus {
    /// Hex sha256 of `kind:key`, as every answer returns it.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub operation_id: String,
    /// Operation kind (a workflow's steps are `{workflow}.{step}`); absent only for a lease
    /// taken without naming its operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The raw key (the payload's domain ID, or the transport identity it fell back to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Where it stands.
    pub outcome: StatusOutcome,
    /// Rejection reason (the kind's own, or `too_many_writes`), when rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was decided (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    /// When its status document expires and a new delivery would be treated as new.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub expire_at: Option<String>,
    /// The first delivery's transport identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStatus>,
    /// The stored answer every delivery gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseStatus>,
    /// The lease of a step that is running or was abandoned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
    /// For a step of a multi-step task: the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRef>,
    /// For a multi-step task: every step, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepStatus>>,
}

/// True for exactly what the service hands out as an operation ID: 64 lowercase hex digits.
pub fn is_operation_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The task a step kind (`{workflow}.{step}`) belongs to, among the registered workflows.
fn task_of(registry: &Registry, kind: &str, key: &str) -> Option<TaskRef> {
    let (workflow, step) = registry.workflow_of_step(kind)?;
    Some(TaskRef {
        kind: workflow.to_string(),
        operation_id: hashed_id(workflow, key),
        step: step.to_string(),
    })
}

impl OperationStatus {
    /// The answer for a finished operation.
    pub fn from_record(r: StatusRecord, registry: &Registry) -> Self {
        let body = serde_json::from_str(&r.response.body)
            .unwrap_or_else(|_| Value::String(r.response.body.clone()));
        Self {
            task: task_of(registry, &r.kind, &r.key),
            operation_id: r.operation_id,
            outcome: r.outcome.into(),
            reason: r.reason,
            created_at: Some(r.created_at.to_string()),
            expire_at: Some(r.expire_at.to_string()),
            delivery: Some(r.delivery.into()),
            response: Some(ResponseStatus {
                status: r.response.status,
                content_type: r.response.content_type,
                body,
            }),
            lease: None,
            steps: None,
            kind: Some(r.kind),
            key: Some(r.key),
        }
    }

    fn from_lease(
        operation_id: &str,
        l: &Lease,
        now: FirestoreInstant,
        registry: &Registry,
    ) -> Self {
        let lease = LeaseStatus::of(l, now);
        Self {
            operation_id: operation_id.to_string(),
            task: match (&l.kind, &l.key) {
                (Some(kind), Some(key)) => task_of(registry, kind, key),
                _ => None,
            },
            kind: l.kind.clone(),
            key: l.key.clone(),
            outcome: if lease.expired {
                StatusOutcome::Pending
            } else {
                StatusOutcome::InProgress
            },
            reason: None,
            created_at: None,
            expire_at: None,
            delivery: None,
            response: None,
            lease: Some(lease),
            steps: None,
        }
    }
}

/// `GET /operations/{operation_id}`: the status of one operation or multi-step task.
#[utoipa::path(
    get,
    path = "/operations/{operation_id}",
    tag = "operations",
    params(
        ("operation_id" = String, Path, pattern = "^[0-9a-f]{64}$",
         description = "The `operation_id` an answer returned: hex sha256 of `kind:key`.",
         example = "0b29e0f75c1e6bf6a02cb1545049699be032c304109e81afc7143d3579a2359c")
    ),
    responses(
        (status = 200, description = "The operation's status: processed or rejected (with the \
         stored answer and the first delivery's IDs), a leased step in progress, or a task \
         with each step's state.", body = OperationStatus, content_type = "application/json"),
        (status = 400, description = "Not an operation ID (64 lowercase hex digits).",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such operation (never seen, expired, or a task \
         rejected at its first step).", body = crate::http::schema::Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn get_operation(
    State(st): State<Service>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let unavailable = |detail: String| ApiError::Unavailable {
        detail,
        retry_after: st.config.retry_after_secs,
    };
    let answer = match id {
        Ok(Path(id)) => {
            match tokio::time::timeout(st.config.request_timeout, status(&st, &id)).await {
                Ok(r) => r,
                Err(_) => Err(unavailable(format!(
                    "request deadline of {} ms passed",
                    st.config.request_timeout.as_millis()
                ))),
            }
        }
        Err(e) => Err(ApiError::Validation(ValidationError::new(
            "operation_id",
            e.body_text(),
        ))),
    };
    match answer {
        Ok(s) => Json(s).into_response(),
        Err(e) => {
            if e.status().is_server_error() {
                tracing::error!(error = %e, code = e.code(), "status query failed");
            }
            e.into_response()
        }
    }
}

pub(crate) async fn status(st: &Service, id: &str) -> Result<OperationStatus, ApiError> {
    if !is_operation_id(id) {
        return Err(ApiError::Validation(ValidationError::new(
            "operation_id",
            "must be 64 lowercase hex digits, the operation_id an answer returned",
        )));
    }
    let guard_err = |e: GuardError| ApiError::from_guard(e, st.config.retry_after_secs);
    if let Some(r) = st.guard.lookup(id).await.map_err(guard_err)? {
        return Ok(OperationStatus::from_record(r, &st.registry));
    }
    // Not finished (or unknown): read the status document again with the lease and the task
    // record in one consistent read, so a step that commits in between is not missed.
    let cols = &st.config.collections;
    let status_doc = st.guard.status_ref(id);
    let lease_doc = DocRef::new(&cols.leases, id);
    let task_doc = DocRef::new(&cols.tasks, id);
    let snap = st
        .guard
        .read_docs(&[status_doc.clone(), lease_doc.clone(), task_doc.clone()])
        .await
        .map_err(guard_err)?;
    let get = |e: crate::engine::OpError| guard_err(e.into());
    if let Some(r) = snap.get::<StatusRecord>(&status_doc).map_err(get)? {
        return Ok(OperationStatus::from_record(r, &st.registry));
    }
    if let Some(l) = snap.get::<Lease>(&lease_doc).map_err(get)? {
        return Ok(OperationStatus::from_lease(
            id,
            &l,
            snap.now(),
            &st.registry,
        ));
    }
    if let Some(t) = snap.get::<TaskRecord>(&task_doc).map_err(get)? {
        return task_status(st, t).await;
    }
    Err(ApiError::NotFound(format!(
        "no operation {id}: never seen, expired, or a task rejected at its first step"
    )))
}

/// A multi-step task: each step from its status document or lease, in one read.
async fn task_status(st: &Service, t: TaskRecord) -> Result<OperationStatus, ApiError> {
    let guard_err = |e: GuardError| ApiError::from_guard(e, st.config.retry_after_secs);
    let cols = &st.config.collections;
    let docs: Vec<DocRef> = t
        .steps
        .iter()
        .flat_map(|s| {
            [
                st.guard.status_ref(&s.operation_id),
                DocRef::new(&cols.leases, &s.operation_id),
            ]
        })
        .collect();
    let snap = st.guard.read_docs(&docs).await.map_err(guard_err)?;
    let mut steps = Vec::with_capacity(t.steps.len());
    let mut first: Option<StatusRecord> = None;
    for s in &t.steps {
        let (step, record) = step_status(st, &snap, &s.step, &s.operation_id).map_err(guard_err)?;
        if first.is_none() {
            first = record;
        }
        steps.push(step);
    }
    let rejected = steps.iter().find(|s| s.outcome == StatusOutcome::Rejected);
    let outcome = if rejected.is_some() {
        StatusOutcome::Rejected
    } else if steps.iter().all(|s| s.outcome == StatusOutcome::Processed) {
        StatusOutcome::Processed
    } else if steps.iter().any(|s| s.outcome == StatusOutcome::InProgress) {
        StatusOutcome::InProgress
    } else {
        StatusOutcome::Pending
    };
    Ok(OperationStatus {
        operation_id: t.operation_id,
        kind: Some(t.kind),
        key: Some(t.key),
        outcome,
        reason: rejected.and_then(|s| s.reason.clone()),
        created_at: Some(t.created_at.to_string()),
        expire_at: Some(t.expire_at.to_string()),
        delivery: first.map(|r| r.delivery.into()),
        response: None,
        lease: None,
        task: None,
        steps: Some(steps),
    })
}

fn step_status(
    st: &Service,
    snap: &Snapshot,
    step: &str,
    operation_id: &str,
) -> Result<(StepStatus, Option<StatusRecord>), GuardError> {
    let record = snap.get::<StatusRecord>(&st.guard.status_ref(operation_id))?;
    let lease = snap
        .get::<Lease>(&DocRef::new(&st.config.collections.leases, operation_id))?
        .map(|l| LeaseStatus::of(&l, snap.now()));
    let outcome = match (&record, &lease) {
        (Some(r), _) => r.outcome.into(),
        (None, Some(l)) if !l.expired => StatusOutcome::InProgress,
        (None, _) => StatusOutcome::Pending,
    };
    let status = StepStatus {
        step: step.to_string(),
        operation_id: operation_id.to_string(),
        outcome,
        reason: record.as_ref().and_then(|r| r.reason.clone()),
        created_at: record.as_ref().map(|r| r.created_at.to_string()),
        lease,
    };
    Ok((status, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_are_exactly_lowercase_sha256_hex() {
        let id = crate::engine::key::hashed_id("vote", "v-1");
        assert!(is_operation_id(&id));
        assert!(!is_operation_id(&id.to_uppercase()));
        assert!(!is_operation_id(&id[1..]));
        assert!(!is_operation_id(&format!("{id}0")));
        assert!(!is_operation_id(&format!("g{}", &id[1..])));
        assert!(!is_operation_id(""));
    }

    /// A workflow that is never built: only its registered name matters here.
    struct Never;

    impl crate::engine::Workflow for Never {
        fn kind(&self) -> &'static str {
            "refund"
        }
        fn key(&self) -> &str {
            ""
        }
        fn steps(&self) -> &'static [crate::engine::StepSpec] {
            &[]
        }
        fn step(
            &self,
            _: &crate::engine::StepSpec,
            _: Option<&serde_json::Value>,
        ) -> std::sync::Arc<dyn crate::engine::Operation> {
            unreachable!("never built")
        }
    }

    #[test]
    fn steps_name_their_task() {
        let mut r = crate::engine::Registry::default();
        r.register_workflow("refund", |_, _| {
            Err::<Never, _>(crate::engine::ValidationError::new(
                "body",
                "not parsed here",
            ))
        });
        let task_of = |kind, key| task_of(&r, kind, key);
        let t = task_of("refund.pay", "r-1").unwrap();
        assert_eq!(t.step, "pay");
        assert_eq!(
            t.operation_id,
            crate::engine::key::hashed_id("refund", "r-1")
        );
        assert!(task_of("refund", "r-1").is_none());
        assert!(task_of("refundx.pay", "r-1").is_none());
        assert!(task_of("vote", "r-1").is_none());
    }
}
