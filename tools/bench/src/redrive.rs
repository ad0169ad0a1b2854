//! `bench --only redrive`: how fast `firestore-once redrive` sends dead letters back.
//!
//! Writes `count` dead letters straight into a fresh project (valid Pub/Sub pushes of one-line
//! orders over 100 items, as an earlier release that could not read them would have recorded
//! them), then runs the real `firestore-once redrive` command against them and times it end to
//! end (process start, listing, claim, guard transaction, result per dead letter). Checks that
//! every one was processed and each order applied once (stock and operations counted).

use anyhow::{bail, Context, Result};
use base64::Engine;
use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore::{FirestoreDb, FirestoreDbOptions, FirestoreInstant};
use firestore_once_core::dead_letter::{self, BodyEncoding, DeadLetter};
use firestore_once_core::engine::DeliveryMeta;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ITEMS: usize = 100;
const STOCK: i64 = 1_000_000;

async fn commit(db: &FirestoreDb, writes: Vec<pb::Write>) -> Result<()> {
    let req = pb::CommitRequest {
        database: db.get_database_path().clone(),
        writes,
        ..Default::default()
    };
    db.client()
        .get()
        .commit(req)
        .await
        .context("seeding commit")?;
    Ok(())
}

fn write(
    db: &FirestoreDb,
    collection: &str,
    id: &str,
    value: &impl serde::Serialize,
) -> Result<pb::Write> {
    let name = format!("{}/{collection}/{id}", db.get_documents_path());
    let doc = FirestoreDb::serialize_to_doc(&name, value)?;
    Ok(pb::Write {
        operation: Some(pb::write::Operation::Update(doc)),
        ..Default::default()
    })
}

/// Seed, redrive, verify; prints one result line and returns it.
pub async fn run(count: usize, service_bin: &Path, emulator: &str) -> Result<String> {
    let project = format!("bench-redrive-{:08x}", fastrand::u32(..));
    let db = FirestoreDb::with_options(
        FirestoreDbOptions::new(project.clone()).with_request_timeout(Duration::from_secs(30)),
    )
    .await?;
    let items: Vec<pb::Write> = (0..ITEMS)
        .map(|i| write(&db, "items", &format!("rd-{i}"), &json!({"stock": STOCK})))
        .collect::<Result<_>>()?;
    commit(&db, items).await?;
    let now = FirestoreInstant::now();
    let letters: Vec<pb::Write> = (0..count)
        .map(|i| {
            let order = json!({"order_id": format!("rd-{i}"), "item_id": format!("rd-{}", i % ITEMS), "quantity": 1});
            let message_id = format!("rd-m-{i}");
            let body = json!({
                "message": {"data": base64::engine::general_purpose::STANDARD.encode(order.to_string()),
                            "messageId": message_id},
                "subscription": format!("projects/{project}/subscriptions/orders-push")
            })
            .to_string();
            let delivery = DeliveryMeta {
                source: "pubsub".into(),
                id: Some(message_id),
                ..Default::default()
            };
            let id = dead_letter::id("/orders", &delivery, body.as_bytes());
            let letter = DeadLetter {
                route: "/orders".into(),
                reason: "invalid-field".into(),
                detail: "item_id: an earlier release could not read this".into(),
                delivery,
                headers: BTreeMap::from([("content-type".to_string(), "application/json".to_string())]),
                body_bytes: body.len() as i64,
                body,
                body_encoding: BodyEncoding::Utf8,
                body_truncated: false,
                created_at: now,
                expire_at: now.saturating_add(Duration::from_secs(86_400)).unwrap_or(now),
                redrive: None,
            };
            write(&db, "dead_letters", &id, &letter)
        })
        .collect::<Result<_>>()?;
    let chunks: Vec<Vec<pb::Write>> = letters.chunks(500).map(<[pb::Write]>::to_vec).collect();
    futures::stream::iter(chunks)
        .map(|c| commit(&db, c))
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!("redrive: {count} dead letters seeded in project {project}; running `firestore-once redrive`…");

    let started = Instant::now();
    let out = Command::new(service_bin)
        .arg("redrive")
        .env("GOOGLE_CLOUD_PROJECT", &project)
        .env("FIRESTORE_EMULATOR_HOST", emulator)
        // The emulator's terms, as every other row but family 6 (see process.rs).
        .env("ONCE_DOC_COMMITS_PER_SEC", "off")
        .env("RUST_LOG", "warn")
        .output()
        .context("running firestore-once redrive")?;
    let secs = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().last().unwrap_or("").to_string();
    if !out.status.success() {
        bail!(
            "redrive exited {:?}: {summary}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let processed = stdout
        .lines()
        .filter(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() > 3 && w[0].len() == 64 && w[3] == "processed"
        })
        .count();
    // Each order applied once: total stock taken equals the dead letters redriven.
    let mut taken = 0i64;
    for i in 0..ITEMS {
        let doc: serde_json::Value = db
            .fluent()
            .select()
            .by_id_in("items")
            .obj()
            .one(format!("rd-{i}"))
            .await?
            .context("item missing")?;
        taken += STOCK - doc["stock"].as_i64().unwrap_or(0);
    }
    if processed != count || taken != count as i64 {
        bail!("redrive: {processed} of {count} processed, {taken} units taken; {summary}");
    }
    let line = format!(
        "redrive: {count} dead letters in {secs:.1} s = {:.0} dead letters/s (firestore-once redrive, one process, {} at a time; every one processed, stock moved exactly {taken})",
        count as f64 / secs,
        firestore_once_core::redrive::CONCURRENCY,
    );
    println!("{line}");
    Ok(line)
}
