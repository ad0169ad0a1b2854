//! Requests as the real client libraries encode them (`tests/clients/encode.py`), and posting
//! them raw.

use super::TestApp;
use serde_json::Value;

/// Run `tests/clients/encode.py` with the real client libraries (pinned in
/// `tests/clients/requirements.txt`) in a virtualenv cached under `target/clients-venv`, and
/// return what it printed: case name → `{"headers": {...}, "body_base64": "..."}`.
pub fn client_encoded(item: &str) -> serde_json::Map<String, Value> {
    use std::process::Command;
    let root = env!("CARGO_MANIFEST_DIR");
    let venv = format!("{root}/target/clients-venv");
    let reqs = format!("{root}/tests/clients/requirements.txt");
    let pins = std::fs::read_to_string(&reqs).expect("tests/clients/requirements.txt");
    let stamp = format!("{venv}/.pins");
    let python = format!("{venv}/bin/python");
    let fresh = std::fs::read_to_string(&stamp).ok().as_deref() == Some(pins.as_str())
        && std::path::Path::new(&python).exists();
    if !fresh {
        let ok = Command::new("python3")
            .args(["-m", "venv", "--clear", &venv])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "the client-encoder tests need python3 with venv (Debian: python3-venv)"
        );
        let out = Command::new(format!("{venv}/bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                &reqs,
            ])
            .output()
            .expect("run pip");
        assert!(
            out.status.success(),
            "pip could not install tests/clients/requirements.txt (PyPI reachable?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&stamp, &pins).unwrap();
    }
    let out = Command::new(&python)
        .args([&format!("{root}/tests/clients/encode.py"), item])
        .output()
        .expect("run encode.py");
    assert!(
        out.status.success(),
        "encode.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("encode.py prints JSON")
}

impl TestApp {
    /// POST `body` with `headers` to `path`.
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut r = self.http.post(self.url(path));
        for (k, v) in headers {
            r = r.header(k.as_str(), v.as_str());
        }
        r.body(body).send().await.unwrap()
    }
}

/// The headers and body bytes of one encoded case.
pub fn encoded_case(
    cases: &serde_json::Map<String, Value>,
    name: &str,
) -> (Vec<(String, String)>, Vec<u8>) {
    use base64::Engine;
    let c = &cases[name];
    let headers = c["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let body = base64::engine::general_purpose::STANDARD
        .decode(c["body_base64"].as_str().unwrap())
        .unwrap();
    (headers, body)
}
