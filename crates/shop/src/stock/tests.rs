use super::*;
use firestore::FirestoreInstant;
use firestore_once_core::engine::{Fields, Snapshot};
use serde_json::json;

fn n(v: i64) -> Option<Fields> {
    Some(
        firestore::FirestoreDb::serialize_to_doc("x", &json!({"stock": v}))
            .unwrap()
            .fields,
    )
}

fn snap(docs: Vec<(DocRef, Option<Fields>)>) -> Snapshot {
    Snapshot::from_docs(FirestoreInstant::now(), docs)
}

fn after(s: &mut Snapshot, t: Take) -> Vec<DocRef> {
    let Take::Writes(w) = t else {
        panic!("not taken: {t:?}")
    };
    for x in &w {
        s.apply(x);
    }
    w.into_iter().map(|w| w.doc).collect()
}

fn units(s: &Snapshot, d: &DocRef) -> i64 {
    s.get::<Stock>(d).unwrap().map_or(0, |x| x.stock)
}

#[test]
fn own_shard_then_refill_from_main() {
    let it = ItemStock::new(
        "items",
        "a",
        4,
        Some(&Placement::new(1).spreading_every_item()),
    );
    let own = DocRef::new("items/a/shards", "1");
    assert_eq!(it.reads(), std::slice::from_ref(&own));
    // No shard yet: main is asked for, after the first read or from the fold.
    let first = snap(vec![(own.clone(), None)]);
    assert_eq!(it.reads_after(&first, 1), [it.main().clone()]);
    assert!(matches!(it.take(&first, 1), Err(OpError::ReadMore { .. })));
    let mut s = snap(vec![(it.main().clone(), n(100)), (own.clone(), None)]);
    // No shard yet: a refill moves ceil(100 / 4) = 25 and takes 1.
    let t = it.take(&s, 1).unwrap();
    assert_eq!(after(&mut s, t), [it.main().clone(), own.clone()]);
    assert_eq!((units(&s, it.main()), units(&s, &own)), (75, 24));
    // Now the shard alone covers it, read alone.
    let alone = snap(vec![(own.clone(), n(24))]);
    assert!(it.reads_after(&alone, 3).is_empty());
    assert_eq!(it.reads_after(&alone, 25), [it.main().clone()]);
    let t = it.take(&alone, 3).unwrap();
    assert_eq!(after(&mut s, t), std::slice::from_ref(&own));
    assert_eq!(units(&s, &own), 21);
}

#[test]
fn a_refill_tops_up_every_shard_of_the_set_in_one_write_to_main() {
    let p = Placement::new(1);
    assert!(p.spread("a", 4));
    let set = p.grow("a", 4, 2, 4).unwrap();
    assert_eq!(set.len(), 3);
    let it = ItemStock::new("items", "a", 4, Some(&p));
    let own = it.own().unwrap();
    let sh = |k: u32| DocRef::new("items/a/shards", k.to_string());
    let others: Vec<DocRef> = set.iter().filter(|k| **k != own).map(|k| sh(*k)).collect();
    // The own shard is empty: the set's other shards are read before deciding.
    let s = snap(vec![(it.main().clone(), n(100)), (sh(own), None)]);
    match it.take(&s, 2) {
        Err(OpError::ReadMore { docs }) => assert_eq!(docs, others),
        other => panic!("{other:?}"),
    }
    // One of them still holds 10, the other nothing: both reach a chunk of 25.
    let mut s = snap(vec![
        (it.main().clone(), n(100)),
        (sh(own), None),
        (others[0].clone(), n(10)),
        (others[1].clone(), None),
    ]);
    let t = it.take(&s, 2).unwrap();
    let written = after(&mut s, t);
    assert_eq!(written.iter().filter(|d| *d == it.main()).count(), 1);
    assert_eq!(units(&s, &sh(own)), 23);
    assert_eq!((units(&s, &others[0]), units(&s, &others[1])), (25, 25));
    assert_eq!(units(&s, it.main()), 100 - 25 - 15 - 25);
    // Nothing made or lost: 100 + 10 before, 2 taken.
    let sum: i64 = [
        it.main().clone(),
        sh(own),
        others[0].clone(),
        others[1].clone(),
    ]
    .iter()
    .map(|d| units(&s, d))
    .sum();
    assert_eq!(sum, 108);
}

#[test]
fn the_fillers_lane_fills_added_shards_in_one_write_to_main() {
    let p = Placement::new(0);
    assert!(p.spread("a", 4));
    let added: Vec<u32> = p.grow("a", 4, 2, 4).unwrap()[1..].to_vec();
    let it = ItemStock::new("items", "a", 4, Some(&p));
    assert_eq!(it.own(), Some(0));
    let sh = |k: u32| DocRef::new("items/a/shards", k.to_string());
    // The filler covers the line, but shards wait to be filled: main and they are read.
    let s = snap(vec![(sh(0), n(50))]);
    assert!(matches!(it.take(&s, 1), Err(OpError::ReadMore { .. })));
    let mut s = snap(vec![
        (sh(0), n(50)),
        (it.main().clone(), n(80)),
        (sh(added[0]), None),
        (sh(added[1]), None),
    ]);
    let t = it.take(&s, 1).unwrap();
    let written = after(&mut s, t);
    assert_eq!(written.iter().filter(|d| *d == it.main()).count(), 1);
    assert_eq!(units(&s, &sh(0)), 49);
    assert_eq!(
        (units(&s, &sh(added[0])), units(&s, &sh(added[1]))),
        (20, 20)
    );
    assert_eq!(units(&s, it.main()), 40);
    let mut filled = it.filled();
    filled.sort();
    let mut want = added.clone();
    want.sort();
    assert_eq!(filled, want);
    // Once handed out, nothing more is filled: the line alone.
    p.filled("a", 4, &filled);
    let t = it.take(&snap(vec![(sh(0), n(49))]), 1).unwrap();
    let Take::Writes(w) = t else { panic!() };
    assert_eq!(w.len(), 1);
}

#[test]
fn a_refill_from_plenty_fills_every_shard_in_one_write_to_main() {
    let it = ItemStock::new(
        "items",
        "a",
        4,
        Some(&Placement::new(2).spreading_every_item()),
    );
    let sh = |k: u32| DocRef::new("items/a/shards", k.to_string());
    let mut docs = vec![(it.main().clone(), n(40_000))];
    docs.extend((0..4).map(|k| (sh(k), None)));
    let mut s = snap(docs);
    let t = it.take(&s, 1).unwrap();
    let written = after(&mut s, t);
    assert_eq!(written.len(), 5);
    assert_eq!(units(&s, &sh(2)), 9_999);
    for k in [0, 1, 3] {
        assert_eq!(units(&s, &sh(k)), 10_000);
    }
    assert_eq!(units(&s, it.main()), 0);
    assert!(it.wrote_beyond_own());
    // Another instance's shard, filled there, sells without touching main.
    let other = ItemStock::new(
        "items",
        "a",
        4,
        Some(&Placement::new(1).spreading_every_item()),
    );
    let t = other.take(&snap(vec![(sh(1), n(10_000))]), 1).unwrap();
    let Take::Writes(w) = t else { panic!() };
    assert_eq!(w.iter().map(|w| &w.doc).collect::<Vec<_>>(), [&sh(1)]);
    assert!(!other.wrote_beyond_own());
}

#[test]
fn without_a_write_budget_a_refill_from_plenty_fills_only_its_own_shard() {
    let it = ItemStock::new(
        "items",
        "a",
        4,
        Some(
            &Placement::new(2)
                .spreading_every_item()
                .with_scarce_main(false),
        ),
    );
    let sh = |k: u32| DocRef::new("items/a/shards", k.to_string());
    let mut docs = vec![(it.main().clone(), n(40_000))];
    docs.extend((0..4).map(|k| (sh(k), None)));
    let mut s = snap(docs);
    let t = it.take(&s, 1).unwrap();
    let written = after(&mut s, t);
    // Main and the own shard: the shards other instances sell from are left to them.
    assert_eq!(written.len(), 2);
    assert_eq!(units(&s, &sh(2)), 9_999);
    assert_eq!(units(&s, it.main()), 30_000);
    for k in [0, 1, 3] {
        assert_eq!(units(&s, &sh(k)), 0);
    }
}

#[test]
fn the_last_units_are_gathered_across_shards() {
    let it = ItemStock::new(
        "items",
        "a",
        3,
        Some(&Placement::new(0).spreading_every_item()),
    );
    let sh = |k: u32| DocRef::new("items/a/shards", k.to_string());
    let first = snap(vec![(it.main().clone(), n(1)), (sh(0), n(1))]);
    // Own shard + main hold 2, the line needs 4: every shard is asked for.
    match it.take(&first, 4) {
        Err(OpError::ReadMore { docs }) => assert_eq!(docs, [sh(1), sh(2)]),
        other => panic!("{other:?}"),
    }
    let mut s = snap(vec![
        (it.main().clone(), n(1)),
        (sh(0), n(1)),
        (sh(1), None),
        (sh(2), n(5)),
    ]);
    let t = it.take(&s, 4).unwrap();
    assert_eq!(after(&mut s, t), [sh(0), it.main().clone(), sh(2)]);
    assert_eq!(it.total(&s).unwrap(), Some(3));
    // Short by one across everything: rejected with the true total.
    assert!(matches!(
        it.take(&s, 4).unwrap(),
        Take::Short { available: 3 }
    ));
    for d in it.all() {
        assert!(units(&s, &d) >= 0);
    }
}

#[test]
fn without_shards_the_main_document_is_the_stock() {
    let it = ItemStock::new(
        "items",
        "a",
        0,
        Some(&Placement::new(5).spreading_every_item()),
    );
    assert_eq!(it.reads(), [it.main().clone()]);
    let mut s = snap(vec![(it.main().clone(), n(2))]);
    let t = it.take(&s, 2).unwrap();
    assert_eq!(after(&mut s, t), [it.main().clone()]);
    assert!(matches!(
        it.take(&s, 1).unwrap(),
        Take::Short { available: 0 }
    ));
    let gone = snap(vec![(it.main().clone(), None)]);
    assert!(matches!(it.take(&gone, 1).unwrap(), Take::Unknown));
}

#[test]
fn an_uncontended_item_sells_from_main_and_gathers_shards_only_when_short() {
    let placement = Placement::new(1);
    let it = ItemStock::new("items", "a", 3, Some(&placement));
    let sh = |k: u32| DocRef::new("items/a/shards", k.to_string());
    // One document read, one written: the layout before sharding.
    assert_eq!(it.reads(), [it.main().clone()]);
    let mut s = snap(vec![(it.main().clone(), n(2))]);
    assert!(it.reads_after(&s, 5).is_empty());
    let t = it.take(&s, 2).unwrap();
    assert_eq!(after(&mut s, t), [it.main().clone()]);
    // Main is short: the shards (filled by other instances) are asked for, not rejected.
    match it.take(&s, 3) {
        Err(OpError::ReadMore { docs }) => assert_eq!(docs, [sh(0), sh(1), sh(2)]),
        other => panic!("{other:?}"),
    }
    let mut s = snap(vec![
        (it.main().clone(), n(1)),
        (sh(0), n(1)),
        (sh(1), None),
        (sh(2), n(4)),
    ]);
    let t = it.take(&s, 3).unwrap();
    assert_eq!(after(&mut s, t), [it.main().clone(), sh(0), sh(2)]);
    assert_eq!(it.total(&s).unwrap(), Some(3));
    assert!(matches!(
        it.take(&s, 4).unwrap(),
        Take::Short { available: 3 }
    ));
    // An uncontended item never writes a shard while main covers the line.
    let lots = snap(vec![(it.main().clone(), n(100))]);
    let Take::Writes(w) = it.take(&lots, 7).unwrap() else {
        panic!()
    };
    assert_eq!(w.iter().map(|w| &w.doc).collect::<Vec<_>>(), [it.main()]);
    // Found hot (by another order's commit) mid-attempt: the same line now asks for its
    // own shard before deciding, and its next attempt reads the shard first.
    assert!(placement.spread("a", 3));
    match it.take(&lots, 7) {
        Err(OpError::ReadMore { docs }) => assert_eq!(docs, [sh(1)]),
        other => panic!("{other:?}"),
    }
    assert_eq!(it.reads(), [sh(1)]);
}
