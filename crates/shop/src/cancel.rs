//! `cancel_order`: give back the stock of a processed order and mark it cancelled, once.
//! Cancelling an unknown, rejected, already cancelled or shipping order is a durable
//! rejection, replayed like any other outcome.

use super::order::{Line, OrderDoc, OrderState};
use super::stock::Stock;
use crate::config::ShopConfig;
use firestore::FirestoreInstant;
use firestore_once_core::engine::key::{hashed_id, Fingerprint};
use firestore_once_core::engine::{
    object, Decision, DocRef, OpError, Operation, ParseCtx, Snapshot, ValidationError, Write,
};
use firestore_once_core::engine::{OutcomeKind, StatusRecord};
use serde::Serialize;
use serde_json::{json, Map};

/// The kind: the registry name and the namespace of the operation ID, one constant for both.
pub const KIND: &str = "cancel_order";

/// `{order_id}`: restore the order's stock and set `state = "cancelled"`.
#[derive(Clone, Debug)]
pub struct CancelOrder {
    order_id: String,
    items: String,
    orders: String,
    operations: String,
}

#[derive(Serialize)]
struct Cancelled {
    state: OrderState,
    #[serde(with = "firestore::serialize_as_timestamp")]
    updated_at: FirestoreInstant,
}

impl CancelOrder {
    /// Validate `{order_id}`; the order is named by its domain ID only.
    pub fn parse(body: &serde_json::Value, shop: &ShopConfig) -> Result<Self, ValidationError> {
        object(body)?;
        // A cancellation must name the order; a transport ID cannot stand in for it.
        let strict = ParseCtx {
            fallback_key: None,
            direct: true,
        };
        let (order_id, _) =
            strict.key(body, "order_id", || Fingerprint::of("cancel_order", &()))?;
        Ok(Self {
            order_id,
            items: shop.items.clone(),
            orders: shop.orders.clone(),
            operations: shop.operations.clone(),
        })
    }

    fn order_doc(&self) -> DocRef {
        DocRef::new(&self.orders, hashed_id("order", &self.order_id))
    }

    fn order_status(&self) -> DocRef {
        DocRef::new(&self.operations, hashed_id("order", &self.order_id))
    }

    fn reject(&self, reason: &str, detail: String) -> Decision {
        Decision::reject(reason, detail, json!({"order_id": self.order_id}))
    }

    fn lines(&self, snapshot: &Snapshot) -> Vec<Line> {
        match snapshot.get::<OrderDoc>(&self.order_doc()) {
            Ok(Some(o)) => o.lines,
            _ => Vec::new(),
        }
    }
}

impl Operation for CancelOrder {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn key(&self) -> &str {
        &self.order_id
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.kind(), &self.order_id)
    }

    fn reads(&self) -> Vec<DocRef> {
        vec![self.order_doc(), self.order_status()]
    }

    fn reads_after(&self, first: &Snapshot) -> Vec<DocRef> {
        self.lines(first)
            .iter()
            .map(|l| DocRef::new(&self.items, &l.item_id))
            .collect()
    }

    fn decide(&self, snapshot: &Snapshot) -> Result<Decision, OpError> {
        let Some(order) = snapshot.get::<OrderDoc>(&self.order_doc())? else {
            let status = snapshot.get::<StatusRecord>(&self.order_status())?;
            return Ok(match status {
                Some(s) if s.outcome == OutcomeKind::Rejected => self.reject(
                    "order_rejected",
                    format!(
                        "order {:?} was rejected ({}); there is nothing to cancel",
                        self.order_id,
                        s.reason.unwrap_or_default()
                    ),
                ),
                _ => self.reject(
                    "unknown_order",
                    format!("order {:?} does not exist", self.order_id),
                ),
            });
        };
        match order.state {
            OrderState::Processed => {}
            OrderState::Cancelled => {
                return Ok(self.reject(
                    "already_cancelled",
                    format!("order {:?} is already cancelled", self.order_id),
                ))
            }
            other => {
                return Ok(self.reject(
                    "not_cancellable",
                    format!(
                        "order {:?} is {other}; only processed orders can be cancelled",
                        self.order_id
                    ),
                ))
            }
        }
        let mut writes = Vec::with_capacity(order.lines.len() + 1);
        for line in &order.lines {
            let doc = DocRef::new(&self.items, &line.item_id);
            // An item deleted since the order was taken cannot take its stock back; the
            // cancellation still stands and says so.
            if let Some(item) = snapshot.get::<Stock>(&doc)? {
                writes.push(Write::update(
                    doc,
                    &Stock {
                        stock: item.stock.saturating_add(line.quantity),
                    },
                )?);
            }
        }
        writes.push(Write::update(
            self.order_doc(),
            &Cancelled {
                state: OrderState::Cancelled,
                updated_at: snapshot.now(),
            },
        )?);
        let mut result = Map::new();
        result.insert("order_id".into(), json!(self.order_id));
        result.insert("restored".into(), json!(order.lines));
        Ok(Decision::Apply { writes, result })
    }
}
