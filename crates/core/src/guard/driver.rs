//! The Firestore calls the guard makes, and nothing else: a non-transactional
//! `BatchGetDocuments` that keeps each document's `update_time`, and a non-transactional
//! `Commit` whose writes carry preconditions (see [`super::fold`]).
//!
//! No read-write transaction is opened anywhere: nothing is locked between a read and its
//! commit, so a crashed instance or a lost answer can strand nothing. Errors
//! ([`DriverError`]) keep the gRPC [`Code`](firestore::gcloud_sdk::tonic::Code) so the caller
//! can tell a conflict (nothing written, retry on fresh reads) from an unknown outcome
//! (answer 503, let the redelivery settle it).

use super::error::DriverError;
use super::fold::{Guarded, Precondition, Version};
use crate::engine::{DocRef, Fields, WriteKind};
use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore::gcloud_sdk::prost_types::Timestamp;
use firestore::FirestoreDb;
use std::collections::HashMap;
use std::time::Duration;
use tracing::Instrument;

/// A document as read: its fields and version, `None` when it does not exist.
pub type ReadDoc = Option<(Fields, Version)>;

/// The Firestore calls of the guard.
#[derive(Clone)]
pub struct Driver {
    db: FirestoreDb,
    call_timeout: Duration,
}

impl Driver {
    /// Calls on `db`, each bounded by `call_timeout`.
    pub fn new(db: FirestoreDb, call_timeout: Duration) -> Self {
        Self { db, call_timeout }
    }

    /// The database.
    pub fn db(&self) -> &FirestoreDb {
        &self.db
    }

    async fn call<T, F>(&self, call: &'static str, fut: F) -> Result<T, DriverError>
    where
        F: std::future::Future<Output = Result<T, firestore::gcloud_sdk::tonic::Status>>,
    {
        let method = match call {
            "read" => "BatchGetDocuments",
            _ => "Commit",
        };
        let timed = tokio::time::timeout(self.call_timeout, fut);
        match timed
            .instrument(crate::tracing_otel::firestore_span(method))
            .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(status)) => Err(DriverError {
                call,
                code: Some(status.code()),
                message: status.message().to_string(),
            }),
            Err(_) => Err(DriverError {
                call,
                code: None,
                message: format!("no answer within {} ms", self.call_timeout.as_millis()),
            }),
        }
    }

    /// Read `docs` in one non-transactional `BatchGetDocuments` (one consistent read time,
    /// no locks), keeping each document's `update_time` for the commit's preconditions.
    pub async fn read(&self, docs: &[DocRef]) -> Result<HashMap<DocRef, ReadDoc>, DriverError> {
        let root = self.db.get_documents_path();
        let by_path: HashMap<String, &DocRef> =
            docs.iter().map(|d| (d.full_path(root), d)).collect();
        let req = pb::BatchGetDocumentsRequest {
            database: self.db.get_database_path().clone(),
            documents: by_path.keys().cloned().collect(),
            ..Default::default()
        };
        let mut client = self.db.client().get();
        let collect = async {
            let mut stream = client.batch_get_documents(req).await?.into_inner();
            let mut out = HashMap::with_capacity(docs.len());
            while let Some(msg) = stream.message().await? {
                match msg.result {
                    Some(pb::batch_get_documents_response::Result::Found(d)) => {
                        if let Some(r) = by_path.get(&d.name) {
                            let version = Version::At(d.update_time.unwrap_or_default());
                            out.insert((*r).clone(), Some((d.fields, version)));
                        }
                    }
                    Some(pb::batch_get_documents_response::Result::Missing(name)) => {
                        if let Some(r) = by_path.get(&name) {
                            out.insert((*r).clone(), None);
                        }
                    }
                    None => {}
                }
            }
            Ok(out)
        };
        let out = self.call("read", collect).await?;
        if out.len() != by_path.len() {
            return Err(DriverError {
                call: "read",
                code: None,
                message: format!("{} of {} documents answered", out.len(), by_path.len()),
            });
        }
        Ok(out)
    }

    /// One non-transactional, atomic commit of `writes`: all or nothing, every precondition
    /// checked at commit time. Answers each write's new `update_time`, in order, for a caller
    /// that will write the same document again with a precondition.
    pub async fn commit(
        &self,
        writes: Vec<Guarded>,
    ) -> Result<Vec<Option<Timestamp>>, DriverError> {
        let commit = pb::CommitRequest {
            database: self.db.get_database_path().clone(),
            writes: writes.into_iter().map(|w| self.to_pb(w)).collect(),
            ..Default::default()
        };
        let mut client = self.db.client().get();
        let answer = self.call("commit", client.commit(commit)).await?;
        Ok(answer
            .into_inner()
            .write_results
            .into_iter()
            .map(|w| w.update_time)
            .collect())
    }

    fn to_pb(&self, w: Guarded) -> pb::Write {
        let (doc, kind, pre) = match w {
            Guarded::Write {
                write,
                precondition,
            } => (write.doc, Some(write.kind), precondition),
            Guarded::Verify { doc, version } => (doc, None, Precondition::from(version)),
        };
        let name = doc.full_path(self.db.get_documents_path());
        let current_document = match pre {
            Precondition::None => None,
            Precondition::Exists(e) => Some(pb::Precondition {
                condition_type: Some(pb::precondition::ConditionType::Exists(e)),
            }),
            Precondition::UpdateTime(t) => Some(pb::Precondition {
                condition_type: Some(pb::precondition::ConditionType::UpdateTime(t)),
            }),
        };
        let document = |fields| pb::Document {
            name: name.clone(),
            fields,
            ..Default::default()
        };
        let (operation, update_mask) = match kind {
            Some(WriteKind::Create(f)) | Some(WriteKind::Set(f)) => {
                (pb::write::Operation::Update(document(f)), None)
            }
            Some(WriteKind::Update(f)) => {
                let field_paths = f.keys().map(|k| field_path(k)).collect();
                (
                    pb::write::Operation::Update(document(f)),
                    Some(pb::DocumentMask { field_paths }),
                )
            }
            Some(WriteKind::Delete) => (pb::write::Operation::Delete(name.clone()), None),
            // Verifying an existing document: an update with an empty mask changes nothing
            // (its update_time stays the one read) but its precondition is checked. Verifying
            // a missing one: deleting a missing document is a no-op, and `exists: false` fails
            // the commit if it appeared.
            None => match pre {
                Precondition::UpdateTime(_) => (
                    pb::write::Operation::Update(document(Fields::new())),
                    Some(pb::DocumentMask::default()),
                ),
                _ => (pb::write::Operation::Delete(name.clone()), None),
            },
        };
        pb::Write {
            operation: Some(operation),
            update_mask,
            current_document,
            ..Default::default()
        }
    }
}

/// A top-level field name as a Firestore field path: simple names stay bare, others are
/// backquoted with `\` and `` ` `` escaped.
pub(crate) fn field_path(name: &str) -> String {
    let simple = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if simple {
        name.to_string()
    } else {
        format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_are_quoted_when_needed() {
        assert_eq!(field_path("votes"), "votes");
        assert_eq!(field_path("_a1"), "_a1");
        assert_eq!(field_path("1a"), "`1a`");
        assert_eq!(field_path("a.b"), "`a.b`");
        assert_eq!(field_path("a`b"), "`a\\`b`");
    }
}
