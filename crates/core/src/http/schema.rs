//! The request and answer shapes the OpenAPI document describes, apart from the document
//! itself so a handler names its shapes without depending on the list of handlers
//! ([`super::openapi`]) that names it.
//!
//! Documentation only: parsing stays in `engine/` and `delivery/` (and in each kind), which
//! give precise field errors that a generic deserializer could not.

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

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
/// carrying it. A service replaces this with its kinds' shapes ([`Service::openapi`](crate::service::Service::openapi)).
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
