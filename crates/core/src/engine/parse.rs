//! Which kinds `POST /tasks/{kind}` accepts, and how a payload becomes one.
//!
//! Adding a kind is one file: implement [`Operation`] (one commit) or [`Workflow`] (several),
//! write a parser, and register it with [`Registry::register`] or
//! [`Registry::register_workflow`]. The guard and the HTTP layer do the rest.

use super::{Operation, Workflow};
use crate::engine::key::Fingerprint;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A request field that fails validation: answered 400 to direct callers, nothing written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// JSON path of the offending field, e.g. `lines[2].quantity`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    /// Build one from a field path and a message.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Longest accepted domain key (the payload field a kind names as its key), in bytes. Keys are hashed into
/// document IDs, so any content is safe; the cap keeps status documents and logs small.
pub const MAX_KEY_BYTES: usize = 4096;

/// What a parser may use besides the payload (a kind's own settings, such as its collection
/// names, are captured by its parser when it is registered).
pub struct ParseCtx<'a> {
    /// Transport identity for payloads without a domain key (`idempotency-key:…`,
    /// `cloudevent:…`, `pubsub:…`, `cloudtasks:…`, `firestore-document:…`).
    pub fallback_key: Option<&'a str>,
    /// A direct caller must name the work (domain key or `Idempotency-Key`); a platform
    /// delivery may fall back to a hash of the payload.
    pub direct: bool,
}

impl ParseCtx<'_> {
    /// The operation key: the payload's `field` (domain identity) first, then the transport
    /// identity, then (for platform deliveries only) `payload:` + sha256 of the canonical form.
    pub fn key(
        &self,
        body: &Value,
        field: &str,
        canonical: impl FnOnce() -> Fingerprint,
    ) -> Result<(String, Option<String>), ValidationError> {
        match body.get(field) {
            Some(Value::String(s)) if s.is_empty() => {
                Err(ValidationError::new(field, "must not be empty"))
            }
            Some(Value::String(s)) if s.len() > MAX_KEY_BYTES => Err(ValidationError::new(
                field,
                format!("must be at most {MAX_KEY_BYTES} bytes"),
            )),
            Some(Value::String(s)) => Ok((s.clone(), Some(s.clone()))),
            Some(Value::Null) | None => match (self.fallback_key, self.direct) {
                (Some(k), _) => Ok((k.to_string(), None)),
                (None, false) => Ok((format!("payload:{}", canonical().to_hex()), None)),
                (None, true) => Err(ValidationError::new(
                    field,
                    "is required (or send an Idempotency-Key header)",
                )),
            },
            Some(_) => Err(ValidationError::new(field, "must be a string")),
        }
    }
}

/// Turns a validated payload into an operation.
pub type Parser =
    Arc<dyn Fn(&Value, &ParseCtx<'_>) -> Result<Arc<dyn Operation>, ValidationError> + Send + Sync>;

/// Turns a validated payload into a workflow run.
pub type WorkflowParser =
    Arc<dyn Fn(&Value, &ParseCtx<'_>) -> Result<Arc<dyn Workflow>, ValidationError> + Send + Sync>;

/// What a payload of a registered kind became.
pub enum Parsed {
    /// One commit.
    Operation(Arc<dyn Operation>),
    /// Several commits, run by the guard's workflow runner.
    Workflow(Arc<dyn Workflow>),
}

/// The kinds served under `/tasks/{kind}` (and under the routes registered for them, see
/// [`crate::service::Service::route`]).
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Parser>,
    workflows: BTreeMap<String, WorkflowParser>,
}

impl Registry {
    /// Add (or replace) a kind: `parser` turns a validated payload into your operation.
    pub fn register<O, F>(&mut self, kind: &str, parser: F) -> &mut Self
    where
        O: Operation,
        F: Fn(&Value, &ParseCtx<'_>) -> Result<O, ValidationError> + Send + Sync + 'static,
    {
        self.workflows.remove(kind);
        let parser: Parser =
            Arc::new(move |v, ctx| parser(v, ctx).map(|op| Arc::new(op) as Arc<dyn Operation>));
        self.kinds.insert(kind.to_string(), parser);
        self
    }

    /// Add (or replace) a workflow kind: `parser` turns a validated payload into a run of it.
    pub fn register_workflow<W, F>(&mut self, kind: &str, parser: F) -> &mut Self
    where
        W: Workflow,
        F: Fn(&Value, &ParseCtx<'_>) -> Result<W, ValidationError> + Send + Sync + 'static,
    {
        self.kinds.remove(kind);
        let parser: WorkflowParser =
            Arc::new(move |v, ctx| parser(v, ctx).map(|w| Arc::new(w) as Arc<dyn Workflow>));
        self.workflows.insert(kind.to_string(), parser);
        self
    }

    /// The parser of the single-step kind `kind`.
    pub fn get(&self, kind: &str) -> Option<&Parser> {
        self.kinds.get(kind)
    }

    /// Parse `body` as `kind`; `None` when nobody registered `kind`.
    pub fn parse(
        &self,
        kind: &str,
        body: &Value,
        ctx: &ParseCtx<'_>,
    ) -> Option<Result<Parsed, ValidationError>> {
        if let Some(p) = self.kinds.get(kind) {
            return Some(p(body, ctx).map(Parsed::Operation));
        }
        let p = self.workflows.get(kind)?;
        Some(p(body, ctx).map(Parsed::Workflow))
    }

    /// Whether `kind` is registered, as an operation or a workflow.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind) || self.workflows.contains_key(kind)
    }

    /// Every registered kind, operations and workflows, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .kinds
            .keys()
            .chain(self.workflows.keys())
            .map(String::as_str)
            .collect();
        all.sort_unstable();
        all
    }

    /// The workflow a step kind (`{workflow}.{step}`) belongs to, with the step's name.
    pub fn workflow_of_step<'k>(&self, step_kind: &'k str) -> Option<(&str, &'k str)> {
        self.workflows.keys().find_map(|w| {
            let step = step_kind.strip_prefix(w.as_str())?.strip_prefix('.')?;
            Some((w.as_str(), step))
        })
    }
}

/// A required non-empty string field that names a document (a valid Firestore document ID).
pub fn doc_id_field(body: &Value, field: &str) -> Result<String, ValidationError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(ValidationError::new(field, "is required")),
        Some(Value::String(s)) if s.is_empty() => {
            Err(ValidationError::new(field, "must not be empty"))
        }
        Some(Value::String(s)) if crate::engine::key::is_valid_document_id(s) => Ok(s.clone()),
        Some(Value::String(_)) => Err(ValidationError::new(
            field,
            "must be a Firestore document ID: at most 1500 bytes, no '/', not '.', '..' or '__…__'",
        )),
        Some(_) => Err(ValidationError::new(field, "must be a string")),
    }
}

/// A required integer field in `1..=max`.
pub fn positive_field(body: &Value, field: &str, max: i64) -> Result<i64, ValidationError> {
    match body.get(field).and_then(Value::as_i64) {
        Some(q) if (1..=max).contains(&q) => Ok(q),
        _ => Err(ValidationError::new(
            field,
            format!("must be an integer from 1 to {max}"),
        )),
    }
}

/// The payload must be a JSON object.
pub fn object(body: &Value) -> Result<(), ValidationError> {
    if body.is_object() {
        Ok(())
    } else {
        Err(ValidationError::new("body", "must be a JSON object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_prefers_domain_then_transport_then_payload() {
        let fp = || Fingerprint::of("x", &1);
        let ctx = ParseCtx {
            fallback_key: Some("pubsub:m1"),
            direct: false,
        };
        assert_eq!(
            ctx.key(&json!({"id":"d"}), "id", fp).unwrap(),
            ("d".into(), Some("d".into()))
        );
        assert_eq!(
            ctx.key(&json!({}), "id", fp).unwrap(),
            ("pubsub:m1".into(), None)
        );
        let push = ParseCtx {
            fallback_key: None,
            direct: false,
        };
        assert!(push
            .key(&json!({}), "id", fp)
            .unwrap()
            .0
            .starts_with("payload:"));
        let direct = ParseCtx {
            fallback_key: None,
            direct: true,
        };
        assert_eq!(direct.key(&json!({}), "id", fp).unwrap_err().field, "id");
        assert_eq!(
            direct.key(&json!({"id": 3}), "id", fp).unwrap_err().field,
            "id"
        );
        assert_eq!(
            direct.key(&json!({"id": ""}), "id", fp).unwrap_err().field,
            "id"
        );
    }
}
