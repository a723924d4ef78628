//! The web page end to end in headless Chromium (Debian's `chromium` and `chromium-driver`):
//! pick a real CIFAR image, read the top-3 from the page, compare with the API's answer.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{ClientBuilder, Locator};
use model::testdata;
use server::ServerConfig;

/// chromedriver and Chromium's profile folder: the process is stopped, then the folder removed.
struct Driver {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chromedriver(port: u16, profile: tempfile::TempDir) -> Driver {
    let child =
        Command::new(std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver not found: install Debian's chromium-driver (scripts/test does)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver {
        child,
        _profile: profile,
    }
}

/// Headless Chromium driven through a fresh chromedriver; both end with the returned guard.
async fn browser() -> (fantoccini::Client, Driver) {
    let profile = tempfile::tempdir().unwrap();
    let profile_dir = profile.path().join("profile");
    let port = free_port();
    let driver = chromedriver(port, profile);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile_dir.display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("start headless Chromium");
    (client, driver)
}

#[tokio::test(flavor = "current_thread")]
async fn web_page_classifies_an_uploaded_cifar_image() {
    let server = start(ServerConfig::default());
    let image = testdata::images("test", 1)
        .into_iter()
        .find(|i| i.class == "ship")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ship.jpg");
    std::fs::write(&file, &image.bytes).unwrap();
    let expected =
        post_multipart(&server, "/classify", &[("file", "ship.jpg", &image.bytes)]).json();

    let (client, _driver) = browser().await;
    client.goto(&format!("{}/ui", server.base)).await.unwrap();
    let input = client.find(Locator::Css("#file")).await.unwrap();
    input.send_keys(file.to_str().unwrap()).await.unwrap();
    let rows = client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#result .row:nth-child(3)"))
        .await
        .expect("the page shows three predictions");
    drop(rows);
    let rows = client.find_all(Locator::Css("#result .row")).await.unwrap();
    assert_eq!(rows.len(), 3);
    for (row, want) in rows
        .iter()
        .zip(expected["top_3_predictions"].as_array().unwrap())
    {
        let class = row.attr("data-class").await.unwrap().unwrap();
        assert_eq!(class, want["class"].as_str().unwrap());
        let pct = row
            .find(Locator::Css(".pct"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let shown: f64 = pct.trim_end_matches('%').parse().unwrap();
        let confidence = want["confidence"].as_f64().unwrap() * 100.0;
        assert!(
            (shown - confidence).abs() <= 0.051,
            "{shown} vs {confidence}"
        );
    }
    let png = client.screenshot().await.unwrap();
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui.png"),
        png,
    )
    .unwrap();
    client.close().await.unwrap();
}

/// The docs page renders every operation from the server's own assets (the browser has no
/// network beyond 127.0.0.1 here).
#[tokio::test(flavor = "current_thread")]
async fn docs_page_renders_the_api_offline() {
    let server = start(ServerConfig::default());
    let (client, _driver) = browser().await;
    client.goto(&format!("{}/docs", server.base)).await.unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(".opblock"))
        .await
        .expect("Swagger UI rendered the operations");
    let ops = client
        .find_all(Locator::Css(".opblock-summary-path"))
        .await
        .unwrap();
    let mut paths = Vec::new();
    for op in ops {
        paths.push(op.text().await.unwrap());
    }
    for want in ["/classify", "/classify/batch", "/health", "/model/info"] {
        assert!(
            paths.iter().any(|p| p.trim() == want),
            "{want} not shown in {paths:?}"
        );
    }
    client.close().await.unwrap();
}
