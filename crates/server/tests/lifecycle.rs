//! The served record is replaced without a restart (SIGHUP, `--watch-model`), a bad one is
//! refused while the old one keeps serving, and SIGTERM drops readiness before the drain.
//! Against the real `server` binary, with real CIFAR-10 images and records written here.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{self, Process};
use burn::module::Param;
use burn::tensor::Tensor;
use model::{Backend, Cnn, Inference, Preprocessor, RecordMeta, RecordVersion, testdata};
use serde_json::Value;

/// A record of fresh random weights, trained "at" `created`, and its version.
fn write_record(path: &Path, created: &str) -> (Cnn, RecordVersion) {
    let net = Cnn::init(&Backend::default().device());
    let version = write_net(path, &net, created);
    (net, version)
}

/// `net` as a record trained "at" `created`, put in place at `path`; its version.
fn write_net(path: &Path, net: &Cnn, created: &str) -> RecordVersion {
    let meta = RecordMeta {
        created: Some(created.into()),
        ..RecordMeta::default()
    };
    // Written beside the target and renamed over it: how a record is replaced atomically.
    let scratch = path.with_extension("new");
    model::save_model(net, &scratch, &meta).unwrap();
    let version = RecordVersion::of(&std::fs::read(&scratch).unwrap(), &meta);
    std::fs::rename(&scratch, path).unwrap();
    version
}

/// What `net` answers for `image`: class and confidence, as the server computes them.
fn expected(net: &Cnn, image: &[u8]) -> (String, f64) {
    let inference = Inference::new(net.clone(), Backend::default_inference()).unwrap();
    let pixels = Preprocessor::default().preprocess(image).unwrap();
    let p = inference.predict(&pixels, 1).remove(0).best;
    (p.class.to_string(), f64::from(p.confidence))
}

fn model_info(process: &Process) -> Value {
    let (status, body) = process.get("/model/info");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `/model/info` reports a reload that `done` accepts; returns that report.
fn wait_for_reload(process: &Process, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = model_info(process);
        if done(&info["last_reload"]) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "no such reload: {info}\nlog: {:?}",
            process.log_lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(process: &Process, series: &str) -> f64 {
    let (_, text) = process.get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// One answer of `/classify`: status, the version header, class and confidence.
struct Answer {
    status: u16,
    version: String,
    class: String,
    confidence: f64,
}

fn classify(process: &Process, image: &[u8]) -> Answer {
    let r = process.post_multipart("/classify", &[("file", "a.jpg", image)]);
    let (class, confidence) = if r.status == 200 {
        let v = r.json();
        let p = &v["prediction"];
        (
            p["class"].as_str().unwrap().to_string(),
            p["confidence"].as_f64().unwrap(),
        )
    } else {
        (r.body.clone(), f64::NAN)
    };
    Answer {
        status: r.status,
        version: r.header("model-version").unwrap_or_default().to_string(),
        class,
        confidence,
    }
}

#[test]
fn sighup_swaps_the_record_under_concurrent_requests_without_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (old_net, old) = write_record(&path, "2026-01-01T00:00:00Z");
    let image = testdata::images("test", 1).remove(3).bytes;
    let process = Arc::new(Process::start(&["--model", path.to_str().unwrap()]));
    assert_eq!(model_info(&process)["version"]["sha256"], old.sha256);
    let old_answer = expected(&old_net, &image);

    // Clients send one request after another, before, during and after the reload; each goes
    // on until the reload is over and it has had an answer from the new record.
    let new_label = Arc::new(std::sync::OnceLock::<String>::new());
    let reloaded = Arc::new(AtomicBool::new(false));
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (process, image) = (process.clone(), image.clone());
            let (new_label, reloaded, started) =
                (new_label.clone(), reloaded.clone(), started.clone());
            std::thread::spawn(move || {
                let mut answers: Vec<Answer> = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    answers.push(classify(&process, &image));
                    if answers.len() == 1 {
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                    let last = &answers[answers.len() - 1].version;
                    let done = reloaded.load(Ordering::Relaxed)
                        && new_label.get().is_some_and(|l| l == last);
                    if done || Instant::now() > deadline {
                        return answers;
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.load(Ordering::Relaxed) < 4 {
        assert!(Instant::now() < deadline, "the clients never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (new_net, new) = write_record(&path, "2026-02-02T00:00:00Z");
    new_label.set(new.label.clone()).unwrap();
    process.signal(libc::SIGHUP);
    let info = wait_for_reload(&process, |r| r["outcome"] == "loaded");
    reloaded.store(true, Ordering::Relaxed);
    let new_answer = expected(&new_net, &image);

    assert_eq!(info["version"]["sha256"], new.sha256);
    assert_eq!(info["version"]["label"], new.label);
    assert_eq!(info["last_reload"]["trigger"], "signal");
    assert_eq!(info["last_reload"]["version"], new.label);
    assert_eq!(info["record"]["created"], "2026-02-02T00:00:00Z");
    for client in clients {
        let answers = client.join().unwrap();
        assert!(!answers.is_empty());
        // Every request succeeded, answered by the record its version header names, and a
        // client never went back to the old record after seeing the new one.
        let mut seen_new = false;
        for a in &answers {
            assert_eq!(a.status, 200, "{}", a.class);
            let want = if a.version == old.label {
                assert!(!seen_new, "an answer from the old record after the new one");
                &old_answer
            } else {
                assert_eq!(a.version, new.label);
                seen_new = true;
                &new_answer
            };
            assert_eq!(a.class, want.0);
            assert!(
                (a.confidence - want.1).abs() < 1e-4,
                "{} vs {}",
                a.confidence,
                want.1
            );
        }
        assert!(seen_new, "this client never saw the new record");
        assert_eq!(answers[0].version, old.label);
    }
    // The Open Inference Protocol names the new version too.
    let (_, v2) = process.get("/v2/models/cifar10-cnn");
    let v2: Value = serde_json::from_str(&v2).unwrap();
    assert_eq!(v2["versions"][0], new.label);
    assert_eq!(
        metric(&process, "model_reloads_total{result=\"success\"}"),
        1.0
    );
    assert_eq!(
        metric(&process, "model_reloads_total{result=\"failure\"}"),
        0.0
    );
    assert!(
        process
            .log_lines()
            .iter()
            .any(|l| l.contains("reloaded the model") && l.contains(&new.label)),
        "{:?}",
        process.log_lines()
    );
}

#[test]
fn a_bad_record_is_refused_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (net, good) = write_record(&path, "2026-01-01T00:00:00Z");
    let image = testdata::images("test", 1).remove(0).bytes;
    let process = Process::start(&["--model", path.to_str().unwrap()]);
    let want = expected(&net, &image);

    // A truncated copy, a file that is not a record, a record whose weights give NaN (a
    // diverged run's), and no file at all.
    let bytes = std::fs::read(&path).unwrap();
    let device = Backend::default().device();
    let mut diverged = Cnn::init(&device);
    diverged.fc2.weight = Param::from_tensor(Tensor::full([100, 10], f32::NAN, &device));
    let nan_path = dir.path().join("nan.safetensors");
    write_net(&nan_path, &diverged, "2026-01-02T00:00:00Z");
    let nan = std::fs::read(&nan_path).unwrap();
    let damaged: [(&str, Option<&[u8]>); 4] = [
        ("truncated", Some(&bytes[..bytes.len() / 2])),
        ("not a record", Some(b"GIF89a not weights".as_slice())),
        ("NaN weights", Some(&nan)),
        ("missing", None),
    ];
    for (n, (what, content)) in damaged.into_iter().enumerate() {
        match content {
            Some(content) => std::fs::write(&path, content).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
        let failures = metric(&process, "model_reloads_total{result=\"failure\"}");
        assert_eq!(failures, n as f64);
        process.signal(libc::SIGHUP);
        // The count goes up once the reload has ended (and `/model/info` says how).
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(&process, "model_reloads_total{result=\"failure\"}") < (n + 1) as f64 {
            assert!(Instant::now() < deadline, "{what}: no failure counted");
            std::thread::sleep(Duration::from_millis(20));
        }
        let info = model_info(&process);
        assert_eq!(info["last_reload"]["outcome"], "failed", "{what}: {info}");
        let error = info["last_reload"]["error"].as_str().unwrap();
        assert!(!error.is_empty(), "{what}: {info}");
        if what == "NaN weights" {
            assert!(error.contains("NaN"), "{error}");
        }
        assert_eq!(info["version"]["sha256"], good.sha256, "{what}");
        let a = classify(&process, &image);
        assert_eq!(a.status, 200, "{what}: {}", a.class);
        assert_eq!(a.version, good.label);
        assert_eq!(a.class, want.0);
        assert!((a.confidence - want.1).abs() < 1e-4);
    }
    assert_eq!(
        metric(&process, "model_reloads_total{result=\"success\"}"),
        0.0
    );
    let refused = process
        .log_lines()
        .iter()
        .filter(|l| l.contains("reload refused"))
        .count();
    assert_eq!(refused, 4, "{:?}", process.log_lines());
    assert_eq!(process.get("/ready").0, 200);
}

#[test]
fn a_reload_of_the_same_bytes_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (_, version) = write_record(&path, "2026-01-01T00:00:00Z");
    let process = Process::start(&["--model", path.to_str().unwrap()]);
    let since = model_info(&process)["serving_since"].clone();
    process.signal(libc::SIGHUP);
    let info = wait_for_reload(&process, |r| r["outcome"] == "unchanged");
    assert_eq!(info["version"]["label"], version.label);
    assert_eq!(info["serving_since"], since);
    assert_eq!(
        metric(&process, "model_reloads_total{result=\"success\"}"),
        0.0
    );
    assert_eq!(
        metric(&process, "model_reloads_total{result=\"failure\"}"),
        0.0
    );
}

#[test]
fn watch_model_reloads_when_the_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (_, old) = write_record(&path, "2026-01-01T00:00:00Z");
    let process = Process::start(&["--model", path.to_str().unwrap(), "--watch-model"]);
    assert_eq!(model_info(&process)["version"]["label"], old.label);
    // Another file in the folder is not the record: nothing happens (the debounce is 0.5 s).
    std::fs::write(dir.path().join("notes.txt"), "unrelated").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(model_info(&process)["last_reload"].is_null());
    let (_, new) = write_record(&path, "2026-03-03T00:00:00Z");
    let info = wait_for_reload(&process, |r| r["outcome"] == "loaded");
    assert_eq!(info["last_reload"]["trigger"], "watch");
    assert_eq!(info["version"]["sha256"], new.sha256);
}

#[test]
fn the_built_in_record_cannot_be_watched() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .env_remove("CNN_MODEL")
        .args(["--port", "0", "--watch-model"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--watch-model needs --model"), "{stderr}");
}

#[test]
fn sigterm_drops_readiness_then_drains_then_stops() {
    let image = testdata::images("test", 1).remove(0).bytes;
    // Long enough that the checks below finish inside it even on a loaded machine.
    let mut process = Process::start(&["--drain-seconds", "10", "--grpc-port", "0"]);
    let grpc = process.grpc_addr();
    // gRPC health follows readiness, checked every 100 ms.
    assert!(
        common::grpc_health_becomes(&grpc, 1),
        "gRPC health never SERVING"
    );
    process.signal(libc::SIGTERM);
    let signalled = Instant::now();
    // Readiness goes at once; the service stays, for the drain.
    let deadline = Instant::now() + Duration::from_secs(2);
    while process.get("/ready").0 != 503 {
        assert!(Instant::now() < deadline, "/ready still answers 200");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(process.get("/health").0, 200);
    assert_eq!(process.get("/v2/health/ready").0, 503);
    // And turns NOT_SERVING with it, while gRPC still answers.
    assert!(
        common::grpc_health_becomes(&grpc, 2),
        "gRPC health still SERVING"
    );
    assert_eq!(classify(&process, &image).status, 200);
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "the checks outlasted the drain: the test proves nothing"
    );
    // Then it stops by itself, cleanly.
    let status = process.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(10),
        "stopped before the drain ended"
    );
    assert_eq!(process.get("/health").0, 0, "still listening");
    assert_eq!(common::grpc_health(&grpc), None, "gRPC still listening");
}
