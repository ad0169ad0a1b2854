//! A kind as a serde type: the payload deserializes into it (field errors name their path),
//! its key is one named payload field (else the delivery's identity), and its fingerprint is
//! the canonical form of the value. Register it with [`Registry::register_kind`]; implement
//! [`Operation`] yourself only when you need more (a second round of reads, hooks).

use super::key::{is_valid_document_id, Fingerprint};
use super::operation::{Decision, DocRef, OpError, Operation, Snapshot};
use super::parse::{Registry, ValidationError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// One kind of work whose payload is `Self`.
pub trait Kind: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind's name: served at `POST /tasks/{KIND}`, and the namespace of its keys.
    const KIND: &'static str;
    /// The payload field that names the work (`"vote_id"`): the same on every delivery of the
    /// same work. Absent, the caller's `Idempotency-Key` or the platform's delivery identity
    /// is the key.
    const KEY: &'static str;
    /// Every document [`decide`](Kind::decide) may look at.
    fn reads(&self) -> Vec<DocRef>;
    /// Pure: the writes to commit with the status document, or a durable rejection.
    fn decide(&self, snapshot: &Snapshot) -> Result<Decision, OpError>;
}

/// A [`Kind`]'s value with the key and fingerprint of its delivery.
struct Keyed<K> {
    key: String,
    fingerprint: Fingerprint,
    value: K,
}

impl<K: Kind> Operation for Keyed<K> {
    fn kind(&self) -> &'static str {
        K::KIND
    }
    fn key(&self) -> &str {
        &self.key
    }
    fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
    fn reads(&self) -> Vec<DocRef> {
        self.value.reads()
    }
    fn decide(&self, snapshot: &Snapshot) -> Result<Decision, OpError> {
        self.value.decide(snapshot)
    }
}

impl Registry {
    /// Serve the kind `K` (at `POST /tasks/{K::KIND}`): its payload is parsed with serde, a
    /// field that does not fit is a 400 naming its path (`poll`, `lines[2].quantity`).
    pub fn register_kind<K: Kind>(&mut self) -> &mut Self {
        self.register(K::KIND, |body, ctx| {
            super::parse::object(body)?;
            let value: K = serde_path_to_error::deserialize(body).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                ValidationError::new(field, e.into_inner().to_string())
            })?;
            let fingerprint = Fingerprint::of(K::KIND, &value);
            let (key, _) = ctx.key(body, K::KEY, || fingerprint)?;
            Ok(Keyed {
                key,
                fingerprint,
                value,
            })
        })
    }
}

/// A document ID taken from a payload, checked when it is parsed: at most 1,500 bytes, no
/// `/`, not `.`, `..` or `__…__`, so a bad one is the caller's 400, never a failed commit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DocId(String);

impl DocId {
    /// `id` when it is a valid Firestore document ID.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        is_valid_document_id(&id).then_some(Self(id))
    }

    /// The ID.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for DocId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DocId::new(s).ok_or_else(|| {
            serde::de::Error::custom(
                "must be a Firestore document ID: 1 to 1500 bytes, no '/', not '.', '..' or '__…__'",
            )
        })
    }
}

impl From<&DocId> for String {
    fn from(id: &DocId) -> Self {
        id.0.clone()
    }
}

impl std::fmt::Display for DocId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ParseCtx, Parsed, Write};
    use serde_json::json;

    #[derive(Serialize, Deserialize)]
    struct Vote {
        poll: DocId,
    }

    impl Kind for Vote {
        const KIND: &'static str = "vote";
        const KEY: &'static str = "vote_id";
        fn reads(&self) -> Vec<DocRef> {
            vec![DocRef::new("polls", &self.poll)]
        }
        fn decide(&self, _: &Snapshot) -> Result<Decision, OpError> {
            let poll = DocRef::new("polls", &self.poll);
            Ok(Decision::apply(vec![Write::set(poll, &json!({"v": 1}))?]))
        }
    }

    fn parse(body: serde_json::Value) -> Result<std::sync::Arc<dyn Operation>, ValidationError> {
        let mut r = Registry::default();
        r.register_kind::<Vote>();
        let ctx = ParseCtx {
            fallback_key: None,
            direct: true,
        };
        match r.parse("vote", &body, &ctx) {
            Some(Ok(Parsed::Operation(op))) => Ok(op),
            Some(Err(e)) => Err(e),
            _ => panic!("not an operation"),
        }
    }

    #[test]
    fn a_serde_kind_is_keyed_fingerprinted_and_validated() {
        let a = parse(json!({"vote_id": "v-1", "poll": "p1"})).unwrap();
        assert_eq!((a.kind(), a.key()), ("vote", "v-1"));
        assert_eq!(a.reads(), [DocRef::new("polls", "p1")]);
        // The key field is not part of the work: the same vote for another poll differs.
        let same = parse(json!({"poll": "p1", "vote_id": "v-9"})).unwrap();
        let other = parse(json!({"vote_id": "v-1", "poll": "p2"})).unwrap();
        assert_eq!(a.fingerprint(), same.fingerprint());
        assert_ne!(a.fingerprint(), other.fingerprint());
        let e = parse(json!({"vote_id": "v-1", "poll": "a/b"}))
            .err()
            .unwrap();
        assert_eq!(e.field, "poll");
        let e = parse(json!({"vote_id": "v-1"})).err().unwrap();
        assert!(e.message.contains("poll"), "{e}");
        let e = parse(json!({"poll": "p1"})).err().unwrap();
        assert_eq!(e.field, "vote_id");
        let e = parse(json!([1])).err().unwrap();
        assert_eq!(e.field, "body");
    }
}
