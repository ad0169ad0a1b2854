//! Reading what the service left: the emulator's documents through its REST API (paged
//! listings, stock shards, fields), document IDs, and `/metrics` scrapes.

use serde_json::Value;

/// Every document of `collection` under the REST root `rest`, paged; `mask` names the one
/// field to return (`__name__` for names alone: cheap counts of large collections).
pub async fn list_documents(
    http: &reqwest::Client,
    rest: &str,
    collection: &str,
    mask: Option<&str>,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut q = vec![("pageSize".to_string(), "500".to_string())];
        if let Some(field) = mask {
            q.push(("mask.fieldPaths".into(), field.into()));
        }
        if let Some(t) = &token {
            q.push(("pageToken".into(), t.clone()));
        }
        let v: Value = http
            .get(format!("{rest}/{collection}"))
            .query(&q)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(docs) = v["documents"].as_array() {
            out.extend(docs.iter().cloned());
        }
        match v["nextPageToken"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return out,
        }
    }
}

/// Units held by the stock shards `items/{id}/shards/*` (0 when there are none).
pub async fn shard_units(http: &reqwest::Client, rest: &str, id: &str) -> i64 {
    let col = format!("items/{}/shards", urlencode(id));
    list_documents(http, rest, &col, Some("stock"))
        .await
        .iter()
        .filter_map(|d| {
            d["fields"]["stock"]["integerValue"]
                .as_str()?
                .parse::<i64>()
                .ok()
        })
        .sum()
}

/// `s` percent-encoded for one segment of a document path.
pub(super) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// sha256 hex of `kind:key`, computed independently of the crate.
pub fn op_id(kind: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("{kind}:{key}").as_bytes()))
}

/// A document's field as plain text (string, integer or boolean), `None` when absent.
pub fn field<'a>(doc: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut v = &doc["fields"];
    for (i, p) in path.iter().enumerate() {
        v = &v[*p];
        if i + 1 < path.len() {
            v = &v["mapValue"]["fields"];
        }
    }
    let typed = v.as_object()?;
    typed.values().next()
}

/// The `/metrics` text of the service at `base` (`http://host:port`).
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
