//! Cloud Tasks HTTP targets: a plain body plus `X-CloudTasks-*` headers. Cloud Tasks retries
//! anything but 2xx and honours `Retry-After` on 429 and 503.

use super::{header, plain, Delivery, Mode, Payload};
use crate::engine::DeliveryMeta;
use http::HeaderMap;

/// Delivery identity of a Cloud Tasks request, `None` when the headers are absent.
pub fn meta(headers: &HeaderMap) -> Option<DeliveryMeta> {
    let task = header(headers, "x-cloudtasks-taskname")?;
    let mut m = DeliveryMeta {
        source: "cloudtasks".into(),
        id: Some(task.to_string()),
        attempt: header(headers, "x-cloudtasks-taskretrycount").and_then(|v| v.parse().ok()),
        ..Default::default()
    };
    for (h, k) in [
        ("x-cloudtasks-queuename", "queue"),
        ("x-cloudtasks-taskexecutioncount", "execution_count"),
        ("x-cloudtasks-taskretrycount", "retry_count"),
        ("x-cloudtasks-tasketa", "eta"),
    ] {
        if let Some(v) = header(headers, h) {
            m.attrs.insert(k.into(), v.to_string());
        }
    }
    Some(m)
}

/// Transport key of a task: the same for every retry of one task.
pub fn fallback_key(meta: &DeliveryMeta) -> Option<String> {
    let task = meta.id.as_deref()?;
    let queue = meta.attrs.get("queue").map(String::as_str).unwrap_or("");
    Some(format!("cloudtasks:{queue}/{task}"))
}

/// A Cloud Tasks HTTP-target request: the body is the payload, the task name its identity.
pub fn decode(headers: &HeaderMap, body: &[u8]) -> Delivery {
    let meta = meta(headers).unwrap_or_default();
    let key = fallback_key(&meta);
    let payload = plain(headers, body).map(|p| match p {
        Payload::Work { json, .. } => Payload::Work {
            json,
            fallback_key: key,
        },
        skip => skip,
    });
    Delivery {
        meta,
        mode: Mode::Push,
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{decode, Mode, Payload};

    #[test]
    fn cloud_tasks_headers() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("x-cloudtasks-taskname", "task-7".parse().unwrap());
        h.insert("x-cloudtasks-queuename", "votes".parse().unwrap());
        h.insert("x-cloudtasks-taskretrycount", "2".parse().unwrap());
        h.insert("x-cloudtasks-taskexecutioncount", "1".parse().unwrap());
        let d = decode(&h, br#"{"vote_id":"v"}"#);
        assert_eq!(d.mode, Mode::Push);
        assert_eq!(d.meta.source, "cloudtasks");
        assert_eq!(d.meta.id.as_deref(), Some("task-7"));
        assert_eq!(d.meta.attempt, Some(2));
        assert_eq!(d.meta.attrs["queue"], "votes");
        let Ok(Payload::Work { fallback_key, .. }) = d.payload else {
            panic!("{:?}", d.payload)
        };
        assert_eq!(fallback_key.as_deref(), Some("cloudtasks:votes/task-7"));
        let mut bad = h.clone();
        bad.insert("content-type", "text/plain".parse().unwrap());
        assert!(decode(&bad, b"{}").payload.is_err());
    }
}
