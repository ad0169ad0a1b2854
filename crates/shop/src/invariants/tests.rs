use super::*;
use firestore_once_core::engine::key::hashed_id;

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
