//! The invariant checker: reads what the service left in Firestore after a run and checks the
//! product's one promise, that no order was applied twice or lost.
//!
//! A load or fault test can only count answers; answers can lie (a 200 that was never
//! committed, a 503 whose commit landed anyway). The database cannot, so every reliability
//! scenario ends here, and so can an operator after an incident (`check-invariants`).
//!
//! Checked, for the collections of [`ShopConfig`](crate::config::ShopConfig):
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

mod check;
mod read;
mod state;
#[cfg(test)]
mod tests;

pub use check::check;
pub use read::{read, verify, ReadError};
pub use state::*;
