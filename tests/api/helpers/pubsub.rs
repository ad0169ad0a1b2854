//! The Pub/Sub emulator's REST API for one project: topics, push subscriptions, publishing.

use super::pubsub_host;
use serde_json::Value;

/// The Pub/Sub emulator's REST API for one project: topics, push subscriptions, publishing.
pub struct PubSub {
    http: reqwest::Client,
    base: String,
    project: String,
}

impl PubSub {
    /// A client for `project` on the shared emulator.
    pub fn new(project: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{}/v1/projects/{project}", pubsub_host()),
            project: project.to_string(),
        }
    }

    async fn put(&self, path: &str, body: Value) {
        let r = self
            .http
            .put(format!("{}/{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    /// The project ID.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// Create `topic`.
    pub async fn topic(&self, topic: &str) {
        self.put(&format!("topics/{topic}"), serde_json::json!({}))
            .await;
    }

    /// Create a push subscription on `topic` delivering to `endpoint`.
    pub async fn push_subscription(&self, name: &str, topic: &str, endpoint: &str) {
        self.push_subscription_with(name, topic, serde_json::json!({"pushEndpoint": endpoint}))
            .await;
    }

    /// Create a push subscription on `topic` with this `pushConfig` (payload unwrapping…).
    pub async fn push_subscription_with(&self, name: &str, topic: &str, push_config: Value) {
        let body = serde_json::json!({
            "topic": format!("projects/{}/topics/{topic}", self.project),
            "ackDeadlineSeconds": 10,
            "pushConfig": push_config
        });
        self.put(&format!("subscriptions/{name}"), body).await;
    }

    /// Publish raw messages (`{"data": base64, "attributes": {...}}`); their message IDs.
    pub async fn publish_messages(&self, topic: &str, messages: &[Value]) -> Vec<String> {
        let r = self
            .http
            .post(format!("{}/topics/{topic}:publish", self.base))
            .json(&serde_json::json!({ "messages": messages }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let v: Value = r.json().await.unwrap();
        v["messageIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    }

    /// Delete a subscription (stops its pushes); best effort.
    pub async fn delete_subscription(&self, name: &str) {
        let _ = self
            .http
            .delete(format!("{}/subscriptions/{name}", self.base))
            .send()
            .await;
    }

    /// Publish each payload as one message (base64 JSON `data`), in batches the API accepts.
    pub async fn publish(&self, topic: &str, payloads: &[Value]) {
        use base64::Engine;
        let messages: Vec<Value> = payloads
            .iter()
            .map(|p| {
                let data = base64::engine::general_purpose::STANDARD.encode(p.to_string());
                serde_json::json!({ "data": data })
            })
            .collect();
        for batch in messages.chunks(500) {
            let r = self
                .http
                .post(format!("{}/topics/{topic}:publish", self.base))
                .json(&serde_json::json!({ "messages": batch }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
    }
}
