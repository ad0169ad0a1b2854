//! The operator console in a real browser: Debian's headless Chromium driven over WebDriver.
//! The page loads, a lookup finds an order just placed, and a redrive from the page applies a
//! dead letter once.

use crate::helpers::*;
use crate::redrive::{buggy_release, dead_letter_orders};
use fantoccini::{ClientBuilder, Locator};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn wait(b: &fantoccini::Client) -> fantoccini::wait::Wait<'_> {
    b.wait().at_most(Duration::from_secs(15))
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Click the element with `id`.
async fn click(b: &fantoccini::Client, id: &str) {
    let e = b
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"));
    e.click()
        .await
        .unwrap_or_else(|e| panic!("click #{id}: {e}"));
}

/// Type `text` into the input with `id`.
async fn type_into(b: &fantoccini::Client, id: &str, text: &str) {
    let e = b
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"));
    e.send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("type into #{id}: {e}"));
}

// The child is killed and waited for in `Driver::drop`, which clippy cannot see.
#[allow(clippy::zombie_processes)]
async fn chromedriver() -> Driver {
    let found = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        found("chromedriver") && found("chromium"),
        "the console test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
    );
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(format!("{url}/status")).send().await.is_ok() {
            return Driver { child, url };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on {url}");
}

#[tokio::test]
async fn console_looks_up_an_order_and_redrives_a_dead_letter_in_chromium() {
    let project = project();
    let buggy = buggy_release(project.clone()).await;
    buggy.seed("con-item", 5).await;
    let dead = dead_letter_orders(&buggy, "con", "con-item", 1).await;
    let app = spawn_app_with(project, |_| {}).await;
    let r = app
        .order(&json!({"order_id": "o-console-1", "item_id": "con-item", "quantity": 2}))
        .await;
    assert_eq!(r.status(), 200);

    let driver = chromedriver().await;
    let profile = std::env::temp_dir().join(format!("once-chromium-{}", uuid::Uuid::new_v4()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--window-size=1280,1100",
                        format!("--user-data-dir={}", profile.display())]}),
    );
    // chromedriver is plain HTTP on loopback: no TLS connector.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");

    browser.goto(&app.url("/console")).await.unwrap();
    wait(&browser)
        .for_element(Locator::Css("body[data-ready=true]"))
        .await
        .expect("the page loads and runs its script");
    assert_eq!(browser.title().await.unwrap(), "firestore-once console");

    // Look the order up by its order ID.
    type_into(&browser, "lookup-value", "o-console-1").await;
    click(&browser, "lookup-go").await;
    let found = wait(&browser)
        .for_element(Locator::Css("#lookup-result[data-outcome=processed]"))
        .await
        .expect("the lookup finds the order");
    assert_eq!(
        found.attr("data-operation-id").await.unwrap().as_deref(),
        Some(op_id("order", "o-console-1").as_str())
    );
    // It is listed among recent operations too.
    wait(&browser)
        .for_element(Locator::Css(&format!(
            "#ops-table tr[data-id='{}']",
            op_id("order", "o-console-1")
        )))
        .await
        .expect("the order in the recent operations");

    // Open the dead letter, see its body, redrive it.
    browser.refresh().await.unwrap();
    wait(&browser)
        .for_element(Locator::Css(&format!(
            "#dl-table tr[data-id='{}']",
            dead[0]
        )))
        .await
        .expect("the dead letter is listed")
        .click()
        .await
        .unwrap();
    let body = wait(&browser)
        .for_element(Locator::Id("dl-body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("orders-push"), "{body}");
    // The live counters come from this service's /metrics: the order placed above is counted.
    let counters = wait(&browser)
        .for_element(Locator::Css("#counters-body[data-state=live]"))
        .await
        .expect("the counters panel reads /metrics")
        .text()
        .await
        .unwrap();
    assert!(
        counters.contains("once_deliveries_total{source=\"http\",outcome=\"processed\"}"),
        "{counters}"
    );
    let shot = browser.screenshot().await.unwrap();
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/console.png"),
        shot,
    )
    .unwrap();
    click(&browser, "dl-redrive").await;
    let result = wait(&browser)
        .for_element(Locator::Css("#dl-redrive-result[data-result]"))
        .await
        .unwrap();
    assert_eq!(
        result.attr("data-result").await.unwrap().as_deref(),
        Some("processed")
    );
    assert_eq!(app.stock("con-item").await, Some(5 - 2 - 1));
    // A second click finds it resolved and applies nothing.
    click(&browser, "dl-redrive").await;
    wait(&browser)
        .for_element(Locator::Css("#dl-redrive-result[data-result=resolved]"))
        .await
        .expect("a second redrive finds it resolved");
    assert_eq!(app.stock("con-item").await, Some(2));
    assert_eq!(app.list("orders").await.len(), 2);
    browser.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}
