//! `restock`: add stock to an item, once per `restock_id`.

use super::stock::{ItemStock, Stock};
use crate::config::ShopConfig;
use firestore_once_core::engine::key::Fingerprint;
use firestore_once_core::engine::{
    doc_id_field, object, positive_field, Decision, DocRef, OpError, Operation, ParseCtx, Snapshot,
    ValidationError, Write,
};
use serde::Serialize;
use serde_json::{json, Map};

/// The kind: the registry name and the namespace of the operation ID, one constant for both.
pub const KIND: &str = "restock";

/// Largest quantity one restock may add.
pub const MAX_RESTOCK: i64 = 1_000_000_000;

/// `{restock_id, item_id, quantity}`: `items/{item_id}.stock += quantity`, once. The units go
/// to the main document; the answer's `stock` is the item's total (main and every shard).
#[derive(Clone, Debug)]
pub struct Restock {
    key: String,
    item_id: String,
    quantity: i64,
    items: String,
    shards: u32,
}

#[derive(Serialize)]
struct Canonical<'a> {
    item_id: &'a str,
    quantity: i64,
}

impl Restock {
    /// Validate `{restock_id, item_id, quantity}`.
    pub fn parse(
        body: &serde_json::Value,
        ctx: &ParseCtx<'_>,
        shop: &ShopConfig,
    ) -> Result<Self, ValidationError> {
        object(body)?;
        let item_id = doc_id_field(body, "item_id")?;
        let quantity = positive_field(body, "quantity", MAX_RESTOCK)?;
        let (key, _) = ctx.key(body, "restock_id", || {
            Fingerprint::of(
                "restock",
                &Canonical {
                    item_id: &item_id,
                    quantity,
                },
            )
        })?;
        Ok(Self {
            key,
            item_id,
            quantity,
            items: shop.items.clone(),
            shards: shop.stock_shards,
        })
    }

    fn item(&self) -> DocRef {
        DocRef::new(&self.items, &self.item_id)
    }

    fn stock(&self) -> ItemStock {
        ItemStock::new(&self.items, &self.item_id, self.shards, None)
    }
}

impl Operation for Restock {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(
            self.kind(),
            &(
                &self.key,
                Canonical {
                    item_id: &self.item_id,
                    quantity: self.quantity,
                },
            ),
        )
    }

    fn reads(&self) -> Vec<DocRef> {
        self.stock().all()
    }

    fn decide(&self, snapshot: &Snapshot) -> Result<Decision, OpError> {
        let (Some(item), Some(total)) = (
            snapshot.get::<Stock>(&self.item())?,
            self.stock().total(snapshot)?,
        ) else {
            return Ok(Decision::reject(
                "unknown_item",
                format!("item {:?} does not exist", self.item_id),
                json!({"item_id": self.item_id}),
            ));
        };
        let stock = total.saturating_add(self.quantity);
        let mut result = Map::new();
        result.insert("item_id".into(), json!(self.item_id));
        result.insert("added".into(), json!(self.quantity));
        result.insert("stock".into(), json!(stock));
        Ok(Decision::Apply {
            writes: vec![Write::update(
                self.item(),
                &Stock {
                    stock: item.stock.saturating_add(self.quantity),
                },
            )?],
            result,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firestore::FirestoreInstant;
    use serde_json::json;

    #[test]
    fn restock_adds_once_and_rejects_unknown_items() {
        let c = ShopConfig {
            stock_shards: 0,
            ..ShopConfig::default()
        };
        let ctx = ParseCtx {
            fallback_key: None,
            direct: true,
        };
        let r = Restock::parse(
            &json!({"restock_id":"r1","item_id":"a","quantity":5}),
            &ctx,
            &c,
        )
        .unwrap();
        let stock = firestore::FirestoreDb::serialize_to_doc("x", &json!({"stock": 2}))
            .unwrap()
            .fields;
        let snap = Snapshot::from_docs(FirestoreInstant::now(), [(r.item(), Some(stock))]);
        let Decision::Apply { result, .. } = r.decide(&snap).unwrap() else {
            panic!()
        };
        assert_eq!(result["stock"], 7);
        let none = Snapshot::from_docs(FirestoreInstant::now(), [(r.item(), None)]);
        assert!(
            matches!(r.decide(&none).unwrap(), Decision::Reject(ref j) if j.reason == "unknown_item")
        );
        for (bad, field) in [
            (json!({"item_id":"a","quantity":5}), "restock_id"),
            (json!({"restock_id":"r","quantity":5}), "item_id"),
            (
                json!({"restock_id":"r","item_id":"a","quantity":0}),
                "quantity",
            ),
        ] {
            assert_eq!(Restock::parse(&bad, &ctx, &c).unwrap_err().field, field);
        }
    }
}
