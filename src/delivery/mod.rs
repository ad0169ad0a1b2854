//! Deliveries: turn an HTTP request into a payload plus the transport facts around it.
//!
//! The operation logic never sees an envelope. Each way a request can arrive is decoded here
//! into one [`Delivery`].

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Who delivered a request, and whether they retry on a non-2xx answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A direct caller: gets 4xx for bad input and decides itself whether to retry.
    Direct,
    /// A platform (Pub/Sub, Eventarc, Cloud Tasks) that redelivers anything but 2xx.
    Push,
}

/// Transport identity of one delivery: logged with every decision and stored on the status
/// document of the first processing, so "which message did this?" has an answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryMeta {
    /// `http`, `pubsub`, `eventarc` or `cloudtasks`.
    pub source: String,
    /// The transport's ID of this delivery (ce-id, messageId, task name), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Delivery attempt as the transport counts it, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i64>,
    /// Other correlation fields (subscription, ce-source, queue name…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, String>,
}

/// A decoded request: the operation payload and where it came from.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The JSON the operation is parsed from.
    pub payload: Value,
    /// Transport identity.
    pub meta: DeliveryMeta,
    /// How to answer.
    pub mode: Mode,
}

/// Why a request could not be decoded into a [`Delivery`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeliveryError {
    /// The body is not in a media type this endpoint reads.
    #[error("unsupported content type {0:?}; send application/json")]
    UnsupportedMediaType(String),
    /// The body is not valid JSON.
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
}

/// True for `application/json` and `application/*+json`, parameters ignored.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Header value as text; invalid UTF-8 counts as absent rather than failing the request.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Decode a request body with its headers.
pub fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Delivery, DeliveryError> {
    let ct = header(headers, "content-type").unwrap_or("");
    if !is_json(ct) {
        return Err(DeliveryError::UnsupportedMediaType(ct.to_string()));
    }
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| DeliveryError::MalformedJson(e.to_string()))?;
    Ok(Delivery {
        payload,
        meta: DeliveryMeta {
            source: "http".into(),
            ..Default::default()
        },
        mode: Mode::Direct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", ct.parse().unwrap());
        h
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/cloudevents+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }

    #[test]
    fn plain_json_decodes_as_direct() {
        let d = decode(&headers("application/json"), br#"{"a":1}"#).unwrap();
        assert_eq!(d.mode, Mode::Direct);
        assert_eq!(d.meta.source, "http");
        assert!(matches!(
            decode(&headers("text/plain"), b"{}"),
            Err(DeliveryError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            decode(&headers("application/json"), b"{"),
            Err(DeliveryError::MalformedJson(_))
        ));
    }
}
