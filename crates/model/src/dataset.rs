//! Loading CIFAR-10 from disk in either layout, decoded once into compact RGB images.
//!
//! Two layouts are recognised under the `--data` directory (or one level below it):
//! - image folders `train/<class>/*` and `test/<class>/*`, one folder per CIFAR-10 class;
//! - the official binary release `cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`,
//!   records of one label byte and 3,072 planar RGB bytes.

use std::fs;
use std::path::{Path, PathBuf};

use crate::preprocess::resize;
use crate::{CLASSES, NUM_CLASSES, Preprocessor};
use image::RgbImage;
use thiserror::Error;

/// Bytes per record in the official binary files: label + 32×32×3.
pub const BIN_RECORD: usize = 1 + 3 * 32 * 32;

/// Errors while locating or reading a data set.
#[derive(Debug, Error)]
pub enum DataError {
    /// Neither layout is in the folder given (nor one level below it).
    #[error(
        "no CIFAR-10 data found under {0}: expected image folders train/<class>/ and test/<class>/ \
         (for example the unpacked cifar10-jpg archive), or the official binary release \
         cifar-10-batches-bin/data_batch_1.bin .. data_batch_5.bin and test_batch.bin"
    )]
    NotFound(PathBuf),
    /// A split's folder lacks one of the ten class folders.
    #[error("class folder {0} is missing")]
    MissingClass(PathBuf),
    /// A class folder exists but has no files: training on it would silently drop the class.
    #[error("class folder {0} holds no images")]
    EmptyClass(PathBuf),
    /// A split's folder has a subfolder that names no class, most likely a misspelt one.
    #[error("unknown class folder {0}: class folders must be named {classes}", classes = CLASSES.join(", "))]
    UnknownClass(PathBuf),
    /// Listing a folder or reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// An image or binary record could not be decoded, under [`OnCorrupt::Fail`].
    #[error("{path}: {reason}")]
    Corrupt {
        /// The image file, or the binary batch file holding the record.
        path: PathBuf,
        /// Why it could not be read.
        reason: String,
    },
}

/// What to do with an entry that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCorrupt {
    /// Report it, skip it and count it.
    Skip,
    /// Stop with an error naming it.
    Fail,
}

impl std::str::FromStr for OnCorrupt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(OnCorrupt::Skip),
            "fail" => Ok(OnCorrupt::Fail),
            other => Err(format!("'{other}' is not one of: skip, fail")),
        }
    }
}

/// The two layouts `--data` may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Image files in `train/<class>/` and `test/<class>/`, like the unpacked cifar10-jpg archive.
    Folders {
        /// The folder holding `train/` and `test/`.
        root: PathBuf,
    },
    /// The official binary release: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`.
    Binary {
        /// The folder holding the `.bin` files (`cifar-10-batches-bin/`).
        root: PathBuf,
    },
}

/// One labelled image, at most 64×64 (larger ones are shrunk once at load, since the network
/// never sees more), CIFAR's own 32×32 kept as is so the batcher applies the server's resize.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The pixels, as decoded (or shrunk to 64×64).
    pub image: RgbImage,
    /// Index of the class in [`CLASSES`].
    pub label: u8,
}

/// A split read into memory, with the entries that were skipped.
#[derive(Debug, Default)]
pub struct Split {
    /// The images that were read, in a fixed order: class by class and by file name for folders,
    /// record order for binary batches.
    pub samples: Vec<Sample>,
    /// One `path: reason` line per entry skipped under [`OnCorrupt::Skip`], for the run's report.
    pub skipped: Vec<String>,
}

/// Finds the layout under `dir`, looking one level down too (`cifar10/`, `cifar-10-batches-bin/`).
pub fn detect(dir: &Path) -> Result<Layout, DataError> {
    let mut candidates = vec![dir.to_path_buf()];
    if let Ok(entries) = fs::read_dir(dir) {
        let mut subdirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        subdirs.sort();
        candidates.extend(subdirs);
    }
    for c in candidates {
        if c.join("data_batch_1.bin").is_file() || c.join("test_batch.bin").is_file() {
            return Ok(Layout::Binary { root: c });
        }
        if c.join("train").is_dir() && c.join("test").is_dir() {
            return Ok(Layout::Folders { root: c });
        }
    }
    Err(DataError::NotFound(dir.to_path_buf()))
}

impl Layout {
    /// Reads the training split.
    pub fn train(&self, on_corrupt: OnCorrupt) -> Result<Split, DataError> {
        match self {
            Layout::Folders { root } => read_folders(&root.join("train"), on_corrupt),
            Layout::Binary { root } => {
                let files: Vec<PathBuf> = (1..=5)
                    .map(|i| root.join(format!("data_batch_{i}.bin")))
                    .collect();
                read_binaries(&files, on_corrupt)
            }
        }
    }

    /// Reads the test split.
    pub fn test(&self, on_corrupt: OnCorrupt) -> Result<Split, DataError> {
        match self {
            Layout::Folders { root } => read_folders(&root.join("test"), on_corrupt),
            Layout::Binary { root } => read_binaries(&[root.join("test_batch.bin")], on_corrupt),
        }
    }
}

/// A labelled set to evaluate on: `dir` itself holding one folder per class (`<class>/*`, such
/// as `cifar10/test`), or the test split of either layout [`detect`] finds under it.
pub fn labelled_set(dir: &Path, on_corrupt: OnCorrupt) -> Result<Split, DataError> {
    if CLASSES.iter().any(|class| dir.join(class).is_dir()) {
        return read_folders(dir, on_corrupt);
    }
    detect(dir)?.test(on_corrupt)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file, its label, and its pixels or why it could not be read.
type Decoded = (PathBuf, u8, Result<RgbImage, String>);

/// Reads `dir/<class>/*` for every class, decoding on all cores.
pub fn read_folders(dir: &Path, on_corrupt: OnCorrupt) -> Result<Split, DataError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() && !CLASSES.contains(&name) {
            return Err(DataError::UnknownClass(path));
        }
    }
    let mut files: Vec<(PathBuf, u8)> = Vec::new();
    for (label, class) in CLASSES.iter().enumerate() {
        let class_dir = dir.join(class);
        if !class_dir.is_dir() {
            return Err(DataError::MissingClass(class_dir));
        }
        let mut paths: Vec<PathBuf> = fs::read_dir(&class_dir)
            .map_err(io_err(&class_dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        if paths.is_empty() {
            return Err(DataError::EmptyClass(class_dir));
        }
        paths.sort();
        files.extend(paths.into_iter().map(|p| (p, label as u8)));
    }

    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let chunk = files.len().div_ceil(threads).max(1);
    let pre = Preprocessor::default();
    let decoded: Vec<Vec<Decoded>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(path, label)| {
                            let img = fs::read(path)
                                .map_err(|e| e.to_string())
                                .and_then(|b| pre.decode(&b).map_err(|e| e.to_string()));
                            (path.clone(), *label, img)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("decoder thread panicked"))
            .collect()
    });

    let mut split = Split::default();
    for (path, label, img) in decoded.into_iter().flatten() {
        match img {
            Ok(image) => split.samples.push(Sample {
                image: compact(image),
                label,
            }),
            Err(reason) => skip_or_fail(&mut split, on_corrupt, path, reason)?,
        }
    }
    Ok(split)
}

/// Shrinks images larger than the network input once, so memory stays bounded.
fn compact(image: RgbImage) -> RgbImage {
    let side = crate::INPUT_SIZE as u32;
    if image.width() > side || image.height() > side {
        resize(&image)
    } else {
        image
    }
}

fn skip_or_fail(
    split: &mut Split,
    on_corrupt: OnCorrupt,
    path: PathBuf,
    reason: String,
) -> Result<(), DataError> {
    match on_corrupt {
        OnCorrupt::Fail => Err(DataError::Corrupt { path, reason }),
        OnCorrupt::Skip => {
            eprintln!("skipping {}: {reason}", path.display());
            split.skipped.push(format!("{}: {reason}", path.display()));
            Ok(())
        }
    }
}

/// Reads official CIFAR-10 binary batch files.
pub fn read_binaries(files: &[PathBuf], on_corrupt: OnCorrupt) -> Result<Split, DataError> {
    let mut split = Split::default();
    for path in files {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let whole = bytes.len() / BIN_RECORD * BIN_RECORD;
        if whole != bytes.len() || bytes.is_empty() {
            let reason = format!(
                "truncated batch file: {} bytes is not a whole number of {BIN_RECORD}-byte records",
                bytes.len()
            );
            skip_or_fail(&mut split, on_corrupt, path.clone(), reason)?;
        }
        for (i, rec) in bytes[..whole].chunks_exact(BIN_RECORD).enumerate() {
            let label = rec[0];
            if usize::from(label) >= NUM_CLASSES {
                let reason = format!("record {i} has label {label}, expected 0..9");
                skip_or_fail(&mut split, on_corrupt, path.clone(), reason)?;
                continue;
            }
            split.samples.push(Sample {
                image: planar_to_rgb(&rec[1..]),
                label,
            });
        }
    }
    Ok(split)
}

/// The binary format stores 1,024 red, then green, then blue bytes.
fn planar_to_rgb(planes: &[u8]) -> RgbImage {
    let (r, rest) = planes.split_at(1024);
    let (g, b) = rest.split_at(1024);
    let mut img = RgbImage::new(32, 32);
    for (i, px) in img.pixels_mut().enumerate() {
        px.0 = [r[i], g[i], b[i]];
    }
    img
}

/// Encodes samples in the official binary format (used by tests and tools that make small
/// data sets).
pub fn to_binary(samples: &[Sample]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * BIN_RECORD);
    for s in samples {
        assert_eq!(s.image.dimensions(), (32, 32), "binary records are 32×32");
        out.push(s.label);
        for c in 0..3 {
            out.extend(s.image.pixels().map(|p| p[c]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_round_trip() {
        let img = RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let bytes = to_binary(&[Sample {
            image: img.clone(),
            label: 3,
        }]);
        assert_eq!(bytes.len(), BIN_RECORD);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b.bin");
        fs::write(&f, &bytes).unwrap();
        let split = read_binaries(std::slice::from_ref(&f), OnCorrupt::Fail).unwrap();
        assert_eq!(split.samples[0].label, 3);
        assert_eq!(split.samples[0].image, img);
        fs::write(&f, &bytes[..100]).unwrap();
        assert!(matches!(
            read_binaries(std::slice::from_ref(&f), OnCorrupt::Fail),
            Err(DataError::Corrupt { .. })
        ));
        let skipped = read_binaries(&[f], OnCorrupt::Skip).unwrap();
        assert_eq!((skipped.samples.len(), skipped.skipped.len()), (0, 1));
    }
}
