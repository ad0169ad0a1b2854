//! The order operation from article 003, done right: every item read before any write, and a
//! business rejection stored as an outcome instead of raised (which would roll back the status
//! write and make every redelivery try again, forever).

use super::stock::{ItemStock, Placement, Take};
use crate::config::ShopConfig;
use firestore::FirestoreInstant;
use firestore_once_core::engine::key::{hashed_id, is_valid_document_id, Fingerprint};
use firestore_once_core::engine::{
    CommitReport, Decision, DocRef, OpError, Operation, ParseCtx, Snapshot, ValidationError, Write,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The kind: the registry name and the namespace of the operation ID, one constant for both.
pub const KIND: &str = "order";

/// Longest accepted `order_id`, in bytes.
pub const MAX_ORDER_ID_BYTES: usize = firestore_once_core::engine::parse::MAX_KEY_BYTES;
/// Most lines in one order: every line is one read and one write in the same transaction,
/// and Firestore caps a commit at 500 writes.
pub const MAX_LINES: usize = 100;
/// Largest quantity on one line; keeps stock arithmetic far from overflow.
pub const MAX_QUANTITY: i64 = 1_000_000_000;

/// One order line; also its stored and canonical form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Document ID under the items collection.
    pub item_id: String,
    /// Units to take; positive.
    pub quantity: i64,
}

/// An order: take every line's quantity from stock, all or nothing, once per `order_id`.
#[derive(Clone, Debug)]
pub struct Order {
    order_id: String,
    /// Sorted by `item_id`, so line order in the request does not change the fingerprint.
    lines: Vec<Line>,
    orders: String,
    /// Where each line's stock is taken from (main document or own shard, asked at each
    /// attempt); aligned with `lines`.
    stocks: Vec<ItemStock>,
    /// The instance's placement, told how this order's commits went (see [`Placement`]).
    placement: Placement,
}

/// The life of an order, stored lowercase in `orders/{id}.state`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OrderState {
    /// Accepted: its stock is taken.
    Processed,
    /// Cancelled: its stock was given back.
    Cancelled,
    /// Reserved for fulfilment (`fulfil_order`'s first step).
    Fulfilling,
    /// Handed to the carrier.
    Shipped,
}

impl OrderState {
    /// Lowercase name, as stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderState::Processed => "processed",
            OrderState::Cancelled => "cancelled",
            OrderState::Fulfilling => "fulfilling",
            OrderState::Shipped => "shipped",
        }
    }
}

impl std::fmt::Display for OrderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The accepted order as stored in `orders/{operation_id}`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct OrderDoc {
    /// The caller's order ID, raw.
    pub order_id: String,
    /// Lines, as an array of maps (Firestore refuses arrays inside arrays).
    pub lines: Vec<Line>,
    /// Where the order is in its life.
    pub state: OrderState,
    /// When it was accepted.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub created_at: FirestoreInstant,
    /// Last state change.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub updated_at: FirestoreInstant,
}

#[derive(Serialize)]
struct Canonical<'a> {
    order_id: &'a str,
    lines: &'a [Line],
}

fn quantity(v: &Value, field: &str) -> Result<i64, ValidationError> {
    match v.as_i64() {
        Some(q) if (1..=MAX_QUANTITY).contains(&q) => Ok(q),
        _ => Err(ValidationError::new(
            field,
            format!("must be an integer from 1 to {MAX_QUANTITY}"),
        )),
    }
}

fn item_id(v: &Value, field: &str) -> Result<String, ValidationError> {
    match v.as_str() {
        Some(s) if is_valid_document_id(s) => Ok(s.to_owned()),
        Some("") => Err(ValidationError::new(field, "must not be empty")),
        Some(_) => Err(ValidationError::new(
            field,
            "must be a Firestore document ID: at most 1500 bytes, no '/', not '.', '..' or '__…__'",
        )),
        None => Err(ValidationError::new(field, "must be a string")),
    }
}

impl Order {
    /// Validate an order from a direct caller with no `Idempotency-Key`: `order_id` required.
    pub fn parse(body: &Value, shop: &ShopConfig) -> Result<Self, ValidationError> {
        Self::parse_with(
            body,
            &ParseCtx {
                fallback_key: None,
                direct: true,
            },
            shop,
        )
    }

    /// Validate a JSON order in either accepted shape:
    /// `{"order_id","item_id","quantity"}` or `{"order_id","items":[{"item_id","quantity"}]}`.
    /// Without `order_id`, the delivery's transport identity keys it (see [`ParseCtx::key`]).
    pub fn parse_with(
        body: &Value,
        ctx: &ParseCtx<'_>,
        shop: &ShopConfig,
    ) -> Result<Self, ValidationError> {
        let obj = body
            .as_object()
            .ok_or_else(|| ValidationError::new("body", "must be a JSON object"))?;
        let no_lines = || Fingerprint::of("order", &());
        // A present order_id is checked first so its errors win over the lines'.
        let explicit = match obj.get("order_id") {
            None | Some(Value::Null) => None,
            Some(_) => Some(ctx.key(body, "order_id", no_lines)?),
        };
        let single = obj.contains_key("item_id") || obj.contains_key("quantity");
        let mut lines = match (obj.get("items"), single) {
            (Some(_), true) => {
                return Err(ValidationError::new(
                    "items",
                    "give either item_id and quantity, or items, not both",
                ))
            }
            (None, false) => {
                return Err(ValidationError::new(
                    "item_id",
                    "is required (or items, a list of lines)",
                ))
            }
            (None, true) => {
                let id = item_id(obj.get("item_id").unwrap_or(&Value::Null), "item_id").map_err(
                    |e| match obj.get("item_id") {
                        None | Some(Value::Null) => ValidationError::new("item_id", "is required"),
                        _ => e,
                    },
                )?;
                let q = quantity(obj.get("quantity").unwrap_or(&Value::Null), "quantity")?;
                vec![Line {
                    item_id: id,
                    quantity: q,
                }]
            }
            (Some(items), false) => {
                let arr = items
                    .as_array()
                    .ok_or_else(|| ValidationError::new("items", "must be an array of lines"))?;
                if arr.is_empty() {
                    return Err(ValidationError::new("items", "must not be empty"));
                }
                if arr.len() > MAX_LINES {
                    return Err(ValidationError::new(
                        "items",
                        format!("at most {MAX_LINES} lines per order"),
                    ));
                }
                let mut lines = Vec::with_capacity(arr.len());
                for (i, line) in arr.iter().enumerate() {
                    let line = line.as_object().ok_or_else(|| {
                        ValidationError::new(format!("items[{i}]"), "must be an object")
                    })?;
                    let f = format!("items[{i}].item_id");
                    let id = match line.get("item_id") {
                        None | Some(Value::Null) => {
                            return Err(ValidationError::new(f, "is required"))
                        }
                        Some(v) => item_id(v, &f)?,
                    };
                    let q = quantity(
                        line.get("quantity").unwrap_or(&Value::Null),
                        &format!("items[{i}].quantity"),
                    )?;
                    lines.push(Line {
                        item_id: id,
                        quantity: q,
                    });
                }
                lines
            }
        };
        lines.sort_by(|a, b| a.item_id.cmp(&b.item_id));
        if let Some(w) = lines.windows(2).find(|w| w[0].item_id == w[1].item_id) {
            return Err(ValidationError::new(
                "items",
                format!("item_id {:?} appears on more than one line", w[0].item_id),
            ));
        }
        let (key, domain) = match explicit {
            Some(k) => k,
            None => ctx.key(body, "order_id", || {
                Fingerprint::of(
                    "order",
                    &Canonical {
                        order_id: "",
                        lines: &lines,
                    },
                )
            })?,
        };
        Ok(Self {
            // An order keyed by its delivery is stored under that key as its order ID.
            order_id: domain.unwrap_or_else(|| key.clone()),
            stocks: lines.iter().map(|l| stock_of(shop, &l.item_id)).collect(),
            lines,
            orders: shop.orders.clone(),
            placement: shop.placement.clone(),
        })
    }

    /// The caller's order ID.
    pub fn order_id(&self) -> &str {
        &self.order_id
    }

    /// Lines sorted by item ID.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    #[cfg(test)]
    fn item(&self, id: &str) -> DocRef {
        DocRef::new(&ShopConfig::default().items, id)
    }

    fn lines_with_stock(&self) -> impl Iterator<Item = (&Line, &ItemStock)> {
        self.lines.iter().zip(&self.stocks)
    }
}

impl Operation for Order {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn key(&self) -> &str {
        &self.order_id
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(
            self.kind(),
            &Canonical {
                order_id: &self.order_id,
                lines: &self.lines,
            },
        )
    }

    fn reads(&self) -> Vec<DocRef> {
        self.stocks.iter().flat_map(ItemStock::reads).collect()
    }

    fn reads_after(&self, first: &Snapshot) -> Vec<DocRef> {
        self.lines_with_stock()
            .flat_map(|(l, s)| s.reads_after(first, l.quantity))
            .collect()
    }

    fn decide(&self, snapshot: &Snapshot) -> Result<Decision, OpError> {
        let mut writes = Vec::with_capacity(self.lines.len() * 2 + 1);
        // Lines name distinct items (checked at parse), so each reads its own documents.
        for (line, stock) in self.lines_with_stock() {
            match stock.take(snapshot, line.quantity)? {
                Take::Unknown => {
                    return Ok(Decision::reject(
                        "unknown_item",
                        format!("item {:?} does not exist", line.item_id),
                        json!({"item_id": line.item_id}),
                    ))
                }
                Take::Short { available } => {
                    return Ok(Decision::reject(
                        "insufficient_stock",
                        format!(
                            "item {:?} has {} in stock, the order needs {}",
                            line.item_id, available, line.quantity
                        ),
                        json!({"item_id": line.item_id, "available": available, "requested": line.quantity}),
                    ))
                }
                Take::Writes(w) => writes.extend(w),
            }
        }
        let order_doc = DocRef::new(&self.orders, hashed_id(self.kind(), &self.order_id));
        writes.push(Write::create(
            order_doc,
            &OrderDoc {
                order_id: self.order_id.clone(),
                lines: self.lines.clone(),
                state: OrderState::Processed,
                created_at: snapshot.now(),
                updated_at: snapshot.now(),
            },
        )?);
        let mut result = Map::new();
        result.insert("order_id".into(), json!(self.order_id));
        result.insert("lines".into(), json!(self.lines));
        Ok(Decision::Apply { writes, result })
    }

    fn contention_marks(&self) -> Vec<Write> {
        // A field of the service's own beside `stock` (the stock itself is untouched), with a
        // new value each time so the write always changes the document's version.
        #[derive(Serialize)]
        struct Mark {
            stock_contended_at_ms: u64,
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.lines_with_stock()
            .filter(|(_, stock)| stock.own().is_some())
            .filter_map(|(_, stock)| {
                Write::update(
                    stock.main().clone(),
                    &Mark {
                        stock_contended_at_ms: at,
                    },
                )
                .ok()
            })
            .collect()
    }

    fn replan(&self) {
        for stock in &self.stocks {
            stock.replan();
        }
    }

    fn committed(&self, report: &CommitReport) {
        let operation_id = hashed_id(self.kind(), &self.order_id);
        // More waiting than one commit held: that many more commits a second are needed.
        let overflow = report.full && report.waiting > 0 && !report.conflict;
        let more = report.waiting.div_ceil(report.taken.max(1)) as u32;
        for (line, stock) in self.lines_with_stock() {
            let (item, k) = (line.item_id.as_str(), stock.shards());
            if k == 0 {
                continue;
            }
            let max = (k / 2).max(1);
            if !report.conflict {
                self.placement.filled(item, k, &stock.filled());
            }
            match stock.held().filter(|_| stock.own().is_some()) {
                // Sold from the main document: leave it when one document is not enough.
                None => {
                    let why = if report.conflict {
                        "another writer changed it"
                    } else if report.throttled {
                        "its write budget held the commit back"
                    } else if overflow {
                        "more orders waited than one commit holds"
                    } else {
                        continue;
                    };
                    if self.placement.spread(item, k) {
                        let grown = overflow
                            .then(|| self.placement.grow(item, k, more, max))
                            .flatten();
                        tracing::info!(
                            operation_id = %operation_id,
                            order_id = %self.order_id,
                            item_id = %item,
                            shards = ?grown.unwrap_or_else(|| self.placement.shards_of(item, k)),
                            reason = why,
                            outcome = "stock_spread",
                            "item hot on its main document: later orders here sell it from this instance's stock shards"
                        );
                    }
                }
                Some(shard) => {
                    // A refused commit that also wrote main or other shards may have been
                    // refused for those: only one that wrote nothing else blames the shard.
                    let blamed = report.conflict && !stock.wrote_beyond_own();
                    if let Some(to) = blamed
                        .then(|| self.placement.refused(item, k, shard))
                        .flatten()
                    {
                        tracing::warn!(
                            operation_id = %operation_id,
                            order_id = %self.order_id,
                            item_id = %item,
                            from_shard = shard,
                            to_shard = to,
                            outcome = "shard_moved",
                            "stock shard moved: another instance writes it too"
                        );
                    }
                    if !report.conflict {
                        let (taken, capacity) = (report.taken, report.capacity);
                        self.placement.committed(item, k, shard, taken, capacity);
                    }
                    if overflow {
                        if let Some(set) = self.placement.grow(item, k, more, max) {
                            tracing::info!(
                                operation_id = %operation_id,
                                order_id = %self.order_id,
                                item_id = %item,
                                shards = ?set,
                                waiting = report.waiting,
                                taken = report.taken,
                                outcome = "stock_spread_more",
                                "more orders waited than its shards' commits hold: spread over more shards"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Where an order line for `item_id` takes its stock, as this instance places it.
fn stock_of(c: &ShopConfig, item_id: &str) -> ItemStock {
    ItemStock::new(&c.items, item_id, c.stock_shards, Some(&c.placement))
}

#[cfg(test)]
mod tests;
