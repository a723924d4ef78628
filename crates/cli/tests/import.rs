//! `cnn import-pytorch` on a `state_dict` saved by PyTorch itself (fixture made by
//! `fixtures/make_pth.py`): the converted record gives the logits PyTorch computed.

use std::path::Path;
use std::process::Command;

use burn::prelude::*;
use model::{Backend, load_model};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn imported_weights_reproduce_pytorch_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = dir.join("imported.safetensors");
    let run = Command::new(env!("CARGO_BIN_EXE_cnn"))
        .args([
            "import-pytorch",
            fixture("simple_cnn.pth").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let device = Backend::default().device();
    let (net, meta) = load_model(&out, &device).unwrap();
    assert!(meta.recipe.unwrap().contains("PyTorch"));
    let n = 2;
    let x: Vec<f32> = (0..n * 3 * 64 * 64)
        .map(|i| ((i * 37) % 255) as f32 / 127.5 - 1.0)
        .collect();
    let logits: Vec<f32> = net
        .forward(Tensor::from_data(
            TensorData::new(x, [n, 3, 64, 64]),
            &device,
        ))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("simple_cnn_logits.json")).unwrap())
            .unwrap();
    let expected: Vec<f32> = expected["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    assert_eq!(logits.len(), expected.len());
    let max_diff = logits
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_diff < 1e-4,
        "logits differ from PyTorch's by {max_diff}"
    );
}

#[test]
fn a_file_that_is_not_a_state_dict_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bad = dir.join("bad.pth");
    std::fs::write(&bad, b"PK\x03\x04 definitely not a checkpoint").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_cnn"))
        .args([
            "import-pytorch",
            bad.to_str().unwrap(),
            "--out",
            dir.join("x.safetensors").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("cannot import") && err.contains("bad.pth"),
        "{err}"
    );
    assert!(!dir.join("x.safetensors").exists());
}
