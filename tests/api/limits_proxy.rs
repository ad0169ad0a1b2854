//! The limits proxy (tools/limits-proxy) in front of the real emulator: a document written
//! faster than production allows is refused as production refuses it, and the refused commit
//! never reaches the emulator.

use crate::helpers::{emulator_host, project};
use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore::gcloud_sdk::tonic::{Code, Status};
use firestore::{FirestoreDb, FirestoreDbOptions};
use limits_proxy::{Limits, Proxy, CONTENTION_MESSAGE};
use std::time::{Duration, Instant};

/// 1 write a second per document, a burst of 2.
fn limits() -> Limits {
    Limits {
        doc_writes_per_sec: 1.0,
        doc_burst: 2.0,
        ..Limits::default()
    }
}

/// A client of `project` whose every call goes through `proxy`.
async fn db_via(proxy: &Proxy, project: &str) -> FirestoreDb {
    emulator_host();
    let mut opts =
        FirestoreDbOptions::new(project.to_string()).with_request_timeout(Duration::from_secs(10));
    opts.firebase_api_url = Some(format!("http://{}", proxy.addr()));
    FirestoreDb::with_options(opts)
        .await
        .expect("firestore client")
}

/// The update of `items/{id}` to `stock`, as the service writes: a raw `Write`.
fn set_stock(db: &FirestoreDb, id: &str, stock: i64) -> pb::Write {
    let value = pb::Value {
        value_type: Some(pb::value::ValueType::IntegerValue(stock)),
    };
    pb::Write {
        operation: Some(pb::write::Operation::Update(pb::Document {
            name: format!("{}/items/{id}", db.get_documents_path()),
            fields: [("stock".to_string(), value)].into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// One commit of `writes`, in `transaction` when it is not empty.
async fn commit(
    db: &FirestoreDb,
    writes: Vec<pb::Write>,
    transaction: Vec<u8>,
) -> Result<(), Status> {
    let req = pb::CommitRequest {
        database: db.get_database_path().clone(),
        writes,
        transaction,
        ..Default::default()
    };
    db.client().get().commit(req).await.map(|_| ())
}

/// `items/{id}`'s stock read straight from the emulator (REST), not through the proxy.
async fn stock_in_emulator(project: &str, id: &str) -> Option<i64> {
    let url = format!(
        "http://{}/v1/projects/{project}/databases/(default)/documents/items/{id}",
        emulator_host()
    );
    let r = reqwest::get(url).await.unwrap();
    if r.status() == 404 {
        return None;
    }
    let v: serde_json::Value = r.json().await.unwrap();
    v["fields"]["stock"]["integerValue"].as_str()?.parse().ok()
}

/// Three quick updates of `items/{id}` (stock 1, 2, 3): the third's answer, or `None` when the
/// first two took so long (an emulator loaded by other tests) that a token came back meanwhile.
async fn three_quick_updates(db: &FirestoreDb, id: &str) -> Option<Result<(), Status>> {
    let started = Instant::now();
    for stock in [1, 2] {
        commit(db, vec![set_stock(db, id, stock)], vec![])
            .await
            .unwrap();
    }
    if started.elapsed() > Duration::from_millis(900) {
        return None;
    }
    Some(commit(db, vec![set_stock(db, id, 3)], vec![]).await)
}

#[tokio::test]
async fn a_hot_document_is_refused_with_contention_and_recovers_after_a_second() {
    let project = project();
    let proxy = Proxy::start(limits(), emulator_host()).await.unwrap();
    let db = db_via(&proxy, &project).await;
    let mut third = None;
    let mut hot = String::new();
    for attempt in 0..3 {
        hot = format!("hot-{attempt}");
        third = three_quick_updates(&db, &hot).await;
        if third.is_some() {
            break;
        }
    }
    let err = third
        .expect("two commits took over 0.9 s, three times")
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert_eq!(err.message(), CONTENTION_MESSAGE);
    // The refused commit never reached the emulator.
    assert_eq!(stock_in_emulator(&project, &hot).await, Some(2));
    // Other documents are unaffected.
    commit(&db, vec![set_stock(&db, "cold", 7)], vec![])
        .await
        .unwrap();
    assert_eq!(stock_in_emulator(&project, "cold").await, Some(7));
    let stats = proxy.stats();
    let counts = stats.document(&format!("items/{hot}")).unwrap();
    assert_eq!((counts.forwarded, counts.refused), (2, 1), "{stats:#?}");
    assert_eq!(stats.document("items/cold").unwrap().forwarded, 1);
    // A second later the hot document has a token again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    commit(&db, vec![set_stock(&db, &hot, 4)], vec![])
        .await
        .unwrap();
    assert_eq!(stock_in_emulator(&project, &hot).await, Some(4));
    let stats = proxy.stats();
    assert_eq!(
        stats.document(&format!("items/{hot}")).unwrap().forwarded,
        3
    );
}

/// A transaction whose commit the proxy refuses must not keep its read locks in the emulator
/// (production ends an aborted transaction): the proxy rolls it back. Without that, the next
/// writer of the document waits 2 s and fails with "Transaction lock timeout".
#[tokio::test]
async fn a_refused_transaction_leaves_no_lock_behind() {
    let project = project();
    // A token every 2 s: the transaction's begin and read have that long to be refused.
    let limits = Limits {
        doc_writes_per_sec: 0.5,
        doc_burst: 1.0,
        ..limits()
    };
    let proxy = Proxy::start(limits, emulator_host()).await.unwrap();
    let db = db_via(&proxy, &project).await;
    commit(&db, vec![set_stock(&db, "locked", 1)], vec![])
        .await
        .unwrap();
    // A read-write transaction reads the document (taking its lock), then commits too soon.
    let mut client = db.client().get();
    let tx = client
        .begin_transaction(pb::BeginTransactionRequest {
            database: db.get_database_path().clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .transaction;
    let read = pb::BatchGetDocumentsRequest {
        database: db.get_database_path().clone(),
        documents: vec![format!("{}/items/locked", db.get_documents_path())],
        consistency_selector: Some(
            pb::batch_get_documents_request::ConsistencySelector::Transaction(tx.clone()),
        ),
        ..Default::default()
    };
    let mut answers = client.batch_get_documents(read).await.unwrap().into_inner();
    while answers.message().await.unwrap().is_some() {}
    let err = commit(&db, vec![set_stock(&db, "locked", 2)], tx)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert_eq!(proxy.stats().totals.rollbacks_sent, 1);
    assert_eq!(proxy.stats().totals.rollbacks_failed, 0);
    // Once the bucket has a token again, a plain write goes through: without the rollback it
    // would wait on the dead transaction's lock and fail with "Transaction lock timeout.".
    tokio::time::sleep(Duration::from_millis(2100)).await;
    commit(&db, vec![set_stock(&db, "locked", 3)], vec![])
        .await
        .unwrap();
    assert_eq!(stock_in_emulator(&project, "locked").await, Some(3));
}
