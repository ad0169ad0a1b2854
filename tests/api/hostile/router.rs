//! The whole router, against the emulator: generated requests get only documented statuses.

use super::strategies::{body, request_headers};
use super::{is_hex64, runner};
use crate::helpers::*;
use axum::body::Body;
use axum::http::Request;
use firestore_once_core::app;
use firestore_once_core::config::Config;
use firestore_once_core::delivery::{self, Mode};
use proptest::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tower::ServiceExt;

/// Generated requests through the real router (load shedding, body limit, decoders, guard,
/// dead letters): only documented statuses, never a panic, and afterwards every document the
/// service created has a hashed ID.
#[test]
fn router_answers_only_documented_statuses() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let project = project();
    let (router, probe) = rt.block_on(async {
        let config = Config::default();
        let guard = guard_for(&project, &config, None).await;
        let state = shop_service(guard, Settings::default(), &project);
        let probe = spawn_app_with(project.clone(), |_| {}).await;
        for i in 0..4 {
            probe.seed(&format!("i-{i:02}"), 1_000_000).await;
        }
        (app(state), probe)
    });
    let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let path = prop_oneof![
        6 => Just("/orders".to_string()),
        1 => Just("/tasks/order".to_string()),
        1 => Just("/tasks/restock".to_string()),
        1 => Just("/tasks/cancel_order".to_string()),
        1 => Just("/tasks/no-such-kind".to_string()),
    ];
    let total = AtomicUsize::new(0);
    runner(192)
        .run(&(path, request_headers(), body()), |(path, h, b)| {
            let mode = delivery::decode(&h, &b).mode;
            let mut req = Request::builder().method("POST").uri(path.as_str());
            for (k, v) in h.iter() {
                req = req.header(k, v);
            }
            let req = req.body(Body::from(b)).unwrap();
            let resp = rt.block_on(router.clone().oneshot(req)).unwrap();
            let status = resp.status().as_u16();
            total.fetch_add(1, Ordering::Relaxed);
            *seen
                .lock()
                .unwrap()
                .entry((mode == Mode::Push, status))
                .or_insert(0) += 1;
            let allowed: &[u16] = match mode {
                Mode::Direct => &[200, 400, 404, 409, 413, 415, 422],
                Mode::Push if path == "/tasks/no-such-kind" => &[404],
                Mode::Push => &[200, 413],
            };
            prop_assert!(
                allowed.contains(&status),
                "{path} {mode:?} answered {status}: {:?}",
                rt.block_on(axum::body::to_bytes(resp.into_body(), 1 << 20))
            );
            Ok(())
        })
        .unwrap();
    println!(
        "hostile: {} generated requests through the router, (push, status) → count: {:?}",
        total.load(Ordering::Relaxed),
        seen.lock().unwrap()
    );
    rt.block_on(async {
        for collection in ["operations", "orders", "dead_letters"] {
            for d in probe.list(collection).await {
                let name = d["name"].as_str().unwrap();
                let id = name.rsplit('/').next().unwrap();
                assert!(is_hex64(id), "{collection}/{id} is not a hashed ID");
            }
        }
    });
}
