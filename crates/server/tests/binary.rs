//! The `server` binary itself: start-up on good and bad records, the health-check probe, a
//! graceful stop on SIGTERM, and test-time augmentation and int8 switched on by flag or
//! environment.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::Process;
use model::{
    Backend, Inference, Precision, Preprocessor, RecordMeta, load_model, save_model, testdata,
};

/// A record of weights made here, written into `dir`.
fn good_record(dir: &Path) -> PathBuf {
    let path = dir.join("good.safetensors");
    let device = Backend::default().device();
    save_model(&model::Cnn::init(&device), &path, &RecordMeta::default()).unwrap();
    path
}

fn server() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.env_remove("CNN_PORT")
        .env_remove("CNN_MODEL")
        .env_remove("CNN_PRECISION");
    cmd
}

/// Starts the binary on an ephemeral port with a good record written into `dir`.
fn spawn(dir: &Path) -> Process {
    Process::spawn(&["--model", good_record(dir).to_str().unwrap()])
}

#[test]
fn bad_records_fail_at_start_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let truncated = dir.join("truncated.safetensors");
    let bytes = std::fs::read(good_record(dir)).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"hello").unwrap();
    let wide = dir.join("wide.safetensors");
    // Another architecture under our own metadata.
    std::fs::write(&wide, testdata::record_with_hidden(64)).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let mut process = spawn(dir.path());
    let addr = process.addr.clone();
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
    process.signal(libc::SIGTERM);
    let exit = process.wait_exit(Duration::from_secs(30));
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
    let dir = tempfile::tempdir().unwrap();
    let mut process = spawn(dir.path());
    let addr = process.addr.clone();
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
    process.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(rest).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("top_3_predictions"), "{answer}");
    let exit = process.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}");
}

/// `--tta` (or `CNN_TTA`) switches test-time augmentation on: the server says so as it starts,
/// and answers `/classify` and `/classify/batch` with each image's and its mirror's mean
/// probabilities, as the model crate computes them in-process, failed files in their places;
/// `CNN_TTA=crops` (or `--tta=crops`) with the mean over the ten views.
#[test]
fn tta_by_flag_or_environment_answers_with_the_mirrored_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let record = good_record(tmp.path());
    let path = record.to_str().unwrap();
    let banner = |p: Process| p.banner.clone();
    let off = banner(Process::spawn(&["--model", path]));
    assert!(off.contains("test-time augmentation off"), "{off}");
    let by_env = banner(Process::spawn_with_env(
        &["--model", path],
        &[("CNN_TTA", "true")],
    ));
    assert!(by_env.contains("test-time augmentation flip"), "{by_env}");
    let env_off = banner(Process::spawn_with_env(
        &["--model", path],
        &[("CNN_TTA", "0")],
    ));
    assert!(env_off.contains("test-time augmentation off"), "{env_off}");

    let server = Process::start(&["--model", path, "--tta"]);
    assert!(
        server.banner.contains("test-time augmentation flip"),
        "{}",
        server.banner
    );
    let backend = Backend::default_inference();
    let (net, _) = load_model(&record, &backend.device()).unwrap();
    let local = Inference::new(net, backend)
        .unwrap()
        .with_tta(model::Tta::Flip);
    let pre = Preprocessor::default();
    let images: Vec<_> = testdata::images("test", 1).into_iter().take(4).collect();
    let expected = |bytes: &[u8]| local.predict(&pre.preprocess(bytes).unwrap(), 3).remove(0);
    let agrees = |answer: &serde_json::Value, bytes: &[u8]| {
        let want = expected(bytes);
        assert_eq!(answer["prediction"]["class_index"], want.best.class_index);
        for (got, want) in answer["top_3_predictions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&want.top_k)
        {
            let confidence = got["confidence"].as_f64().unwrap();
            assert!(
                (confidence - f64::from(want.confidence)).abs() < 1e-5,
                "{got}"
            );
        }
    };

    let one = server.post_multipart("/classify", &[("file", "a.jpg", &images[0].bytes)]);
    assert_eq!(one.status, 200, "{}", one.body);
    agrees(&one.json(), &images[0].bytes);

    let mut parts: Vec<(&str, &str, &[u8])> = images
        .iter()
        .map(|i| ("files", i.class.as_str(), i.bytes.as_slice()))
        .collect();
    parts.insert(1, ("files", "notes.txt", b"not an image"));
    let batch = server.post_multipart("/classify/batch", &parts);
    assert_eq!(batch.status, 200, "{}", batch.body);
    let v = batch.json();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[1]["filename"], "notes.txt");
    assert!(results[1]["error"].is_string());
    for (answer, (_, name, bytes)) in results
        .iter()
        .zip(&parts)
        .filter(|(_, p)| p.1 != "notes.txt")
    {
        assert_eq!(answer["filename"], *name);
        agrees(answer, bytes);
    }

    let crops = Process::start_with_env(&["--model", path], &[("CNN_TTA", "crops")]);
    assert!(
        crops.banner.contains("test-time augmentation crops"),
        "{}",
        crops.banner
    );
    let (net, _) = load_model(&record, &backend.device()).unwrap();
    let local = Inference::new(net, backend)
        .unwrap()
        .with_tta(model::Tta::Crops);
    for image in &images {
        let answer = crops.post_multipart("/classify", &[("file", "a.jpg", &image.bytes)]);
        assert_eq!(answer.status, 200, "{}", answer.body);
        let want = local
            .predict(&pre.preprocess(&image.bytes).unwrap(), 1)
            .remove(0);
        let got = answer.json()["prediction"]["confidence"].as_f64().unwrap();
        assert!(
            (got - f64::from(want.best.confidence)).abs() < 1e-5,
            "{got} vs {want:?}"
        );
    }
    let refused = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--model", path, "--tta=sideways"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("off, flip or crops"),
        "{err}"
    );
}

/// `--precision int8` (or `CNN_PRECISION`) serves the int8 path from the calibration the record
/// carries: the start-up line and `/model/info` say so, and `/classify` answers as the model
/// crate's int8 inference does in-process. A record without a calibration is refused at start.
#[test]
fn int8_by_flag_or_environment_serves_the_calibrated_record_and_refuses_others() {
    let tmp = tempfile::tempdir().unwrap();
    let uncalibrated = good_record(tmp.path());
    let out = server()
        .args(["--port", "0", "--precision", "int8", "--model"])
        .arg(&uncalibrated)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no int8 calibration"), "{err}");
    let out = server().args(["--precision", "fp16"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("fp32 or int8"),
        "{err}"
    );

    // The built-in record is calibrated.
    let server = Process::start_with_env(&[], &[("CNN_PRECISION", "int8")]);
    assert!(server.banner.contains("in int8"), "{}", server.banner);
    let (status, body) = server.get("/model/info");
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["precision"], "int8");
    assert_eq!(info["record"]["int8"]["images"], 500);

    let backend = Backend::default_inference();
    let (net, meta) = model::record::load_shipped(&backend.device()).unwrap();
    let local = Inference::new(net, backend)
        .and_then(|i| i.with_precision(Precision::Int8, meta.int8.as_ref()))
        .unwrap();
    let pre = Preprocessor::default();
    for image in testdata::images("test", 1).iter().take(3) {
        let want = local
            .predict(&pre.preprocess(&image.bytes).unwrap(), 3)
            .remove(0);
        let reply = server.post_multipart("/classify", &[("file", "a.jpg", &image.bytes)]);
        assert_eq!(reply.status, 200, "{}", reply.body);
        let got = reply.json();
        assert_eq!(got["prediction"]["class_index"], want.best.class_index);
        let confidence = got["prediction"]["confidence"].as_f64().unwrap();
        assert!(
            (confidence - f64::from(want.best.confidence)).abs() < 1e-5,
            "{got}"
        );
    }
}
