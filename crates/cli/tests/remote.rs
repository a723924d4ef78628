//! `cnn remote` against the real server on 127.0.0.1, and against no server at all.

use std::net::TcpListener;
use std::process::Command;

use model::{Backend, Inference, RecordMeta, default_config, testdata};
use server::{Loaded, LogFormat, ServerConfig};

fn start_server() -> String {
    let backend = Backend::default_inference();
    let device = backend.device();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let loaded = Loaded {
        inference: Inference::new(default_config().init(&device), backend).unwrap(),
        meta: RecordMeta::default(),
        source: "test".into(),
    };
    let config = ServerConfig {
        log: LogFormat::Off,
        ..ServerConfig::default()
    };
    std::thread::spawn(move || {
        actix_web::rt::System::new()
            .block_on(async move { server::serve(listener, loaded, config).unwrap().await })
    });
    base
}

#[test]
fn remote_matches_the_server_and_reports_failures() {
    let base = start_server();
    let dir = std::env::temp_dir().join(format!("cnn-remote-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
