//! Reading the shop's collections into a [`State`].

use super::check::check;
use super::state::*;
use crate::config::ShopConfig;
use firestore::gcloud_sdk::google::firestore::v1::Document;
use firestore::FirestoreDb;
use serde::Deserialize;

/// Why the checker could not read the database.
#[derive(Debug, thiserror::Error)]
#[error("listing {collection}: {source}")]
pub struct ReadError {
    /// The collection being listed.
    pub collection: String,
    /// What Firestore said.
    #[source]
    pub source: firestore::errors::FirestoreError,
}

/// Every document of `collection`, in one query (RunQuery streams the whole collection;
/// ListDocuments pages of at most 150 on the emulator took minutes for a bench run). An
/// error anywhere fails the read, so a partial listing is never checked as if it were whole.
async fn list(db: &FirestoreDb, collection: &str) -> Result<Vec<Document>, ReadError> {
    db.fluent()
        .select()
        .from(collection)
        .query()
        .await
        .map_err(|source| ReadError {
            collection: collection.to_string(),
            source,
        })
}

fn doc_id(doc: &Document) -> String {
    doc.name.rsplit('/').next().unwrap_or_default().to_string()
}

#[derive(Deserialize)]
struct ItemDoc {
    stock: i64,
}

#[derive(Deserialize)]
struct StoredAnswer {
    body: String,
}

#[derive(Deserialize)]
struct StatusDoc {
    kind: String,
    key: String,
    outcome: String,
    response: Option<StoredAnswer>,
}

#[derive(Deserialize)]
struct RestockAnswer {
    item_id: String,
    added: i64,
}

fn decode<T: for<'de> Deserialize<'de>>(doc: &Document) -> Result<T, String> {
    FirestoreDb::deserialize_doc_to::<T>(doc).map_err(|e| e.to_string())
}

/// Every document of the sub-collection `shards` of `items/{id}`.
async fn list_shards(db: &FirestoreDb, items: &str, id: &str) -> Result<Vec<Document>, ReadError> {
    let err = |source| ReadError {
        collection: format!("{items}/{id}/shards"),
        source,
    };
    let parent = db.parent_path(items, id).map_err(err)?;
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut page = db
            .fluent()
            .list()
            .from("shards")
            .parent(&parent)
            .page_size(500);
        if let Some(t) = token.take() {
            page = page.page_token(t);
        }
        let page = page.get_page().await.map_err(err)?;
        out.extend(page.documents);
        match page.page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(out),
        }
    }
}

/// Read the items (with their stock shards), orders and status documents of `collections`.
pub async fn read(db: &FirestoreDb, collections: &ShopConfig) -> Result<State, ReadError> {
    let mut state = State::default();
    for doc in list(db, &collections.items).await? {
        let stock = decode::<ItemDoc>(&doc).map(|i| i.stock);
        let id = doc_id(&doc);
        let shards = list_shards(db, &collections.items, &id).await?;
        if !shards.is_empty() {
            let m = shards
                .iter()
                .map(|d| (doc_id(d), decode::<ItemDoc>(d).map(|i| i.stock)))
                .collect();
            state.shards.insert(id.clone(), m);
        }
        state.items.insert(id, stock);
    }
    for doc in list(db, &collections.orders).await? {
        state
            .orders
            .insert(doc_id(&doc), decode::<OrderState>(&doc));
    }
    for doc in list(db, &collections.operations).await? {
        let op = decode::<StatusDoc>(&doc).map(|s| {
            let restocked = (s.kind == "restock" && s.outcome == "processed")
                .then(|| {
                    s.response
                        .as_ref()
                        .and_then(|r| serde_json::from_str::<RestockAnswer>(&r.body).ok())
                        .map(|a| (a.item_id, a.added))
                })
                .flatten();
            OperationState {
                kind: s.kind,
                key: s.key,
                outcome: s.outcome,
                restocked,
            }
        });
        state.operations.insert(doc_id(&doc), op);
    }
    Ok(state)
}

/// Read the database and check it: the one call tests and the `check-invariants` tool make.
pub async fn verify(
    db: &FirestoreDb,
    collections: &ShopConfig,
    initial: &StockMap,
) -> Result<Report, ReadError> {
    Ok(check(&read(db, collections).await?, initial))
}
