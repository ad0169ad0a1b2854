//! The checks themselves: pure, over a [`State`] already read.

use super::state::*;
use firestore_once_core::engine::key::hashed_id;
use std::collections::{BTreeMap, BTreeSet};

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
