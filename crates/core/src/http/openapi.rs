//! The machine-readable description of the HTTP surface: an OpenAPI 3.1 document generated
//! from the handlers' `#[utoipa::path]` annotations and the shapes in [`super::schema`]
//! (re-exported here), served at `GET /openapi.json` and kept in the repository as
//! `openapi.json`.
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
pub use super::schema::*;
use crate::service::{OpenApiExtension, Service};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

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
        super::ready::healthz,
        super::ready::readyz,
        super::metrics::serve_metrics,
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
    use serde_json::Value;
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
