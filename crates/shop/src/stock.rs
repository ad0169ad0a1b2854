//! Where an item's stock lives, and how an order takes from it.
//!
//! The operator writes one number, `{items}/{id}.stock` (the *main* document). With
//! `stock_shards = K > 0` the service may move part of it into shard documents
//! `{items}/{id}/shards/{k}` (`{"stock": n}`, k in 0..K), so that instances selling the same
//! hot item write different documents. The item's total stock is always
//! `main + Σ shards`; see docs/scale-out.md ("Data") for the rules:
//!
//! - **Main first.** An item is sold from its main document, as without shards, until this
//!   instance's commits on it show that one document is not enough (see [`Placement`]).
//! - **Own shards.** From then on an order takes from one shard `k` of this instance's set
//!   for the item when it covers the line; the order then reads and writes that one
//!   document (the main document is read only when the shard falls short).
//! - **Refill.** Otherwise, when own shard + main cover it, one commit moves a chunk of
//!   `max(needed, ceil(main / K))` units from main into the shard, tops up every other shard
//!   of the set that holds less than a chunk (so main, which sustains one write a second
//!   like any document, is written once for the whole set), and takes the line.
//! - **Gather.** Otherwise every shard is read (a second read, before any write) and the line
//!   takes from the own shard (if any), then main, then the other shards in order, in ONE
//!   commit with a precondition on each document it writes. If even the total cannot cover
//!   the line, the rejection commits with every document read verified unchanged, so an
//!   order is never rejected while the item's total covers it, and never oversold.

use crate::placement::Pick;
pub use crate::placement::Placement;
use firestore_once_core::engine::{DocRef, OpError, Snapshot, Write};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The `stock` field of an item, read and written alone so other fields are kept.
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize)]
pub struct Stock {
    /// Units available.
    pub stock: i64,
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
    /// Where this instance sells the item from, asked at each call: an order queued before
    /// the item was spread (or its set changed) picks again, and the guard moves it to its
    /// new lane. `None`: always the main document (restock reads every document anyway).
    placement: Option<Placement>,
    /// The pick this order holds (`epoch << 32 | shard`, [`NO_PICK`] for none), shared by
    /// the order's clones.
    held: Arc<AtomicU64>,
    /// The set's shards its last decision moved stock into (one bit each, K ≤ 64).
    filled: Arc<AtomicU64>,
    /// Whether its last decision wrote more than its own shard (main, or other shards): a
    /// refusal of that commit then says nothing about the own shard.
    beyond: Arc<AtomicBool>,
}

/// No pick held.
const NO_PICK: u64 = u64::MAX;

/// Units per shard from which a refill spreads main over every shard (under a write
/// budget, see [`Placement::with_scarce_main`]), not only this instance's: a thousand orders' worth in each.
pub const SPREAD_ALL_FROM: i64 = 1_000;

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
    /// Item `id` in `items`, spread over at most `shards` shard documents, placed by
    /// `placement` (see [`Placement`]).
    pub fn new(items: &str, id: &str, shards: u32, placement: Option<&Placement>) -> Self {
        Self {
            main: DocRef::new(items, id),
            col: if shards == 0 {
                String::new()
            } else {
                shard_collection(items, id)
            },
            shards,
            placement: placement.filter(|_| shards > 0).cloned(),
            held: Arc::new(AtomicU64::new(NO_PICK)),
            filled: Arc::new(AtomicU64::new(0)),
            beyond: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The shard this item's order takes from first (its index), `None` when it takes from
    /// the main document. Kept while the order is in a batch (see [`replan`](Self::replan)).
    pub fn own(&self) -> Option<u32> {
        self.pick(false)
    }

    /// While the order is queued: pick again if this instance's shards for the item changed
    /// since (the guard then moves the order to its new lane).
    pub fn replan(&self) {
        self.pick(true);
    }

    fn pick(&self, replan: bool) -> Option<u32> {
        let placement = self.placement.as_ref()?;
        let held = match self.held.load(Ordering::Relaxed) {
            NO_PICK => None,
            v => Some(((v >> 32) as u32, v as u32)),
        };
        let pick: Pick = placement.pick(&self.main.id, self.shards, held, replan)?;
        if Some(pick) != held {
            let v = (u64::from(pick.0) << 32) | u64::from(pick.1);
            self.held.store(v, Ordering::Relaxed);
        }
        Some(pick.1)
    }

    /// The shards this order's last decision filled for the set (bits), for
    /// [`Placement::filled`] once its commit went through.
    pub fn filled(&self) -> Vec<u32> {
        let bits = self.filled.load(Ordering::Relaxed);
        (0..64).filter(|k| bits & (1 << k) != 0).collect()
    }

    /// The shard this order's last pick named, without picking again (what its last commit
    /// wrote); `None` while it sells from the main document.
    pub fn held(&self) -> Option<u32> {
        match self.held.load(Ordering::Relaxed) {
            NO_PICK => None,
            v => Some(v as u32),
        }
    }

    /// This instance's shards of the item: those handed out (the own one among them) and
    /// those waiting to be filled.
    fn own_sets(&self) -> (Vec<u32>, Vec<u32>) {
        let Some(p) = self.placement.as_ref() else {
            return (Vec::new(), Vec::new());
        };
        let all = p.shards_of(&self.main.id, self.shards);
        let pending = p
            .pending(&self.main.id, self.shards)
            .map(|(_, pending)| pending)
            .unwrap_or_default();
        let handed = all.into_iter().filter(|s| !pending.contains(s)).collect();
        (handed, pending)
    }

    fn shard(&self, k: u32) -> DocRef {
        DocRef::new(self.col.as_str(), k.to_string())
    }

    fn own_doc(&self) -> Option<DocRef> {
        self.own().map(|k| self.shard(k))
    }

    /// The id of the item.
    pub fn id(&self) -> &str {
        &self.main.id
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

    /// In the filler's lane: move stock from main into the shards added to the set and not
    /// filled yet, a chunk of `ceil(main / K)` each, in this order's commit (one write to main
    /// for all of them). Nothing elsewhere, or when main has nothing to give.
    fn fill_pending(&self, snapshot: &Snapshot, own_doc: &DocRef) -> Result<Vec<Write>, OpError> {
        self.filled.store(0, Ordering::Relaxed);
        let Some((filler, pending)) = self
            .placement
            .as_ref()
            .and_then(|p| p.pending(&self.main.id, self.shards))
        else {
            return Ok(Vec::new());
        };
        if pending.is_empty() || self.shard(filler) != *own_doc {
            return Ok(Vec::new());
        }
        let docs: Vec<DocRef> = pending.iter().map(|k| self.shard(*k)).collect();
        snapshot.require(std::slice::from_ref(&self.main))?;
        snapshot.require(&docs)?;
        let main = Self::units(snapshot, &self.main)?.unwrap_or(0);
        let k = i64::from(self.shards);
        let chunk = (main + k - 1) / k;
        let mut left = main;
        let mut writes = Vec::new();
        let mut bits = 0u64;
        for (shard, d) in pending.iter().zip(&docs) {
            let have = Self::units(snapshot, d)?.unwrap_or(0);
            let give = (chunk - have).clamp(0, left);
            if give > 0 {
                left -= give;
                writes.push(Self::write(snapshot, d, have + give)?);
            }
            if have + give > 0 {
                bits |= 1 << shard;
            }
        }
        if left != main {
            writes.insert(0, Write::update(self.main.clone(), &Stock { stock: left })?);
        }
        self.filled.store(bits, Ordering::Relaxed);
        Ok(writes)
    }

    /// Move stock from main into the own shard (at least what the line lacks, at least a
    /// chunk of `ceil(main / K)`), top up the set's other shards that hold less than a chunk,
    /// and take `q` from the own shard: one write to main for the whole set.
    fn refill(
        &self,
        snapshot: &Snapshot,
        own_doc: &DocRef,
        own: i64,
        main: i64,
        q: i64,
    ) -> Result<Vec<Write>, OpError> {
        let k = i64::from(self.shards);
        // Plenty in main, and main's writes scarce (a write budget): spread it over every
        // shard at once, so the other instances find theirs filled and never write main for
        // it (it sustains one write a second for all of them). Little in main: this
        // instance's set only, or the last units end up fragmented. Never a shard this
        // instance hands out (its lane refills it): only those waiting to be filled, and,
        // from plenty, those nobody here sells from.
        let scarce_main = self.placement.as_ref().is_some_and(Placement::scarce_main);
        let everywhere = scarce_main && main >= k.saturating_mul(SPREAD_ALL_FROM);
        let (handed, pending) = self.own_sets();
        let others: Vec<DocRef> = if everywhere {
            (0..self.shards).filter(|s| !handed.contains(s)).collect()
        } else {
            pending
        }
        .into_iter()
        .map(|s| self.shard(s))
        .filter(|d| d != own_doc)
        .collect();
        snapshot.require(&others)?;
        let chunk = (main + k - 1) / k;
        let to_own = (q - own).max(chunk).min(main);
        let mut left = main - to_own;
        let mut writes = vec![Self::write(snapshot, own_doc, own + to_own - q)?];
        let mut bits = 0u64;
        for d in &others {
            let have = Self::units(snapshot, d)?.unwrap_or(0);
            let give = (chunk - have).clamp(0, left);
            if give > 0 {
                left -= give;
                writes.push(Self::write(snapshot, d, have + give)?);
            }
            if let (true, Ok(k)) = (have + give > 0, d.id.parse::<u32>()) {
                bits |= 1 << k;
            }
        }
        self.filled.store(bits, Ordering::Relaxed);
        writes.insert(0, Write::update(self.main.clone(), &Stock { stock: left })?);
        Ok(writes)
    }

    /// Whether this order's last decision wrote more than its own shard (see `beyond`).
    pub fn wrote_beyond_own(&self) -> bool {
        self.beyond.load(Ordering::Relaxed)
    }

    /// Take `q` units (see the module rules).
    pub fn take(&self, snapshot: &Snapshot, q: i64) -> Result<Take, OpError> {
        let taken = self.take_from(snapshot, q);
        if let (Ok(Take::Writes(w)), Some(own)) = (&taken, self.own_doc()) {
            let beyond = w.iter().any(|w| w.doc != own);
            self.beyond.store(beyond, Ordering::Relaxed);
        }
        taken
    }

    fn take_from(&self, snapshot: &Snapshot, q: i64) -> Result<Take, OpError> {
        let own_doc = self.own_doc();
        if let Some(own_doc) = &own_doc {
            // Found contended since this attempt's first read: the shard is read first.
            snapshot.require(std::slice::from_ref(own_doc))?;
            let own = Self::units(snapshot, own_doc)?.unwrap_or(0);
            if own >= q {
                let mut writes = self.fill_pending(snapshot, own_doc)?;
                writes.push(Self::write(snapshot, own_doc, own - q)?);
                return Ok(Take::Writes(writes));
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
                    return self
                        .refill(snapshot, own_doc, own, main, q)
                        .map(Take::Writes);
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
        let own = own_doc.as_ref().and_then(|d| d.id.parse::<u32>().ok());
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
mod tests;
