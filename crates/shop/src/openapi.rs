//! The shop's part of the OpenAPI document: `POST /orders`, the request and answer shapes of
//! its kinds (in place of the core's generic `TaskRequest`), its examples, and the `order_id`
//! look-up. [`extend`] is what [`crate::service`](fn@crate::service) hands to `Service::openapi`. Documentation
//! only: the kinds parse their payloads themselves, with precise field errors.

use firestore_once_core::http::openapi::{
    replace_schemas, DeadLetteredAnswer, DeliveryHeaders, FirestoreDocumentEvent, Problem,
    Processed, PubSubPush, SkippedAnswer, StructuredCloudEvent,
};
use serde::Serialize;
use serde_json::json;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{OpenApi as Document, RefOr};
use utoipa::{OpenApi, ToSchema};

/// One line of an order.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"item_id": "apple", "quantity": 2}))]
pub struct OrderLine {
    /// A document ID in the items collection: 1 to 1,500 bytes, no `/`, not `.`, `..` or
    /// `__…__`.
    #[schema(min_length = 1, max_length = 1500)]
    pub item_id: String,
    /// Units to take.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub quantity: i64,
}

/// An order of one item. `order_id` is required unless an `Idempotency-Key` header names the
/// order (or a platform delivery's identity does).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"order_id": "o-1", "item_id": "apple", "quantity": 2}))]
pub struct PlainOrder {
    /// The caller's order ID, at most 4,096 bytes: the operation key.
    #[schema(min_length = 1, max_length = 4096)]
    pub order_id: Option<String>,
    /// See [`OrderLine::item_id`].
    #[schema(min_length = 1, max_length = 1500)]
    pub item_id: String,
    /// Units to take.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub quantity: i64,
}

/// An order of several items, all or nothing. Line order does not matter; an item may appear
/// once.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"order_id": "o-2", "items": [
    {"item_id": "apple", "quantity": 1}, {"item_id": "pear", "quantity": 3}]}))]
pub struct MultiLineOrder {
    /// As in [`PlainOrder::order_id`].
    #[schema(min_length = 1, max_length = 4096)]
    pub order_id: Option<String>,
    /// 1 to 100 lines.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<OrderLine>,
}

/// A JSON body of `POST /orders`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum OrderRequest {
    /// One item.
    Plain(PlainOrder),
    /// Several items.
    Lines(MultiLineOrder),
    /// A Pub/Sub push envelope whose `message.data` is one of the above.
    Push(PubSubPush),
}

/// `restock`: add `quantity` to an item's stock, once per `restock_id`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"restock_id": "rs-1", "item_id": "apple", "quantity": 5}))]
pub struct RestockTask {
    /// Operation key; required from a direct caller without `Idempotency-Key`.
    #[schema(min_length = 1, max_length = 4096)]
    pub restock_id: Option<String>,
    /// An existing item.
    #[schema(min_length = 1, max_length = 1500)]
    pub item_id: String,
    /// Units to add.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub quantity: i64,
}

/// `cancel_order`: give back a processed order's stock and mark it cancelled, once.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"order_id": "o-1"}))]
pub struct CancelOrderTask {
    /// The order to cancel.
    #[schema(min_length = 1, max_length = 4096)]
    pub order_id: String,
}

/// `fulfil_order`: the multi-step task reserve → invoice → ship, each step once.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"order_id": "o-1"}))]
pub struct FulfilOrderTask {
    /// The processed order to fulfil.
    #[schema(min_length = 1, max_length = 4096)]
    pub order_id: String,
}

/// A JSON body of `POST /tasks/{kind}`; which one depends on `kind` (`order` takes an
/// [`OrderRequest`]). A Pub/Sub push envelope carrying one of them is accepted too.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TaskRequest {
    /// `kind = restock`.
    Restock(RestockTask),
    /// `kind = cancel_order`.
    Cancel(CancelOrderTask),
    /// `kind = fulfil_order`.
    Fulfil(FulfilOrderTask),
    /// `kind = order`.
    Order(OrderRequest),
}

/// A processed order.
#[derive(Serialize, ToSchema)]
pub struct OrderProcessed {
    /// Hex sha256 of `order:` + the key.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub operation_id: String,
    /// `order`.
    pub kind: String,
    /// `processed`.
    pub outcome: Processed,
    /// The order ID (the key it fell back to when the payload had none).
    pub order_id: String,
    /// The lines, sorted by item.
    pub lines: Vec<OrderLine>,
}

/// A 200 JSON answer of `POST /orders`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum OrderAnswer {
    /// The order was processed (`Idempotent-Replayed: true` on a replay).
    Processed(OrderProcessed),
    /// Nothing to do.
    Skipped(SkippedAnswer),
    /// Recorded as a dead letter.
    DeadLettered(DeadLetteredAnswer),
}

/// `POST /orders`: process an order exactly once in effect, whatever delivered it.
// Served by the core's kind route (`Service::route`); this item carries its description.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "work",
    params(DeliveryHeaders),
    request_body(
        description = "A plain or multi-line order, a Pub/Sub push envelope carrying one, a \
            structured CloudEvent, or (with `ce-*` headers) a binary-mode CloudEvent whose body \
            is the order as JSON or a Firestore `DocumentEventData` as protobuf.",
        content(
            (OrderRequest = "application/json"),
            (StructuredCloudEvent = "application/cloudevents+json"),
            (FirestoreDocumentEvent = "application/protobuf"),
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
            (OrderAnswer = "application/json"),
            (Problem = "application/problem+json"),
         )),
        (status = 400, description = "Malformed JSON, an invalid field (`field` names it) or \
            an invalid envelope; nothing was written.",
         body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Rejected: an unknown item or not enough stock. Recorded, \
            so every retry gets the same answer.",
         links(("status" = (operation_id = "get_operation",
             parameters(("operation_id" = "$response.body#/operation_id")),
             description = "What happened to this operation: `GET /operations/{operation_id}`."))),
         headers(("Idempotent-Replayed" = String,
                  description = "`true` when an earlier delivery decided this answer.")),
         body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over `ONCE_MAX_BODY_BYTES`.",
         body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not a JSON body.",
         body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was first used with another payload; nothing \
            was changed.",
         body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)] // Documentation only: the core serves the route (`Service::route`).
fn post_orders() {}

/// The `order_id` look-up parameter of `GET /operations/lookup` (see `Service::lookup`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Never built: it exists to be described.
struct OrderLookup {
    /// An order's `order_id`.
    order_id: Option<String>,
}

/// The shop's paths and shapes.
#[derive(OpenApi)]
#[openapi(
    paths(post_orders),
    components(schemas(
        OrderLine,
        PlainOrder,
        MultiLineOrder,
        OrderRequest,
        RestockTask,
        CancelOrderTask,
        FulfilOrderTask,
        TaskRequest,
        OrderProcessed,
        OrderAnswer,
    ))
)]
struct ShopDoc;

/// Examples of the core's envelope shapes, carrying the shop's own payloads.
fn examples() -> [(&'static str, serde_json::Value); 2] {
    [
        (
            "PubSubPush",
            json!({"message": {"data": "eyJvcmRlcl9pZCI6Im8tMyIsIml0ZW1faWQiOiJhcHBsZSIsInF1YW50aXR5IjoxfQ==",
                "messageId": "136969346945", "publishTime": "2026-11-23T10:00:00Z"},
                "subscription": "projects/demo/subscriptions/orders-push", "deliveryAttempt": 1}),
        ),
        (
            "StructuredCloudEvent",
            json!({"specversion": "1.0", "id": "evt-1", "source": "/shop",
                "type": "com.example.order", "datacontenttype": "application/json",
                "data": {"order_id": "o-4", "item_id": "apple", "quantity": 1}}),
        ),
    ]
}

/// Add the shop to a service's document: `POST /orders`, its kinds' request and answer
/// shapes in place of the generic ones, shop examples, and the `order_id` look-up.
pub fn extend(doc: &mut Document) {
    let mut shop = ShopDoc::openapi();
    let paths = std::mem::take(&mut shop.paths.paths);
    replace_schemas(doc, shop);
    doc.paths.paths.extend(paths);
    if let Some(components) = doc.components.as_mut() {
        for (name, example) in examples() {
            if let Some(RefOr::T(utoipa::openapi::schema::Schema::Object(o))) =
                components.schemas.get_mut(name)
            {
                o.example = Some(example);
            }
        }
    }
    if let Some(ps) = params(doc, "/tasks/{kind}", false) {
        for p in ps.iter_mut() {
            if let RefOr::T(param) = p {
                if param.name == "kind" {
                    *param = ParameterBuilder::from(param.clone())
                        .example(Some(json!("restock")))
                        .build();
                }
            }
        }
    }
    if let Some(ps) = params(doc, "/operations/lookup", true) {
        let order: Vec<Parameter> =
            <OrderLookup as utoipa::IntoParams>::into_params(|| Some(ParameterIn::Query));
        ps.splice(0..0, order.into_iter().map(RefOr::T));
    }
}

/// The parameters of the `GET` (`get`) or `POST` operation at `path`.
fn params<'a>(
    doc: &'a mut Document,
    path: &str,
    get: bool,
) -> Option<&'a mut Vec<RefOr<Parameter>>> {
    let item = doc.paths.paths.get_mut(path)?;
    let op = if get {
        item.get.as_mut()
    } else {
        item.post.as_mut()
    }?;
    op.parameters.as_mut()
}
