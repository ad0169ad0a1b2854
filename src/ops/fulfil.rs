//! `fulfil_order`: a multi-step task (article 000). Each step has its own operation ID
//! (`sha256("fulfil_order.<step>:" + order_id)`) and commits with its own status document, so
//! a retry after a failure between steps replays the finished steps and resumes at the first
//! unfinished one.
//!
//! 1. `reserve`: the order moves to `fulfilling`; `fulfilments/{id}` is created.
//! 2. `invoice`: `invoices/{id}` is created.
//! 3. `ship`: calls the carrier (the outside world) under a lease, then records
//!    `shipments/{id}` and marks the order `shipped`, releasing the lease in the same commit.
//!
//! The carrier call cannot join a Firestore transaction. The lease stops two deliveries
//! from calling it at once; a call is repeated only if an instance died between the call and
//! its commit and the lease expired. The step's operation ID is passed to the carrier as its
//! idempotency key, so a carrier that honours keys turns that repeat into a no-op.

use super::order::{Line, OrderDoc, ValidationError};
use super::registry::object;
use super::{Decision, DocRef, OpError, Operation, ParseCtx, Snapshot, Write};
use crate::config::Collections;
use crate::delivery::DeliveryMeta;
use crate::faults::Faults;
use crate::guard::key::{hashed_id, Fingerprint};
use crate::guard::lease::LeaseOutcome;
use crate::guard::record::OutcomeKind;
use crate::guard::{Guard, GuardError, Outcome};
use firestore::FirestoreInstant;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map};
use std::sync::Arc;
use std::time::Duration;

/// The task kind.
pub const KIND: &str = "fulfil_order";
/// Collection of fulfilment progress documents.
pub const FULFILMENTS: &str = "fulfilments";
/// Collection of invoice records.
pub const INVOICES: &str = "invoices";
/// Collection of shipment records.
pub const SHIPMENTS: &str = "shipments";
/// Collection of task records, `tasks/{task operation ID}`: the one way from a task's ID back
/// to its steps, since an ID is a hash and cannot be inverted (see [`TaskRecord`]).
pub const TASKS: &str = "tasks";
/// How long a delivery may hold the `ship` lease before another may take over.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// One step of the fulfilment.
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
    /// All steps, in order.
    pub const ALL: [Step; 3] = [Step::Reserve, Step::Invoice, Step::Ship];

    /// Step name.
    pub fn name(self) -> &'static str {
        match self {
            Step::Reserve => "reserve",
            Step::Invoice => "invoice",
            Step::Ship => "ship",
        }
    }

    /// Operation kind of the step, part of its operation ID.
    pub fn kind(self) -> &'static str {
        match self {
            Step::Reserve => "fulfil_order.reserve",
            Step::Invoice => "fulfil_order.invoice",
            Step::Ship => "fulfil_order.ship",
        }
    }

    /// Operation ID of this step for `order_id`.
    pub fn operation_id(self, order_id: &str) -> String {
        hashed_id(self.kind(), order_id)
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

/// The state kept in `fulfilments/{id}`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Fulfilment {
    /// The order.
    pub order_id: String,
    /// `reserved`, `invoiced`, `shipped`.
    pub state: String,
    /// Last change.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub updated_at: FirestoreInstant,
}

/// `tasks/{sha256("fulfil_order:" + order_id)}`: written with `Write::set` in the same commit
/// as the `reserve` step, so a status query given the task's ID (the one its answer and its
/// log line carry) can list the steps. A task rejected at `reserve` has none: its answer
/// named the `reserve` step's operation ID, which has a status document of its own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskRecord {
    /// The task's own operation ID; also the document ID.
    pub operation_id: String,
    /// `fulfil_order`.
    pub kind: String,
    /// The raw key (the order ID).
    pub key: String,
    /// Every step, in order, with its operation ID.
    pub steps: Vec<TaskStep>,
    /// When the `reserve` step committed.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub created_at: FirestoreInstant,
    /// TTL field, as for status documents.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub expire_at: FirestoreInstant,
}

/// One step named in a [`TaskRecord`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskStep {
    /// `reserve`, `invoice` or `ship`.
    pub step: String,
    /// The step's operation ID.
    pub operation_id: String,
}

impl TaskRecord {
    /// The record of the task over `order_id`, created at `now`.
    pub fn new(order_id: &str, now: FirestoreInstant, retention: Duration) -> Self {
        Self {
            operation_id: hashed_id(KIND, order_id),
            kind: KIND.to_string(),
            key: order_id.to_string(),
            steps: Step::ALL
                .iter()
                .map(|s| TaskStep {
                    step: s.name().to_string(),
                    operation_id: s.operation_id(order_id),
                })
                .collect(),
            created_at: now,
            expire_at: now.saturating_add(retention).unwrap_or(now),
        }
    }
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
struct StateUpdate {
    state: &'static str,
    #[serde(with = "firestore::serialize_as_timestamp")]
    updated_at: FirestoreInstant,
}

/// One step as an [`Operation`].
#[derive(Clone, Debug)]
pub struct StepOp {
    step: Step,
    order_id: String,
    orders: String,
    leases: String,
    carrier_ref: Option<String>,
    retention: Duration,
}

impl StepOp {
    fn order_doc(&self) -> DocRef {
        DocRef::new(&self.orders, hashed_id("order", &self.order_id))
    }
    fn fulfilment(&self) -> DocRef {
        DocRef::new(FULFILMENTS, hashed_id("order", &self.order_id))
    }
    fn reject(&self, reason: &str, detail: String) -> Decision {
        let extra = json!({"order_id": self.order_id, "step": self.step.name()});
        Decision::reject(reason, detail, extra)
    }
    fn expect_state(&self, snap: &Snapshot, want: &str) -> Result<Option<Decision>, OpError> {
        let f = snap.get::<Fulfilment>(&self.fulfilment())?;
        Ok(match f {
            Some(f) if f.state == want => None,
            other => Some(self.reject(
                "out_of_order",
                format!(
                    "step {} needs the fulfilment {want}, found {}",
                    self.step.name(),
                    other.map_or("none".to_string(), |f| f.state)
                ),
            )),
        })
    }
}

impl Operation for StepOp {
    fn kind(&self) -> &'static str {
        self.step.kind()
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
        let id = hashed_id("order", &self.order_id);
        let mut result = Map::new();
        result.insert("order_id".into(), json!(self.order_id));
        result.insert("step".into(), json!(self.step.name()));
        let writes = match self.step {
            Step::Reserve => {
                let Some(order) = snap.get::<OrderDoc>(&self.order_doc())? else {
                    return Ok(self.reject(
                        "unknown_order",
                        format!("order {:?} does not exist", self.order_id),
                    ));
                };
                if order.state != "processed" {
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
                            state: "reserved".into(),
                            updated_at: now,
                        },
                    )?,
                    // Set, not create: a record left by an earlier, expired run is replaced.
                    Write::set(
                        DocRef::new(TASKS, hashed_id(KIND, &self.order_id)),
                        &TaskRecord::new(&self.order_id, now, self.retention),
                    )?,
                    Write::update(
                        self.order_doc(),
                        &StateUpdate {
                            state: "fulfilling",
                            updated_at: now,
                        },
                    )?,
                ]
            }
            Step::Invoice => {
                if let Some(r) = self.expect_state(snap, "reserved")? {
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
                        DocRef::new(INVOICES, &id),
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
                            state: "invoiced",
                            updated_at: now,
                        },
                    )?,
                ]
            }
            Step::Ship => {
                if let Some(r) = self.expect_state(snap, "invoiced")? {
                    return Ok(r);
                }
                let carrier_ref = self.carrier_ref.as_deref().unwrap_or("");
                result.insert("carrier_ref".into(), json!(carrier_ref));
                vec![
                    Write::create(
                        DocRef::new(SHIPMENTS, &id),
                        &Shipment {
                            order_id: &self.order_id,
                            carrier_ref,
                            created_at: now,
                        },
                    )?,
                    Write::update(
                        self.fulfilment(),
                        &StateUpdate {
                            state: "shipped",
                            updated_at: now,
                        },
                    )?,
                    Write::update(
                        self.order_doc(),
                        &StateUpdate {
                            state: "shipped",
                            updated_at: now,
                        },
                    )?,
                    // Released in the same commit that records the step as done.
                    Write::delete(DocRef::new(
                        &self.leases,
                        self.step.operation_id(&self.order_id),
                    )),
                ]
            }
        };
        Ok(Decision::Apply { writes, result })
    }
}

/// A validated `fulfil_order` request.
#[derive(Clone, Debug)]
pub struct Fulfil {
    order_id: String,
    orders: String,
    leases: String,
}

/// How one step went.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Which step.
    pub step: Step,
    /// Its outcome (first or replayed).
    pub outcome: Outcome,
}

/// Why a fulfilment stopped early without an outcome.
#[derive(Debug, thiserror::Error)]
pub enum FulfilError {
    /// Firestore or the carrier failed; retry the whole task.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// Another delivery is running the outside-world step.
    #[error("step {step} is being run by another delivery")]
    Busy {
        /// The leased step.
        step: &'static str,
        /// Until its lease expires.
        retry_after: Duration,
    },
    /// A test fault stopped the task after a committed step.
    #[error("injected fault after step {0}")]
    Injected(&'static str),
}

impl Fulfil {
    /// Validate `{order_id}`.
    pub fn parse(body: &serde_json::Value, ctx: &ParseCtx<'_>) -> Result<Self, ValidationError> {
        object(body)?;
        let strict = ParseCtx {
            collections: ctx.collections,
            fallback_key: None,
            direct: true,
        };
        let (order_id, _) = strict.key(body, "order_id", || Fingerprint::of(KIND, &()))?;
        Ok(Self::new(order_id, ctx.collections))
    }

    /// A fulfilment of `order_id`.
    pub fn new(order_id: String, collections: &Collections) -> Self {
        Self {
            order_id,
            orders: collections.orders.clone(),
            leases: collections.leases.clone(),
        }
    }

    /// The order.
    pub fn order_id(&self) -> &str {
        &self.order_id
    }

    /// The task's own ID: `sha256("fulfil_order:" + order_id)`.
    pub fn operation_id(&self) -> String {
        hashed_id(KIND, &self.order_id)
    }

    fn op(&self, guard: &Guard, step: Step, carrier_ref: Option<String>) -> Arc<StepOp> {
        Arc::new(StepOp {
            step,
            order_id: self.order_id.clone(),
            orders: self.orders.clone(),
            leases: self.leases.clone(),
            carrier_ref,
            retention: guard.config().retention,
        })
    }

    /// Run every unfinished step in order; stop at the first rejection.
    pub async fn run(
        &self,
        guard: &Guard,
        carrier: &dyn Carrier,
        delivery: &DeliveryMeta,
        faults: &Faults,
    ) -> Result<Vec<StepReport>, FulfilError> {
        let mut reports = Vec::with_capacity(3);
        for step in Step::ALL {
            let outcome = match step {
                Step::Ship => self.ship(guard, carrier, delivery).await?,
                _ => {
                    guard
                        .run(self.op(guard, step, None), delivery.clone())
                        .await?
                }
            };
            let rejected = outcome.record.outcome == OutcomeKind::Rejected;
            reports.push(StepReport { step, outcome });
            if rejected {
                break;
            }
            if faults.take_crash(step.name()) {
                return Err(FulfilError::Injected(step.name()));
            }
        }
        Ok(reports)
    }

    async fn ship(
        &self,
        guard: &Guard,
        carrier: &dyn Carrier,
        delivery: &DeliveryMeta,
    ) -> Result<Outcome, FulfilError> {
        let op_id = Step::Ship.operation_id(&self.order_id);
        let replay = |record| Outcome {
            operation_id: op_id.clone(),
            replayed: true,
            from_cache: false,
            record,
        };
        if let Some(done) = guard.lookup(&op_id).await? {
            return Ok(replay(done));
        }
        let holder = format!(
            "{}:{}:{:016x}",
            delivery.source,
            delivery.id.as_deref().unwrap_or("-"),
            fastrand::u64(..)
        );
        match guard
            .acquire_step_lease(
                &self.leases,
                Step::Ship.kind(),
                &self.order_id,
                &holder,
                LEASE_TTL,
            )
            .await?
        {
            LeaseOutcome::Done(done) => Ok(replay(done)),
            LeaseOutcome::Busy { retry_after } => Err(FulfilError::Busy {
                step: Step::Ship.name(),
                retry_after,
            }),
            LeaseOutcome::Acquired(_) => {
                let booked = carrier.book(&op_id, &self.order_id).await;
                let carrier_ref = match booked {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = guard.release_lease(&self.leases, &op_id, &holder).await;
                        return Err(GuardError::Unavailable(format!("carrier: {e}")).into());
                    }
                };
                Ok(guard
                    .run(
                        self.op(guard, Step::Ship, Some(carrier_ref)),
                        delivery.clone(),
                    )
                    .await?)
            }
        }
    }
}
