//! The shop's own settings, read from the same environment as the core's
//! ([`firestore_once_core::config::Config`]).

use crate::stock::Placement;
use anyhow::bail;
use firestore_once_core::config::{collection_name, parse};

/// Where the shop keeps its documents, and how it spreads a hot item's stock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShopConfig {
    /// Business items with an integer `stock` (`ONCE_ITEMS_COLLECTION`, default `items`).
    pub items: String,
    /// Accepted orders (`ONCE_ORDERS_COLLECTION`, default `orders`).
    pub orders: String,
    /// The core's status documents (`ONCE_OPERATIONS_COLLECTION`, as the core reads it): a
    /// cancellation reads the order's status document. [`crate::service`](fn@crate::service) sets it from the
    /// core's configuration, so the two never differ.
    pub operations: String,
    /// `fulfil_order` progress (`ONCE_FULFILMENTS_COLLECTION`, default `fulfilments`).
    pub fulfilments: String,
    /// `fulfil_order` invoices (`ONCE_INVOICES_COLLECTION`, default `invoices`).
    pub invoices: String,
    /// `fulfil_order` shipments (`ONCE_SHIPMENTS_COLLECTION`, default `shipments`).
    pub shipments: String,
    /// `ONCE_STOCK_SHARDS`: how many shard documents (`{items}/{id}/shards/{k}`) an item's
    /// stock may be spread over so several instances can sell one hot item without writing
    /// the same document (see docs/scale-out.md); 0 sells from `{items}/{id}.stock` alone.
    pub stock_shards: u32,
    /// Which items this instance sells from shards (those it met contended) and which shard
    /// it prefers: first `hash(ONCE_INSTANCE_ID) mod stock_shards` (the instance ID is random
    /// per process unless set), another one after repeated conflicts on it (see
    /// [`Placement`]).
    pub placement: Placement,
}

/// Default of `ONCE_STOCK_SHARDS`.
pub const DEFAULT_STOCK_SHARDS: u32 = 64;

/// Most stock shards per item: a gather reads all of them in one call and verifies them in
/// one commit (Firestore allows 500 writes per commit).
pub const MAX_STOCK_SHARDS: u32 = 64;

/// The shard an instance called `instance` prefers among `shards`: a number is taken as the
/// shard itself (so a deployment can place instances by hand), anything else is hashed.
pub fn shard_of(instance: &str, shards: u32) -> u32 {
    if shards == 0 {
        return 0;
    }
    match instance.parse::<u32>() {
        Ok(n) => n % shards,
        Err(_) => {
            use sha2::{Digest, Sha256};
            let h = Sha256::digest(instance.as_bytes());
            u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % shards
        }
    }
}

impl Default for ShopConfig {
    fn default() -> Self {
        Self {
            items: "items".into(),
            orders: "orders".into(),
            operations: "operations".into(),
            fulfilments: "fulfilments".into(),
            invoices: "invoices".into(),
            shipments: "shipments".into(),
            stock_shards: DEFAULT_STOCK_SHARDS,
            placement: Placement::new(0),
        }
    }
}

impl ShopConfig {
    /// Read the process environment; `instance_id` is the core's `ONCE_INSTANCE_ID`.
    pub fn from_env(instance_id: &str) -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok(), instance_id)
    }

    /// Read the settings through `get`, so tests can supply their own environment.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        instance_id: &str,
    ) -> anyhow::Result<Self> {
        let name = |k: &str, default: &str| collection_name(&get, k, default);
        let stock_shards: u32 = parse(
            "ONCE_STOCK_SHARDS",
            get("ONCE_STOCK_SHARDS"),
            DEFAULT_STOCK_SHARDS,
        )?;
        if stock_shards > MAX_STOCK_SHARDS {
            bail!("ONCE_STOCK_SHARDS={stock_shards}: at most {MAX_STOCK_SHARDS}");
        }
        Ok(Self {
            items: name("ONCE_ITEMS_COLLECTION", "items")?,
            orders: name("ONCE_ORDERS_COLLECTION", "orders")?,
            operations: name("ONCE_OPERATIONS_COLLECTION", "operations")?,
            fulfilments: name("ONCE_FULFILMENTS_COLLECTION", "fulfilments")?,
            invoices: name("ONCE_INVOICES_COLLECTION", "invoices")?,
            shipments: name("ONCE_SHIPMENTS_COLLECTION", "shipments")?,
            stock_shards,
            placement: Placement::new(shard_of(instance_id, stock_shards)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)], instance: &str) -> anyhow::Result<ShopConfig> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ShopConfig::from_lookup(|k| m.get(k).cloned(), instance)
    }

    #[test]
    fn defaults_and_overrides() {
        let c = cfg(&[], "rev-abc").unwrap();
        assert_eq!(
            c,
            ShopConfig {
                placement: c.placement.clone(),
                ..ShopConfig::default()
            }
        );
        assert!(c.placement.shard() < DEFAULT_STOCK_SHARDS);
        let c = cfg(&[("ONCE_STOCK_SHARDS", "4")], "5").unwrap();
        assert_eq!((c.stock_shards, c.placement.shard()), (4, 1));
        assert_eq!(shard_of("rev-abc", 0), 0);
        assert_eq!(shard_of("rev-abc", 8), shard_of("rev-abc", 8));
        let c = cfg(
            &[
                ("ONCE_ITEMS_COLLECTION", "stock"),
                ("ONCE_FULFILMENTS_COLLECTION", "f"),
                ("ONCE_INVOICES_COLLECTION", "i"),
                ("ONCE_SHIPMENTS_COLLECTION", "s"),
            ],
            "x",
        )
        .unwrap();
        assert_eq!(
            [&c.items, &c.fulfilments, &c.invoices, &c.shipments],
            ["stock", "f", "i", "s"]
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (k, v) in [
            ("ONCE_ITEMS_COLLECTION", "a/b"),
            ("ONCE_ORDERS_COLLECTION", ""),
            ("ONCE_STOCK_SHARDS", "65"),
            ("ONCE_STOCK_SHARDS", "many"),
        ] {
            let e = cfg(&[(k, v)], "0").unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
    }
}
