//! Reading CIFAR-10 in both layouts, and the errors for data that is not there or broken.

use std::fs;

use model::dataset::{self, DataError, Layout, OnCorrupt, Sample, to_binary};
use model::testdata;

#[test]
fn image_folders_from_the_real_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut images = testdata::images("train", 3);
    images.extend(testdata::images("test", 2));
    testdata::write_folders(&dir.join("cifar10"), &images);
    let layout = dataset::detect(dir).unwrap();
    assert!(matches!(layout, Layout::Folders { .. }));
    let train = layout.train(OnCorrupt::Fail).unwrap();
    let test = layout.test(OnCorrupt::Fail).unwrap();
    assert_eq!((train.samples.len(), test.samples.len()), (30, 20));
    for label in 0..10u8 {
        assert_eq!(train.samples.iter().filter(|s| s.label == label).count(), 3);
    }
}

#[test]
fn corrupt_image_is_skipped_or_fails_by_choice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    testdata::write_folders(dir, &testdata::images("test", 1));
    fs::create_dir_all(dir.join("train")).unwrap();
    testdata::write_folders(dir, &testdata::images("train", 1));
    let bad = dir.join("train/cat/broken.jpg");
    fs::write(&bad, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let layout = dataset::detect(dir).unwrap();
    let err = layout.train(OnCorrupt::Fail).unwrap_err();
    assert!(err.to_string().contains("broken.jpg"), "{err}");
    let split = layout.train(OnCorrupt::Skip).unwrap();
    assert_eq!((split.samples.len(), split.skipped.len()), (10, 1));
    assert!(split.skipped[0].contains("broken.jpg"));
}

#[test]
fn missing_empty_and_unknown_class_folders_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    testdata::write_folders(dir, &testdata::images("test", 1));
    fs::create_dir_all(dir.join("train")).unwrap();
    testdata::write_folders(dir, &testdata::images("train", 1));
    let layout = dataset::detect(dir).unwrap();

    fs::remove_dir_all(dir.join("train/frog")).unwrap();
    assert!(
        matches!(layout.train(OnCorrupt::Skip), Err(DataError::MissingClass(p)) if p.ends_with("frog"))
    );
    fs::create_dir_all(dir.join("train/frog")).unwrap();
    assert!(
        matches!(layout.train(OnCorrupt::Skip), Err(DataError::EmptyClass(p)) if p.ends_with("frog"))
    );
    fs::create_dir_all(dir.join("test/unicorn")).unwrap();
    assert!(
        matches!(layout.test(OnCorrupt::Skip), Err(DataError::UnknownClass(p)) if p.ends_with("unicorn"))
    );
}

#[test]
fn official_binary_layout_is_detected_and_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bin = dir.join("cifar-10-batches-bin");
    fs::create_dir_all(&bin).unwrap();
    let p = model::Preprocessor::default();
    let samples: Vec<Sample> = testdata::images("test", 2)
        .iter()
        .enumerate()
        .map(|(i, img)| Sample {
            image: p.decode(&img.bytes).unwrap(),
            label: (i % 10) as u8,
        })
        .collect();
    for i in 1..=5 {
        fs::write(
            bin.join(format!("data_batch_{i}.bin")),
            to_binary(&samples[..4]),
        )
        .unwrap();
    }
    fs::write(bin.join("test_batch.bin"), to_binary(&samples)).unwrap();
    let layout = dataset::detect(dir).unwrap();
    assert!(matches!(layout, Layout::Binary { .. }));
    assert_eq!(layout.train(OnCorrupt::Fail).unwrap().samples.len(), 20);
    let test = layout.test(OnCorrupt::Fail).unwrap();
    assert_eq!(test.samples.len(), 20);
    assert_eq!(test.samples[3].image, samples[3].image);
    assert_eq!(test.samples[3].label, 3);

    // A batch file cut mid-record.
    let bytes = to_binary(&samples);
    fs::write(bin.join("test_batch.bin"), &bytes[..bytes.len() - 10]).unwrap();
    let err = layout.test(OnCorrupt::Fail).unwrap_err();
    assert!(
        err.to_string().contains("test_batch.bin") && err.to_string().contains("truncated"),
        "{err}"
    );
    let skipped = layout.test(OnCorrupt::Skip).unwrap();
    assert_eq!((skipped.samples.len(), skipped.skipped.len()), (19, 1));
}

#[test]
fn no_data_names_both_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let err = dataset::detect(dir).unwrap_err().to_string();
    assert!(
        err.contains("train/<class>") && err.contains("data_batch_1.bin"),
        "{err}"
    );
}
