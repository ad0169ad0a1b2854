//! Every way a delivery or a request can fail, typed, with the one mapping to an HTTP status
//! and an `application/problem+json` body (RFC 9457) built by [`crate::engine::answer`].
//! Ingest and redrive use it without a server; `http::error` turns it into a response.

use crate::delivery::DeliveryError;
use crate::engine::{answer, ValidationError};
use crate::guard::GuardError;
use http::StatusCode;
use serde_json::{json, Map, Value};

/// Every way a request can fail before or around the guard.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the payload is invalid.
    #[error("{0}")]
    Validation(#[from] ValidationError),
    /// The body could not be decoded at all.
    #[error("{0}")]
    Malformed(String),
    /// The body is over the limit.
    #[error("body larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Wrong content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// No such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// Route exists, method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A kind nobody registered (`/tasks/{kind}`).
    #[error("unknown task kind {kind:?}")]
    UnknownKind {
        /// What was asked for.
        kind: String,
        /// What exists.
        known: Vec<String>,
    },
    /// An envelope field (CloudEvent attribute, Pub/Sub field, header) is missing or wrong.
    #[error("{field}: {message}")]
    Envelope {
        /// The field, e.g. `ce-id`, `message.data`, `Idempotency-Key`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Another delivery is running this step right now.
    #[error("{detail}")]
    Busy {
        /// What is busy.
        detail: String,
        /// Seconds until the holder's lease expires.
        retry_after: u64,
    },
    /// Key reused with another payload.
    #[error("{detail}")]
    KeyReused {
        /// The operation ID.
        operation_id: String,
        /// What was reused.
        detail: String,
    },
    /// Outcome unknown; retry later.
    #[error("{detail}")]
    Unavailable {
        /// Why.
        detail: String,
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// Firestore did not answer the readiness probe.
    #[error("{detail}")]
    NotReady {
        /// Why.
        detail: String,
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// A bug or corrupt data; details are logged, not returned.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) | ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnknownKind { .. } => StatusCode::NOT_FOUND,
            ApiError::Envelope { .. } => StatusCode::BAD_REQUEST,
            ApiError::Busy { .. } => StatusCode::CONFLICT,
            ApiError::KeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable { .. } | ApiError::NotReady { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short machine name, also the last segment of the problem type and the logged outcome.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "invalid-field",
            ApiError::Malformed(_) => "malformed-body",
            ApiError::TooLarge { .. } => "body-too-large",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::UnknownKind { .. } => "unknown-kind",
            ApiError::Envelope { .. } => "invalid-envelope",
            ApiError::Busy { .. } => "in-progress",
            ApiError::KeyReused { .. } => "key-reused",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::NotReady { .. } => "not-ready",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Map a guard failure, with the configured `Retry-After`.
    pub fn from_guard(e: GuardError, retry_after: u64) -> Self {
        match e {
            GuardError::KeyReused { operation_id } => ApiError::KeyReused {
                detail: "this key was first used with a different payload; nothing was changed"
                    .into(),
                operation_id,
            },
            GuardError::Unavailable(cause) => ApiError::Unavailable {
                detail: cause.to_string(),
                retry_after,
            },
            GuardError::Operation(detail) => ApiError::Internal(detail),
        }
    }

    /// The problem+json body.
    pub fn body(&self) -> Value {
        let status = self.status();
        let detail = match self {
            ApiError::Internal(_) => "internal error; it has been logged".to_string(),
            ApiError::Unavailable { detail, .. } => {
                format!("the outcome is not known yet; retry with the same request ({detail})")
            }
            other => other.to_string(),
        };
        let mut extra = Map::new();
        match self {
            ApiError::Validation(v) => extra.insert("field".into(), json!(v.field)),
            ApiError::Envelope { field, .. } => extra.insert("field".into(), json!(field)),
            ApiError::UnknownKind { known, .. } => extra.insert("known_kinds".into(), json!(known)),
            ApiError::KeyReused { operation_id, .. } => {
                extra.insert("operation_id".into(), json!(operation_id))
            }
            _ => None,
        };
        let title = status.canonical_reason().unwrap_or("Error");
        answer::problem(self.code(), title, status.as_u16(), &detail, extra)
    }
}

impl From<DeliveryError> for ApiError {
    fn from(e: DeliveryError) -> Self {
        match e {
            DeliveryError::UnsupportedMediaType(_) => ApiError::UnsupportedMediaType(e.to_string()),
            DeliveryError::MalformedJson(_) => ApiError::Malformed(e.to_string()),
            DeliveryError::Envelope { field, message } => ApiError::Envelope { field, message },
        }
    }
}

impl ApiError {
    /// Seconds for `Retry-After`, on the answers that ask the caller to come back.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Unavailable { retry_after, .. }
            | ApiError::Busy { retry_after, .. }
            | ApiError::NotReady { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}
