//! The one path every delivery takes: read the body, decode the envelope, parse the
//! operation, run it through the guard, answer in the caller's terms, log the decision.

use super::dead_letter;
use super::error::ApiError;
use super::{AppState, REPLAYED};
use crate::delivery::{self, Mode, Payload};
use crate::engine::workflow::task_id;
use crate::engine::{answer, DeliveryMeta, Outcome, OutcomeKind, ParseCtx, Parsed, StepReport};
use crate::guard::workflow::{self, WorkflowError};
use crate::guard::{self, GuardError};
use crate::metrics::Delivery;
use crate::telemetry;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::time::Instant;
use tracing::Instrument;

/// What a request asks for.
pub(crate) enum Target {
    Orders,
    Task(String),
}

impl Target {
    /// The target of a stored route (`/orders`, `/tasks/{kind}`).
    pub(crate) fn from_route(route: &str) -> Option<Self> {
        match route {
            "/orders" => Some(Target::Orders),
            _ => route
                .strip_prefix("/tasks/")
                .filter(|k| !k.is_empty() && !k.contains('/'))
                .map(|k| Target::Task(k.to_string())),
        }
    }
    fn kind(&self) -> &str {
        match self {
            Target::Orders => "order",
            Target::Task(k) => k,
        }
    }
    fn route(&self) -> String {
        match self {
            Target::Orders => "/orders".into(),
            Target::Task(k) => format!("/tasks/{k}"),
        }
    }
}

/// How a request ended, before it becomes HTTP.
enum Answer {
    Outcome(Box<Outcome>),
    /// A workflow that ran to its end (or stopped at a rejection).
    Steps {
        body: Value,
        reports: Vec<StepReport>,
    },
    Skipped(String),
    DeadLettered {
        id: String,
        reason: &'static str,
        detail: String,
    },
    /// A redrive's delivery that still cannot succeed: reported, never dead-lettered again.
    Refused {
        reason: &'static str,
        detail: String,
    },
    Error(ApiError),
}

/// The source the push endpoint's URL declares (`?source=pubsub`), for deliveries that carry
/// nothing to tell them apart (an unwrapped Pub/Sub push without `writeMetadata`).
fn declared_source(query: Option<&str>) -> Option<&'static str> {
    query?
        .split('&')
        .any(|kv| kv == "source=pubsub")
        .then_some("pubsub")
}

/// `POST /orders`: process an order exactly once in effect, whatever delivered it.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "work",
    params(crate::http::openapi::DeliveryHeaders),
    request_body(
        description = "A plain or multi-line order, a Pub/Sub push envelope carrying one, a \
            structured CloudEvent, or (with `ce-*` headers) a binary-mode CloudEvent whose body \
            is the order as JSON or a Firestore `DocumentEventData` as protobuf.",
        content(
            (crate::http::openapi::OrderRequest = "application/json"),
            (crate::http::openapi::StructuredCloudEvent = "application/cloudevents+json"),
            (crate::http::openapi::FirestoreDocumentEvent = "application/protobuf"),
        )
    ),
    responses(
        (status = 200, description = "Processed (now, or replayed with \
            `Idempotent-Replayed: true`), skipped, or dead-lettered. A platform delivery gets \
            200 for a rejection too, with the stored problem body, so it stops redelivering.",
         headers(("Idempotent-Replayed" = String,
                  description = "`true` when an earlier delivery decided this answer.")),
         links(("status" = (operation_id = "get_operation",
             parameters(("operation_id" = "$response.body#/operation_id")),
             description = "What happened to this operation: `GET /operations/{operation_id}`."))),
         content(
            (crate::http::openapi::OrderAnswer = "application/json"),
            (crate::http::openapi::Problem = "application/problem+json"),
         )),
        (status = 400, description = "Malformed JSON, an invalid field (`field` names it) or \
            an invalid envelope; nothing was written.",
         body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Rejected: an unknown item or not enough stock. Recorded, \
            so every retry gets the same answer.",
         links(("status" = (operation_id = "get_operation",
             parameters(("operation_id" = "$response.body#/operation_id")),
             description = "What happened to this operation: `GET /operations/{operation_id}`."))),
         headers(("Idempotent-Replayed" = String,
                  description = "`true` when an earlier delivery decided this answer.")),
         body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over `ONCE_MAX_BODY_BYTES`.",
         body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not a JSON body.",
         body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was first used with another payload; nothing \
            was changed.",
         body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn post_orders(State(st): State<AppState>, req: Request) -> Response {
    serve(st, req, Target::Orders).await
}

/// `POST /tasks/{kind}`: run a task of a registered kind exactly once in effect.
#[utoipa::path(
    post,
    path = "/tasks/{kind}",
    tag = "work",
    params(
        ("kind" = String, Path, example = "restock",
         description = "A registered task kind. This binary registers `order`, `restock`, \
            `cancel_order` and the workflow `fulfil_order`; a service that registers its own \
            kinds (see `examples/`) serves those too, so the set is open. An unknown kind is a \
            404 whose `known_kinds` lists them."),
        crate::http::openapi::DeliveryHeaders,
    ),
    request_body(
        description = "The kind's body, or a Pub/Sub push envelope or CloudEvent carrying it.",
        content(
            (crate::http::openapi::TaskRequest = "application/json"),
            (crate::http::openapi::StructuredCloudEvent = "application/cloudevents+json"),
        )
    ),
    responses(
        (status = 200, description = "Processed (for `fulfil_order`: every step, listed), \
            skipped or dead-lettered; for a platform delivery, a rejection too.",
         headers(("Idempotent-Replayed" = String,
                  description = "`true` when an earlier delivery decided this answer.")),
         links(("status" = (operation_id = "get_operation",
             parameters(("operation_id" = "$response.body#/operation_id")),
             description = "What happened to this operation: `GET /operations/{operation_id}`."))),
         content(
            (crate::http::openapi::TaskAnswer = "application/json"),
            (crate::http::openapi::Problem = "application/problem+json"),
         )),
        (status = 400, description = "Malformed JSON, an invalid field or envelope.",
         body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown task kind (`known_kinds` lists them).",
         body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Rejected (recorded and replayed), or a `fulfil_order` \
            step another delivery is running (`/problems/in-progress`, with `Retry-After`).",
         headers(
            ("Idempotent-Replayed" = String,
             description = "`true` when an earlier delivery decided this answer."),
            ("Retry-After" = u64, description = "For `in-progress`: seconds until the \
             holder's lease expires."),
         ),
         body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over `ONCE_MAX_BODY_BYTES`.",
         body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not a JSON body.",
         body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was first used with another payload.",
         body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn post_task(
    State(st): State<AppState>,
    kind: Result<Path<String>, axum::extract::rejection::PathRejection>,
    req: Request,
) -> Response {
    match kind {
        Ok(Path(kind)) => serve(st, req, Target::Task(kind)).await,
        // A kind that is not UTF-8 (`/tasks/%FF`): problem+json like every other error, not
        // axum's plain-text rejection.
        Err(e) => ApiError::Validation(crate::engine::ValidationError::new("kind", e.body_text()))
            .into_response(),
    }
}

/// Read the body up to `limit` bytes; a declared or actual excess is refused without
/// buffering the rest.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = delivery::header(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_long = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_long || e.to_string().contains("length limit") {
            ApiError::TooLarge { limit }
        } else {
            ApiError::Malformed(format!("could not read the body: {e}"))
        }
    })
}

/// Fields of the one decision line every request logs.
#[derive(Default)]
struct DecisionLog {
    operation_id: String,
    meta: DeliveryMeta,
    mode: Option<Mode>,
}

async fn serve(st: AppState, req: Request, target: Target) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let span = telemetry::request_span(&parts.headers, &st.project_id, &target.route());
    let metrics = st.guard.metrics().clone();
    let in_flight = metrics.in_flight();
    let traced = span.clone();
    async move {
        let mut log = DecisionLog::default();
        let declared = declared_source(parts.uri.query());
        let answer = process(&st, &parts.headers, body, &target, declared, &mut log).await;
        let push = log.mode == Some(Mode::Push);
        let cached = matches!(&answer, Answer::Outcome(o) if o.from_cache);
        let Answered {
            response: resp,
            outcome,
            replayed,
            error,
        } = respond(answer, push);
        let status = resp.status().as_u16();
        telemetry::record_status(&traced, status);
        drop(in_flight);
        if metrics.enabled() {
            let source = crate::metrics::source_label(
                &log.meta.source,
                log.meta.attrs.get("ce_type").map(String::as_str),
            );
            let kind = if outcome == "unknown-kind" {
                "unknown"
            } else {
                target.kind()
            };
            let counted = delivery_outcome(outcome, replayed, cached, status);
            metrics.delivery(source, counted, kind, started.elapsed());
        }
        macro_rules! decision {
            ($lvl:ident) => {
                tracing::$lvl!(
                    operation_id = %log.operation_id,
                    kind = target.kind(),
                    outcome,
                    replayed,
                    status,
                    delivery_source = %log.meta.source,
                    delivery_id = log.meta.id.as_deref().unwrap_or(""),
                    delivery_attempt = log.meta.attempt,
                    delivery_attrs = ?log.meta.attrs,
                    latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                    error,
                    "decision"
                )
            };
        }
        if status >= 500 || outcome == "dead_lettered" {
            decision!(error);
        } else {
            decision!(info);
        }
        resp
    }
    .instrument(span)
    .await
}

async fn process(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    target: &Target,
    declared: Option<&str>,
    log: &mut DecisionLog,
) -> Answer {
    let bytes = match read_body(headers, body, st.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return Answer::Error(e),
    };
    process_bytes(st, headers, &bytes, target, declared, false, log).await
}

/// What a redrive's delivery came to.
#[derive(Clone, Debug)]
pub struct Redelivery {
    /// `processed`, `rejected`, `replayed`, `skipped`, `failed` or `unavailable`.
    pub result: &'static str,
    /// True for a durable outcome: the dead letter is done with.
    pub resolved: bool,
    /// The operation it reached, when it got that far.
    pub operation_id: Option<String>,
    /// Why it failed (the problem code and detail), when it did.
    pub detail: Option<String>,
}

/// Send a stored delivery through the same decode → operation → guard path as a request, in
/// process. Unlike a request, a delivery that still cannot succeed is reported, not
/// dead-lettered again.
pub async fn redeliver(
    st: &AppState,
    route: &str,
    headers: &HeaderMap,
    bytes: &[u8],
    declared: Option<&str>,
) -> Redelivery {
    let Some(target) = Target::from_route(route) else {
        return Redelivery {
            result: "failed",
            resolved: false,
            operation_id: None,
            detail: Some(format!(
                "no-route: {route:?} is not /orders or /tasks/{{kind}}"
            )),
        };
    };
    let mut log = DecisionLog::default();
    let answer = process_bytes(st, headers, bytes, &target, declared, true, &mut log).await;
    let op = (!log.operation_id.is_empty()).then(|| log.operation_id.clone());
    let done = |result: &'static str| Redelivery {
        result,
        resolved: true,
        operation_id: op.clone(),
        detail: None,
    };
    let r = match answer {
        Answer::Outcome(o) if o.replayed => done("replayed"),
        Answer::Outcome(o) => done(o.record.outcome.as_str()),
        Answer::Steps { reports, .. } => {
            if reports.iter().all(|r| r.outcome.replayed) {
                done("replayed")
            } else {
                done("processed")
            }
        }
        Answer::Skipped(_) => done("skipped"),
        Answer::Refused { reason, detail } | Answer::DeadLettered { reason, detail, .. } => {
            Redelivery {
                result: "failed",
                resolved: false,
                operation_id: op.clone(),
                detail: Some(format!("{reason}: {detail}")),
            }
        }
        Answer::Error(e) => Redelivery {
            result: if e.status().is_server_error() {
                "unavailable"
            } else {
                "failed"
            },
            resolved: false,
            operation_id: op.clone(),
            detail: Some(format!("{}: {e}", e.code())),
        },
    };
    tracing::info!(
        operation_id = r.operation_id.as_deref().unwrap_or(""),
        kind = target.kind(),
        outcome = r.result,
        redrive = true,
        delivery_source = %log.meta.source,
        delivery_id = log.meta.id.as_deref().unwrap_or(""),
        error = r.detail.as_deref(),
        "redrive decision"
    );
    r
}

async fn process_bytes(
    st: &AppState,
    headers: &HeaderMap,
    bytes: &[u8],
    target: &Target,
    declared: Option<&str>,
    redrive: bool,
    log: &mut DecisionLog,
) -> Answer {
    let cfg = &st.config;
    let kind = target.kind();
    if !st.registry.contains(kind) {
        return Answer::Error(ApiError::UnknownKind {
            kind: kind.to_string(),
            known: st
                .registry
                .kinds()
                .into_iter()
                .map(str::to_string)
                .collect(),
        });
    }
    let d = delivery::decode_declared(headers, bytes, declared);
    log.meta = d.meta.clone();
    log.mode = Some(d.mode);
    let refuse = |e: ApiError| async {
        match d.mode {
            _ if redrive => Answer::Refused {
                reason: e.code(),
                detail: e.to_string(),
            },
            Mode::Direct => Answer::Error(e),
            Mode::Push => dead_letter(st, target, &d.meta, headers, bytes, e).await,
        }
    };
    let (json, fallback_key) = match d.payload.clone() {
        Ok(Payload::Work { json, fallback_key }) => (json, fallback_key),
        Ok(Payload::Skip { reason }) => return Answer::Skipped(reason),
        Err(e) => return refuse(e.into()).await,
    };
    let ctx = ParseCtx {
        collections: &cfg.collections,
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
    let parsed = match st.registry.parse(kind, &json, &ctx) {
        Some(Ok(p)) => p,
        Some(Err(v)) => return refuse(v.into()).await,
        None => return Answer::Error(ApiError::Internal(format!("kind {kind} vanished"))),
    };
    let faults = st.faults.as_deref();
    match parsed {
        Parsed::Operation(op) => {
            log.operation_id = guard::operation_id(op.as_ref());
            if faults.is_some_and(|f| f.take_fail(op.key())) {
                return deadline("injected fault before processing".into());
            }
            let run = st.guard.run(op, d.meta.clone());
            match tokio::time::timeout(cfg.request_timeout, run).await {
                Ok(Ok(o)) => Answer::Outcome(Box::new(o)),
                Ok(Err(e)) => {
                    guard_error(st, target, &d.meta, headers, bytes, d.mode, redrive, e).await
                }
                Err(_) => timed_out(),
            }
        }
        Parsed::Workflow(w) => {
            log.operation_id = task_id(w.as_ref());
            let run = workflow::run(&st.guard, w.clone(), &st.workflows, &d.meta, faults);
            match tokio::time::timeout(cfg.request_timeout, run).await {
                Ok(Ok(reports)) => Answer::Steps {
                    body: answer::workflow(
                        &log.operation_id,
                        w.kind(),
                        &reports,
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
                Ok(Err(WorkflowError::Guard(e))) => {
                    guard_error(st, target, &d.meta, headers, bytes, d.mode, redrive, e).await
                }
                Err(_) => timed_out(),
            }
        }
    }
}

/// How a delivery is counted in `once_deliveries_total`, from what the decision line logs.
fn delivery_outcome(outcome: &str, replayed: bool, cached: bool, status: u16) -> Delivery {
    match outcome {
        "processed" | "rejected" if replayed && cached => Delivery::ReplayedCache,
        "processed" | "rejected" if replayed => Delivery::ReplayedFirestore,
        "processed" => Delivery::Processed,
        "rejected" => Delivery::Rejected,
        "skipped" => Delivery::Skipped,
        "dead_lettered" => Delivery::DeadLettered,
        "key-reused" => Delivery::KeyReused,
        "in-progress" => Delivery::Busy,
        _ if status >= 500 => Delivery::Unknown,
        _ => Delivery::Invalid,
    }
}

/// A guard failure: a reused key is bad input (dead-lettered for push), the rest map as is.
#[allow(clippy::too_many_arguments)]
async fn guard_error(
    st: &AppState,
    target: &Target,
    meta: &DeliveryMeta,
    headers: &HeaderMap,
    bytes: &[u8],
    mode: Mode,
    redrive: bool,
    e: GuardError,
) -> Answer {
    let e = ApiError::from_guard(e, st.config.retry_after_secs);
    match (&e, mode) {
        (ApiError::KeyReused { .. }, _) if redrive => Answer::Refused {
            reason: e.code(),
            detail: e.to_string(),
        },
        (ApiError::KeyReused { .. }, Mode::Push) => {
            dead_letter(st, target, meta, headers, bytes, e).await
        }
        _ => Answer::Error(e),
    }
}

async fn dead_letter(
    st: &AppState,
    target: &Target,
    meta: &DeliveryMeta,
    headers: &HeaderMap,
    bytes: &[u8],
    e: ApiError,
) -> Answer {
    let cfg = &st.config;
    let detail = e.to_string();
    let recorded = dead_letter::record(
        &st.guard,
        &cfg.collections.dead_letters,
        cfg.retention,
        &target.route(),
        e.code(),
        &detail,
        meta,
        headers,
        bytes,
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

fn json_response(status: StatusCode, content_type: &str, body: String, replayed: bool) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if replayed {
        h.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    resp
}

/// A body that is never stored: 200 to every caller.
fn ok_json(body: &Value) -> Response {
    json_response(StatusCode::OK, answer::JSON, body.to_string(), false)
}

/// The stored response of an outcome. A platform delivery always gets 2xx for a durable
/// outcome (a rejection included), or it would redeliver it forever.
fn outcome_response(o: &Outcome, push: bool) -> Response {
    let r = &o.record.response;
    let status = match StatusCode::from_u16(r.status) {
        Ok(s) if !push => s,
        _ => StatusCode::OK,
    };
    json_response(status, &r.content_type, r.body.clone(), o.replayed)
}

/// The answer, plus what the decision log line says about it.
struct Answered {
    response: Response,
    /// Outcome label: `processed`, `rejected`, `skipped`, `dead_lettered`, `failed` or an
    /// error code.
    outcome: &'static str,
    replayed: bool,
    /// Error text for the log line.
    error: Option<String>,
}

fn respond(answer: Answer, push: bool) -> Answered {
    let answered = |response, outcome, replayed, error| Answered {
        response,
        outcome,
        replayed,
        error,
    };
    match answer {
        Answer::Outcome(o) => answered(
            outcome_response(&o, push),
            o.record.outcome.as_str(),
            o.replayed,
            None,
        ),
        Answer::Steps { body, reports } => {
            let replayed = reports.iter().all(|r| r.outcome.replayed);
            match reports
                .last()
                .filter(|r| r.outcome.record.outcome == OutcomeKind::Rejected)
            {
                // A rejected step is the workflow's answer, stored and replayed as it is.
                Some(last) => answered(
                    outcome_response(&last.outcome, push),
                    "rejected",
                    replayed,
                    None,
                ),
                None => answered(
                    json_response(StatusCode::OK, answer::JSON, body.to_string(), replayed),
                    "processed",
                    replayed,
                    None,
                ),
            }
        }
        Answer::Skipped(reason) => {
            answered(ok_json(&answer::skipped(&reason)), "skipped", false, None)
        }
        Answer::DeadLettered { id, reason, detail } => answered(
            ok_json(&answer::dead_lettered(&id, reason, &detail)),
            "dead_lettered",
            false,
            Some(detail),
        ),
        Answer::Refused { reason, detail } => answered(
            ok_json(&answer::refused(reason, &detail)),
            "failed",
            false,
            Some(detail),
        ),
        Answer::Error(e) => {
            let (code, text) = (e.code(), e.to_string());
            answered(e.into_response(), code, false, Some(text))
        }
    }
}
