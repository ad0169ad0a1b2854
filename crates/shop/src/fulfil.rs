//! `fulfil_order`: a [`Workflow`] of three steps (article 000), each committed once with its
//! own status document; the runner ([`firestore_once_core::guard::workflow`]) resumes a redelivery at the
//! first unfinished step.
//!
//! 1. `reserve`: the order moves to `fulfilling`; `fulfilments/{id}` is created.
//! 2. `invoice`: `invoices/{id}` is created.
//! 3. `ship`: calls the carrier (the outside world) under a lease, then records
//!    `shipments/{id}` and marks the order `shipped`; the lease is released in that commit.
//!
//! The step's operation ID is passed to the carrier as its idempotency key, so a carrier that
//! honours keys turns the one possible repeat (a crash mid-call, then lease expiry) into a
//! no-op.

use super::order::{Line, OrderDoc, OrderState};
use crate::config::ShopConfig;
use firestore::FirestoreInstant;
use firestore_once_core::engine::{
    hashed_id, object, Decision, DocRef, Fingerprint, OpError, Operation, ParseCtx, Snapshot,
    StepReport, StepSpec, ValidationError, Workflow, Write,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The task kind.
pub const KIND: &str = "fulfil_order";

/// `reserve`: take the processed order for fulfilment.
pub const RESERVE: StepSpec = StepSpec {
    name: "reserve",
    kind: "fulfil_order.reserve",
    calls_out: false,
};
/// `invoice`: record the invoice.
pub const INVOICE: StepSpec = StepSpec {
    name: "invoice",
    kind: "fulfil_order.invoice",
    calls_out: false,
};
/// `ship`: book the carrier, then record the shipment.
pub const SHIP: StepSpec = StepSpec {
    name: "ship",
    kind: "fulfil_order.ship",
    calls_out: true,
};
/// The steps, in order.
pub const STEPS: [StepSpec; 3] = [RESERVE, INVOICE, SHIP];

/// One step of the fulfilment, for the decision's `match`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reserve the order for fulfilment.
    Reserve,
    /// Record the invoice.
    Invoice,
    /// Book the carrier and record the shipment.
    Ship,
}

impl Step {
    fn of(spec: &StepSpec) -> Self {
        match spec.name {
            "reserve" => Step::Reserve,
            "invoice" => Step::Invoice,
            _ => Step::Ship,
        }
    }

    fn spec(self) -> StepSpec {
        match self {
            Step::Reserve => RESERVE,
            Step::Invoice => INVOICE,
            Step::Ship => SHIP,
        }
    }
}

/// The outside world the `ship` step calls.
pub trait Carrier: Send + Sync {
    /// Book a shipment and return the carrier's reference. `idempotency_key` is the step's
    /// operation ID: the same for every attempt at the same shipment.
    fn book<'a>(
        &'a self,
        idempotency_key: &'a str,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<String, String>>;
}

/// A stand-in carrier that derives the reference from the key, as an idempotent carrier API
/// would return the same booking for the same key.
#[derive(Debug, Default)]
pub struct LocalCarrier;

impl Carrier for LocalCarrier {
    fn book<'a>(&'a self, key: &'a str, _order: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move { Ok(format!("TRK-{}", key.chars().take(12).collect::<String>())) })
    }
}

/// Where a fulfilment is, stored lowercase in `fulfilments/{id}.state`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FulfilmentState {
    /// After `reserve`.
    Reserved,
    /// After `invoice`.
    Invoiced,
    /// After `ship`.
    Shipped,
}

impl FulfilmentState {
    /// Lowercase name, as stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            FulfilmentState::Reserved => "reserved",
            FulfilmentState::Invoiced => "invoiced",
            FulfilmentState::Shipped => "shipped",
        }
    }
}

/// The state kept in `fulfilments/{id}`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Fulfilment {
    /// The order.
    pub order_id: String,
    /// How far it got.
    pub state: FulfilmentState,
    /// Last change.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub updated_at: FirestoreInstant,
}

#[derive(Serialize)]
struct Invoice<'a> {
    order_id: &'a str,
    lines: &'a [Line],
    units: i64,
    #[serde(with = "firestore::serialize_as_timestamp")]
    created_at: FirestoreInstant,
}

#[derive(Serialize)]
struct Shipment<'a> {
    order_id: &'a str,
    carrier_ref: &'a str,
    #[serde(with = "firestore::serialize_as_timestamp")]
    created_at: FirestoreInstant,
}

#[derive(Serialize)]
struct StateUpdate<S> {
    state: S,
    #[serde(with = "firestore::serialize_as_timestamp")]
    updated_at: FirestoreInstant,
}

/// Collection names the steps write.
#[derive(Clone, Debug)]
struct Names {
    orders: String,
    fulfilments: String,
    invoices: String,
    shipments: String,
}

/// One step as an [`Operation`].
#[derive(Clone, Debug)]
pub struct StepOp {
    step: Step,
    order_id: String,
    names: Arc<Names>,
    carrier_ref: Option<String>,
}

impl StepOp {
    fn order_doc(&self) -> DocRef {
        DocRef::new(
            &self.names.orders,
            hashed_id(super::order::KIND, &self.order_id),
        )
    }
    fn fulfilment(&self) -> DocRef {
        DocRef::new(
            &self.names.fulfilments,
            hashed_id(super::order::KIND, &self.order_id),
        )
    }
    fn reject(&self, reason: &str, detail: String) -> Decision {
        let extra = json!({"order_id": self.order_id, "step": self.step.spec().name});
        Decision::reject(reason, detail, extra)
    }
    fn expect_state(
        &self,
        snap: &Snapshot,
        want: FulfilmentState,
    ) -> Result<Option<Decision>, OpError> {
        let f = snap.get::<Fulfilment>(&self.fulfilment())?;
        Ok(match f {
            Some(f) if f.state == want => None,
            other => Some(self.reject(
                "out_of_order",
                format!(
                    "step {} needs the fulfilment {}, found {}",
                    self.step.spec().name,
                    want.as_str(),
                    other.map_or("none", |f| f.state.as_str())
                ),
            )),
        })
    }
}

impl Operation for StepOp {
    fn kind(&self) -> &'static str {
        self.step.spec().kind
    }
    fn key(&self) -> &str {
        &self.order_id
    }
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.kind(), &self.order_id)
    }
    fn reads(&self) -> Vec<DocRef> {
        vec![self.order_doc(), self.fulfilment()]
    }
    fn decide(&self, snap: &Snapshot) -> Result<Decision, OpError> {
        let now = snap.now();
        let id = hashed_id(super::order::KIND, &self.order_id);
        let mut result = Map::new();
        result.insert("order_id".into(), json!(self.order_id));
        result.insert("step".into(), json!(self.step.spec().name));
        let writes = match self.step {
            Step::Reserve => {
                let Some(order) = snap.get::<OrderDoc>(&self.order_doc())? else {
                    return Ok(self.reject(
                        "unknown_order",
                        format!("order {:?} does not exist", self.order_id),
                    ));
                };
                if order.state != OrderState::Processed {
                    return Ok(self.reject(
                        "not_fulfillable",
                        format!("order {:?} is {}", self.order_id, order.state),
                    ));
                }
                vec![
                    Write::create(
                        self.fulfilment(),
                        &Fulfilment {
                            order_id: self.order_id.clone(),
                            state: FulfilmentState::Reserved,
                            updated_at: now,
                        },
                    )?,
                    Write::update(
                        self.order_doc(),
                        &StateUpdate {
                            state: OrderState::Fulfilling,
                            updated_at: now,
                        },
                    )?,
                ]
            }
            Step::Invoice => {
                if let Some(r) = self.expect_state(snap, FulfilmentState::Reserved)? {
                    return Ok(r);
                }
                let lines = snap
                    .get::<OrderDoc>(&self.order_doc())?
                    .map(|o| o.lines)
                    .unwrap_or_default();
                let units = lines.iter().map(|l| l.quantity).sum::<i64>();
                result.insert("units".into(), json!(units));
                vec![
                    Write::create(
                        DocRef::new(&self.names.invoices, &id),
                        &Invoice {
                            order_id: &self.order_id,
                            lines: &lines,
                            units,
                            created_at: now,
                        },
                    )?,
                    Write::update(
                        self.fulfilment(),
                        &StateUpdate {
                            state: FulfilmentState::Invoiced,
                            updated_at: now,
                        },
                    )?,
                ]
            }
            Step::Ship => {
                if let Some(r) = self.expect_state(snap, FulfilmentState::Invoiced)? {
                    return Ok(r);
                }
                let carrier_ref = self.carrier_ref.as_deref().unwrap_or("");
                result.insert("carrier_ref".into(), json!(carrier_ref));
                vec![
                    Write::create(
                        DocRef::new(&self.names.shipments, &id),
                        &Shipment {
                            order_id: &self.order_id,
                            carrier_ref,
                            created_at: now,
                        },
                    )?,
                    Write::update(
                        self.fulfilment(),
                        &StateUpdate {
                            state: FulfilmentState::Shipped,
                            updated_at: now,
                        },
                    )?,
                    Write::update(
                        self.order_doc(),
                        &StateUpdate {
                            state: OrderState::Shipped,
                            updated_at: now,
                        },
                    )?,
                ]
            }
        };
        Ok(Decision::Apply { writes, result })
    }
}

/// A validated `fulfil_order` request: the order to fulfil and the carrier to book with.
#[derive(Clone)]
pub struct Fulfil {
    order_id: String,
    names: Arc<Names>,
    carrier: Arc<dyn Carrier>,
}

impl Fulfil {
    /// Validate `{order_id}`; the order ID is required even from a platform delivery, since
    /// a fulfilment of an unnamed order means nothing.
    pub fn parse(
        body: &Value,
        shop: &ShopConfig,
        carrier: Arc<dyn Carrier>,
    ) -> Result<Self, ValidationError> {
        object(body)?;
        let strict = ParseCtx {
            fallback_key: None,
            direct: true,
        };
        let (order_id, _) = strict.key(body, "order_id", || Fingerprint::of(KIND, &()))?;
        Ok(Self::new(order_id, shop, carrier))
    }

    /// A fulfilment of `order_id`.
    pub fn new(order_id: String, collections: &ShopConfig, carrier: Arc<dyn Carrier>) -> Self {
        Self {
            order_id,
            names: Arc::new(Names {
                orders: collections.orders.clone(),
                fulfilments: collections.fulfilments.clone(),
                invoices: collections.invoices.clone(),
                shipments: collections.shipments.clone(),
            }),
            carrier,
        }
    }
}

impl Workflow for Fulfil {
    fn kind(&self) -> &'static str {
        KIND
    }
    fn key(&self) -> &str {
        &self.order_id
    }
    fn steps(&self) -> &'static [StepSpec] {
        &STEPS
    }
    fn step(&self, step: &StepSpec, called: Option<&Value>) -> Arc<dyn Operation> {
        Arc::new(StepOp {
            step: Step::of(step),
            order_id: self.order_id.clone(),
            names: self.names.clone(),
            carrier_ref: called.and_then(Value::as_str).map(str::to_string),
        })
    }
    fn call<'a>(
        &'a self,
        _step: &'a StepSpec,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<Value, String>> {
        Box::pin(async move {
            let booked = self.carrier.book(idempotency_key, &self.order_id).await;
            booked.map(Value::String)
        })
    }
    fn answer(&self, reports: &[StepReport]) -> Map<String, Value> {
        let carrier_ref = reports
            .last()
            .and_then(|r| serde_json::from_str::<Value>(&r.outcome.record.response.body).ok())
            .and_then(|b| b.get("carrier_ref").cloned());
        let mut m = Map::new();
        m.insert("order_id".into(), json!(self.order_id));
        m.insert("carrier_ref".into(), carrier_ref.unwrap_or(Value::Null));
        m
    }
}
