//! The shop: the first user of [`firestore_once_core`], and the domain the `firestore-once`
//! binary serves. Orders take stock, restocks add it, cancellations give it back, and
//! `fulfil_order` is a workflow (reserve → invoice → ship, the last behind a carrier call).
//! [`invariants`] checks that stock, orders and status documents agree.
//!
//! Everything here goes through the core's public API, as any service of your own would:
//! kinds implement `engine::Operation` or `engine::Workflow`, [`registry`] registers them,
//! and [`service`](fn@service) serves them (`POST /orders` as a route of the `order` kind, the `order_id`
//! look-up, the shop's OpenAPI shapes).

pub mod cancel;
pub mod config;
pub mod fulfil;
pub mod invariants;
pub mod openapi;
pub mod order;
pub mod placement;
pub mod restock;
pub mod stock;

pub use config::ShopConfig;

use firestore_once_core::config::Config;
use firestore_once_core::engine::Registry;
use firestore_once_core::guard::Guard;
use firestore_once_core::service::{self, Service};
use fulfil::{Carrier, LocalCarrier};
use std::sync::Arc;

/// The shipped kinds: `order` (also served at `POST /orders`), `restock`, `cancel_order`, and
/// the `fulfil_order` workflow, whose ship step books with `carrier`.
pub fn registry(shop: &ShopConfig, carrier: Arc<dyn Carrier>) -> Registry {
    let mut r = Registry::default();
    let s = shop.clone();
    r.register(order::KIND, move |v, ctx| {
        order::Order::parse_with(v, ctx, &s)
    });
    let s = shop.clone();
    r.register(restock::KIND, move |v, ctx| {
        restock::Restock::parse(v, ctx, &s)
    });
    let s = shop.clone();
    r.register(cancel::KIND, move |v, _| cancel::CancelOrder::parse(v, &s));
    let s = shop.clone();
    r.register_workflow(fulfil::KIND, move |v, _| {
        fulfil::Fulfil::parse(v, &s, carrier.clone())
    });
    r
}

/// The service the binary runs: the shop's kinds on `guard`, `POST /orders`, the `order_id`
/// look-up and the shop's OpenAPI shapes, with the stand-in carrier.
pub fn service(
    guard: Guard,
    config: Config,
    mut shop: ShopConfig,
    project_id: impl Into<Arc<str>>,
) -> Service {
    shop.operations = config.collections.operations.clone();
    shop.placement = shop.placement.with_scarce_main(config.doc_budget.is_some());
    let kinds = registry(&shop, Arc::new(LocalCarrier));
    Service::new(guard, config, project_id, kinds)
        .route("/orders", order::KIND)
        .lookup("order_id", "Order ID", order::KIND)
        .openapi(openapi::extend)
}

/// [`service`](fn@service) for `config` and `shop`: the project resolved, a Firestore client, one guard.
pub async fn connect(config: Config, shop: ShopConfig) -> anyhow::Result<Service> {
    let project_id = firestore_once_core::config::resolve_project_id(&config).await?;
    let db = service::connect_db(&config, &project_id, None).await?;
    let guard = Guard::new(db, (&config).into());
    Ok(self::service(guard, config, shop, project_id))
}
