//! Real CIFAR-10 images for tests, read from the shared JPEG archive (nothing is downloaded).
//!
//! The archive is found through `CIFAR10_ARCHIVE`, or as `shared/data/cifar10-jpg.tar.gz`
//! beside the workspace (where CI and development machines keep it).

use std::io::Read;
use std::path::{Path, PathBuf};

/// One image from the archive.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// Path inside the archive, e.g. `cifar10/test/cat/0001.jpg`.
    pub path: String,
    /// `train` or `test`.
    pub split: String,
    /// The class folder it sits in, one of [`crate::CLASSES`].
    pub class: String,
    /// The JPEG file as stored, undecoded.
    pub bytes: Vec<u8>,
}

/// The archive's location; panics with instructions when it cannot be found, so a test
/// never passes by skipping its data.
pub fn archive() -> PathBuf {
    if let Ok(p) = std::env::var("CIFAR10_ARCHIVE") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for candidate in [
        root.join("../shared/data/cifar10-jpg.tar.gz"),
        root.join("shared/data/cifar10-jpg.tar.gz"),
    ] {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "CIFAR-10 archive not found: set CIFAR10_ARCHIVE or place cifar10-jpg.tar.gz in \
         ../shared/data/ beside the workspace"
    );
}

/// Up to `per_class` images of every class from `split`, streamed out of the archive.
pub fn images(split: &str, per_class: usize) -> Vec<ArchiveImage> {
    let file = std::fs::File::open(archive()).expect("open CIFAR-10 archive");
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut counts = std::collections::HashMap::<String, usize>::new();
    let mut out = Vec::new();
    for entry in tar.entries().expect("read archive") {
        let mut entry = entry.expect("archive entry");
        let path = entry
            .path()
            .expect("entry path")
            .to_string_lossy()
            .into_owned();
        let parts: Vec<&str> = path.split('/').collect();
        let Some(i) = parts.iter().position(|p| *p == split) else {
            continue;
        };
        // The archive names its images in lowercase; nothing else under a class folder counts.
        #[allow(clippy::case_sensitive_file_extension_comparisons)]
        if parts.len() != i + 3 || !path.ends_with(".jpg") {
            continue;
        }
        let class = parts[i + 1].to_string();
        let n = counts.entry(class.clone()).or_default();
        if *n >= per_class {
            continue;
        }
        *n += 1;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read entry");
        out.push(ArchiveImage {
            path,
            split: split.to_string(),
            class,
            bytes,
        });
    }
    out
}

/// Writes `images` as an image-folder data set under `dir` (`<split>/<class>/<n>.jpg`).
pub fn write_folders(dir: &Path, images: &[ArchiveImage]) {
    for (i, img) in images.iter().enumerate() {
        let d = dir.join(&img.split).join(&img.class);
        std::fs::create_dir_all(&d).expect("create class folder");
        std::fs::write(d.join(format!("{i:05}.jpg")), &img.bytes).expect("write image");
    }
}

/// A record in this project's format (its metadata, every tensor named as expected) whose
/// hidden layer is `hidden` wide instead of the architecture's: what a record of another
/// network looks like to the loader.
pub fn record_with_hidden(hidden: usize) -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView};
    let shapes: Vec<(&str, Vec<usize>)> = crate::arch::TENSORS
        .iter()
        .map(|(name, shape)| {
            let shape = shape
                .iter()
                .map(|&d| if d == crate::arch::HIDDEN { hidden } else { d })
                .collect();
            (*name, shape)
        })
        .collect();
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(_, s)| vec![0u8; s.iter().product::<usize>() * 4])
        .collect();
    let views: Vec<(&str, TensorView)> = shapes
        .iter()
        .zip(&data)
        .map(|((name, shape), bytes)| {
            (
                *name,
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    let meta = serde_json::to_string(&crate::RecordMeta::default()).unwrap();
    let info = std::collections::HashMap::from([("cifar_cnn".to_string(), meta)]);
    safetensors::serialize(views, Some(info)).unwrap()
}
