//! Training on wgpu follows training on the CPU: `train --backend wgpu` and `--backend flex`,
//! from the same seed on the same real CIFAR-10 images, give the same losses and weights, and
//! the record trained on wgpu is served by the CPU server with the answers the network gives
//! on wgpu.
//!
//! Built with `--features wgpu` (`scripts/test` builds every test so); without a GPU, Mesa's
//! lavapipe (Debian package `mesa-vulkan-drivers`, which `scripts/test` installs) gives wgpu a
//! real Vulkan device on the CPU.
#![cfg(feature = "wgpu")]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use burn::prelude::*;
use model::{Backend, Cnn, Inference, Preprocessor, testdata};
use train::metrics_log::{EpochRecord, read_metrics};

const SEED: &str = "7";

/// Trains on `backend` for two short epochs; the run folder's metrics and record.
fn train_on(backend: &str, data: &Path) -> (Vec<EpochRecord>, PathBuf) {
    let run = data.join(format!("run-{backend}"));
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["--plain", "--backend", backend, "--seed", SEED])
        .args([
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--warmup-epochs",
            "0",
        ])
        // The saved record is the network itself (an average of its first steps would hardly
        // have moved from the starting point); one loader thread keeps the batches in order.
        .args([
            "--ema-decay",
            "0",
            "--workers",
            "1",
            "--valid-fraction",
            "0.1",
        ])
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(&run)
        // lavapipe, even on a machine that has a GPU: the test is about the code, not the card.
        .env("CUBECL_WGPU_DEFAULT_DEVICE", "Cpu")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "train --backend {backend} failed:\n{log}"
    );
    println!("--- train --backend {backend}\n{log}");
    let metrics = read_metrics(&run.join("metrics.jsonl")).unwrap();
    (metrics, run.join("model.safetensors"))
}

/// Every weight and bias of a network, in a fixed order.
fn weights(net: &Cnn) -> Vec<f32> {
    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }
    let mut all = Vec::new();
    all.extend(values(net.conv1.weight.val()));
    all.extend(values(net.conv2.weight.val()));
    all.extend(values(net.fc1.weight.val()));
    all.extend(values(net.fc2.weight.val()));
    for bias in [
        &net.conv1.bias,
        &net.conv2.bias,
        &net.fc1.bias,
        &net.fc2.bias,
    ] {
        all.extend(values(bias.as_ref().unwrap().val()));
    }
    all
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn wgpu_training_follows_the_cpu_and_its_record_serves_on_the_cpu() {
    let data = tempfile::tempdir().unwrap();
    let mut images = testdata::images("train", 8);
    images.extend(testdata::images("test", 2));
    testdata::write_folders(&data.path().join("cifar10"), &images);

    let started = Instant::now();
    let (on_cpu, cpu_record) = train_on("flex", data.path());
    let cpu_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (on_gpu, gpu_record) = train_on("wgpu", data.path());
    println!(
        "two epochs of 5 steps: flex {cpu_s:.1} s, wgpu on lavapipe {:.1} s (kernels compiled on first use)",
        started.elapsed().as_secs_f64()
    );

    // The same losses, epoch by epoch.
    assert_eq!(on_cpu.len(), 2);
    assert_eq!(on_gpu.len(), 2);
    for (c, g) in on_cpu.iter().zip(&on_gpu) {
        println!(
            "epoch {}: train loss flex {:.6} wgpu {:.6}; valid loss flex {:.6} wgpu {:.6}",
            c.epoch, c.train_loss, g.train_loss, c.valid_loss, g.valid_loss
        );
        for (what, a, b) in [
            ("train loss", c.train_loss, g.train_loss),
            ("valid loss", c.valid_loss, g.valid_loss),
        ] {
            assert!(a.is_finite() && b.is_finite());
            assert!(
                (a - b).abs() <= 1e-3 * a.abs().max(1.0),
                "{what}: flex {a}, wgpu {b}"
            );
        }
    }

    // The same weights at the end, and far from where they started: ten real steps were taken.
    let cpu = Backend::Fast.device();
    let (cpu_net, _) = model::load_model(&cpu_record, &cpu).unwrap();
    let (gpu_net, meta) = model::load_model(&gpu_record, &cpu).unwrap();
    cpu.seed(SEED.parse().unwrap());
    let start = weights(&Cnn::init(&cpu));
    let (w_cpu, w_gpu) = (weights(&cpu_net), weights(&gpu_net));
    let apart = max_diff(&w_cpu, &w_gpu);
    let moved = max_diff(&w_cpu, &start);
    println!("weights: max |flex - wgpu| = {apart:e}; max |trained - initial| = {moved:e}");
    assert!(moved > 1e-3, "training did not move the weights ({moved})");
    assert!(
        apart < moved / 100.0,
        "flex and wgpu weights differ by {apart}"
    );
    assert!(meta.test_accuracy.is_some());

    // The CPU server answers for the wgpu-trained record what the network answers on wgpu.
    let base = serve(&gpu_record);
    let on_wgpu = model::record::copy_to(&gpu_net, &Backend::Wgpu.device()).unwrap();
    let on_wgpu = Inference::new(on_wgpu, Backend::Wgpu).unwrap();
    let pre = Preprocessor::default();
    let agent = ureq::Agent::new_with_defaults();
    for image in testdata::images("test", 1) {
        let want = on_wgpu
            .predict(&pre.preprocess(&image.bytes).unwrap(), 1)
            .remove(0);
        let body = model::multipart::multipart(&[("file", "a.jpg", &image.bytes)]);
        let mut res = agent
            .post(format!("{base}/classify"))
            .header("Content-Type", &model::multipart::content_type())
            .send(&body[..])
            .unwrap();
        let got: serde_json::Value =
            serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(
            got["prediction"]["class"], want.best.class,
            "{}",
            image.class
        );
        let confidence = got["prediction"]["confidence"].as_f64().unwrap();
        assert!(
            (confidence - f64::from(want.best.confidence)).abs() < 1e-4,
            "{confidence} vs {}",
            want.best.confidence
        );
    }
}

/// The server on `record`, CPU fast path, on 127.0.0.1; its base URL once ready.
fn serve(record: &Path) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let loaded = server::Loaded::open(Some(record), Backend::Fast).unwrap();
    let config = server::ServerConfig {
        log: server::LogFormat::Off,
        ..server::ServerConfig::default()
    };
    server::spawn(listener, loaded, config).unwrap();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent
        .get(format!("{base}/ready"))
        .call()
        .map_or(true, |r| r.status() != 200)
    {
        assert!(Instant::now() < deadline, "the server never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    base
}
