//! Redrive: send dead letters back through the same decode → operation → guard path once the
//! cause is fixed (a new release that reads the shape, a kind now registered…).
//!
//! Each dead letter is redriven at most once at a time and applied at most once:
//! 1. **claim**: its `redrive` field is rewritten with a claim (holder, expiry) in a commit
//!    whose precondition is the `update_time` just read, so of two redrives only one wins it;
//!    the other reports it `claimed`. A claim whose holder died lapses after [`CLAIM_TTL`].
//! 2. **send**: the stored headers and exact body bytes go through
//!    [`crate::ingest`], in process, as any received delivery; the guard's status document makes the
//!    business effect exactly once even if a lapsed claim lets a second redrive send it too.
//! 3. **record**: attempts, last result and time are written back; a durable outcome marks it
//!    `resolved` (later redrives skip it). One that still fails stays a dead letter with the
//!    attempt recorded; no new dead letter is created.
//!
//! Listing sorts by `created_at` only (the single-field index Firestore keeps anyway) and
//! filters route and reason in process, so no composite index is needed.

use crate::dead_letter::{DeadLetter, RedriveState};
use crate::delivery::pubsub;
use crate::engine::{DocRef, Write};
use crate::guard::fold::{Guarded, Precondition};
use crate::ingest::{self, Answer, Received};
use crate::service::Service;
use firestore::{FirestoreDb, FirestoreDocument, FirestoreInstant};
use futures::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use std::time::Duration;

/// How long a claim holds before another redrive may take the dead letter over.
pub const CLAIM_TTL: Duration = Duration::from_secs(60);

/// Dead letters redriven at once by one run.
pub const CONCURRENCY: usize = 64;

/// Which dead letters a run redrives.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only those recorded at or after this time.
    pub since: Option<FirestoreInstant>,
    /// Only those received on this route (`/tasks/{kind}`, or a kind route).
    pub route: Option<String>,
    /// Only those with this reason (`invalid-field`, `key-reused`…).
    pub reason: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
    /// List what would be redriven; change nothing.
    pub dry_run: bool,
}

/// What a redrive did to one dead letter: one line of the report.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ItemReport {
    /// The dead letter's ID.
    pub id: String,
    /// The route it was received on.
    pub route: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// `processed`, `rejected`, `replayed`, `skipped` (durable: resolved), `failed`,
    /// `unavailable` (it stays a dead letter), `claimed` (another redrive holds it),
    /// `resolved` (an earlier redrive finished it), `truncated` (its body was cut when
    /// recorded, so it cannot be sent back) or `would-redrive` (dry run).
    pub result: String,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The operation it reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// Redrive attempts recorded on it so far.
    pub attempts: i64,
}

/// Why a redrive could not run at all (per-item failures are in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// Firestore did not answer the listing or a read.
    #[error("firestore: {0}")]
    Firestore(String),
    /// A dead letter whose stored fields no longer deserialize.
    #[error("dead letter unreadable: {0}")]
    Unreadable(String),
}

/// The dead letter `id`, `None` when there is none: the one by-ID read the console and
/// [`run_one`] share.
pub async fn read(
    st: &Service,
    id: &str,
) -> Result<Option<(FirestoreDocument, DeadLetter)>, RedriveError> {
    let doc = st
        .guard
        .db()
        .fluent()
        .select()
        .by_id_in(&st.config.collections.dead_letters)
        .one(id)
        .await
        .map_err(fs_err)?;
    let Some(doc) = doc else { return Ok(None) };
    let letter = FirestoreDb::deserialize_doc_to::<DeadLetter>(&doc)
        .map_err(|e| RedriveError::Unreadable(format!("{id}: {e}")))?;
    Ok(Some((doc, letter)))
}

fn fs_err(e: impl std::fmt::Display) -> RedriveError {
    RedriveError::Firestore(e.to_string())
}

/// A fresh holder name for one run (or one console click).
pub fn holder() -> String {
    format!("redrive-{:016x}", fastrand::u64(..))
}

/// What a redrive's delivery came to.
#[derive(Clone, Debug)]
struct Redelivery {
    /// `processed`, `rejected`, `replayed`, `skipped`, `failed` or `unavailable`.
    result: &'static str,
    /// True for a durable outcome: the dead letter is done with.
    resolved: bool,
    /// The operation it reached, when it got that far.
    operation_id: Option<String>,
    /// Why it failed (the problem code and detail), when it did.
    detail: Option<String>,
}

/// Send a stored delivery through [`ingest`](crate::ingest) as the route it arrived on. A
/// delivery that still cannot succeed is reported, not dead-lettered again.
async fn redeliver(
    st: &Service,
    route: &str,
    headers: &HeaderMap,
    bytes: &[u8],
    declared: Option<&str>,
) -> Redelivery {
    let Some(target) = st.target(route) else {
        return Redelivery {
            result: "failed",
            resolved: false,
            operation_id: None,
            detail: Some(format!(
                "no-route: {route:?} is not /tasks/{{kind}} or a route this service serves"
            )),
        };
    };
    let received = Received {
        target: &target,
        headers,
        body: bytes,
        declared,
        redrive: true,
    };
    let (answer, log) = ingest::ingest(st, received).await;
    let op = (!log.operation_id.is_empty()).then(|| log.operation_id.clone());
    let done = |result: &'static str| Redelivery {
        result,
        resolved: true,
        operation_id: op.clone(),
        detail: None,
    };
    let r = match answer {
        Answer::Outcome(o) if o.replayed => done("replayed"),
        Answer::Outcome(o) => done(o.record.outcome.as_str()),
        Answer::Steps { reports, .. } => {
            if reports.iter().all(|r| r.outcome.replayed) {
                done("replayed")
            } else {
                done("processed")
            }
        }
        Answer::Skipped(_) => done("skipped"),
        Answer::Refused { reason, detail } | Answer::DeadLettered { reason, detail, .. } => {
            Redelivery {
                result: "failed",
                resolved: false,
                operation_id: op.clone(),
                detail: Some(format!("{reason}: {detail}")),
            }
        }
        Answer::Error(e) => Redelivery {
            result: if e.status().is_server_error() {
                "unavailable"
            } else {
                "failed"
            },
            resolved: false,
            operation_id: op.clone(),
            detail: Some(format!("{}: {e}", e.code())),
        },
    };
    tracing::info!(
        operation_id = r.operation_id.as_deref().unwrap_or(""),
        kind = %target.kind,
        outcome = r.result,
        redrive = true,
        delivery_source = %log.meta.source,
        delivery_id = log.meta.id.as_deref().unwrap_or(""),
        error = r.detail.as_deref(),
        "redrive decision"
    );
    r
}

/// Redrive every dead letter `filter` selects, [`CONCURRENCY`] at a time; one report line each.
pub async fn run(st: &Service, filter: &Filter) -> Result<Vec<ItemReport>, RedriveError> {
    let db = st.guard.db().clone();
    let col = st.config.collections.dead_letters.clone();
    let since = filter.since;
    let stream = db
        .fluent()
        .select()
        .from(col.as_str())
        .filter(move |q| {
            q.for_all([since.and_then(|t| {
                q.field("created_at")
                    .greater_than_or_equal(firestore::FirestoreTimestamp(t))
            })])
        })
        .order(|o| o.fields([o.field("created_at").ascending()]))
        .stream_query_with_errors()
        .await
        .map_err(fs_err)?;
    let holder = holder();
    let limit = filter.limit.unwrap_or(usize::MAX);
    let candidates = stream
        .map_err(fs_err)
        .try_filter_map(|doc| async move {
            let Some(letter) = FirestoreDb::deserialize_doc_to::<DeadLetter>(&doc).ok() else {
                return Ok(None);
            };
            let wanted = filter.route.as_ref().is_none_or(|r| *r == letter.route)
                && filter.reason.as_ref().is_none_or(|r| *r == letter.reason)
                && !letter.redrive.as_ref().is_some_and(|r| r.resolved);
            Ok(wanted.then_some((doc, letter)))
        })
        .take(limit);
    let holder = &holder;
    candidates
        .map(|c| async move {
            let (doc, letter) = c?;
            if filter.dry_run {
                return Ok(report(&doc, &letter, "would-redrive", None, None));
            }
            Ok(one(st, doc, letter, holder).await)
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await
}

/// Redrive one dead letter by ID (the console's button); `None` when there is no such one.
pub async fn run_one(st: &Service, id: &str) -> Result<Option<ItemReport>, RedriveError> {
    let Some((doc, letter)) = read(st, id).await? else {
        return Ok(None);
    };
    if letter.redrive.as_ref().is_some_and(|r| r.resolved) {
        return Ok(Some(report(&doc, &letter, "resolved", None, None)));
    }
    Ok(Some(one(st, doc, letter, &holder()).await))
}

fn doc_id(doc: &FirestoreDocument) -> String {
    doc.name.rsplit('/').next().unwrap_or_default().to_string()
}

fn report(
    doc: &FirestoreDocument,
    letter: &DeadLetter,
    result: &str,
    detail: Option<String>,
    operation_id: Option<String>,
) -> ItemReport {
    ItemReport {
        id: doc_id(doc),
        route: letter.route.clone(),
        reason: letter.reason.clone(),
        result: result.to_string(),
        detail,
        operation_id,
        attempts: letter.redrive.as_ref().map_or(0, |r| r.attempts),
    }
}

/// Claim, send, record one dead letter.
async fn one(st: &Service, doc: FirestoreDocument, letter: DeadLetter, holder: &str) -> ItemReport {
    let now = FirestoreInstant::now();
    let mut state = letter.redrive.clone().unwrap_or_default();
    if state.claimed_by.as_deref().is_some_and(|h| h != holder)
        && state.claim_expires_at.is_some_and(|t| t > now)
    {
        return report(&doc, &letter, "claimed", state.claimed_by.clone(), None);
    }
    if letter.body_truncated {
        return report(
            &doc,
            &letter,
            "truncated",
            Some(format!(
                "only {} bytes of the body were kept",
                letter.body.len()
            )),
            None,
        );
    }
    let bytes = match letter.body_bytes() {
        Ok(b) => b,
        Err(e) => {
            return report(
                &doc,
                &letter,
                "failed",
                Some(format!("stored body: {e}")),
                None,
            )
        }
    };
    state.claimed_by = Some(holder.to_string());
    state.claim_expires_at = now.saturating_add(CLAIM_TTL).ok();
    let claimed = match write_state(st, &doc.name, &state, doc.update_time).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return report(
                &doc,
                &letter,
                "claimed",
                Some("another redrive claimed it first".into()),
                None,
            )
        }
        Err(e) => return report(&doc, &letter, "unavailable", Some(e), None),
    };
    let headers = header_map(&letter);
    let declared = (letter.delivery.source == "pubsub"
        && letter.delivery.attrs.get("wrapper").map(String::as_str) == Some(pubsub::UNWRAPPED))
    .then_some("pubsub");
    let Redelivery {
        result,
        resolved,
        operation_id,
        detail,
    } = redeliver(st, &letter.route, &headers, &bytes, declared).await;
    state.attempts += 1;
    state.last_result = Some(result.to_string());
    state.last_detail = detail.clone();
    state.last_at = Some(FirestoreInstant::now());
    state.operation_id = operation_id.clone();
    state.resolved = resolved;
    state.claimed_by = None;
    state.claim_expires_at = None;
    let mut line = report(&doc, &letter, result, detail, operation_id);
    line.attempts = state.attempts;
    match write_state(st, &doc.name, &state, Some(claimed)).await {
        Ok(Some(_)) => {}
        // The claim lapsed and another redrive took over; the guard kept the effect single.
        Ok(None) => {
            tracing::warn!(dead_letter = %line.id, "redrive claim lapsed before its result was recorded")
        }
        Err(e) => tracing::warn!(dead_letter = %line.id, error = %e, "redrive result not recorded"),
    }
    line
}

/// Rebuild the request headers kept on the dead letter.
fn header_map(letter: &DeadLetter) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in &letter.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    h
}

/// Replace the `redrive` field of `name` if it still has `version` (its `update_time`);
/// `Ok(None)` when it changed meanwhile, else the new version.
async fn write_state(
    st: &Service,
    name: &str,
    state: &RedriveState,
    version: Option<firestore::gcloud_sdk::prost_types::Timestamp>,
) -> Result<Option<firestore::gcloud_sdk::prost_types::Timestamp>, String> {
    #[derive(Serialize)]
    struct Patch<'a> {
        redrive: &'a RedriveState,
    }
    let id = name.rsplit('/').next().unwrap_or_default();
    let doc = DocRef::new(&st.config.collections.dead_letters, id);
    // An update of the one field, so the stored body and headers are never rewritten.
    let write = Write::update(doc, &Patch { redrive: state }).map_err(|e| e.to_string())?;
    let precondition = version.map_or(Precondition::Exists(true), Precondition::UpdateTime);
    match st
        .guard
        .driver()
        .commit(vec![Guarded::Write {
            write,
            precondition,
        }])
        .await
    {
        Ok(times) => Ok(times.into_iter().next().flatten()),
        Err(e) if e.is_conflict() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The report as the command prints it: one aligned line per dead letter, then totals.
pub fn render(items: &[ItemReport]) -> String {
    let mut out = format!(
        "{:<64}  {:<20}  {:<24}  {:<13}  {}\n",
        "id", "route", "reason", "result", "detail"
    );
    let mut totals = std::collections::BTreeMap::<&str, usize>::new();
    for i in items {
        *totals.entry(i.result.as_str()).or_default() += 1;
        out.push_str(&format!(
            "{:<64}  {:<20}  {:<24}  {:<13}  {}\n",
            i.id,
            i.route,
            i.reason,
            i.result,
            i.detail.as_deref().unwrap_or("")
        ));
    }
    let totals: Vec<String> = totals.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&format!(
        "{} dead letters: {}\n",
        items.len(),
        totals.join(", ")
    ));
    out
}
