//! Where an item's stock lives, and how an order takes from it.
//!
//! The operator writes one number, `{items}/{id}.stock` (the *main* document). With
//! `stock_shards = K > 0` the service may move part of it into shard documents
//! `{items}/{id}/shards/{k}` (`{"stock": n}`, k in 0..K), so that instances selling the same
//! hot item write different documents. The item's total stock is always
//! `main + Σ shards`; see docs/scale-out.md ("Data") for the rules:
//!
//! - **Main first.** An item is sold from its main document, as without shards, until this
//!   instance's commit on it is refused because another writer changed it (see
//!   [`Placement`]): one instance alone never moves stock into shards.
//! - **Own shard.** Once the item is contended, an instance takes from its own shard `k` when
//!   it covers the line; the order then reads and writes that one document (the main
//!   document is read only when the shard falls short).
//! - **Refill.** Otherwise, when own shard + main cover it, one commit moves a chunk of
//!   `max(needed, ceil(main / K))` units from main into the shard and takes the line.
//! - **Gather.** Otherwise every shard is read (a second read, before any write) and the line
//!   takes from the own shard (if any), then main, then the other shards in order, in ONE
//!   commit with a precondition on each document it writes. If even the total cannot cover
//!   the line, the rejection commits with every document read verified unchanged, so an
//!   order is never rejected while the item's total covers it, and never oversold.

use firestore_once_core::engine::{DocRef, OpError, Snapshot, Write};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// The `stock` field of an item, read and written alone so other fields are kept.
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize)]
pub struct Stock {
    /// Units available.
    pub stock: i64,
}

/// Conflicts in a row on the own shard after which an instance moves to another shard.
pub const MOVE_AFTER_CONFLICTS: u32 = 3;

/// Items remembered as contended; past this many, every item is treated as contended (the
/// set is dropped), which keeps memory bounded and is always correct, only slower to start.
pub const MAX_SPREAD_ITEMS: usize = 100_000;

/// How this instance places stock, shared by every order it parses (clones share it).
///
/// **Which items use shards.** An item is sold from its main document, exactly as without
/// shards, until a commit of this instance that wrote the main document is refused by a
/// precondition: then someone else (another instance) writes it too, and from the next order
/// on this instance sells the item from its own shard. One instance never conflicts with
/// itself (its lanes serialise), so alone it never spreads an item and pays nothing for the
/// shard layout. The decision is per item and per instance, and it sticks for the process.
///
/// **Which shard.** It starts at `hash(ONCE_INSTANCE_ID) mod K`, but instance IDs can
/// collide mod K, and two instances on one shard conflict on nearly every commit (each wins
/// about half the races). So after [`MOVE_AFTER_CONFLICTS`] commits in a row refused by a
/// precondition, the instance moves to another shard picked at random; any commit that goes
/// through resets the count. Neither choice matters for correctness: stock in any shard is
/// part of the total and is sold by whoever prefers that shard, or gathered.
#[derive(Clone, Default)]
pub struct Placement(Arc<PlacementState>);

#[derive(Default)]
struct PlacementState {
    current: AtomicU32,
    conflicts: AtomicU32,
    spread: Mutex<HashSet<String>>,
    spread_all: AtomicBool,
}

impl Placement {
    /// Prefer shard `k` (taken mod K where used); every item starts on its main document.
    pub fn new(k: u32) -> Self {
        let p = Self::default();
        p.0.current.store(k, Ordering::Relaxed);
        p
    }

    /// Sell every item from shards from its first order, without waiting for a conflict:
    /// for tests of the shard rules, and for an instance that knows it is one of many.
    pub fn spreading_every_item(self) -> Self {
        self.0.spread_all.store(true, Ordering::Relaxed);
        self
    }

    /// The shard preferred now.
    pub fn shard(&self) -> u32 {
        self.0.current.load(Ordering::Relaxed)
    }

    /// Whether orders for `item` parsed now take from the own shard.
    pub fn is_spread(&self, item: &str) -> bool {
        self.0.spread_all.load(Ordering::Relaxed)
            || self.0.spread.lock().map_or(true, |set| set.contains(item))
    }

    /// A commit that wrote `item`'s main document was refused by a precondition: sell it from
    /// shards from now on. True the first time (the caller logs it).
    pub fn spread(&self, item: &str) -> bool {
        if self.0.spread_all.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(mut set) = self.0.spread.lock() else {
            self.0.spread_all.store(true, Ordering::Relaxed);
            return true;
        };
        if set.len() >= MAX_SPREAD_ITEMS {
            set.clear();
            self.0.spread_all.store(true, Ordering::Relaxed);
            return true;
        }
        set.insert(item.to_owned())
    }

    /// A commit that wrote to shard `shard` (of `shards`) went through, or was refused by a
    /// precondition (`conflict`). Returns the new shard when this conflict moved the instance.
    /// Reports about a shard already left are ignored.
    pub fn observe(&self, shard: u32, shards: u32, conflict: bool) -> Option<u32> {
        let s = &self.0;
        let current = s.current.load(Ordering::Relaxed);
        if shards < 2 || shard != current % shards {
            return None;
        }
        if !conflict {
            s.conflicts.store(0, Ordering::Relaxed);
            return None;
        }
        if s.conflicts.fetch_add(1, Ordering::Relaxed) + 1 < MOVE_AFTER_CONFLICTS {
            return None;
        }
        // Uniform among the other K - 1 shards.
        let mut to = fastrand::u32(..shards - 1);
        if to >= shard {
            to += 1;
        }
        let moved = s
            .current
            .compare_exchange(current, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        s.conflicts.store(0, Ordering::Relaxed);
        moved.then_some(to)
    }
}

impl PartialEq for Placement {
    fn eq(&self, other: &Self) -> bool {
        self.shard() == other.shard()
            && self.0.spread_all.load(Ordering::Relaxed)
                == other.0.spread_all.load(Ordering::Relaxed)
    }
}

impl Eq for Placement {}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Placement(shard {})", self.shard())
    }
}

/// The documents that hold one item's stock. Shard references are made when needed: an
/// order that one document covers names one document, not K + 1.
#[derive(Clone, Debug)]
pub struct ItemStock {
    main: DocRef,
    /// `{items}/{id}/shards`, empty without shards.
    col: String,
    /// K.
    shards: u32,
    /// The preferred shard, in 0..K.
    own: u32,
    /// Whether the item is sold from the own shard (contended) or from the main document,
    /// asked at each call: an order queued before the item was found contended retries on
    /// the shard. `None`: always the main document (restock reads every document anyway).
    placement: Option<Placement>,
}

/// What taking `q` units decided.
#[derive(Debug)]
pub enum Take {
    /// The main document does not exist: the item is unknown.
    Unknown,
    /// The whole item (main and every shard) holds only `available` units.
    Short {
        /// Units the item holds in all.
        available: i64,
    },
    /// These writes take the units.
    Writes(Vec<Write>),
}

/// The shard collection under an item: `{items}/{id}/shards`.
pub fn shard_collection(items: &str, item_id: &str) -> String {
    format!("{items}/{item_id}/shards")
}

impl ItemStock {
    /// Item `id` in `items`, spread over `shards` shard documents, placed by `placement`
    /// (its shard now is this item's own shard; see [`Placement`]).
    pub fn new(items: &str, id: &str, shards: u32, placement: Option<&Placement>) -> Self {
        let own = placement.map_or(0, Placement::shard);
        Self {
            main: DocRef::new(items, id),
            col: if shards == 0 {
                String::new()
            } else {
                shard_collection(items, id)
            },
            shards,
            own: if shards == 0 { 0 } else { own % shards },
            placement: placement.filter(|_| shards > 0).cloned(),
        }
    }

    /// The shard this item's orders take from first (its index), `None` when they take from
    /// the main document.
    pub fn own(&self) -> Option<u32> {
        let spread = self
            .placement
            .as_ref()
            .is_some_and(|p| p.is_spread(&self.main.id));
        spread.then_some(self.own)
    }

    fn shard(&self, k: u32) -> DocRef {
        DocRef::new(self.col.as_str(), k.to_string())
    }

    fn own_doc(&self) -> Option<DocRef> {
        self.own().map(|k| self.shard(k))
    }

    /// K, the shard documents the item may have (0: the main document alone).
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The main document, where the operator writes the stock.
    pub fn main(&self) -> &DocRef {
        &self.main
    }

    /// What an order reads first: the own shard when spread, else the main document. While
    /// that document covers its lines an order needs nothing else, so the common case reads
    /// one stock document, as before sharding.
    pub fn reads(&self) -> Vec<DocRef> {
        vec![self.own_doc().unwrap_or_else(|| self.main.clone())]
    }

    /// What taking `q` units needs besides [`reads`](Self::reads), given the first read: the
    /// main document when the own shard does not cover `q` (refill, gather, or an unknown
    /// item), nothing otherwise (a short main document asks for the shards from
    /// [`take`](Self::take)).
    pub fn reads_after(&self, first: &Snapshot, q: i64) -> Vec<DocRef> {
        match self.own_doc() {
            Some(own) if !matches!(Self::units(first, &own), Ok(Some(n)) if n >= q) => {
                vec![self.main.clone()]
            }
            _ => Vec::new(),
        }
    }

    /// Every document of the item: main and all shards.
    pub fn all(&self) -> Vec<DocRef> {
        let mut v = vec![self.main.clone()];
        v.extend((0..self.shards).map(|k| self.shard(k)));
        v
    }

    fn units(snapshot: &Snapshot, doc: &DocRef) -> Result<Option<i64>, OpError> {
        use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
        let Some(fields) = snapshot.fields(doc)? else {
            return Ok(None);
        };
        // The integer straight from the document, as it is on every order; anything else
        // goes through the typed read (and its error).
        if let Some(ValueType::IntegerValue(n)) =
            fields.get("stock").and_then(|v| v.value_type.as_ref())
        {
            return Ok(Some(*n));
        }
        Ok(snapshot.get::<Stock>(doc)?.map(|s| s.stock))
    }

    /// The item's total stock, `None` when the main document is missing. Needs [`all`]
    /// (asks for the rest with [`OpError::ReadMore`]).
    ///
    /// [`all`]: Self::all
    pub fn total(&self, snapshot: &Snapshot) -> Result<Option<i64>, OpError> {
        snapshot.require(&self.all())?;
        let Some(main) = Self::units(snapshot, &self.main)? else {
            return Ok(None);
        };
        let mut total = main;
        for k in 0..self.shards {
            total = total.saturating_add(Self::units(snapshot, &self.shard(k))?.unwrap_or(0));
        }
        Ok(Some(total))
    }

    fn write(snapshot: &Snapshot, doc: &DocRef, stock: i64) -> Result<Write, OpError> {
        if snapshot.exists(doc)? {
            Write::update(doc.clone(), &Stock { stock })
        } else {
            Write::set(doc.clone(), &Stock { stock })
        }
    }

    /// Take `q` units (see the module rules).
    pub fn take(&self, snapshot: &Snapshot, q: i64) -> Result<Take, OpError> {
        let own_doc = self.own_doc();
        if let Some(own_doc) = &own_doc {
            // Found contended since this attempt's first read: the shard is read first.
            snapshot.require(std::slice::from_ref(own_doc))?;
            let own = Self::units(snapshot, own_doc)?.unwrap_or(0);
            if own >= q {
                return Ok(Take::Writes(vec![Self::write(snapshot, own_doc, own - q)?]));
            }
            // Short (within a batch, earlier orders may have emptied it): main is needed.
            snapshot.require(std::slice::from_ref(&self.main))?;
        }
        let Some(main) = Self::units(snapshot, &self.main)? else {
            return Ok(Take::Unknown);
        };
        match &own_doc {
            None if main >= q => {
                return Ok(Take::Writes(vec![Write::update(
                    self.main.clone(),
                    &Stock { stock: main - q },
                )?]))
            }
            None if self.shards == 0 => return Ok(Take::Short { available: main }),
            None => {}
            Some(own_doc) => {
                let own = Self::units(snapshot, own_doc)?.unwrap_or(0);
                if own.saturating_add(main) >= q {
                    let k = i64::from(self.shards);
                    let chunk = (q - own).max((main + k - 1) / k).min(main);
                    return Ok(Take::Writes(vec![
                        Write::update(
                            self.main.clone(),
                            &Stock {
                                stock: main - chunk,
                            },
                        )?,
                        Self::write(snapshot, own_doc, own + chunk - q)?,
                    ]));
                }
            }
        }
        // Gather: the last units may sit in shards (other instances' or, once an item is
        // spread, this one's).
        let Some(total) = self.total(snapshot)? else {
            return Ok(Take::Unknown);
        };
        if total < q {
            return Ok(Take::Short { available: total });
        }
        let mut left = q;
        let mut writes = Vec::new();
        let own = own_doc.is_some().then_some(self.own);
        let others = (0..self.shards)
            .filter(|k| Some(*k) != own)
            .map(|k| self.shard(k));
        let order = own_doc.into_iter().chain([self.main.clone()]).chain(others);
        for doc in order {
            if left == 0 {
                break;
            }
            let have = Self::units(snapshot, &doc)?.unwrap_or(0);
            let took = have.min(left);
            if took > 0 {
                left -= took;
                writes.push(Self::write(snapshot, &doc, have - took)?);
            }
        }
        Ok(Take::Writes(writes))
    }
}

#[cfg(test)]
mod tests {
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
    fn repeated_conflicts_move_to_another_shard() {
        let own = Placement::new(5);
        let shared = own.clone();
        // Shard 5 mod 4 = 1. Two conflicts, a commit that went through, two more: no move.
        for conflict in [true, true, false, true, true] {
            assert_eq!(own.observe(1, 4, conflict), None);
        }
        // Reports about another shard are ignored.
        assert_eq!(own.observe(2, 4, true), None);
        // The third conflict in a row moves it, to another shard; clones see the move.
        let to = own.observe(1, 4, true).unwrap();
        assert_ne!(to, 1);
        assert!(to < 4);
        assert_eq!(shared.shard(), to);
        // Late reports about the shard it left change nothing.
        for _ in 0..MOVE_AFTER_CONFLICTS {
            assert_eq!(own.observe(1, 4, true), None);
        }
        assert_eq!(own.shard(), to);
        // One shard (or none): nowhere to go.
        let one = Placement::new(0);
        for _ in 0..10 {
            assert_eq!(one.observe(0, 1, true), None);
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
        // Found contended (by another order's conflict) mid-attempt: the same line now asks
        // for its own shard before deciding, and its next attempt reads the shard first.
        assert!(placement.spread("a"));
        match it.take(&lots, 7) {
            Err(OpError::ReadMore { docs }) => assert_eq!(docs, [sh(1)]),
            other => panic!("{other:?}"),
        }
        assert_eq!(it.reads(), [sh(1)]);
    }

    #[test]
    fn a_conflict_on_main_spreads_that_item_only() {
        let p = Placement::new(2);
        let shared = p.clone();
        assert!(!p.is_spread("hot"));
        assert!(p.spread("hot"));
        // Told again (another queued order): already spread, nothing to log.
        assert!(!p.spread("hot"));
        assert!(shared.is_spread("hot"));
        assert!(!shared.is_spread("cold"));
        // Memory stays bounded: past the cap every item counts as contended.
        for i in 0..MAX_SPREAD_ITEMS {
            p.spread(&format!("i{i}"));
        }
        assert!(p.is_spread("never-seen"));
        let all = Placement::new(0).spreading_every_item();
        assert!(all.is_spread("anything"));
        assert!(!all.spread("anything"));
    }
}
