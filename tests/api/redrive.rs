//! Redrive: dead letters sent back through the guard once their cause is fixed, by the
//! `firestore-once redrive` command and the library, with filters, dry runs, two redrives at
//! once, and one that still fails.
//!
//! The cause: an earlier release whose order parser refused every order ("a bug"), so valid
//! Pub/Sub pushes were dead-lettered; the fixed release redrives them.

use crate::helpers::*;
use base64::Engine;
use firestore_once_core::config::Config;
use firestore_once_core::engine::ValidationError;
use firestore_once_core::redrive::{self, Filter};
use firestore_once_core::Service;
use firestore_once_shop::{self as shop, fulfil::LocalCarrier, ShopConfig};
use serde_json::{json, Value};
use std::sync::Arc;

/// The buggy release: the same service, its order parser refusing everything.
pub async fn buggy_release(project: String) -> TestApp {
    spawn_app_full(
        project,
        |_| {},
        None,
        |mut st| {
            let mut r = shop::registry(&ShopConfig::default(), Arc::new(LocalCarrier));
            r.register("order", |_, _| {
                Err::<firestore_once_shop::order::Order, _>(ValidationError::new(
                    "item_id",
                    "an earlier release could not read this",
                ))
            });
            st.registry = Arc::new(r);
            st
        },
    )
    .await
}

fn envelope(order: &Value, message_id: &str) -> Value {
    json!({
        "message": {"data": base64::engine::general_purpose::STANDARD.encode(order.to_string()),
                    "messageId": message_id},
        "subscription": "projects/demo/subscriptions/orders-push"
    })
}

/// Dead-letter `n` valid orders of 1 unit of `item` through the buggy release.
pub async fn dead_letter_orders(
    buggy: &TestApp,
    prefix: &str,
    item: &str,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let order = json!({"order_id": format!("{prefix}-{i}"), "item_id": item, "quantity": 1});
        let v: Value = buggy
            .order(&envelope(&order, &format!("{prefix}-m-{i}")))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["outcome"], "dead_lettered", "{v}");
        ids.push(v["dead_letter_id"].as_str().unwrap().to_string());
    }
    ids
}

/// The fixed release's state, in process, for the library calls.
pub async fn fixed_state(project: &str) -> Service {
    let config = Config::default();
    let guard = guard_for(project, &config, None).await;
    shop_service(guard, Settings::default(), project)
}

fn redrive_cli(project: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_firestore-once"))
        .arg("redrive")
        .args(args)
        .env("GOOGLE_CLOUD_PROJECT", project)
        .env("FIRESTORE_EMULATOR_HOST", emulator_host())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run firestore-once redrive");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.code().is_some(),
        "killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

fn lines_with<'a>(report: &'a str, word: &str) -> Vec<&'a str> {
    // Item lines start with the 64-hex dead letter ID (not the header, not the totals).
    report
        .lines()
        .filter(|l| l.split_whitespace().next().is_some_and(|id| id.len() == 64))
        .filter(|l| l.split_whitespace().any(|w| w == word))
        .collect()
}

async fn redrive_state(app: &TestApp, id: &str) -> Option<Value> {
    let d = app.doc("dead_letters", id).await.unwrap();
    d["fields"]
        .get("redrive")
        .map(|r| r["mapValue"]["fields"].clone())
}

#[tokio::test]
async fn command_filters_dry_run_and_a_still_failing_dead_letter() {
    let project = project();
    let buggy = buggy_release(project.clone()).await;
    buggy.seed("r-item", 10).await;
    let orders = dead_letter_orders(&buggy, "cli", "r-item", 3).await;
    // Garbage that no release can read: it must stay a dead letter.
    let garbage: Value = buggy
        .order(&json!({"message": {"data": "%%%", "messageId": "junk-1"}, "subscription": "s"}))
        .await
        .json()
        .await
        .unwrap();
    let garbage_id = garbage["dead_letter_id"].as_str().unwrap().to_string();
    assert_eq!(buggy.list("dead_letters").await.len(), 4);

    // Dry run: lists, changes nothing.
    let (code, out) = redrive_cli(&project, &["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines_with(&out, "would-redrive").len(), 4, "{out}");
    assert_eq!(buggy.stock("r-item").await, Some(10));
    assert!(redrive_state(&buggy, &orders[0]).await.is_none());

    // A time filter in the future selects nothing.
    let (code, out) = redrive_cli(&project, &["--since", "2999-01-01T00:00:00Z"]);
    assert_eq!((code, out.lines().count()), (0, 2), "{out}");

    // Route + reason + limit: two of the three orders.
    let (code, out) = redrive_cli(
        &project,
        &[
            "--route",
            "/orders",
            "--reason",
            "invalid-field",
            "--limit",
            "2",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines_with(&out, "processed").len(), 2, "{out}");
    assert!(lines_with(&out, "invalid-envelope").is_empty(), "{out}");
    assert_eq!(buggy.stock("r-item").await, Some(8));

    // A reason filter matching only the garbage: it still fails, exit status 2.
    let (code, out) = redrive_cli(&project, &["--reason", "invalid-envelope"]);
    assert_eq!(code, 2, "{out}");
    assert_eq!(lines_with(&out, "failed").len(), 1, "{out}");
    let st = redrive_state(&buggy, &garbage_id).await.unwrap();
    assert_eq!(st["attempts"]["integerValue"], "1");
    assert_eq!(st["last_result"]["stringValue"], "failed");
    assert_eq!(st["resolved"]["booleanValue"], false);
    assert!(st["last_at"]["timestampValue"].is_string());

    // The library, unfiltered: the last order applies, the garbage fails again, the two
    // resolved ones are left alone. No new dead letter appears.
    let state = fixed_state(&project).await;
    let report = redrive::run(&state, &Filter::default()).await.unwrap();
    let results: Vec<(&str, &str)> = report
        .iter()
        .map(|r| (r.id.as_str(), r.result.as_str()))
        .collect();
    assert_eq!(report.len(), 2, "{results:?}");
    assert!(results.contains(&(garbage_id.as_str(), "failed")));
    assert_eq!(report.iter().filter(|r| r.result == "processed").count(), 1);
    assert_eq!(buggy.stock("r-item").await, Some(7));
    assert_eq!(buggy.list("dead_letters").await.len(), 4);
    let st = redrive_state(&buggy, &garbage_id).await.unwrap();
    assert_eq!(st["attempts"]["integerValue"], "2");
    for id in &orders {
        let st = redrive_state(&buggy, id).await.unwrap();
        assert_eq!(st["resolved"]["booleanValue"], true);
        assert_eq!(st["attempts"]["integerValue"], "1");
        assert!(st.get("claimed_by").is_none(), "claim released: {st}");
    }
    // Redriving again applies nothing twice.
    let again = redrive::run(&state, &Filter::default()).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(buggy.stock("r-item").await, Some(7));
    assert_eq!(buggy.list("orders").await.len(), 3);
}

#[tokio::test]
async fn two_redrives_at_once_apply_each_dead_letter_once() {
    let project = project();
    let buggy = buggy_release(project.clone()).await;
    buggy.seed("c-item", 100).await;
    let ids = dead_letter_orders(&buggy, "dup", "c-item", 40).await;
    let (a, b) = (fixed_state(&project).await, fixed_state(&project).await);
    let all = Filter::default();
    let (ra, rb) = tokio::join!(redrive::run(&a, &all), redrive::run(&b, &all));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    for id in &ids {
        let sent: Vec<&str> = ra
            .iter()
            .chain(rb.iter())
            .filter(|r| r.id == *id && r.result != "claimed")
            .map(|r| r.result.as_str())
            .collect();
        // Each is sent by one redrive (processed), or by both only if the second found it
        // already applied by the guard (replayed): never applied twice.
        assert_eq!(
            sent.iter().filter(|r| **r == "processed").count(),
            1,
            "{id}: {sent:?}"
        );
        let st = redrive_state(&buggy, id).await.unwrap();
        assert_eq!(st["resolved"]["booleanValue"], true);
    }
    assert_eq!(buggy.stock("c-item").await, Some(60));
    assert_eq!(buggy.list("orders").await.len(), 40);
    assert_eq!(buggy.list("dead_letters").await.len(), 40);
}
