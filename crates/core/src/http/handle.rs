//! HTTP's side of a delivery: read the body within its limit, hand it to
//! [`crate::ingest`], answer in the caller's terms, count it and log the decision.

use super::error::ApiError;
use crate::delivery::{self, Mode};
use crate::engine::{answer, Outcome, OutcomeKind};
use crate::ingest::{self, Answer, Received};
use crate::metrics::Delivery;
use crate::service::{Service, Target};
use crate::telemetry;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::time::Instant;
use tracing::Instrument;

/// Header set on a replayed answer (IETF `Idempotency-Key` draft, Stripe).
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The source the push endpoint's URL declares (`?source=pubsub`), for deliveries that carry
/// nothing to tell them apart (an unwrapped Pub/Sub push without `writeMetadata`).
fn declared_source(query: Option<&str>) -> Option<&'static str> {
    query?
        .split('&')
        .any(|kv| kv == "source=pubsub")
        .then_some("pubsub")
}

/// `POST {route}` for a route added with [`Service::route`]: the same path as
/// `/tasks/{kind}`, for the kind that route serves.
pub async fn post_kind(st: Service, req: Request, target: Target) -> Response {
    serve(st, req, target).await
}

/// `POST /tasks/{kind}`: run a task of a registered kind exactly once in effect.
#[utoipa::path(
    post,
    path = "/tasks/{kind}",
    tag = "work",
    params(
        ("kind" = String, Path, example = "award_points",
         description = "A registered kind, operation or workflow: the set is the service's \
            own (`known_kinds` of a 404 lists it)."),
        crate::http::schema::DeliveryHeaders,
    ),
    request_body(
        description = "The kind's body, or a Pub/Sub push envelope or CloudEvent carrying it.",
        content(
            (crate::http::schema::TaskRequest = "application/json"),
            (crate::http::schema::StructuredCloudEvent = "application/cloudevents+json"),
        )
    ),
    responses(
        (status = 200, description = "Processed (for a workflow: every step, listed), \
            skipped or dead-lettered; for a platform delivery, a rejection too.",
         headers(("Idempotent-Replayed" = String,
                  description = "`true` when an earlier delivery decided this answer.")),
         links(("status" = (operation_id = "get_operation",
             parameters(("operation_id" = "$response.body#/operation_id")),
             description = "What happened to this operation: `GET /operations/{operation_id}`."))),
         content(
            (crate::http::schema::TaskAnswer = "application/json"),
            (crate::http::schema::Problem = "application/problem+json"),
         )),
        (status = 400, description = "Malformed JSON, an invalid field or envelope.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown task kind (`known_kinds` lists them).",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Rejected (recorded and replayed), or a workflow step \
            another delivery is running (`/problems/in-progress`, with `Retry-After`).",
         headers(
            ("Idempotent-Replayed" = String,
             description = "`true` when an earlier delivery decided this answer."),
            ("Retry-After" = u64, description = "For `in-progress`: seconds until the \
             holder's lease expires."),
         ),
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over `ONCE_MAX_BODY_BYTES`.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not a JSON body.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was first used with another payload.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn post_task(
    State(st): State<Service>,
    kind: Result<Path<String>, axum::extract::rejection::PathRejection>,
    req: Request,
) -> Response {
    match kind {
        Ok(Path(kind)) => serve(st, req, Target::task(&kind)).await,
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

async fn serve(st: Service, req: Request, target: Target) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let span = telemetry::request_span(&parts.headers, &st.project_id, &target.route);
    let metrics = st.guard.metrics().clone();
    let in_flight = metrics.in_flight();
    let traced = span.clone();
    async move {
        let declared = declared_source(parts.uri.query());
        let (answer, log) = process(&st, &parts.headers, body, &target, declared).await;
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
                target.kind.as_str()
            };
            let counted = delivery_outcome(outcome, replayed, cached, status);
            metrics.delivery(source, counted, kind, started.elapsed());
        }
        macro_rules! decision {
            ($lvl:ident) => {
                tracing::$lvl!(
                    operation_id = %log.operation_id,
                    kind = %target.kind,
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
    st: &Service,
    headers: &HeaderMap,
    body: Body,
    target: &Target,
    declared: Option<&str>,
) -> (Answer, ingest::Decided) {
    let bytes = match read_body(headers, body, st.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return (Answer::Error(e), ingest::Decided::default()),
    };
    let received = Received {
        target,
        headers,
        body: &bytes,
        declared,
        redrive: false,
    };
    ingest::ingest(st, received).await
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
