//! Where an item's stock lives, and how an order takes from it.
//!
//! The operator writes one number, `{items}/{id}.stock` (the *main* document). With
//! `stock_shards = K > 0` the service may move part of it into shard documents
//! `{items}/{id}/shards/{k}` (`{"stock": n}`, k in 0..K), so that instances selling the same
//! hot item write different documents. The item's total stock is always
//! `main + Σ shards`; see docs/scale-out.md ("Data") for the rules:
//!
//! - **Own shard.** An instance takes from its own shard `k` when it covers the line.
//! - **Refill.** Otherwise, when own shard + main cover it, one commit moves a chunk of
//!   `max(needed, ceil(main / K))` units from main into the shard and takes the line.
//! - **Gather.** Otherwise every shard is read (a second read, before any write) and the line
//!   takes from the own shard, then main, then the other shards in order, in ONE commit with
//!   a precondition on each document it writes. If even the total cannot cover the line, the
//!   rejection commits with every document read verified unchanged, so an order is never
//!   rejected while the item's total covers it, and never oversold.

use crate::engine::{DocRef, OpError, Snapshot, Write};
use serde::Serialize;

/// The `stock` field of an item, read and written alone so other fields are kept.
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize)]
pub struct Stock {
    /// Units available.
    pub stock: i64,
}

/// The documents that hold one item's stock.
#[derive(Clone, Debug)]
pub struct ItemStock {
    main: DocRef,
    shards: Vec<DocRef>,
    own: usize,
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
    /// Item `id` in `items`, spread over `shards` shard documents, preferring `own`.
    pub fn new(items: &str, id: &str, shards: u32, own: u32) -> Self {
        let col = shard_collection(items, id);
        Self {
            main: DocRef::new(items, id),
            shards: (0..shards)
                .map(|k| DocRef::new(&col, k.to_string()))
                .collect(),
            own: if shards == 0 {
                0
            } else {
                (own % shards) as usize
            },
        }
    }

    /// The main document, where the operator writes the stock.
    pub fn main(&self) -> &DocRef {
        &self.main
    }

    /// What an order reads first: the main document and the own shard.
    pub fn reads(&self) -> Vec<DocRef> {
        let mut v = vec![self.main.clone()];
        v.extend(self.shards.get(self.own).cloned());
        v
    }

    /// Every document of the item: main and all shards.
    pub fn all(&self) -> Vec<DocRef> {
        let mut v = vec![self.main.clone()];
        v.extend(self.shards.iter().cloned());
        v
    }

    fn units(snapshot: &Snapshot, doc: &DocRef) -> Result<Option<i64>, OpError> {
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
        for s in &self.shards {
            total = total.saturating_add(Self::units(snapshot, s)?.unwrap_or(0));
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
        let Some(main) = Self::units(snapshot, &self.main)? else {
            return Ok(Take::Unknown);
        };
        let Some(own_doc) = self.shards.get(self.own) else {
            return Ok(if main >= q {
                Take::Writes(vec![Write::update(
                    self.main.clone(),
                    &Stock { stock: main - q },
                )?])
            } else {
                Take::Short { available: main }
            });
        };
        let own = Self::units(snapshot, own_doc)?.unwrap_or(0);
        if own >= q {
            return Ok(Take::Writes(vec![Self::write(snapshot, own_doc, own - q)?]));
        }
        if own.saturating_add(main) >= q {
            let k = self.shards.len() as i64;
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
        // Gather: the last units may sit in other instances' shards.
        let Some(total) = self.total(snapshot)? else {
            return Ok(Take::Unknown);
        };
        if total < q {
            return Ok(Take::Short { available: total });
        }
        let mut left = q;
        let mut writes = Vec::new();
        let order = std::iter::once(own_doc)
            .chain(std::iter::once(&self.main))
            .chain(self.shards.iter().filter(|s| *s != own_doc));
        for doc in order {
            if left == 0 {
                break;
            }
            let have = Self::units(snapshot, doc)?.unwrap_or(0);
            let took = have.min(left);
            if took > 0 {
                left -= took;
                writes.push(Self::write(snapshot, doc, have - took)?);
            }
        }
        Ok(Take::Writes(writes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Fields, Snapshot};
    use firestore::FirestoreInstant;
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
        let it = ItemStock::new("items", "a", 4, 1);
        let own = DocRef::new("items/a/shards", "1");
        assert_eq!(it.reads(), [DocRef::new("items", "a"), own.clone()]);
        let mut s = snap(vec![(it.main().clone(), n(100)), (own.clone(), None)]);
        // No shard yet: a refill moves ceil(100 / 4) = 25 and takes 1.
        let t = it.take(&s, 1).unwrap();
        assert_eq!(after(&mut s, t), [it.main().clone(), own.clone()]);
        assert_eq!((units(&s, it.main()), units(&s, &own)), (75, 24));
        // Now the shard alone covers it.
        let t = it.take(&s, 3).unwrap();
        assert_eq!(after(&mut s, t), std::slice::from_ref(&own));
        assert_eq!(units(&s, &own), 21);
    }

    #[test]
    fn the_last_units_are_gathered_across_shards() {
        let it = ItemStock::new("items", "a", 3, 0);
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
        let it = ItemStock::new("items", "a", 0, 5);
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
}
