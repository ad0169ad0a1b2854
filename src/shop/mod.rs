//! The shop: one domain built on the [engine](crate::engine). Orders take stock, restocks
//! add it, cancellations give it back, and `fulfil_order` is a workflow
//! (reserve → invoice → ship, the last behind a carrier call). [`invariants`] checks that
//! stock, orders and status documents agree.

pub mod cancel;
pub mod fulfil;
pub mod invariants;
pub mod order;
pub mod restock;
pub mod stock;

use crate::engine::{Operation, Registry, Workflow};
use fulfil::{Carrier, LocalCarrier};
use std::sync::Arc;

/// The shipped kinds: `order` (the same operation as `POST /orders`), `restock`,
/// `cancel_order`, and the `fulfil_order` workflow, whose ship step books with `carrier`.
pub fn registry(carrier: Arc<dyn Carrier>) -> Registry {
    let mut r = Registry::default();
    r.register(order::KIND, |v, ctx| {
        Ok(Arc::new(order::Order::parse_with(v, ctx)?) as Arc<dyn Operation>)
    });
    r.register(restock::KIND, |v, ctx| {
        Ok(Arc::new(restock::Restock::parse(v, ctx)?) as Arc<dyn Operation>)
    });
    r.register(cancel::KIND, |v, ctx| {
        Ok(Arc::new(cancel::CancelOrder::parse(v, ctx)?) as Arc<dyn Operation>)
    });
    r.register_workflow(fulfil::KIND, move |v, ctx| {
        Ok(Arc::new(fulfil::Fulfil::parse(v, ctx, carrier.clone())?) as Arc<dyn Workflow>)
    });
    r
}

/// [`registry`] with the stand-in carrier: what the binary serves.
pub fn default_registry() -> Registry {
    registry(Arc::new(LocalCarrier))
}
