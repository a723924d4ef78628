//! The web page end to end in headless Chromium (Debian's `chromium` and `chromium-driver`):
//! pick real CIFAR images, read each one's top 3 and explanation from the page, compare with
//! the API's answers; the docs page renders offline.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
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

/// Two real CIFAR images and a file that is not an image, picked at once: each image gets its
/// top 3 (the API's own answer) and its explanation's heatmap beside it, the bad file a clear
/// error; the method and the toggle work from the keyboard; a screenshot is kept.
#[tokio::test(flavor = "current_thread")]
async fn web_page_classifies_and_explains_several_images() {
    let server = start(ServerConfig::default());
    let images: Vec<_> = testdata::images("test", 1)
        .into_iter()
        .filter(|i| i.class == "ship" || i.class == "cat")
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for img in &images {
        let file = dir.path().join(format!("{}.jpg", img.class));
        std::fs::write(&file, &img.bytes).unwrap();
        paths.push(file);
    }
    let bad = dir.path().join("notes.txt");
    std::fs::write(&bad, b"not an image").unwrap();
    paths.push(bad);

    let (client, _driver) = browser().await;
    client.set_window_size(900, 1000).await.unwrap();
    client.goto(&format!("{}/ui", server.base)).await.unwrap();
    let input = client.find(Locator::Css("#files")).await.unwrap();
    // chromedriver takes several files for a `multiple` input as lines.
    let list: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    input.send_keys(&list.join("\n")).await.unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css("#results .card:nth-child(3)[data-done=true]"))
        .await
        .expect("the page finishes all three files");
    let cards = client
        .find_all(Locator::Css("#results .card"))
        .await
        .unwrap();
    assert_eq!(cards.len(), 3);
    // The two images' heatmaps were drawn (256×256 PNGs); the bad file has none.
    let widths = client
        .execute(
            "return Array.from(document.querySelectorAll('.overlay')).map(i => i.naturalWidth)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(widths, serde_json::json!([256, 256, 0]));
    for (card, img) in cards.iter().zip(&images) {
        let expected =
            post_multipart(&server, "/classify", &[("file", "x.jpg", &img.bytes)]).json();
        let rows = card.find_all(Locator::Css(".row")).await.unwrap();
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
        let overlay = card.find(Locator::Css(".overlay")).await.unwrap();
        assert_eq!(
            overlay.attr("data-method").await.unwrap().as_deref(),
            Some("gradcam")
        );
        let error = card
            .find(Locator::Css(".error"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(error.is_empty(), "{error}");
    }
    let error = cards[2]
        .find(Locator::Css(".error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(error.contains("image"), "the bad file says why: {error}");
    let version = client
        .find(Locator::Css("#version"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(version.starts_with("Model version "), "{version}");

    // From the keyboard: the method (arrow down to occlusion) and the toggle (space).
    let select = client.find(Locator::Css("#method")).await.unwrap();
    select.send_keys("\u{E015}").await.unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css(
            "#results .card:nth-child(2)[data-done=true] .overlay[data-method=occlusion]",
        ))
        .await
        .expect("the overlays are redrawn by occlusion");
    let png = client.screenshot().await.unwrap();
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(artifacts.join("ui.png"), png).unwrap();
    let toggle = client.find(Locator::Css("#show")).await.unwrap();
    toggle.send_keys(" ").await.unwrap();
    let hidden = client
        .execute(
            "return getComputedStyle(document.querySelector('.overlay')).visibility",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(hidden, serde_json::json!("hidden"));
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
