use super::*;
use crate::guard::operation_id;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A counter, the document the test operation takes from.
#[derive(Serialize, Deserialize)]
struct Level {
    n: i64,
}

/// Take `q` units of `counter` once per `id`: the smallest operation with a rejection.
struct Take {
    id: String,
    counter: String,
    q: i64,
}

impl Operation for Take {
    fn kind(&self) -> &'static str {
        "take"
    }
    fn key(&self) -> &str {
        &self.id
    }
    fn fingerprint(&self) -> crate::engine::Fingerprint {
        crate::engine::Fingerprint::of("take", &(&self.counter, self.q))
    }
    fn reads(&self) -> Vec<DocRef> {
        vec![counter(&self.counter)]
    }
    fn decide(&self, snap: &Snapshot) -> Result<Decision, OpError> {
        let doc = counter(&self.counter);
        match snap.get::<Level>(&doc)? {
            Some(s) if s.n >= self.q => Ok(Decision::apply(vec![Write::update(
                doc,
                &Level { n: s.n - self.q },
            )?])),
            _ => Ok(Decision::reject("short", "not enough".into(), json!({}))),
        }
    }
}

fn ts(s: i64) -> Timestamp {
    Timestamp {
        seconds: s,
        nanos: 0,
    }
}

fn level(n: i64, at: i64) -> ReadDoc {
    let f = firestore::FirestoreDb::serialize_to_doc("x", &json!({"n": n}))
        .unwrap()
        .fields;
    Some((f, Version::At(ts(at))))
}

fn take(id: &str, c: &str, q: i64) -> Take {
    Take {
        id: id.into(),
        counter: c.into(),
        q,
    }
}

fn counter(id: &str) -> DocRef {
    DocRef::new("counters", id)
}

fn status(op: &Take) -> DocRef {
    DocRef::new("operations", operation_id(op))
}

struct Batch {
    ops: Vec<Take>,
    ids: Vec<String>,
    meta: DeliveryMeta,
    max_writes: usize,
}

impl Batch {
    fn new(ops: Vec<Take>) -> Self {
        let ids = ops.iter().map(|o| operation_id(o)).collect();
        Self {
            ops,
            ids,
            meta: DeliveryMeta::default(),
            max_writes: 500,
        }
    }

    fn reads(&self, extra: Vec<(DocRef, ReadDoc)>) -> HashMap<DocRef, ReadDoc> {
        let mut m: HashMap<DocRef, ReadDoc> = self.ops.iter().map(|o| (status(o), None)).collect();
        m.extend(extra);
        m
    }

    fn fold(&self, read: &HashMap<DocRef, ReadDoc>) -> Folded {
        let entries: Vec<Entry<'_>> = self
            .ops
            .iter()
            .zip(&self.ids)
            .map(|(op, id)| Entry {
                op,
                operation_id: id,
                delivery: &self.meta,
            })
            .collect();
        let (docs, versions) = split(read.clone());
        fold(
            &entries,
            Snapshot::from_docs(FirestoreInstant::now(), docs),
            &versions,
            &FoldCtx {
                operations: "operations",
                retention: Duration::from_secs(3600),
                now: FirestoreInstant::now(),
                max_writes: self.max_writes,
            },
        )
    }
}

fn outcome(r: &Reply) -> String {
    match r {
        Ok(o) if o.replayed => format!("replayed:{}", o.record.response.status),
        Ok(o) => o.record.response.status.to_string(),
        Err(GuardError::KeyReused { .. }) => "key_reused".into(),
        Err(e) => format!("error:{e}"),
    }
}

fn outcomes(f: &Folded) -> Vec<String> {
    f.replies.iter().map(outcome).collect()
}

/// The level each write leaves on `doc`, in commit order.
fn level_writes(f: &Folded, doc: &DocRef) -> Vec<(i64, Precondition)> {
    f.writes
        .iter()
        .filter_map(|g| match g {
            Guarded::Write {
                write,
                precondition,
            } if &write.doc == doc => {
                let fields = match &write.kind {
                    WriteKind::Update(f) | WriteKind::Set(f) | WriteKind::Create(f) => f,
                    WriteKind::Delete => return None,
                };
                let snap = Snapshot::from_docs(
                    FirestoreInstant::now(),
                    [(doc.clone(), Some(fields.clone()))],
                );
                let s: Level = snap.get(doc).ok()??;
                Some((s.n, precondition.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_batch_straddling_the_last_unit_takes_it_once_and_rejects_the_rest() {
    let b = Batch::new(vec![
        take("a", "hot", 1),
        take("b", "hot", 1),
        take("c", "hot", 1),
    ]);
    let f = b.fold(&b.reads(vec![(counter("hot"), level(2, 7))]));
    assert_eq!(outcomes(&f), ["200", "200", "409"]);
    assert_eq!(f.needs_commit, [true, true, true]);
    assert_eq!(f.taken, 3);
    // Both takes merge into one write, which carries the read version.
    assert_eq!(
        level_writes(&f, &counter("hot")),
        [(0, Precondition::UpdateTime(ts(7)))]
    );
    // Three new status documents, each created once.
    let created = f
        .writes
        .iter()
        .filter(|g| {
            matches!(g, Guarded::Write { write, precondition: Precondition::Exists(false) }
                if write.doc.collection == "operations")
        })
        .count();
    assert_eq!(created, 3);
    // The counter is written, so the rejection is covered by that write's precondition.
    assert!(!f.writes.iter().any(|g| matches!(g, Guarded::Verify { .. })));
}

#[test]
fn a_rejection_verifies_the_documents_it_read() {
    let b = Batch::new(vec![take("a", "x", 5), take("b", "y", 1)]);
    let f = b.fold(&b.reads(vec![(counter("x"), level(3, 4)), (counter("y"), None)]));
    assert_eq!(outcomes(&f), ["409", "409"]);
    let verified: Vec<(&DocRef, &Version)> = f
        .writes
        .iter()
        .filter_map(|g| match g {
            Guarded::Verify { doc, version } => Some((doc, version)),
            _ => None,
        })
        .collect();
    assert_eq!(
        verified,
        [
            (&counter("x"), &Version::At(ts(4))),
            (&counter("y"), &Version::Missing)
        ]
    );
}

#[test]
fn a_rejection_mid_batch_leaves_the_others_applied() {
    let b = Batch::new(vec![
        take("a", "hot", 2),
        take("b", "hot", 5),
        take("c", "hot", 1),
    ]);
    let f = b.fold(&b.reads(vec![(counter("hot"), level(3, 1))]));
    assert_eq!(outcomes(&f), ["200", "409", "200"]);
    let left: Vec<i64> = level_writes(&f, &counter("hot"))
        .into_iter()
        .map(|w| w.0)
        .collect();
    assert_eq!(left, [0]);
}

#[test]
fn duplicates_inside_one_batch_apply_once_and_replay() {
    let b = Batch::new(vec![take("a", "hot", 1), take("a", "hot", 1)]);
    let f = b.fold(&b.reads(vec![(counter("hot"), level(5, 1))]));
    assert_eq!(outcomes(&f), ["200", "replayed:200"]);
    // The replay depends on the commit of its first delivery.
    assert_eq!(f.needs_commit, [true, true]);
    assert_eq!(level_writes(&f, &counter("hot")).len(), 1);
}

#[test]
fn a_status_document_already_present_is_a_replay_and_writes_nothing() {
    let first = Batch::new(vec![take("a", "hot", 1)]);
    let f = first.fold(&first.reads(vec![(counter("hot"), level(5, 1))]));
    let Ok(o) = &f.replies[0] else {
        panic!("not decided")
    };
    let stored = firestore::FirestoreDb::serialize_to_doc("x", &o.record)
        .unwrap()
        .fields;
    let again = Batch::new(vec![take("a", "hot", 1)]);
    let mut read = again.reads(vec![(counter("hot"), level(4, 2))]);
    read.insert(status(&again.ops[0]), Some((stored, Version::At(ts(2)))));
    let f = again.fold(&read);
    assert_eq!(outcomes(&f), ["replayed:200"]);
    assert_eq!(f.needs_commit, [false]);
    assert!(f.writes.is_empty());
}

#[test]
fn a_reused_key_is_refused_without_writes() {
    let first = Batch::new(vec![take("a", "hot", 1)]);
    let f = first.fold(&first.reads(vec![(counter("hot"), level(5, 1))]));
    let Ok(o) = &f.replies[0] else {
        panic!("not decided")
    };
    let stored = firestore::FirestoreDb::serialize_to_doc("x", &o.record)
        .unwrap()
        .fields;
    let other = Batch::new(vec![take("a", "hot", 2), take("a", "hot", 2)]);
    let mut read = other.reads(vec![(counter("hot"), level(4, 2))]);
    read.insert(status(&other.ops[0]), Some((stored, Version::At(ts(2)))));
    let f = other.fold(&read);
    assert_eq!(outcomes(&f), ["key_reused", "key_reused"]);
    assert!(f.writes.is_empty());
}

#[test]
fn an_update_of_a_document_read_missing_never_creates_it() {
    let doc = counter("gone");
    let w = Write::update(doc.clone(), &Level { n: 1 }).unwrap();
    let versions: Versions = [(doc.clone(), Version::Missing)].into();
    let g = guard(vec![w], &versions, |_| true);
    assert!(matches!(
        &g[0],
        Guarded::Write {
            precondition: Precondition::Exists(true),
            ..
        }
    ));
}

#[test]
fn a_batch_stops_at_the_write_limit_and_leaves_the_rest() {
    // Each take writes the counter (merged) and its own status document: 1 + n writes.
    let mut b = Batch::new((0..10).map(|i| take(&format!("t{i}"), "hot", 1)).collect());
    b.max_writes = 6;
    let f = b.fold(&b.reads(vec![(counter("hot"), level(100, 1))]));
    assert_eq!(f.taken, 5);
    assert_eq!(f.replies.len(), 5);
    assert_eq!(f.writes.len(), 6);
    assert_eq!(
        level_writes(&f, &counter("hot")),
        [(95, Precondition::UpdateTime(ts(1)))]
    );
    // A rejection counts a verification of every document read.
    let mut b = Batch::new(vec![
        take("a", "x", 1),
        take("b", "y", 1),
        take("c", "x", 9),
    ]);
    b.max_writes = 5;
    let f = b.fold(&b.reads(vec![
        (counter("x"), level(5, 1)),
        (counter("y"), level(5, 1)),
    ]));
    assert_eq!(f.taken, 2);
    assert!(f.writes.len() <= 5);
}

#[test]
fn an_operation_too_big_for_any_commit_is_refused_durably() {
    let mut b = Batch::new(vec![take("a", "hot", 1), take("b", "hot", 1)]);
    b.max_writes = 1;
    let f = b.fold(&b.reads(vec![(counter("hot"), level(5, 1))]));
    // Alone it still cannot fit: refused once and for all, with only its status written.
    assert_eq!(f.taken, 1);
    let Ok(o) = &f.replies[0] else {
        panic!("not decided")
    };
    assert_eq!(o.record.reason.as_deref(), Some("too_many_writes"));
    assert!(f
        .writes
        .iter()
        .all(|g| g.doc().collection == "operations" || matches!(g, Guarded::Verify { .. })));
}
