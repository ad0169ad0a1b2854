//! Who delivered an operation: the transport identity the guard stores on the status document.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Other correlation fields (subscription, ce-source, ce-type, queue…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, String>,
}
