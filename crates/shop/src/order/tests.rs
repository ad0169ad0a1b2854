use super::*;
use firestore_once_core::engine::Fields;

fn cols() -> ShopConfig {
    ShopConfig {
        stock_shards: 0,
        ..ShopConfig::default()
    }
}

fn parse(v: Value) -> Result<Order, ValidationError> {
    Order::parse(&v, &cols())
}

fn field_of(v: Value) -> String {
    match parse(v) {
        Err(e) => e.field,
        Ok(o) => panic!("accepted {o:?}"),
    }
}

#[test]
fn both_shapes_parse_to_the_same_fingerprint() {
    let a = parse(json!({"order_id":"o1","item_id":"apple","quantity":2})).unwrap();
    let b = parse(json!({"order_id":"o1","items":[{"item_id":"apple","quantity":2}]})).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    let c = parse(json!({"order_id":"o1","items":[{"item_id":"apple","quantity":3}]})).unwrap();
    assert_ne!(a.fingerprint(), c.fingerprint());
}

#[test]
fn line_order_does_not_change_fingerprint() {
    let a = parse(
        json!({"order_id":"o","items":[{"item_id":"a","quantity":1},{"item_id":"b","quantity":2}]}),
    )
    .unwrap();
    let b = parse(json!({"quantity_note":"ignored","order_id":"o","items":[{"quantity":2,"item_id":"b"},{"item_id":"a","quantity":1}]})).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.lines()[0].item_id, "a");
}

#[test]
fn validation_names_the_field() {
    assert_eq!(field_of(json!([1])), "body");
    assert_eq!(field_of(json!({"item_id":"a","quantity":1})), "order_id");
    assert_eq!(
        field_of(json!({"order_id":"","item_id":"a","quantity":1})),
        "order_id"
    );
    assert_eq!(
        field_of(json!({"order_id":7,"item_id":"a","quantity":1})),
        "order_id"
    );
    assert_eq!(field_of(json!({"order_id":"o","quantity":1})), "item_id");
    assert_eq!(
        field_of(json!({"order_id":"o","item_id":"","quantity":1})),
        "item_id"
    );
    assert_eq!(
        field_of(json!({"order_id":"o","item_id":"a/b","quantity":1})),
        "item_id"
    );
    assert_eq!(field_of(json!({"order_id":"o","item_id":"a"})), "quantity");
    for q in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!("2"),
        json!(MAX_QUANTITY + 1),
    ] {
        assert_eq!(
            field_of(json!({"order_id":"o","item_id":"a","quantity":q})),
            "quantity"
        );
    }
    assert_eq!(field_of(json!({"order_id":"o"})), "item_id");
    assert_eq!(field_of(json!({"order_id":"o","items":[]})), "items");
    assert_eq!(field_of(json!({"order_id":"o","items":{}})), "items");
    assert_eq!(
        field_of(json!({"order_id":"o","items":[{"item_id":"a","quantity":1}],"item_id":"a"})),
        "items"
    );
    assert_eq!(
        field_of(
            json!({"order_id":"o","items":[{"item_id":"a","quantity":1},{"item_id":"a","quantity":2}]})
        ),
        "items"
    );
    assert_eq!(
        field_of(json!({"order_id":"o","items":[{"quantity":1}]})),
        "items[0].item_id"
    );
    assert_eq!(
        field_of(
            json!({"order_id":"o","items":[{"item_id":"a","quantity":1},{"item_id":"b","quantity":0}]})
        ),
        "items[1].quantity"
    );
    let many: Vec<Value> = (0..=MAX_LINES)
        .map(|i| json!({"item_id": format!("i{i}"), "quantity": 1}))
        .collect();
    assert_eq!(field_of(json!({"order_id":"o","items":many})), "items");
    assert_eq!(
        field_of(json!({"order_id":"x".repeat(MAX_ORDER_ID_BYTES + 1),"item_id":"a","quantity":1})),
        "order_id"
    );
    assert!(parse(json!({"order_id":"a/b/../__x__ ünï","item_id":"a","quantity":1})).is_ok());
}

fn stock(n: i64) -> Option<Fields> {
    Some(
        firestore::FirestoreDb::serialize_to_doc("x", &json!({"stock": n, "name": "kept"}))
            .unwrap()
            .fields,
    )
}

#[test]
fn decide_processes_rejects_and_folds() {
    let o = parse(
        json!({"order_id":"o","items":[{"item_id":"a","quantity":2},{"item_id":"b","quantity":1}]}),
    )
    .unwrap();
    let now = FirestoreInstant::now();
    let mut snap = Snapshot::from_docs(now, [(o.item("a"), stock(3)), (o.item("b"), stock(1))]);
    let Decision::Apply { writes, .. } = o.decide(&snap).unwrap() else {
        panic!("rejected")
    };
    assert_eq!(writes.len(), 3);
    for w in &writes {
        snap.apply(w);
    }
    #[derive(Deserialize)]
    struct Kept {
        stock: i64,
        name: String,
    }
    let a: Kept = snap.get(&o.item("a")).unwrap().unwrap();
    assert_eq!((a.stock, a.name.as_str()), (1, "kept"));
    // The same order folded again on the evolved snapshot runs out of stock on "a".
    let Decision::Reject(r) = o.decide(&snap).unwrap() else {
        panic!("applied twice")
    };
    assert_eq!(r.reason, "insufficient_stock");
    assert_eq!(r.extra["item_id"], "a");
    assert_eq!(r.extra["available"], 1);

    let missing = Snapshot::from_docs(now, [(o.item("a"), stock(5)), (o.item("b"), None)]);
    let Decision::Reject(r) = o.decide(&missing).unwrap() else {
        panic!("applied")
    };
    assert_eq!(
        (r.reason.as_str(), &r.extra["item_id"]),
        ("unknown_item", &json!("b"))
    );

    let unread = Snapshot::from_docs(now, [(o.item("a"), stock(5))]);
    assert!(matches!(o.decide(&unread), Err(OpError::NotRead { .. })));
}
