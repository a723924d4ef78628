//! The `server` binary itself: start-up on good and bad records, the health-check probe, and
//! a graceful stop on SIGTERM.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Process;
use model::{Backend, RecordMeta, default_config, save_model};

fn tmp() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("server-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn good_record() -> PathBuf {
    let path = tmp().join("good.safetensors");
    if !path.exists() {
        let device = Backend::default().device();
        save_model(
            &default_config().init(&device),
            &path,
            &RecordMeta::default(),
        )
        .unwrap();
    }
    path
}

fn server() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.env_remove("CNN_PORT").env_remove("CNN_MODEL");
    cmd
}

/// Starts the binary on an ephemeral port with the good record.
fn spawn() -> Process {
    Process::spawn(&["--model", good_record().to_str().unwrap()])
}

#[test]
fn bad_records_fail_at_start_with_a_clear_message() {
    let dir = tmp();
    let truncated = dir.join("truncated.safetensors");
    let bytes = std::fs::read(good_record()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"hello").unwrap();
    let wide = dir.join("wide.safetensors");
    let device = Backend::default().device();
    // Another architecture under our own metadata.
    {
        use burn::store::{ModuleSnapshot, SafetensorsStore};
        let meta = serde_json::to_string(&RecordMeta::default()).unwrap();
        let mut store = SafetensorsStore::from_file(&wide)
            .overwrite(true)
            .metadata("cifar_cnn", meta);
        default_config()
            .with_hidden(64)
            .init(&device)
            .save_into(&mut store)
            .unwrap();
    }
    for (path, expect) in [
        (dir.join("missing.safetensors"), "missing.safetensors"),
        (truncated, "not a valid record"),
        (garbage, "not a valid record"),
        (wide, "fc1.weight"),
    ] {
        let out = server()
            .args(["--port", "0", "--model", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{} started", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot serve the record") && err.contains(expect),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn healthcheck_probe_and_graceful_sigterm() {
    let mut process = spawn();
    let (child, addr) = (&mut process.child, process.addr.clone());
    let port = addr.rsplit(':').next().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = server()
            .args(["--port", port, "healthcheck"])
            .output()
            .unwrap();
        if probe.status.success() {
            assert!(String::from_utf8_lossy(&probe.stdout).contains("healthy"));
            break;
        }
        assert!(Instant::now() < deadline, "never healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
    // Nothing listens any more: the probe now fails.
    let probe = server()
        .args(["--port", port, "healthcheck"])
        .output()
        .unwrap();
    assert!(!probe.status.success());
}

/// SIGTERM while a request is half-sent: the server stops accepting, still answers that
/// request in full, then exits 0.
#[test]
fn sigterm_drains_an_in_flight_request() {
    use std::io::{Read, Write};
    let mut process = spawn();
    let (child, addr) = (&mut process.child, process.addr.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let jpeg = model::testdata::images("test", 1).remove(0).bytes;
    let mut stream = loop {
        if let Ok(s) = std::net::TcpStream::connect(&addr) {
            break s;
        }
        assert!(Instant::now() < deadline, "server never listened");
        std::thread::sleep(Duration::from_millis(50));
    };
    write!(
        stream,
        "POST /classify HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        jpeg.len()
    )
    .unwrap();
    let (first, rest) = jpeg.split_at(jpeg.len() / 2);
    stream.write_all(first).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(rest).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("top_3_predictions"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not stop after draining");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}
