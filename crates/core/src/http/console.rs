//! The operator console and the JSON it reads: recent operations, lookups by a domain key
//! (see [`Service::lookup`]) or `Idempotency-Key`, dead letters with their body and headers, and a redrive per dead letter.
//!
//! The page is plain HTML, JavaScript and CSS compiled into the binary (`include_str!`): no
//! build step, nothing fetched at run time. It sits behind the same gate as every other route
//! (Cloud Run IAM: only principals with `run.invoker` reach the service at all).
//!
//! Listings are Firestore queries: equality filters (outcome, kind; reason, route) ordered by
//! `created_at` descending, so an old rejected operation is found however many newer ones
//! there are. With a filter, production Firestore needs the composite indexes that
//! `cloudbuild.yaml`'s `indexes` step creates (docs/operate.md); the emulator needs none.

use super::error::ApiError;
use super::status::{self, OperationStatus};
use crate::dead_letter::{BodyEncoding, DeadLetter, RedriveState};
use crate::engine::ValidationError;
use crate::engine::{OutcomeKind, StatusRecord};
use crate::redrive::{self, ItemReport};
use crate::service::Service;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use firestore::FirestoreDb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

const HTML: &str = include_str!("console/index.html");
const JS: &str = include_str!("console/console.js");
const CSS: &str = include_str!("console/console.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The console's routes and the JSON endpoints it reads, added to `router`.
pub fn routes(router: Router<Service>) -> Router<Service> {
    router
        .route("/operations", get(list_operations))
        .route("/operations/lookup", get(lookup))
        .route("/dead-letters", get(list_dead_letters))
        .route("/dead-letters/{id}", get(get_dead_letter))
        .route("/dead-letters/{id}/redrive", post(redrive_dead_letter))
        .route("/console", get(page))
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(style))
}

/// Text as HTML: the page shows names a service chose (kinds, lookup labels).
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page for `st`: its lookups in the look-up menu, its kinds in the filter's hint.
fn render_page(st: &Service) -> String {
    let lookups: String = st
        .lookups
        .iter()
        .map(|l| {
            format!(
                "<option value=\"{}\">{}</option>\n        ",
                escape(&l.param),
                escape(&l.label)
            )
        })
        .collect();
    let mut kinds: Vec<&str> = st.lookups.iter().map(|l| l.kind.as_str()).collect();
    for k in st.registry.kinds() {
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    let hint = match kinds.as_slice() {
        [] => "kind".to_string(),
        [a] => format!("kind ({a})"),
        [a, b, ..] => format!("kind ({a}, {b}…)"),
    };
    HTML.replace("<!--lookups-->", &lookups)
        .replace("{{kind_hint}}", &escape(&hint))
}

/// `GET /console`: the operator console.
#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 200, description = "The console page.", body = String,
               content_type = "text/html")))]
pub async fn page(State(st): State<Service>) -> Response {
    let mut r = render_page(&st).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /console/console.js`: the console's script.
#[utoipa::path(get, path = "/console/console.js", tag = "console",
    responses((status = 200, description = "The console's script.", body = String,
               content_type = "text/javascript")))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// `GET /console/console.css`: the console's style sheet.
#[utoipa::path(get, path = "/console/console.css", tag = "console",
    responses((status = 200, description = "The console's style sheet.", body = String,
               content_type = "text/css")))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::Validation(ValidationError::new("query", e.body_text()))
}

fn unavailable(st: &Service, detail: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable {
        detail: format!("firestore: {detail}"),
        retry_after: st.config.retry_after_secs,
    }
}

/// The `n` newest documents of `collection` by `created_at` whose fields equal `equal`
/// (field, value): one ordered query, filtered by Firestore, not in process.
async fn newest(
    st: &Service,
    collection: &str,
    equal: Vec<(&'static str, String)>,
    n: u32,
) -> Result<Vec<firestore::FirestoreDocument>, ApiError> {
    st.guard
        .db()
        .fluent()
        .select()
        .from(collection)
        .filter(move |q| {
            q.for_all(
                equal
                    .iter()
                    .map(|(field, value)| q.field(*field).eq(value.as_str())),
            )
        })
        .order(|o| o.fields([o.field("created_at").descending()]))
        .limit(n)
        .query()
        .await
        .map_err(|e| unavailable(st, e))
}

fn limit_of(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(50),
        Some(n @ 1..=200) => Ok(n),
        Some(_) => Err(ApiError::Validation(ValidationError::new(
            "limit",
            "must be between 1 and 200",
        ))),
    }
}

/// Outcome filter of the operations listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeFilter {
    /// Committed operations.
    Processed,
    /// Operations a business rule refused.
    Rejected,
}

impl OutcomeFilter {
    /// The stored `outcome` value it selects.
    fn as_str(self) -> &'static str {
        match self {
            OutcomeFilter::Processed => OutcomeKind::Processed.as_str(),
            OutcomeFilter::Rejected => OutcomeKind::Rejected.as_str(),
        }
    }
}

/// Filters of `GET /operations`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OperationsQuery {
    /// Only this outcome.
    #[param(inline)]
    pub outcome: Option<OutcomeFilter>,
    /// Only this kind (a workflow's step kinds are `{workflow}.{step}`).
    pub kind: Option<String>,
    /// At most this many (1–200, default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// One operation in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationSummary {
    /// Hex sha256 of `kind:key`.
    pub operation_id: String,
    /// Operation kind.
    pub kind: String,
    /// The raw key.
    pub key: String,
    /// `processed` or `rejected`.
    pub outcome: String,
    /// Rejection reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was decided (RFC 3339).
    pub created_at: String,
    /// Who delivered it first (`http`, `pubsub`, `eventarc`, `cloudtasks`).
    pub delivery_source: String,
    /// The transport's ID of that delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
}

/// Recent operations, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationList {
    /// The operations.
    pub operations: Vec<OperationSummary>,
}

/// `GET /operations`: recent operations, newest first, with outcome and kind filters.
#[utoipa::path(get, path = "/operations", tag = "operations",
    params(OperationsQuery),
    responses(
        (status = 200, description = "Recent operations, newest first (filters select in \
         Firestore, over every operation).", body = OperationList, content_type = "application/json"),
        (status = 400, description = "A bad filter.", body = crate::http::schema::Problem,
         content_type = "application/problem+json"),
        (status = 503, description = "Firestore did not answer.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_operations(
    State(st): State<Service>,
    q: Result<Query<OperationsQuery>, QueryRejection>,
) -> Result<Json<OperationList>, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    let limit = limit_of(q.limit)?;
    let mut equal = Vec::new();
    if let Some(o) = q.outcome {
        equal.push(("outcome", o.as_str().to_string()));
    }
    if let Some(k) = q.kind {
        equal.push(("kind", k));
    }
    let docs = newest(&st, &st.config.collections.operations, equal, limit).await?;
    let operations = docs
        .iter()
        .filter_map(|d| FirestoreDb::deserialize_doc_to::<StatusRecord>(d).ok())
        .map(|r| OperationSummary {
            outcome: r.outcome.as_str().to_string(),
            created_at: r.created_at.to_string(),
            delivery_source: r.delivery.source,
            delivery_id: r.delivery.id,
            operation_id: r.operation_id,
            kind: r.kind,
            key: r.key,
            reason: r.reason,
        })
        .collect();
    Ok(Json(OperationList { operations }))
}

/// What `GET /operations/lookup` looks up: exactly one of `idempotency_key`, `key` (with
/// `kind`), `operation_id`, or a domain key the service registered (see [`Service::lookup`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LookupQuery {
    /// The `Idempotency-Key` a caller sent (of an operation without a domain key).
    pub idempotency_key: Option<String>,
    /// Any operation's raw key; with `kind`.
    pub key: Option<String>,
    /// The kind of `key` or `idempotency_key` (default: the kind of the service's first
    /// registered domain key).
    pub kind: Option<String>,
    /// An operation ID.
    pub operation_id: Option<String>,
}

/// `GET /operations/lookup`: the status of an operation named by a domain key, its raw key or
/// `Idempotency-Key` instead of its ID; the same answer as `GET /operations/{operation_id}`.
#[utoipa::path(get, path = "/operations/lookup", tag = "operations",
    params(LookupQuery),
    responses(
        (status = 200, description = "The operation's status.", body = OperationStatus,
         content_type = "application/json"),
        (status = 400, description = "Not exactly one of the look-up parameters.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such operation.", body = crate::http::schema::Problem,
         content_type = "application/problem+json"),
        (status = 503, description = "Firestore did not answer.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
    ))]
pub async fn lookup(
    State(st): State<Service>,
    q: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<OperationStatus>, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    let named = ["idempotency_key", "key", "operation_id"]
        .into_iter()
        .chain(st.lookups.iter().map(|l| l.param.as_str()));
    let given: Vec<(&str, &String)> = named.filter_map(|p| q.get(p).map(|v| (p, v))).collect();
    let [(param, value)] = given.as_slice() else {
        let mut names: Vec<&str> = st.lookups.iter().map(|l| l.param.as_str()).collect();
        names.extend(["idempotency_key", "key (with kind)", "operation_id"]);
        return Err(ApiError::Validation(ValidationError::new(
            "query",
            format!("give exactly one of {}", names.join(", ")),
        )));
    };
    let Some(id) = st.lookup_id(param, value, q.get("kind").map(String::as_str)) else {
        return Err(ApiError::Validation(ValidationError::new(
            "kind",
            "is required with key or idempotency_key",
        )));
    };
    let answer = tokio::time::timeout(st.config.request_timeout, status::status(&st, &id)).await;
    match answer {
        Ok(r) => r.map(Json),
        Err(_) => Err(unavailable(&st, "request deadline passed")),
    }
}

/// Filters of `GET /dead-letters`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLettersQuery {
    /// Only this reason (`invalid-field`, `invalid-envelope`, `key-reused`…).
    pub reason: Option<String>,
    /// Only those received on this route.
    pub route: Option<String>,
    /// At most this many (1–200, default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// One dead letter in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterSummary {
    /// Its ID.
    pub id: String,
    /// Route it was received on.
    pub route: String,
    /// Problem code.
    pub reason: String,
    /// What was wrong.
    pub detail: String,
    /// When it was recorded (RFC 3339).
    pub created_at: String,
    /// Who delivered it.
    pub delivery_source: String,
    /// The transport's ID of the delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    /// Body length in bytes.
    pub body_bytes: i64,
    /// What redrives did to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redrive: Option<RedriveView>,
}

/// What redrives did to a dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct RedriveView {
    /// Redrive attempts.
    pub attempts: i64,
    /// The last one's result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_detail: Option<String>,
    /// When (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_at: Option<String>,
    /// The operation it reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// True once a redrive got a durable outcome.
    pub resolved: bool,
}

impl From<RedriveState> for RedriveView {
    fn from(r: RedriveState) -> Self {
        Self {
            attempts: r.attempts,
            last_result: r.last_result,
            last_detail: r.last_detail,
            last_at: r.last_at.map(|t| t.to_string()),
            operation_id: r.operation_id,
            resolved: r.resolved,
        }
    }
}

/// Recent dead letters, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// The dead letters.
    pub dead_letters: Vec<DeadLetterSummary>,
}

/// A dead letter with its body and headers.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterDetail {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    /// The kept headers (content type, `ce-*`, Cloud Tasks, Pub/Sub metadata).
    pub headers: BTreeMap<String, String>,
    /// The body: text when `body_encoding` is `utf-8`, else base64.
    pub body: String,
    /// `utf-8` or `base64`.
    pub body_encoding: String,
    /// True when only the first 64 KiB were kept (it cannot be redriven).
    pub body_truncated: bool,
    /// The transport attributes of the delivery.
    pub delivery_attrs: BTreeMap<String, String>,
}

fn summary(id: String, d: &DeadLetter) -> DeadLetterSummary {
    DeadLetterSummary {
        id,
        route: d.route.clone(),
        reason: d.reason.clone(),
        detail: d.detail.clone(),
        created_at: d.created_at.to_string(),
        delivery_source: d.delivery.source.clone(),
        delivery_id: d.delivery.id.clone(),
        body_bytes: d.body_bytes,
        redrive: d.redrive.clone().map(Into::into),
    }
}

fn doc_id(name: &str) -> String {
    name.rsplit('/').next().unwrap_or_default().to_string()
}

/// `GET /dead-letters`: recent dead letters, newest first.
#[utoipa::path(get, path = "/dead-letters", tag = "dead letters",
    params(DeadLettersQuery),
    responses(
        (status = 200, description = "Recent dead letters, newest first (filters select in \
         Firestore, over every dead letter).", body = DeadLetterList, content_type = "application/json"),
        (status = 400, description = "A bad filter.", body = crate::http::schema::Problem,
         content_type = "application/problem+json"),
        (status = 503, description = "Firestore did not answer.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_dead_letters(
    State(st): State<Service>,
    q: Result<Query<DeadLettersQuery>, QueryRejection>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    let limit = limit_of(q.limit)?;
    let mut equal = Vec::new();
    if let Some(r) = q.reason {
        equal.push(("reason", r));
    }
    if let Some(r) = q.route {
        equal.push(("route", r));
    }
    let docs = newest(&st, &st.config.collections.dead_letters, equal, limit).await?;
    let dead_letters = docs
        .iter()
        .filter_map(|d| {
            let l = FirestoreDb::deserialize_doc_to::<DeadLetter>(d).ok()?;
            Some(summary(doc_id(&d.name), &l))
        })
        .collect();
    Ok(Json(DeadLetterList { dead_letters }))
}

fn dead_letter_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) =
        id.map_err(|e| ApiError::Validation(ValidationError::new("id", e.body_text())))?;
    if !status::is_operation_id(&id) {
        return Err(ApiError::Validation(ValidationError::new(
            "id",
            "must be 64 lowercase hex digits, a dead_letter_id",
        )));
    }
    Ok(id)
}

/// `GET /dead-letters/{id}`: one dead letter with its body and headers.
#[utoipa::path(get, path = "/dead-letters/{id}", tag = "dead letters",
    params(("id" = String, Path, pattern = "^[0-9a-f]{64}$",
            description = "The `dead_letter_id` an answer returned.")),
    responses(
        (status = 200, description = "The dead letter.", body = DeadLetterDetail,
         content_type = "application/json"),
        (status = 400, description = "Not a dead letter ID.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Firestore did not answer.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_dead_letter(
    State(st): State<Service>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeadLetterDetail>, ApiError> {
    let id = dead_letter_id(id)?;
    let (_, d) = match redrive::read(&st, &id).await {
        Ok(found) => found.ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?,
        Err(e @ redrive::RedriveError::Unreadable(_)) => {
            return Err(ApiError::Internal(e.to_string()))
        }
        Err(e) => return Err(unavailable(&st, e)),
    };
    Ok(Json(DeadLetterDetail {
        summary: summary(id, &d),
        headers: d.headers.clone(),
        body_encoding: match d.body_encoding {
            BodyEncoding::Utf8 => "utf-8",
            BodyEncoding::Base64 => "base64",
        }
        .into(),
        body: d.body.clone(),
        body_truncated: d.body_truncated,
        delivery_attrs: d.delivery.attrs.clone(),
    }))
}

/// `POST /dead-letters/{id}/redrive`: send one dead letter back through the guard (the
/// console's button; `firestore-once redrive` does many).
#[utoipa::path(post, path = "/dead-letters/{id}/redrive", tag = "dead letters",
    params(("id" = String, Path, pattern = "^[0-9a-f]{64}$",
            description = "The `dead_letter_id` an answer returned.")),
    responses(
        (status = 200, description = "What the redrive did: `processed`, `rejected`, \
         `replayed` or `skipped` resolve it; `failed` or `unavailable` leave it a dead letter \
         with the attempt recorded; `claimed` means another redrive holds it; `resolved` \
         that an earlier one finished it.", body = ItemReport, content_type = "application/json"),
        (status = 400, description = "Not a dead letter ID.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Firestore did not answer.",
         body = crate::http::schema::Problem, content_type = "application/problem+json"),
    ))]
pub async fn redrive_dead_letter(
    State(st): State<Service>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ItemReport>, ApiError> {
    let id = dead_letter_id(id)?;
    match redrive::run_one(&st, &id).await {
        Ok(Some(r)) => Ok(Json(r)),
        Ok(None) => Err(ApiError::NotFound(format!("no dead letter {id}"))),
        Err(e) => Err(unavailable(&st, e)),
    }
}
