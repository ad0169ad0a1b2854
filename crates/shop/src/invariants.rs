//! The invariant checker: reads what the service left in Firestore after a run and checks the
//! product's one promise, that no order was applied twice or lost.
//!
//! A load or fault test can only count answers; answers can lie (a 200 that was never
//! committed, a 503 whose commit landed anyway). The database cannot, so every reliability
//! scenario ends here, and so can an operator after an incident (`check-invariants`).
//!
//! Checked, for the collections of [`ShopConfig`]:
//!
//! 1. **Stock adds up.** For every item: `initial + restocked = current + held`, where
//!    `current` is the item's total stock, `{items}/{id}.stock` plus every shard
//!    `{items}/{id}/shards/{k}.stock` (see `shop::stock`),
//!    `restocked` sums the processed `restock` operations on it and `held` sums the lines of
//!    every order that still holds its stock (any state but `cancelled`: `processed`,
//!    `fulfilling` and `shipped` orders keep theirs).
//! 2. **No stock below zero**, on the main document and on every shard.
//! 3. **Orders and status documents pair up.** Every order document has exactly one status
//!    document, under the same ID, of kind `order`, outcome `processed`, for the same
//!    `order_id`; every processed `order` status document has its order document; a rejected
//!    one has none.
//! 4. **Cancellations pair up.** An order is `cancelled` exactly when a processed
//!    `cancel_order` status document exists for it.
//! 5. **Every key is hashed.** Every status document's ID is `sha256(kind:key)` and every
//!    order document's ID is `sha256("order:" + order_id)`: no caller-chosen key was used
//!    as a document ID verbatim.

use crate::config::ShopConfig;
use firestore::gcloud_sdk::google::firestore::v1::Document;
use firestore::FirestoreDb;
use firestore_once_core::engine::key::hashed_id;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Stock per item ID: the initial stock a run seeded, or the stock read afterwards.
pub type StockMap = BTreeMap<String, i64>;

/// Order states that keep the order's stock taken (everything but `cancelled`).
const CANCELLED: &str = super::order::OrderState::Cancelled.as_str();

/// One order line as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineState {
    /// Item document ID.
    pub item_id: String,
    /// Units taken.
    pub quantity: i64,
}

/// The fields of an order document the checks need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// The caller's order ID, raw.
    pub order_id: String,
    /// Its lines.
    pub lines: Vec<LineState>,
    /// `processed`, `fulfilling`, `shipped` or `cancelled`.
    pub state: String,
}

/// The fields of a status document the checks need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationState {
    /// Operation kind (`order`, `restock`, `cancel_order`, …).
    pub kind: String,
    /// Raw key.
    pub key: String,
    /// `processed` or `rejected`.
    pub outcome: String,
    /// For a processed restock: the item and the units it added (from the stored answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restocked: Option<(String, i64)>,
}

/// Everything the checker read, by document ID. A document that could not be decoded is kept
/// as its error, so it is reported rather than silently skipped.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// `items/{id}` → `stock` (the main document alone).
    pub items: BTreeMap<String, Result<i64, String>>,
    /// `items/{id}/shards/{k}` → `stock`, by item ID then shard ID.
    pub shards: BTreeMap<String, BTreeMap<String, Result<i64, String>>>,
    /// `orders/{id}`.
    pub orders: BTreeMap<String, Result<OrderState, String>>,
    /// `operations/{id}`.
    pub operations: BTreeMap<String, Result<OperationState, String>>,
}

/// One broken promise, naming the documents involved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "violation", rename_all = "snake_case")]
pub enum Violation {
    /// `initial + restocked != current + held` for an item.
    StockMismatch {
        /// The item.
        item_id: String,
        /// Stock before the run.
        initial: i64,
        /// Units added by processed restocks.
        restocked: i64,
        /// Units held by orders that are not cancelled.
        held: i64,
        /// `initial + restocked - held`.
        expected: i64,
        /// What the item says now.
        current: i64,
    },
    /// An item's stock is below zero.
    NegativeStock {
        /// The item.
        item_id: String,
        /// Its stock.
        stock: i64,
    },
    /// An item with initial stock no longer exists.
    ItemMissing {
        /// The item.
        item_id: String,
    },
    /// An order or restock names an item whose initial stock the checker was not given.
    NoInitialStock {
        /// The item.
        item_id: String,
    },
    /// A document could not be decoded.
    Unreadable {
        /// Its collection.
        collection: String,
        /// Its ID.
        id: String,
        /// Why.
        error: String,
    },
    /// A document ID is not the hash of the key it stores: a key reached Firestore unhashed.
    IdNotHashed {
        /// Its collection.
        collection: String,
        /// Its ID.
        id: String,
        /// The hash the ID should be.
        expected: String,
    },
    /// An order document with no status document: applied without its record, so a
    /// redelivery would apply it again.
    OrderWithoutStatus {
        /// Order document ID.
        id: String,
    },
    /// An order document whose status document is not a processed order with its order_id.
    OrderStatusMismatch {
        /// Order (and status) document ID.
        id: String,
        /// What the status document says.
        detail: String,
    },
    /// A processed order status document with no order document: recorded but lost.
    StatusWithoutOrder {
        /// Status document ID.
        id: String,
    },
    /// A rejected order status document with an order document: rejected and applied.
    RejectedButApplied {
        /// Status document ID.
        id: String,
    },
    /// An order is cancelled without a processed cancellation, or the other way round.
    CancelMismatch {
        /// Order document ID.
        id: String,
        /// What is missing.
        detail: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::StockMismatch {
                item_id,
                initial,
                restocked,
                held,
                expected,
                current,
            } => write!(
                f,
                "items/{item_id}: stock {current}, expected {expected} \
                 (initial {initial} + restocked {restocked} - held by orders {held})"
            ),
            Violation::NegativeStock { item_id, stock } => {
                write!(f, "items/{item_id}: stock {stock} is below zero")
            }
            Violation::ItemMissing { item_id } => write!(f, "items/{item_id}: missing"),
            Violation::NoInitialStock { item_id } => {
                write!(
                    f,
                    "items/{item_id}: used, but its initial stock was not given"
                )
            }
            Violation::Unreadable {
                collection,
                id,
                error,
            } => write!(f, "{collection}/{id}: unreadable: {error}"),
            Violation::IdNotHashed {
                collection,
                id,
                expected,
            } => write!(f, "{collection}/{id}: ID is not the hashed key {expected}"),
            Violation::OrderWithoutStatus { id } => {
                write!(
                    f,
                    "orders/{id}: no status document (applied without record)"
                )
            }
            Violation::OrderStatusMismatch { id, detail } => {
                write!(f, "orders/{id}: status document does not match: {detail}")
            }
            Violation::StatusWithoutOrder { id } => {
                write!(
                    f,
                    "operations/{id}: processed order without its order document"
                )
            }
            Violation::RejectedButApplied { id } => {
                write!(
                    f,
                    "operations/{id}: rejected, yet its order document exists"
                )
            }
            Violation::CancelMismatch { id, detail } => write!(f, "orders/{id}: {detail}"),
        }
    }
}

/// What the checker found: counts for the report, and every violation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Item documents read.
    pub items: usize,
    /// Order documents read.
    pub orders: usize,
    /// Of which cancelled.
    pub orders_cancelled: usize,
    /// Status documents read.
    pub operations: usize,
    /// Of which processed.
    pub processed: usize,
    /// Of which rejected.
    pub rejected: usize,
    /// Units held by orders that are not cancelled.
    pub units_held: i64,
    /// Broken invariants; empty when the run kept its promise.
    pub violations: Vec<Violation>,
}

impl Report {
    /// True when no invariant is broken.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "items {}, orders {} ({} cancelled), status documents {} ({} processed, {} rejected), \
             units held {}, invariant violations {}",
            self.items,
            self.orders,
            self.orders_cancelled,
            self.operations,
            self.processed,
            self.rejected,
            self.units_held,
            self.violations.len()
        )?;
        for v in &self.violations {
            writeln!(f, "  violation: {v}")?;
        }
        Ok(())
    }
}

/// Check `state` against the `initial` stock of every item the run used.
pub fn check(state: &State, initial: &StockMap) -> Report {
    let mut r = Report {
        items: state.items.len(),
        orders: state.orders.len(),
        operations: state.operations.len(),
        ..Default::default()
    };
    let v = &mut r.violations;
    let unreadable = |collection: &str, id: &str, error: &str| Violation::Unreadable {
        collection: collection.into(),
        id: id.into(),
        error: error.into(),
    };

    // Status documents: IDs are hashed keys; count outcomes; collect what pairs with orders.
    let mut ops: BTreeMap<&str, &OperationState> = BTreeMap::new();
    let mut restocked: StockMap = BTreeMap::new();
    let mut cancels: BTreeSet<String> = BTreeSet::new();
    for (id, op) in &state.operations {
        let op = match op {
            Ok(op) => op,
            Err(e) => {
                v.push(unreadable("operations", id, e));
                continue;
            }
        };
        let expected = hashed_id(&op.kind, &op.key);
        if *id != expected {
            v.push(Violation::IdNotHashed {
                collection: "operations".into(),
                id: id.clone(),
                expected,
            });
        }
        match op.outcome.as_str() {
            "processed" => r.processed += 1,
            "rejected" => r.rejected += 1,
            other => v.push(unreadable(
                "operations",
                id,
                &format!("unknown outcome {other:?}"),
            )),
        }
        if op.outcome == "processed" {
            match op.kind.as_str() {
                "restock" => {
                    if let Some((item, n)) = &op.restocked {
                        *restocked.entry(item.clone()).or_default() += n;
                    }
                }
                "cancel_order" => {
                    cancels.insert(hashed_id("order", &op.key));
                }
                _ => {}
            }
        }
        ops.insert(id.as_str(), op);
    }

    // Orders: each pairs with its status document; sum what they hold.
    let mut held: StockMap = BTreeMap::new();
    for (id, order) in &state.orders {
        let order = match order {
            Ok(o) => o,
            Err(e) => {
                v.push(unreadable("orders", id, e));
                continue;
            }
        };
        let expected = hashed_id("order", &order.order_id);
        if *id != expected {
            v.push(Violation::IdNotHashed {
                collection: "orders".into(),
                id: id.clone(),
                expected,
            });
        }
        match ops.get(id.as_str()) {
            None => v.push(Violation::OrderWithoutStatus { id: id.clone() }),
            Some(op) if op.kind != "order" || op.outcome != "processed" => {
                v.push(Violation::OrderStatusMismatch {
                    id: id.clone(),
                    detail: format!("kind {:?}, outcome {:?}", op.kind, op.outcome),
                })
            }
            Some(op) if op.key != order.order_id => v.push(Violation::OrderStatusMismatch {
                id: id.clone(),
                detail: format!("status key {:?} but order_id {:?}", op.key, order.order_id),
            }),
            Some(_) => {}
        }
        let cancelled = order.state == CANCELLED;
        match (cancelled, cancels.contains(id)) {
            (true, false) => v.push(Violation::CancelMismatch {
                id: id.clone(),
                detail: "cancelled without a processed cancel_order status document".into(),
            }),
            (false, true) => v.push(Violation::CancelMismatch {
                id: id.clone(),
                detail: format!(
                    "a cancel_order was processed, yet the order is {}",
                    order.state
                ),
            }),
            _ => {}
        }
        if cancelled {
            r.orders_cancelled += 1;
            continue;
        }
        for line in &order.lines {
            *held.entry(line.item_id.clone()).or_default() += line.quantity;
            r.units_held += line.quantity;
        }
    }
    for (id, op) in &ops {
        if op.kind != "order" {
            continue;
        }
        let has_order = state.orders.contains_key(*id);
        match (op.outcome.as_str(), has_order) {
            ("processed", false) => v.push(Violation::StatusWithoutOrder { id: id.to_string() }),
            ("rejected", true) => v.push(Violation::RejectedButApplied { id: id.to_string() }),
            _ => {}
        }
    }

    // Items: the stock adds up and is never negative, on the main document or any shard.
    let mut shard_units: StockMap = BTreeMap::new();
    let mut shards_unreadable: BTreeSet<&String> = BTreeSet::new();
    for (id, stock) in &state.items {
        match stock {
            Ok(s) if *s < 0 => v.push(Violation::NegativeStock {
                item_id: id.clone(),
                stock: *s,
            }),
            Ok(_) => {}
            Err(e) => v.push(unreadable("items", id, e)),
        }
    }
    for (id, shards) in &state.shards {
        for (k, stock) in shards {
            match stock {
                Ok(s) => {
                    if *s < 0 {
                        v.push(Violation::NegativeStock {
                            item_id: format!("{id}/shards/{k}"),
                            stock: *s,
                        });
                    }
                    *shard_units.entry(id.clone()).or_default() += s;
                }
                Err(e) => {
                    shards_unreadable.insert(id);
                    v.push(unreadable(&format!("items/{id}/shards"), k, e));
                }
            }
        }
    }
    let used: BTreeSet<&String> = held.keys().chain(restocked.keys()).collect();
    for id in used {
        if !initial.contains_key(id) {
            v.push(Violation::NoInitialStock {
                item_id: id.clone(),
            });
        }
    }
    for (id, init) in initial {
        let current = match state.items.get(id) {
            None => {
                v.push(Violation::ItemMissing {
                    item_id: id.clone(),
                });
                continue;
            }
            Some(Err(_)) => continue,
            Some(Ok(_)) if shards_unreadable.contains(id) => continue,
            Some(Ok(s)) => s + shard_units.get(id).copied().unwrap_or(0),
        };
        let added = restocked.get(id).copied().unwrap_or(0);
        let taken = held.get(id).copied().unwrap_or(0);
        let expected = init + added - taken;
        if current != expected {
            v.push(Violation::StockMismatch {
                item_id: id.clone(),
                initial: *init,
                restocked: added,
                held: taken,
                expected,
                current,
            });
        }
    }
    r
}

/// Why the checker could not read the database.
#[derive(Debug, thiserror::Error)]
#[error("listing {collection}: {source}")]
pub struct ReadError {
    /// The collection being listed.
    pub collection: String,
    /// What Firestore said.
    #[source]
    pub source: firestore::errors::FirestoreError,
}

/// Every document of `collection`, page by page (an error on any page fails the read, so
/// a partial listing is never checked as if it were whole).
async fn list(db: &FirestoreDb, collection: &str) -> Result<Vec<Document>, ReadError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut page = db.fluent().list().from(collection).page_size(500);
        if let Some(t) = token.take() {
            page = page.page_token(t);
        }
        let page = page.get_page().await.map_err(|source| ReadError {
            collection: collection.to_string(),
            source,
        })?;
        out.extend(page.documents);
        match page.page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(out),
        }
    }
}

fn doc_id(doc: &Document) -> String {
    doc.name.rsplit('/').next().unwrap_or_default().to_string()
}

#[derive(Deserialize)]
struct ItemDoc {
    stock: i64,
}

#[derive(Deserialize)]
struct StoredAnswer {
    body: String,
}

#[derive(Deserialize)]
struct StatusDoc {
    kind: String,
    key: String,
    outcome: String,
    response: Option<StoredAnswer>,
}

#[derive(Deserialize)]
struct RestockAnswer {
    item_id: String,
    added: i64,
}

fn decode<T: for<'de> Deserialize<'de>>(doc: &Document) -> Result<T, String> {
    FirestoreDb::deserialize_doc_to::<T>(doc).map_err(|e| e.to_string())
}

/// Every document of the sub-collection `shards` of `items/{id}`.
async fn list_shards(db: &FirestoreDb, items: &str, id: &str) -> Result<Vec<Document>, ReadError> {
    let err = |source| ReadError {
        collection: format!("{items}/{id}/shards"),
        source,
    };
    let parent = db.parent_path(items, id).map_err(err)?;
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut page = db
            .fluent()
            .list()
            .from("shards")
            .parent(&parent)
            .page_size(500);
        if let Some(t) = token.take() {
            page = page.page_token(t);
        }
        let page = page.get_page().await.map_err(err)?;
        out.extend(page.documents);
        match page.page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(out),
        }
    }
}

/// Read the items (with their stock shards), orders and status documents of `collections`.
pub async fn read(db: &FirestoreDb, collections: &ShopConfig) -> Result<State, ReadError> {
    let mut state = State::default();
    for doc in list(db, &collections.items).await? {
        let stock = decode::<ItemDoc>(&doc).map(|i| i.stock);
        let id = doc_id(&doc);
        let shards = list_shards(db, &collections.items, &id).await?;
        if !shards.is_empty() {
            let m = shards
                .iter()
                .map(|d| (doc_id(d), decode::<ItemDoc>(d).map(|i| i.stock)))
                .collect();
            state.shards.insert(id.clone(), m);
        }
        state.items.insert(id, stock);
    }
    for doc in list(db, &collections.orders).await? {
        state
            .orders
            .insert(doc_id(&doc), decode::<OrderState>(&doc));
    }
    for doc in list(db, &collections.operations).await? {
        let op = decode::<StatusDoc>(&doc).map(|s| {
            let restocked = (s.kind == "restock" && s.outcome == "processed")
                .then(|| {
                    s.response
                        .as_ref()
                        .and_then(|r| serde_json::from_str::<RestockAnswer>(&r.body).ok())
                        .map(|a| (a.item_id, a.added))
                })
                .flatten();
            OperationState {
                kind: s.kind,
                key: s.key,
                outcome: s.outcome,
                restocked,
            }
        });
        state.operations.insert(doc_id(&doc), op);
    }
    Ok(state)
}

/// Read the database and check it: the one call tests and the `check-invariants` tool make.
pub async fn verify(
    db: &FirestoreDb,
    collections: &ShopConfig,
    initial: &StockMap,
) -> Result<Report, ReadError> {
    Ok(check(&read(db, collections).await?, initial))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, lines: &[(&str, i64)], state: &str) -> (String, Result<OrderState, String>) {
        (
            hashed_id("order", id),
            Ok(OrderState {
                order_id: id.into(),
                lines: lines
                    .iter()
                    .map(|(i, q)| LineState {
                        item_id: i.to_string(),
                        quantity: *q,
                    })
                    .collect(),
                state: state.into(),
            }),
        )
    }

    fn op(kind: &str, key: &str, outcome: &str) -> (String, Result<OperationState, String>) {
        (
            hashed_id(kind, key),
            Ok(OperationState {
                kind: kind.into(),
                key: key.into(),
                outcome: outcome.into(),
                restocked: None,
            }),
        )
    }

    /// A consistent run: two orders, one cancelled, one rejected, one restock.
    fn good() -> (State, StockMap) {
        let mut s = State::default();
        s.items.insert("a".into(), Ok(10 - 2 - 1 + 5));
        s.items.insert("b".into(), Ok(3));
        s.orders.extend([
            order("o1", &[("a", 2)], "processed"),
            order("o2", &[("a", 1), ("b", 1)], "shipped"),
            order("o3", &[("b", 4)], "cancelled"),
        ]);
        s.operations.extend([
            op("order", "o1", "processed"),
            op("order", "o2", "processed"),
            op("order", "o3", "processed"),
            op("order", "o4", "rejected"),
            op("cancel_order", "o3", "processed"),
        ]);
        let (id, mut r) = op("restock", "r1", "processed");
        if let Ok(r) = &mut r {
            r.restocked = Some(("a".into(), 5));
        }
        s.operations.insert(id, r);
        (s, [("a".to_string(), 10), ("b".to_string(), 4)].into())
    }

    #[test]
    fn a_consistent_run_passes() {
        let (s, init) = good();
        let r = check(&s, &init);
        assert!(r.ok(), "{r}");
        assert_eq!((r.orders, r.orders_cancelled, r.units_held), (3, 1, 4));
        assert_eq!((r.processed, r.rejected), (5, 1));
    }

    #[test]
    fn shards_count_towards_the_stock_and_may_not_go_negative() {
        let (mut s, init) = good();
        // Move 5 of item a's 12 into two shards: still consistent.
        s.items.insert("a".into(), Ok(7));
        s.shards.insert(
            "a".into(),
            [("0".to_string(), Ok(4)), ("3".to_string(), Ok(1))].into(),
        );
        assert!(check(&s, &init).ok());
        // A shard that lost a unit no order holds is a mismatch; one below zero is named.
        s.shards.insert(
            "a".into(),
            [("0".to_string(), Ok(-1)), ("3".to_string(), Ok(5))].into(),
        );
        let r = check(&s, &init);
        let names: Vec<String> = r.violations.iter().map(|v| v.to_string()).collect();
        assert!(names.iter().any(|n| n.contains("a/shards/0")), "{names:?}");
        assert!(
            r.violations
                .iter()
                .any(|v| matches!(v, Violation::StockMismatch { current: 11, .. })),
            "{names:?}"
        );
    }

    #[test]
    fn each_broken_promise_is_named() {
        let (base, init) = good();
        let kinds = |s: &State, init: &StockMap| -> Vec<String> {
            check(s, init)
                .violations
                .iter()
                .map(|v| {
                    serde_json::to_value(v).unwrap()["violation"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };

        // Applied twice: the stock moved once more than the orders say.
        let mut s = base.clone();
        s.items.insert("a".into(), Ok(10));
        assert_eq!(kinds(&s, &init), ["stock_mismatch"]);

        // Below zero.
        let mut s = base.clone();
        s.items.insert("b".into(), Ok(-1));
        assert!(kinds(&s, &init).contains(&"negative_stock".to_string()));

        // Applied without its record.
        let mut s = base.clone();
        s.operations.remove(&hashed_id("order", "o1"));
        assert_eq!(kinds(&s, &init), ["order_without_status"]);

        // Recorded but lost (the stock was given back too, so only the pairing is broken).
        let mut s = base.clone();
        s.orders.remove(&hashed_id("order", "o1"));
        s.items.insert("a".into(), Ok(14));
        assert_eq!(kinds(&s, &init), ["status_without_order"]);

        // Rejected, yet applied.
        let mut s = base.clone();
        s.orders.extend([order("o4", &[("b", 0)], "processed")]);
        assert_eq!(
            kinds(&s, &init),
            ["order_status_mismatch", "rejected_but_applied"]
        );

        // Cancelled without the cancellation, and the stock not given back.
        let mut s = base.clone();
        s.operations.remove(&hashed_id("cancel_order", "o3"));
        assert_eq!(kinds(&s, &init), ["cancel_mismatch"]);

        // A key used verbatim as a document ID.
        let mut s = base.clone();
        let (_, o) = op("order", "o1", "processed");
        s.operations.remove(&hashed_id("order", "o1"));
        s.operations.insert("o1".into(), o);
        let k = kinds(&s, &init);
        assert!(k.contains(&"id_not_hashed".to_string()), "{k:?}");

        // Unknown items and missing initial stock.
        let mut s = base.clone();
        s.items.remove("b");
        s.items.insert("c".into(), Err("no stock".into()));
        let mut init2 = init.clone();
        init2.remove("a");
        let k = kinds(&s, &init2);
        for want in ["item_missing", "no_initial_stock", "unreadable"] {
            assert!(k.contains(&want.to_string()), "{want} in {k:?}");
        }
    }
}
