//! `cnn remote` against the real server on 127.0.0.1, and against no server at all.

use std::net::TcpListener;
use std::process::Command;

use model::{Backend, Inference, RecordMeta, testdata};
use server::{Loaded, LogFormat, ServerConfig};

fn start_server() -> String {
    start_server_with(ServerConfig::default())
}

fn start_server_with(config: ServerConfig) -> String {
    let backend = Backend::default_inference();
    let device = backend.device();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let loaded = Loaded::unsaved(
        Inference::new(model::Cnn::init(&device), backend).unwrap(),
        RecordMeta::default(),
        "test",
    );
    let config = ServerConfig {
        log: LogFormat::Off,
        ..config
    };
    server::spawn(listener, loaded, config).unwrap();
    base
}

#[test]
fn remote_matches_the_server_and_reports_failures() {
    let base = start_server();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut paths = Vec::new();
    for img in testdata::images("test", 1).iter().take(3) {
        let p = dir.join(format!("{}.jpg", img.class));
        std::fs::write(&p, &img.bytes).unwrap();
        paths.push(p.to_str().unwrap().to_string());
    }
    let broken = dir.join("broken.png");
    std::fs::write(&broken, b"\x89PNG broken").unwrap();

    let cnn = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cnn"))
            .args(args)
            .output()
            .unwrap()
    };
    let one = cnn(&["remote", &base, &paths[0], "--json"]);
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(v["results"][0]["top_k"].as_array().unwrap().len(), 3);

    let mut args = vec!["remote", base.as_str()];
    args.extend(paths.iter().map(String::as_str));
    args.push(broken.to_str().unwrap());
    args.push("--json");
    let batch = cnn(&args);
    assert_eq!(batch.status.code(), Some(1), "one file failed");
    let v: serde_json::Value = serde_json::from_slice(&batch.stdout).unwrap();
    assert_eq!(v["total"], 4);
    assert_eq!(v["failed"], 1);
    assert!(v["results"][3]["error"].is_string());
    // The single answer and the batch answer agree for the same file (kernels for other
    // batch sizes may round differently in the last bits).
    let single: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    let (a, b) = (
        &v["results"][0]["prediction"],
        &single["results"][0]["prediction"],
    );
    assert_eq!(a["class_index"], b["class_index"]);
    assert!((a["confidence"].as_f64().unwrap() - b["confidence"].as_f64().unwrap()).abs() < 1e-5);

    // A file that cannot be read is reported in its place; the others still go to the server.
    let missing = dir.join("missing.jpg");
    let with_missing = cnn(&[
        "remote",
        &base,
        &paths[0],
        missing.to_str().unwrap(),
        &paths[1],
        "--json",
    ]);
    assert_eq!(with_missing.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&with_missing.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0]["prediction"].is_object() && results[2]["prediction"].is_object());
    assert_eq!(results[1]["file"], missing.to_str().unwrap());
    assert!(results[1]["error"].is_string(), "{}", results[1]);

    // An error answer from the server (a lone broken file) is reported with its detail.
    let bad = cnn(&["remote", &base, broken.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("422"));

    // No server at all.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = cnn(&["remote", &format!("http://127.0.0.1:{port}"), &paths[0]]);
    assert_eq!(down.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach the server"));
}

fn cnn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cnn"))
        .args(args)
        .output()
        .unwrap()
}

/// More files than the server's `--max-files`, named one by one and through a directory: sent
/// in batches the server accepts, every file answered.
#[test]
fn remote_walks_directories_and_splits_batches_to_the_server_limit() {
    let mut config = ServerConfig::default();
    config.upload.files = 2;
    let base = start_server_with(config);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("more")).unwrap();
    let images = testdata::images("test", 1);
    for (i, img) in images.iter().take(7).enumerate() {
        let sub = if i < 2 { "" } else { "more" };
        std::fs::write(dir.join(sub).join(format!("{i}.jpg")), &img.bytes).unwrap();
    }
    let out = cnn(&[
        "remote",
        &base,
        dir.join("0.jpg").to_str().unwrap(),
        dir.join("1.jpg").to_str().unwrap(),
        dir.join("more").to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"], 7);
    assert_eq!(v["failed"], 0);
    let files: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file"].as_str().unwrap())
        .collect();
    assert!(files[6].ends_with("more/6.jpg"), "{files:?}");
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["prediction"].is_object())
    );
}

/// A server that answers 200 with `body` to every request.
fn fake_server(body: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // Read the request head and its body (Content-Length), then answer.
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
                if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if data.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    base
}

/// An answer that does not account for every file sent fails loudly instead of printing
/// "0 files" and exiting 0.
#[test]
fn remote_fails_on_an_answer_that_does_not_match_what_was_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let img = &testdata::images("test", 1)[0];
    let (a, b) = (dir.join("a.jpg"), dir.join("b.jpg"));
    std::fs::write(&a, &img.bytes).unwrap();
    std::fs::write(&b, &img.bytes).unwrap();
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    let short = cnn(&[
        "remote",
        &fake_server(r#"{"results": [], "total": 0}"#),
        a,
        b,
    ]);
    assert_eq!(short.status.code(), Some(2));
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(
        err.contains("sent 2 files but the server answered for 0"),
        "{err}"
    );

    let shapeless = cnn(&["remote", &fake_server(r#"{"status": "ok"}"#), a]);
    assert_eq!(shapeless.status.code(), Some(2));
    let err = String::from_utf8_lossy(&shapeless.stderr);
    assert!(err.contains("neither a prediction nor an error"), "{err}");

    let no_list = cnn(&["remote", &fake_server(r#"{"total": 2}"#), a, b]);
    assert_eq!(no_list.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_list.stderr).contains("no \"results\" list"));
}
