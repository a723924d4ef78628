//! Saving and loading records: round trips, and every way a record file can be wrong.

use std::path::PathBuf;

use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use model::record::{EXPECTED_TENSORS, inspect, load_model_bytes};
use model::{Backend, RecordError, RecordMeta, default_config, load_model, save_model};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("model-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn input(device: &Device) -> Tensor<4> {
    let data: Vec<f32> = (0..2 * 3 * 64 * 64)
        .map(|i| ((i * 37 % 255) as f32) / 127.5 - 1.0)
        .collect();
    Tensor::from_data(TensorData::new(data, [2, 3, 64, 64]), device)
}

#[test]
fn round_trip_keeps_logits_and_metadata() {
    let device = Backend::default().device();
    let net = default_config().init(&device);
    let meta = RecordMeta {
        test_accuracy: Some(0.7312),
        epochs: Some(3),
        recipe: Some("test".into()),
        ..RecordMeta::default()
    };
    let path = tmp("roundtrip.safetensors");
    save_model(&net, &path, &meta).unwrap();
    let (loaded, loaded_meta) = load_model(&path, &device).unwrap();
    assert_eq!(loaded_meta, meta);
    let a: Vec<f32> = net
        .forward(input(&device))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let b: Vec<f32> = loaded
        .forward(input(&device))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn saved_tensor_names_and_shapes_are_the_documented_ones() {
    let device = Backend::default().device();
    let path = tmp("names.safetensors");
    save_model(
        &default_config().init(&device),
        &path,
        &RecordMeta::default(),
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<_> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut expected: Vec<_> = EXPECTED_TENSORS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    expected.sort();
    assert_eq!(names, expected);
}

fn valid_bytes() -> Vec<u8> {
    let device = Backend::default().device();
    let path = tmp("valid.safetensors");
    save_model(
        &default_config().init(&device),
        &path,
        &RecordMeta::default(),
    )
    .unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn truncated_record_is_a_format_error() {
    let bytes = valid_bytes();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let err =
            load_model_bytes(bytes[..cut].to_vec(), &Backend::default().device()).unwrap_err();
        assert!(matches!(err, RecordError::Format(_)), "cut {cut}: {err}");
    }
}

#[test]
fn garbage_is_not_a_record() {
    let err = inspect(b"PK\x03\x04 this is a zip, not weights").unwrap_err();
    assert!(matches!(err, RecordError::Format(_)), "{err}");
}

#[test]
fn missing_file_names_the_path() {
    let err = load_model(&tmp("nope.safetensors"), &Backend::default().device()).unwrap_err();
    assert!(err.to_string().contains("nope.safetensors"), "{err}");
}

/// A safetensors file from elsewhere (no metadata of ours) is refused before touching weights.
#[test]
fn foreign_safetensors_is_refused() {
    let device = Backend::default().device();
    let path = tmp("foreign.safetensors");
    let mut store = SafetensorsStore::from_file(&path).overwrite(true);
    default_config()
        .init(&device)
        .save_into(&mut store)
        .unwrap();
    let err = load_model(&path, &device).unwrap_err();
    assert!(matches!(err, RecordError::Metadata(_)), "{err}");
}

/// Weights of another architecture (a wider hidden layer) fail with the tensor named.
#[test]
fn wrong_architecture_is_refused() {
    let device = Backend::default().device();
    let wide = default_config().with_hidden(128).init(&device);
    let path = tmp("wide.safetensors");
    let meta = serde_json::to_string(&RecordMeta::default()).unwrap();
    let mut store = SafetensorsStore::from_file(&path)
        .overwrite(true)
        .metadata("cifar_cnn", meta);
    wide.save_into(&mut store).unwrap();
    let err = load_model(&path, &device).unwrap_err();
    assert!(matches!(err, RecordError::Architecture(_)), "{err}");
    assert!(err.to_string().contains("fc1.weight"), "{err}");
}

#[test]
fn future_format_version_is_refused() {
    let device = Backend::default().device();
    let path = tmp("future.safetensors");
    let meta = RecordMeta {
        format_version: 99,
        ..RecordMeta::default()
    };
    save_model(&default_config().init(&device), &path, &meta).unwrap();
    let err = load_model(&path, &device).unwrap_err();
    assert!(err.to_string().contains("version 99"), "{err}");
}
