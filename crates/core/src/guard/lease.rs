//! Leases for steps that call the outside world.
//!
//! A Firestore transaction cannot include an HTTP call to a mail service or a payment API, so such
//! a step cannot be exactly-once by itself. What the guard can promise: two deliveries never
//! run the call at the same time (the lease), the step's Firestore result is committed once
//! together with the lease's release (its status document), and a call is repeated only after
//! a lease expired without completion (a crash mid-call). The outside system should accept the
//! step's operation ID as its idempotency key to make that repeat harmless.

use super::{Guard, GuardError};
use crate::engine::record::StatusRecord;
use crate::engine::{DocRef, Write};
use firestore::FirestoreInstant;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `leases/{operation_id}` document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    /// The step's operation ID.
    pub operation_id: String,
    /// The step's operation kind, so a status query can name what is running (absent on
    /// leases taken through [`Guard::acquire_lease`], which only knows the ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The step's raw key, for the same reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Who holds it (a per-delivery token).
    pub holder: String,
    /// When it was taken.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub acquired_at: FirestoreInstant,
    /// When another delivery may take it over.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub expires_at: FirestoreInstant,
}

/// The result of asking for a lease.
#[derive(Clone, Debug)]
pub enum LeaseOutcome {
    /// The caller holds the lease until `expires_at`: run the step.
    Acquired(Lease),
    /// The step is already complete: replay it, do not run it.
    Done(StatusRecord),
    /// Another delivery holds it: answer 409 with `Retry-After`.
    Busy {
        /// Until the holder's lease expires.
        retry_after: Duration,
    },
}

impl Guard {
    /// Take the lease of `operation_id` for `ttl`, unless the step is done or another holder's
    /// lease is still live. `leases` is the collection of lease documents.
    pub async fn acquire_lease(
        &self,
        leases: &str,
        operation_id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome, GuardError> {
        self.lease(leases, operation_id, None, holder, ttl).await
    }

    /// [`acquire_lease`](Self::acquire_lease) for the step `kind:key`, recording both on the
    /// lease so `GET /operations/{id}` can say which operation is in progress.
    pub async fn acquire_step_lease(
        &self,
        leases: &str,
        kind: &str,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome, GuardError> {
        let operation_id = crate::engine::hashed_id(kind, key);
        self.lease(leases, &operation_id, Some((kind, key)), holder, ttl)
            .await
    }

    async fn lease(
        &self,
        leases: &str,
        operation_id: &str,
        subject: Option<(&str, &str)>,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome, GuardError> {
        let status = self.status_ref(operation_id);
        let lease_doc = DocRef::new(leases, operation_id);
        let docs = [status.clone(), lease_doc.clone()];
        // Set by the attempt that commits; an earlier, retried attempt may have seen otherwise.
        let mut took_over = false;
        let outcome = self
            .transact(&docs, |snap| {
                took_over = false;
                if let Some(done) = snap.get::<StatusRecord>(&status)? {
                    return Ok((vec![], LeaseOutcome::Done(done)));
                }
                let now = snap.now();
                if let Some(l) = snap.get::<Lease>(&lease_doc)? {
                    if l.holder != holder && l.expires_at > now {
                        let left = l.expires_at.duration_since(now).as_secs().max(1);
                        let left = Duration::from_secs(left.unsigned_abs());
                        return Ok((vec![], LeaseOutcome::Busy { retry_after: left }));
                    }
                    took_over = l.holder != holder;
                }
                let lease = Lease {
                    operation_id: operation_id.to_string(),
                    kind: subject.map(|(k, _)| k.to_string()),
                    key: subject.map(|(_, k)| k.to_string()),
                    holder: holder.to_string(),
                    acquired_at: now,
                    expires_at: now.saturating_add(ttl).unwrap_or(now),
                };
                Ok((
                    vec![Write::set(lease_doc.clone(), &lease)?],
                    LeaseOutcome::Acquired(lease),
                ))
            })
            .await;
        if took_over && matches!(outcome, Ok(LeaseOutcome::Acquired(_))) {
            self.inner.metrics.lease_takeover();
            tracing::info!(
                operation_id,
                holder,
                "lease taken over from an expired holder"
            );
        }
        outcome
    }

    /// Give the lease back early (the outside call failed), if `holder` still holds it.
    pub async fn release_lease(
        &self,
        leases: &str,
        operation_id: &str,
        holder: &str,
    ) -> Result<(), GuardError> {
        let lease_doc = DocRef::new(leases, operation_id);
        self.transact(std::slice::from_ref(&lease_doc), |snap| {
            Ok(match snap.get::<Lease>(&lease_doc)? {
                Some(l) if l.holder == holder => (vec![Write::delete(lease_doc.clone())], ()),
                _ => (vec![], ()),
            })
        })
        .await
    }
}
