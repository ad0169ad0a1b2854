//! A new workflow in one file: refund a customer once per `refund_id`, in two steps, the
//! second calling a payment API that cannot join a Firestore commit.
//!
//! 1. `record`: create `refunds/{id}` (state `recorded`).
//! 2. `pay`: call the payment API under a lease with the step's operation ID as its
//!    idempotency key, then record the payment reference (state `paid`).
//!
//! Implement [`Workflow`], register it, and the runner brings the rest: one status document per
//! step, resuming at the first unfinished step, the lease around the call, the task record
//! that `GET /operations/{id}` lists the steps from, the answers for every delivery path.

use firestore_once_core::engine::{
    doc_id_field, hashed_id, object, positive_field, Decision, DocRef, Fingerprint, OpError,
    Operation, ParseCtx, Registry, Snapshot, StepReport, StepSpec, ValidationError, Workflow,
    Write,
};
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The kind, served at `POST /tasks/refund`.
pub const KIND: &str = "refund";
const RECORD: StepSpec = StepSpec {
    name: "record",
    kind: "refund.record",
    calls_out: false,
};
const PAY: StepSpec = StepSpec {
    name: "pay",
    kind: "refund.pay",
    calls_out: true,
};
static STEPS: [StepSpec; 2] = [RECORD, PAY];

/// The outside world: pays `amount` to `customer`, returns the payment's reference.
pub trait PaymentApi: Send + Sync {
    /// `idempotency_key` is the same on every attempt at the same payment.
    fn pay<'a>(
        &'a self,
        idempotency_key: &'a str,
        customer: &'a str,
        amount: i64,
    ) -> BoxFuture<'a, Result<String, String>>;
}

/// `{refund_id, customer_id, amount}`.
pub struct Refund {
    refund_id: String,
    customer_id: String,
    amount: i64,
    payments: Arc<dyn PaymentApi>,
}

/// One step's commit.
struct Step {
    step: StepSpec,
    refund_id: String,
    refund: DocRef,
    body: Value,
    payment_ref: Option<String>,
}

impl Operation for Step {
    fn kind(&self) -> &'static str {
        self.step.kind
    }
    fn key(&self) -> &str {
        &self.refund_id
    }
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.step.kind, &self.body)
    }
    fn reads(&self) -> Vec<DocRef> {
        vec![self.refund.clone()]
    }
    fn decide(&self, snap: &Snapshot) -> Result<Decision, OpError> {
        let mut doc = self.body.clone();
        match self.payment_ref.as_deref() {
            None => doc["state"] = json!("recorded"),
            Some(_) if !snap.exists(&self.refund)? => {
                let why = "the refund was never recorded".to_string();
                return Ok(Decision::reject("not_recorded", why, json!({})));
            }
            Some(r) => {
                doc["state"] = json!("paid");
                doc["payment_ref"] = json!(r);
            }
        }
        let mut result = Map::new();
        result.insert("state".into(), doc["state"].clone());
        let writes = vec![Write::set(self.refund.clone(), &doc)?];
        Ok(Decision::Apply { writes, result })
    }
}

impl Workflow for Refund {
    fn kind(&self) -> &'static str {
        KIND
    }
    fn key(&self) -> &str {
        &self.refund_id
    }
    fn steps(&self) -> &'static [StepSpec] {
        &STEPS
    }
    fn step(&self, step: &StepSpec, called: Option<&Value>) -> Arc<dyn Operation> {
        Arc::new(Step {
            step: *step,
            refund_id: self.refund_id.clone(),
            refund: DocRef::new("refunds", hashed_id(KIND, &self.refund_id)),
            body: json!({"customer_id": self.customer_id, "amount": self.amount}),
            payment_ref: called.and_then(Value::as_str).map(str::to_string),
        })
    }
    fn call<'a>(&'a self, _: &'a StepSpec, key: &'a str) -> BoxFuture<'a, Result<Value, String>> {
        Box::pin(async move {
            let paid = self.payments.pay(key, &self.customer_id, self.amount).await;
            paid.map(Value::String)
        })
    }
    fn answer(&self, _: &[StepReport]) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("refund_id".into(), json!(self.refund_id));
        m
    }
}

impl Refund {
    fn parse(
        body: &Value,
        ctx: &ParseCtx<'_>,
        payments: Arc<dyn PaymentApi>,
    ) -> Result<Self, ValidationError> {
        object(body)?;
        let customer_id = doc_id_field(body, "customer_id")?;
        let amount = positive_field(body, "amount", 1_000_000)?;
        let canonical = || Fingerprint::of(KIND, &(&customer_id, amount));
        let (refund_id, _) = ctx.key(body, "refund_id", canonical)?;
        Ok(Self {
            refund_id,
            customer_id,
            amount,
            payments,
        })
    }
}

/// Serve the workflow at `POST /tasks/refund`, paying through `payments`.
pub fn register(registry: &mut Registry, payments: Arc<dyn PaymentApi>) {
    registry.register_workflow(KIND, move |v, ctx| Refund::parse(v, ctx, payments.clone()));
}

/// A stand-in payment API that derives the reference from the key, as an idempotent one would.
pub struct LocalPayments;

impl PaymentApi for LocalPayments {
    fn pay<'a>(
        &'a self,
        key: &'a str,
        _: &'a str,
        _: i64,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move { Ok(format!("PAY-{}", &key[..12.min(key.len())])) })
    }
}

/// A service with this workflow, against an emulator:
/// `FIRESTORE_EMULATOR_HOST=127.0.0.1:8081 PORT=3000 cargo run --example refund`, then
/// `curl -X POST localhost:3000/tasks/refund -d '{"refund_id":"r1","customer_id":"c1","amount":5}'`.
#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = firestore_once_core::config::Config::from_env()?;
    config
        .project_id
        .get_or_insert_with(|| "demo-refund".into());
    let mut registry = Registry::default();
    register(&mut registry, Arc::new(LocalPayments));
    let state = firestore_once_core::service::connect(config, registry).await?;
    firestore_once_core::server::run(state).await
}
