//! Ingest: the one path every received delivery takes, whoever received it. Decode the
//! envelope, parse the operation, run it through the guard, and come back with an
//! [`Answer`]: the outcome, or the dead letter it became. The HTTP handlers
//! (`http::handle`) and redrive ([`crate::redrive`]) both call [`ingest`], and neither calls
//! the other; only they decide what an answer means to their caller.

use crate::dead_letter;
use crate::delivery::{self, Mode, Payload};
use crate::engine::workflow::task_id;
use crate::engine::{answer, DeliveryMeta, Outcome, ParseCtx, Parsed, StepReport};
use crate::error::ApiError;
use crate::guard::workflow::{self, WorkflowError};
use crate::guard::{self, GuardError};
use crate::service::{Service, Target};
use http::HeaderMap;
use serde_json::Value;

/// One delivery as it was received.
pub struct Received<'a> {
    /// What it asks for.
    pub target: &'a Target,
    /// Its headers (the envelope's identity travels there for binary CloudEvents and Cloud
    /// Tasks).
    pub headers: &'a HeaderMap,
    /// Its body, exactly as received.
    pub body: &'a [u8],
    /// The source the receiving endpoint declares (`?source=pubsub`), for envelopes that
    /// carry nothing to tell them apart.
    pub declared: Option<&'a str>,
    /// A redrive of a dead letter: a delivery that still cannot succeed is reported, never
    /// dead-lettered again.
    pub redrive: bool,
}

/// How a delivery ended, before anyone turns it into an answer.
#[derive(Debug)]
pub enum Answer {
    /// An operation's outcome, first or replayed.
    Outcome(Box<Outcome>),
    /// A workflow that ran to its end (or stopped at a rejection).
    Steps {
        /// The answer body.
        body: Value,
        /// Each step that ran.
        reports: Vec<StepReport>,
    },
    /// Nothing to do (a delete event), with why.
    Skipped(String),
    /// A platform delivery that can never succeed, recorded as a dead letter.
    DeadLettered {
        /// The dead letter's ID.
        id: String,
        /// The problem code.
        reason: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A redrive's delivery that still cannot succeed: reported, never dead-lettered again.
    Refused {
        /// The problem code.
        reason: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// An error for the caller (a direct caller's bad input, or an outcome not known yet).
    Error(ApiError),
}

/// What the decision log line says about a delivery besides its answer.
#[derive(Clone, Debug, Default)]
pub struct Decided {
    /// The operation (or task) ID it reached; empty when it got no further than parsing.
    pub operation_id: String,
    /// Who delivered it.
    pub meta: DeliveryMeta,
    /// Direct caller or platform push; `None` when decoding never ran.
    pub mode: Option<Mode>,
}

/// Run one received delivery to its [`Answer`].
pub async fn ingest(svc: &Service, r: Received<'_>) -> (Answer, Decided) {
    let mut log = Decided::default();
    let answer = run(svc, &r, &mut log).await;
    (answer, log)
}

/// The work part of a delivery: the registered kind, the decoded envelope, the guard.
async fn run(svc: &Service, r: &Received<'_>, log: &mut Decided) -> Answer {
    let cfg = &svc.config;
    let kind = r.target.kind.as_str();
    if !svc.registry.contains(kind) {
        return Answer::Error(ApiError::UnknownKind {
            kind: kind.to_string(),
            known: svc
                .registry
                .kinds()
                .into_iter()
                .map(str::to_string)
                .collect(),
        });
    }
    let d = delivery::decode_declared(r.headers, r.body, r.declared);
    log.meta = d.meta.clone();
    log.mode = Some(d.mode);
    let refuse = |e: ApiError| async {
        match d.mode {
            _ if r.redrive => Answer::Refused {
                reason: e.code(),
                detail: e.to_string(),
            },
            Mode::Direct => Answer::Error(e),
            Mode::Push => record_dead_letter(svc, r, &d.meta, e).await,
        }
    };
    let (json, fallback_key) = match d.payload.clone() {
        Ok(Payload::Work { json, fallback_key }) => (json, fallback_key),
        Ok(Payload::Skip { reason }) => return Answer::Skipped(reason),
        Err(e) => return refuse(e.into()).await,
    };
    let ctx = ParseCtx {
        fallback_key: fallback_key.as_deref(),
        direct: d.mode == Mode::Direct,
    };
    let deadline = |detail: String| {
        Answer::Error(ApiError::Unavailable {
            detail,
            retry_after: cfg.retry_after_secs,
        })
    };
    let timed_out = || {
        deadline(format!(
            "request deadline of {} ms passed",
            cfg.request_timeout.as_millis()
        ))
    };
    let parsed = match svc.registry.parse(kind, &json, &ctx) {
        Some(Ok(p)) => p,
        Some(Err(v)) => return refuse(v.into()).await,
        None => return Answer::Error(ApiError::Internal(format!("kind {kind} vanished"))),
    };
    let faults = svc.faults.as_deref();
    match parsed {
        Parsed::Operation(op) => {
            log.operation_id = guard::operation_id(op.as_ref());
            if faults.is_some_and(|f| f.take_fail(op.key())) {
                return deadline("injected fault before processing".into());
            }
            let run = svc.guard.run(op, d.meta.clone());
            match tokio::time::timeout(cfg.request_timeout, run).await {
                Ok(Ok(o)) => Answer::Outcome(Box::new(o)),
                Ok(Err(e)) => guard_error(svc, r, &d.meta, d.mode, e).await,
                Err(_) => timed_out(),
            }
        }
        Parsed::Workflow(w) => {
            log.operation_id = task_id(w.as_ref());
            let run = workflow::run(&svc.guard, w.clone(), &svc.workflows, &d.meta, faults);
            match tokio::time::timeout(cfg.request_timeout, run).await {
                Ok(Ok(reports)) => Answer::Steps {
                    body: answer::workflow(
                        &log.operation_id,
                        w.kind(),
                        &reports
                            .iter()
                            .map(|r| {
                                let o = &r.outcome;
                                (r.step.name, o.operation_id.as_str(), o.record.outcome)
                            })
                            .collect::<Vec<_>>(),
                        w.answer(&reports),
                    ),
                    reports,
                },
                Ok(Err(WorkflowError::Busy { step, retry_after })) => {
                    Answer::Error(ApiError::Busy {
                        detail: format!(
                            "step {step} is being run by another delivery; retry later"
                        ),
                        retry_after: retry_after.as_secs().max(1),
                    })
                }
                Ok(Err(WorkflowError::Injected(step))) => {
                    deadline(format!("injected fault after step {step}"))
                }
                Ok(Err(WorkflowError::Guard(e))) => guard_error(svc, r, &d.meta, d.mode, e).await,
                Err(_) => timed_out(),
            }
        }
    }
}

/// A guard failure: a reused key is bad input (dead-lettered for push), the rest map as is.
async fn guard_error(
    svc: &Service,
    r: &Received<'_>,
    meta: &DeliveryMeta,
    mode: Mode,
    e: GuardError,
) -> Answer {
    let e = ApiError::from_guard(e, svc.config.retry_after_secs);
    match (&e, mode) {
        (ApiError::KeyReused { .. }, _) if r.redrive => Answer::Refused {
            reason: e.code(),
            detail: e.to_string(),
        },
        (ApiError::KeyReused { .. }, Mode::Push) => record_dead_letter(svc, r, meta, e).await,
        _ => Answer::Error(e),
    }
}

/// Record a push delivery that can never succeed, so it is acknowledged and not lost.
async fn record_dead_letter(
    svc: &Service,
    r: &Received<'_>,
    meta: &DeliveryMeta,
    e: ApiError,
) -> Answer {
    let cfg = &svc.config;
    let detail = e.to_string();
    let recorded = dead_letter::record(
        &svc.guard,
        &cfg.collections.dead_letters,
        cfg.retention,
        &r.target.route,
        e.code(),
        &detail,
        meta,
        r.headers,
        r.body,
    )
    .await;
    match recorded {
        Ok(id) => Answer::DeadLettered {
            id,
            reason: e.code(),
            detail,
        },
        // Not recorded: it must not vanish, so let the platform redeliver it.
        Err(g) => Answer::Error(ApiError::from_guard(g, cfg.retry_after_secs)),
    }
}
