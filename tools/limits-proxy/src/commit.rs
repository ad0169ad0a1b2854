//! What a `Commit` asks for: its gRPC frame opened, its `CommitRequest` decoded with the
//! generated prost types, and reduced to what the limits need (how many writes, which
//! documents, which transaction).

use gcloud_sdk::google::firestore::v1::{write::Operation, CommitRequest, Write};
use prost::Message;

/// Why a `Commit` body could not be read. Such a commit is refused (`INTERNAL`), never
/// forwarded uncounted: a commit the proxy cannot count would make the figures too good.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// The message is compressed (flag byte 1). Firestore clients (tonic, the `firestore`
    /// crate) do not compress requests by default, so the proxy does not decompress.
    #[error("compressed gRPC messages are not supported by limits-proxy")]
    Compressed,
    /// Not exactly one well-formed length-prefixed message.
    #[error("malformed gRPC frame: {0}")]
    Malformed(&'static str),
    /// The message is not a `CommitRequest`.
    #[error("undecodable CommitRequest: {0}")]
    Decode(String),
}

/// The one message of a unary gRPC request body: 1 flag byte, 4-byte big-endian length, the
/// message. Anything else (no message, two messages, trailing bytes) is refused.
pub fn unframe(body: &[u8]) -> Result<&[u8], FrameError> {
    let Some((&flag, rest)) = body.split_first() else {
        return Err(FrameError::Malformed("empty body"));
    };
    let Some((len, message)) = rest.split_first_chunk::<4>() else {
        return Err(FrameError::Malformed("short header"));
    };
    match flag {
        0 => {}
        1 => return Err(FrameError::Compressed),
        _ => return Err(FrameError::Malformed("unknown flag byte")),
    }
    let len = u32::from_be_bytes(*len) as usize;
    if message.len() != len {
        return Err(FrameError::Malformed(
            "length prefix does not match the body (a unary call carries one message)",
        ));
    }
    Ok(message)
}

/// `message` as one uncompressed gRPC frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// What the limits look at in one commit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommitSummary {
    /// `Write` messages: document writes, the unit of the database write rate.
    pub writes: usize,
    /// Writes as the per-commit limit counts them: each `Write` is one, and each field
    /// transform (`update_transforms`, or the fields of a `transform` write beyond its first)
    /// is one more. See [`counted_writes`].
    pub counted_writes: usize,
    /// The distinct documents written, in first-written order: a commit takes one token from
    /// each, however often it writes it.
    pub documents: Vec<String>,
    /// `database` of the request, for a `Rollback` of a refused transactional commit.
    pub database: String,
    /// The transaction committed, empty for a non-transactional commit.
    pub transaction: Vec<u8>,
}

/// How many writes one `Write` counts for against the per-commit limit.
///
/// Google's client documentation (and Firestore's engineers on the client trackers) say that
/// every field transform (server timestamp, increment, array union/remove) counts as a write
/// of its own: an update with two transforms is three writes. So: 1 for the write, plus one
/// per `update_transforms` entry. A `transform` write (the older form, transforms only) counts
/// as many writes as it has field transforms, and at least one.
pub fn counted_writes(w: &Write) -> usize {
    let base = match &w.operation {
        Some(Operation::Transform(t)) => t.field_transforms.len().max(1),
        _ => 1,
    };
    base + w.update_transforms.len()
}

/// The document a write writes: `update.name`, `delete`, or `transform.document`. A write with
/// an update used only as a precondition check (empty mask) is still a write of that document.
pub fn document_of(w: &Write) -> Option<&str> {
    match &w.operation {
        Some(Operation::Update(d)) => Some(&d.name),
        Some(Operation::Delete(name)) => Some(name),
        Some(Operation::Transform(t)) => Some(&t.document),
        None => None,
    }
}

/// Decode a `Commit` request body and summarize it.
pub fn read_commit(body: &[u8]) -> Result<CommitSummary, FrameError> {
    let message = unframe(body)?;
    let req = CommitRequest::decode(message).map_err(|e| FrameError::Decode(e.to_string()))?;
    Ok(summarize(req))
}

/// The summary of a decoded request.
pub fn summarize(req: CommitRequest) -> CommitSummary {
    let mut documents: Vec<String> = Vec::new();
    let mut counted = 0;
    // Commits are small (a handful of documents); a linear scan beats hashing there. Past a
    // few dozen documents, a set takes over.
    let mut seen: Option<std::collections::HashSet<String>> = None;
    for w in &req.writes {
        counted += counted_writes(w);
        let Some(doc) = document_of(w) else { continue };
        let new = match &mut seen {
            Some(set) => set.insert(doc.to_string()),
            None => {
                let new = !documents.iter().any(|d| d == doc);
                if new && documents.len() >= 32 {
                    seen = Some(documents.iter().cloned().chain([doc.to_string()]).collect());
                }
                new
            }
        };
        if new {
            documents.push(doc.to_string());
        }
    }
    CommitSummary {
        writes: req.writes.len(),
        counted_writes: counted,
        documents,
        database: req.database,
        transaction: req.transaction,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gcloud_sdk::google::firestore::v1::document_transform::{field_transform, FieldTransform};
    use gcloud_sdk::google::firestore::v1::{Document, DocumentMask, DocumentTransform};

    /// An update of `name` (empty fields), as a test builds writes.
    pub fn update(name: &str) -> Write {
        Write {
            operation: Some(Operation::Update(Document {
                name: name.to_string(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn increment(field: &str) -> FieldTransform {
        FieldTransform {
            field_path: field.to_string(),
            transform_type: Some(field_transform::TransformType::Increment(Default::default())),
        }
    }

    #[test]
    fn one_frame_is_opened_and_anything_else_refused() {
        let framed = frame(b"abc");
        assert_eq!(framed, [0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(unframe(&framed), Ok(&b"abc"[..]));
        assert_eq!(unframe(&frame(b"")), Ok(&b""[..]));
        let mut compressed = framed.clone();
        compressed[0] = 1;
        assert_eq!(unframe(&compressed), Err(FrameError::Compressed));
        assert!(matches!(unframe(&[]), Err(FrameError::Malformed(_))));
        assert!(matches!(
            unframe(&framed[..3]),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            unframe(&framed[..6]),
            Err(FrameError::Malformed(_))
        ));
        let two = [frame(b"a"), frame(b"b")].concat();
        assert!(matches!(unframe(&two), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn writes_count_with_their_field_transforms() {
        let plain = update("d/a");
        assert_eq!(counted_writes(&plain), 1);
        let mut with_two = update("d/a");
        with_two.update_transforms = vec![increment("x"), increment("y")];
        assert_eq!(counted_writes(&with_two), 3);
        let delete = Write {
            operation: Some(Operation::Delete("d/a".into())),
            ..Default::default()
        };
        assert_eq!(counted_writes(&delete), 1);
        let transform = |n| Write {
            operation: Some(Operation::Transform(DocumentTransform {
                document: "d/t".into(),
                field_transforms: (0..n).map(|i| increment(&format!("f{i}"))).collect(),
            })),
            ..Default::default()
        };
        assert_eq!(counted_writes(&transform(3)), 3);
        assert_eq!(counted_writes(&transform(0)), 1);
    }

    #[test]
    fn documents_are_distinct_and_cover_every_kind_of_write() {
        let mut check = update("d/a");
        check.update_mask = Some(DocumentMask::default());
        let req = CommitRequest {
            database: "projects/p/databases/(default)".into(),
            writes: vec![
                update("d/a"),
                Write {
                    operation: Some(Operation::Delete("d/b".into())),
                    ..Default::default()
                },
                Write {
                    operation: Some(Operation::Transform(DocumentTransform {
                        document: "d/c".into(),
                        field_transforms: vec![increment("n")],
                    })),
                    ..Default::default()
                },
                check,
                update("d/b"),
            ],
            transaction: b"tx".to_vec(),
            ..Default::default()
        };
        let s = read_commit(&frame(&req.encode_to_vec())).unwrap();
        assert_eq!(s.writes, 5);
        assert_eq!(s.counted_writes, 5);
        assert_eq!(s.documents, ["d/a", "d/b", "d/c"]);
        assert_eq!(s.database, "projects/p/databases/(default)");
        assert_eq!(s.transaction, b"tx");
    }

    #[test]
    fn many_documents_stay_distinct_past_the_linear_scan() {
        let writes: Vec<Write> = (0..100)
            .chain(0..100)
            .map(|i| update(&format!("d/{i}")))
            .collect();
        let s = summarize(CommitRequest {
            writes,
            ..Default::default()
        });
        assert_eq!(s.writes, 200);
        assert_eq!(s.documents.len(), 100);
        assert_eq!(s.documents[99], "d/99");
    }

    #[test]
    fn garbage_is_not_a_commit() {
        assert!(matches!(
            read_commit(&frame(&[0xff, 0xff, 0xff])),
            Err(FrameError::Decode(_))
        ));
    }
}
