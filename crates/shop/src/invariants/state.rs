//! What the checker reads and what it finds: the documents as states, the violations, the
//! report.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Stock per item ID: the initial stock a run seeded, or the stock read afterwards.
pub type StockMap = BTreeMap<String, i64>;

/// Order states that keep the order's stock taken (everything but `cancelled`).
pub(super) const CANCELLED: &str = crate::order::OrderState::Cancelled.as_str();

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
