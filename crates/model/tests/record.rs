//! Saving and loading records: round trips, and every way a record file can be wrong.

use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use model::preprocess::Preprocessing;
use model::record::{EXPECTED_TENSORS, inspect, load_model_bytes};
use model::{Backend, RecordError, RecordMeta, load_model, save_model};

fn input(device: &Device) -> Tensor<4> {
    let data: Vec<f32> = (0..2 * 3 * 64 * 64)
        .map(|i| ((i * 37 % 255) as f32) / 127.5 - 1.0)
        .collect();
    Tensor::from_data(TensorData::new(data, [2, 3, 64, 64]), device)
}

#[test]
fn round_trip_keeps_logits_and_metadata() {
    let device = Backend::default().device();
    let net = crate::fresh_net(&device);
    let meta = RecordMeta {
        test_accuracy: Some(0.7312),
        epochs: Some(3),
        recipe: Some("test".into()),
        ..RecordMeta::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roundtrip.safetensors");
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("names.safetensors");
    save_model(&crate::fresh_net(&device), &path, &RecordMeta::default()).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("valid.safetensors");
    save_model(&crate::fresh_net(&device), &path, &RecordMeta::default()).unwrap();
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
    let err = load_model(
        &tempfile::tempdir().unwrap().path().join("nope.safetensors"),
        &Backend::default().device(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("nope.safetensors"), "{err}");
}

/// A safetensors file from elsewhere (no metadata of ours) is refused before touching weights.
#[test]
fn foreign_safetensors_is_refused() {
    let device = Backend::default().device();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.safetensors");
    let mut store = SafetensorsStore::from_file(&path).overwrite(true);
    crate::fresh_net(&device).save_into(&mut store).unwrap();
    let err = load_model(&path, &device).unwrap_err();
    assert!(matches!(err, RecordError::Metadata(_)), "{err}");
}

/// Weights of another architecture (a wider hidden layer) fail with the tensor named.
#[test]
fn wrong_architecture_is_refused() {
    let device = Backend::default().device();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.safetensors");
    std::fs::write(&path, model::testdata::record_with_hidden(128)).unwrap();
    let err = load_model(&path, &device).unwrap_err();
    assert!(matches!(err, RecordError::Architecture(_)), "{err}");
    assert!(err.to_string().contains("fc1.weight"), "{err}");
}

#[test]
fn future_format_version_is_refused() {
    let device = Backend::default().device();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.safetensors");
    let meta = RecordMeta {
        format_version: 99,
        ..RecordMeta::default()
    };
    save_model(&crate::fresh_net(&device), &path, &meta).unwrap();
    let err = load_model(&path, &device).unwrap_err();
    assert!(err.to_string().contains("version 99"), "{err}");
}

/// A record's metadata as JSON, edited, written back into a copy of the record.
fn with_meta(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let bytes = valid_bytes();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["cifar_cnn"]).unwrap();
    edit(&mut meta);
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let info = std::collections::HashMap::from([("cifar_cnn".to_string(), meta.to_string())]);
    safetensors::serialize(tensors.tensors(), Some(info)).unwrap()
}

/// A record written before records named their preprocessing was trained with the one this
/// build has: it loads, and says so.
#[test]
fn a_record_without_preprocessing_is_served_with_the_original_one() {
    let device = Backend::default().device();
    let old = with_meta(|m| {
        m.as_object_mut().unwrap().remove("preprocessing").unwrap();
    });
    let (_, meta) = load_model_bytes(old, &device).unwrap();
    assert_eq!(meta.preprocessing, Preprocessing::RgbTriangle64Half);
    // The shipped record is one of them.
    let shipped = model::record::SHIPPED.expect("the shipped record is built in");
    assert!(inspect(shipped).is_ok());
}

/// A record trained with a preprocessing this build does not know is refused, not served
/// with the wrong pixels.
#[test]
fn an_unknown_preprocessing_is_refused() {
    let device = Backend::default().device();
    let new = with_meta(|m| m["preprocessing"] = "rgb-lanczos64-imagenet".into());
    let err = load_model_bytes(new, &device).unwrap_err();
    assert!(matches!(err, RecordError::Metadata(_)), "{err}");
    assert!(err.to_string().contains("rgb-lanczos64-imagenet"), "{err}");
}
