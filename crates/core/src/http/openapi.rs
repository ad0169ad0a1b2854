//! The machine-readable description of the HTTP surface: an OpenAPI 3.1 document generated
//! from the handlers' `#[utoipa::path]` annotations and the types below, served at
//! `GET /openapi.json` and kept in the repository as `openapi.json`.
//!
//! Why generated and not hand-written: the answer types of the status query are the very
//! types serialized on the wire, and everything else is checked two ways, so the document
//! cannot drift silently: `tests/api/status.rs` fails when the served document differs from
//! the committed file (`UPDATE_OPENAPI=1 cargo test openapi` rewrites it), and
//! `tests/fuzz/schemathesis.sh` fuzzes the running service against it and fails on any answer
//! the document does not allow.
//!
//! The request and answer types here are documentation only: parsing stays in `engine/` and
//! `delivery/` (and in each kind), which give precise field errors that a generic deserializer
//! could not. A service describes its own kinds with [`Service::openapi`]: their request and
//! answer shapes replace the generic [`TaskRequest`] and [`TaskAnswer`], and each route added
//! with [`Service::route`] gets its path.

use super::error::ApiError;
use crate::service::{OpenApiExtension, Service};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

/// An error answer, `application/problem+json` (RFC 9457). Business rejections (409) carry
/// more members: `operation_id`, `kind`, `outcome: "rejected"`, `reason`, and the members the
/// kind's rejection adds (a workflow's rejected `step`).
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// `/problems/<code>`, e.g. `/problems/invalid-field`, or a kind's rejection reason.
    #[schema(example = "/problems/invalid-field")]
    pub r#type: String,
    /// The HTTP reason phrase, or the rejection's title.
    pub title: String,
    /// The HTTP status of a direct answer (a rejection replayed to a platform is 200).
    pub status: u16,
    /// One sentence for a person.
    pub detail: String,
    /// The offending field or header (`lines[1].quantity`, `ce-id`, `Idempotency-Key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The operation the problem is about (`key-reused`, rejections).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// The task kinds this service knows (`unknown-kind`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_kinds: Option<Vec<String>>,
}

/// A Pub/Sub message inside a push envelope.
#[derive(Serialize, ToSchema)]
pub struct PubSubMessage {
    /// The payload (the kind's body), base64.
    #[schema(content_encoding = "base64")]
    pub data: String,
    /// Message attributes.
    pub attributes: Option<BTreeMap<String, String>>,
    /// The message ID: the delivery identity, and the key of a payload without one.
    #[serde(rename = "messageId")]
    pub message_id: Option<String>,
    /// RFC 3339 publish time.
    #[serde(rename = "publishTime")]
    pub publish_time: Option<String>,
    /// Ordering key, when the subscription delivers messages in sequence.
    #[serde(rename = "orderingKey")]
    pub ordering_key: Option<String>,
}

/// What a Pub/Sub push subscription sends. Always answered 200 once settled; a message that
/// can never succeed is recorded as a dead letter and acknowledged.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"message": {"data": "eyJ2b3RlX2lkIjoidi0xIiwicG9sbCI6InAxIn0=",
    "messageId": "136969346945", "publishTime": "2026-11-23T10:00:00Z"},
    "subscription": "projects/demo/subscriptions/votes-push", "deliveryAttempt": 1}))]
pub struct PubSubPush {
    /// The message.
    pub message: PubSubMessage,
    /// The subscription's full name.
    pub subscription: String,
    /// Delivery attempt, when the subscription has a dead-letter policy.
    #[serde(rename = "deliveryAttempt")]
    pub delivery_attempt: Option<i64>,
}

/// A structured-mode CloudEvent (`application/cloudevents+json`), as Eventarc or any
/// CloudEvents producer sends it. `type` selects the data: a Pub/Sub `messagePublished`
/// event carries a push envelope, a `google.cloud.firestore.document.v1.*` event a Firestore
/// document, any other type the kind's body itself.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"specversion": "1.0", "id": "evt-1", "source": "/polls",
    "type": "com.example.vote", "datacontenttype": "application/json",
    "data": {"vote_id": "v-4", "poll": "p1"}}))]
pub struct StructuredCloudEvent {
    /// Must be `1.0`.
    #[schema(example = "1.0")]
    pub specversion: String,
    /// Event ID; with `source`, the delivery identity.
    pub id: String,
    /// Event source.
    pub source: String,
    /// Event type.
    pub r#type: String,
    /// Media type of `data` (default `application/json`).
    pub datacontenttype: Option<String>,
    /// Event subject.
    pub subject: Option<String>,
    /// Event time.
    pub time: Option<String>,
    /// The data, as JSON.
    pub data: Option<Value>,
    /// The data, base64 (instead of `data`).
    #[schema(content_encoding = "base64")]
    pub data_base64: Option<String>,
}

/// A Firestore document event (`google.cloud.firestore.document.v1.created` and friends) in
/// CloudEvents binary mode: the body is a protobuf `DocumentEventData`, the `ce-*` headers
/// carry the event attributes, and the document's fields are the kind's body.
#[derive(Serialize, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct FirestoreDocumentEvent(pub Vec<u8>);

/// CloudEvents spec version: only `1.0` exists.
#[derive(Serialize, ToSchema)]
pub enum SpecVersion {
    /// CloudEvents 1.0.
    #[serde(rename = "1.0")]
    V1,
}

/// The value `processed`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Processed {
    /// The operation's writes were committed (now or by an earlier delivery).
    Processed,
}

/// The value `skipped`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Skipped {
    /// Nothing to do.
    Skipped,
}

/// The value `dead_lettered`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLettered {
    /// Recorded as a dead letter and acknowledged.
    DeadLettered,
}

/// A processed task: `operation_id`, `kind`, `outcome` and the kind's own members (a
/// workflow's `steps`).
#[derive(Serialize, ToSchema)]
pub struct TaskProcessed {
    /// The operation (for a workflow, the task's own ID).
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub operation_id: String,
    /// The kind.
    pub kind: String,
    /// `processed`.
    pub outcome: Processed,
}

/// A platform delivery with nothing to do (a Firestore delete event).
#[derive(Serialize, ToSchema)]
pub struct SkippedAnswer {
    /// `skipped`.
    pub outcome: Skipped,
    /// Why.
    pub reason: String,
}

/// A platform delivery that can never succeed, recorded in `dead_letters` and acknowledged
/// so the platform stops redelivering it.
#[derive(Serialize, ToSchema)]
pub struct DeadLetteredAnswer {
    /// `dead_lettered`.
    pub outcome: DeadLettered,
    /// The `dead_letters` document ID (one per delivery).
    pub dead_letter_id: String,
    /// The problem code (`invalid-envelope`, `invalid-field`, `key-reused`…).
    pub reason: String,
    /// What was wrong.
    pub detail: String,
}

/// A JSON body of `POST /tasks/{kind}`: the kind's own payload, or a Pub/Sub push envelope
/// carrying it. A service replaces this with its kinds' shapes ([`Service::openapi`]).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TaskRequest {
    /// The kind's payload, a JSON object.
    Payload(serde_json::Map<String, Value>),
    /// A Pub/Sub push envelope whose `message.data` is the payload.
    Push(PubSubPush),
}

/// A 200 JSON answer of `POST /tasks/{kind}`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TaskAnswer {
    /// The task was processed.
    Processed(TaskProcessed),
    /// Nothing to do.
    Skipped(SkippedAnswer),
    /// Recorded as a dead letter.
    DeadLettered(DeadLetteredAnswer),
}

/// How the delivering platform identifies itself. All optional: a direct caller sends none
/// (or only `Idempotency-Key`). `ce-specversion` switches to CloudEvents binary mode, which
/// then needs non-empty `ce-id`, `ce-source` and `ce-type` (without `ce-specversion` the
/// other `ce-*` headers are not read); `X-CloudTasks-TaskName` marks a Cloud Tasks delivery.
/// A platform delivery that can never succeed is answered 200 `dead_lettered`, not 4xx, or
/// the platform would redeliver it for days.
#[derive(IntoParams, Serialize)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Never built: it exists to be described.
#[serde(default)] // Optional, but never null.
pub struct DeliveryHeaders {
    /// The caller's own identity for a payload without a domain key (1 to 255 characters);
    /// it outranks every transport ID.
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 255)]
    idempotency_key: String,
    /// CloudEvents binary mode: `1.0`.
    #[param(rename = "ce-specversion", inline)]
    ce_specversion: SpecVersion,
    /// CloudEvents binary mode: event ID.
    #[param(rename = "ce-id")]
    ce_id: String,
    /// CloudEvents binary mode: event source.
    #[param(rename = "ce-source")]
    ce_source: String,
    /// CloudEvents binary mode: event type (`google.cloud.pubsub.topic.v1.messagePublished`,
    /// `google.cloud.firestore.document.v1.created`, or any type carrying the body itself).
    #[param(rename = "ce-type")]
    ce_type: String,
    /// CloudEvents binary mode: subject (a Firestore event's document path).
    #[param(rename = "ce-subject")]
    ce_subject: String,
    /// CloudEvents binary mode: event time.
    #[param(rename = "ce-time")]
    ce_time: String,
    /// Cloud Tasks: the task name, the delivery identity.
    #[param(rename = "X-CloudTasks-TaskName")]
    cloudtasks_task_name: String,
    /// Cloud Tasks: the queue.
    #[param(rename = "X-CloudTasks-QueueName")]
    cloudtasks_queue_name: String,
    /// Cloud Tasks: retries so far.
    #[param(rename = "X-CloudTasks-TaskRetryCount")]
    cloudtasks_retry_count: String,
    /// Cloud Tasks: executions so far.
    #[param(rename = "X-CloudTasks-TaskExecutionCount")]
    cloudtasks_execution_count: String,
    /// Cloud Tasks: the scheduled time.
    #[param(rename = "X-CloudTasks-TaskETA")]
    cloudtasks_eta: String,
}

/// Adds what every operation shares: the 503 answer (Firestore unavailable, the request
/// deadline, load shedding), described once instead of on each handler.
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut Document) {
        let unavailable = ResponseBuilder::new()
            .description(
                "The outcome is not known yet (Firestore unavailable, contention not settled, \
                 the request deadline passed, or the instance is shedding load). Nothing is \
                 half-written; retry the same request after `Retry-After` seconds.",
            )
            .header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(Some(
                        utoipa::openapi::ObjectBuilder::new()
                            .schema_type(utoipa::openapi::schema::Type::Integer)
                            .minimum(Some(0)),
                    ))
                    .description(Some("Seconds to wait before retrying."))
                    .build(),
            )
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        for (path, item) in doc.paths.paths.iter_mut() {
            // Outside the load-shedding limit and independent of Firestore.
            if path == "/healthz" || path == "/openapi.json" || path == "/metrics" {
                continue;
            }
            let ops: [&mut Option<Operation>; 2] = [&mut item.get, &mut item.post];
            for op in ops.into_iter().flatten() {
                op.responses
                    .responses
                    .entry("503".to_string())
                    .or_insert_with(|| unavailable.clone().into());
            }
        }
    }
}

/// The core's part of every service's OpenAPI document: the paths every service serves.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "firestore-once",
        description = "Exactly-once-in-effect processing of work, however many times \
            Eventarc, Pub/Sub, Cloud Tasks or a caller delivers it. Every answer that names an \
            operation carries its `operation_id` (hex sha256 of `kind:key`); \
            `GET /operations/{operation_id}` says what happened to it. Every error is \
            `application/problem+json` (RFC 9457); an unknown path is 404 and a known path \
            with another method 405, both problem+json."
    ),
    paths(
        super::handle::post_task,
        super::status::get_operation,
        super::healthz,
        super::ready::readyz,
        super::serve_metrics,
        openapi_json,
    ),
    components(schemas(
        Problem,
        PubSubMessage,
        PubSubPush,
        StructuredCloudEvent,
        FirestoreDocumentEvent,
        TaskRequest,
        TaskProcessed,
        SkippedAnswer,
        DeadLetteredAnswer,
        TaskAnswer,
    )),
    tags(
        (name = "work", description = "Work of every registered kind, each processed exactly \
            once in effect."),
        (name = "operations", description = "What happened to an operation."),
        (name = "dead letters", description = "Platform deliveries that could not succeed, and \
            their redrive."),
        (name = "console", description = "The operator console (HTML, script, style)."),
        (name = "service", description = "Probes and this description."),
    )
)]
pub struct ApiDoc;

/// The console's paths, in the document when the `console` feature is on.
#[cfg(feature = "console")]
#[derive(OpenApi)]
#[openapi(paths(
    super::console::list_operations,
    super::console::lookup,
    super::console::list_dead_letters,
    super::console::get_dead_letter,
    super::console::redrive_dead_letter,
    super::console::page,
    super::console::script,
    super::console::style,
))]
struct ConsoleDoc;

/// The OpenAPI document of a service with `extensions`: the core's paths, the console's,
/// then the service's own additions ([`Service::openapi`]), then the 503 every path that
/// can meet Firestore shares.
pub fn build(extensions: &[OpenApiExtension]) -> Document {
    let mut doc = ApiDoc::openapi();
    #[cfg(feature = "console")]
    doc.merge(ConsoleDoc::openapi());
    for extend in extensions {
        extend(&mut doc);
    }
    Shared.modify(&mut doc);
    doc
}

/// The document as served and committed: pretty JSON with a final newline, so a copy kept in
/// a repository diffs line by line. Built once per service.
pub fn document(svc: &Service) -> Result<&str, String> {
    svc.openapi_doc
        .get_or_init(|| {
            build(&svc.openapi)
                .to_pretty_json()
                .map(|mut s| {
                    s.push('\n');
                    s
                })
                .map_err(|e| format!("cannot serialize the OpenAPI document: {e}"))
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// Replace (or add) the schemas of `from` in `doc`: how a service's own shapes take the place
/// of the generic ones ([`TaskRequest`], [`TaskAnswer`]). `OpenApi::merge` keeps the first.
pub fn replace_schemas(doc: &mut Document, from: Document) {
    let Some(schemas) = from.components.map(|c| c.schemas) else {
        return;
    };
    let components = doc.components.get_or_insert_with(Default::default);
    components.schemas.extend(schemas);
}

/// `GET /openapi.json`: this service's OpenAPI 3.1 description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", body = Object,
         content_type = "application/json"),
    )
)]
pub async fn openapi_json(State(st): State<Service>) -> Response {
    match document(&st) {
        Ok(doc) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            doc.to_string(),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "openapi.json failed");
            ApiError::Internal(e).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn text(extensions: &[OpenApiExtension]) -> String {
        build(extensions).to_pretty_json().unwrap()
    }

    #[test]
    fn the_core_document_is_openapi_3_1_and_names_no_domain() {
        let text = text(&[]);
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for path in [
            "/tasks/{kind}",
            "/operations/{operation_id}",
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/metrics",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert!(doc["paths"]["/tasks/{kind}"]["post"]["responses"]["503"].is_object());
        assert!(doc["paths"]["/healthz"]["get"]["responses"]["503"].is_null());
        let metrics = &doc["paths"]["/metrics"]["get"]["responses"];
        assert!(metrics["200"]["content"]["application/openmetrics-text"].is_object());
        assert!(metrics["404"].is_object() && metrics["503"].is_null());
        // Whole words only: Pub/Sub's `orderingKey`, "in order" and JSON Schema's `items` are
        // not the shop's.
        let words: Vec<String> = text
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map(str::to_lowercase)
            .collect();
        for word in [
            "orders",
            "order_id",
            "cancel_order",
            "stock",
            "item_id",
            "restock",
        ] {
            assert!(
                !words.iter().any(|w| w == word),
                "the core's document names {word:?}"
            );
        }
        assert!(!words
            .iter()
            .any(|w| w.contains("fulfil") || w.contains("shop")));
    }

    #[test]
    fn a_service_replaces_the_generic_shapes_with_its_own() {
        let mine: OpenApiExtension = Arc::new(|doc: &mut Document| {
            let mut extra = Document::new(
                utoipa::openapi::Info::new("x", "1"),
                utoipa::openapi::Paths::new(),
            );
            extra.components = Some(
                utoipa::openapi::ComponentsBuilder::new()
                    .schema(
                        "TaskRequest",
                        utoipa::openapi::ObjectBuilder::new().title(Some("Mine")),
                    )
                    .build(),
            );
            replace_schemas(doc, extra);
        });
        let doc: Value = serde_json::from_str(&text(&[mine])).unwrap();
        assert_eq!(doc["components"]["schemas"]["TaskRequest"]["title"], "Mine");
    }
}
