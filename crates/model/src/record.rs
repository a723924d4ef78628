//! Saving and loading trained weights as a versioned safetensors file.
//!
//! Safetensors is a flat header of names, dtypes and shapes followed by raw little-endian
//! data: loading it runs no code from the file (unlike pickle), any tool can read it, and it
//! loads with a single read. Before any tensor reaches the network, the header is checked
//! against the architecture, so a truncated file, a foreign file or weights of another shape
//! give a [`RecordError`] naming what is wrong.

use std::path::Path;

use burn::prelude::*;
use burn::store::{ModuleSnapshot, PytorchStore, SafetensorsStore};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::RecordError;
use crate::net::{Cnn, Network};
use crate::preprocess::Preprocessing;

/// Metadata key holding [`RecordMeta`] as JSON.
const META_KEY: &str = "cifar_cnn";

/// Version of the record layout; bumped when tensor names or meanings change.
pub const FORMAT_VERSION: u32 = 1;

/// The tensors the network expects, with Burn's layout (`Linear` weights are `[in, out]`).
pub use crate::arch::TENSORS as EXPECTED_TENSORS;

/// What a record says about itself, stored inside the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordMeta {
    /// Layout version, [`FORMAT_VERSION`] when written by this crate.
    pub format_version: u32,
    /// Top-1 accuracy on the CIFAR-10 test set, if measured.
    #[serde(default)]
    pub test_accuracy: Option<f64>,
    /// Epochs trained.
    #[serde(default)]
    pub epochs: Option<usize>,
    /// RFC 3339 time of training.
    #[serde(default)]
    pub created: Option<String>,
    /// Free-form description of how the weights were produced.
    #[serde(default)]
    pub recipe: Option<String>,
    /// How images were prepared in training, and so must be in service.
    #[serde(default)]
    pub preprocessing: Preprocessing,
    /// The int8 path's activation ranges, once calibrated (`cnn calibrate`).
    #[serde(default)]
    pub int8: Option<Int8Calibration>,
}

/// What the int8 path needs from a record beyond its weights: the largest activation of each
/// quantised layer's input on training images (their `u8` scales are these over 255), and
/// what it scored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Int8Calibration {
    /// Largest output of the first convolution block (after ReLU and pooling).
    pub conv1: f32,
    /// Largest output of the second block.
    pub conv2: f32,
    /// Training images the ranges were measured on.
    pub images: usize,
    /// Top-1 accuracy on the CIFAR-10 test set on the int8 path, if measured.
    #[serde(default)]
    pub test_accuracy: Option<f64>,
}

impl From<Int8Calibration> for fastcnn::Calibration {
    fn from(c: Int8Calibration) -> Self {
        Self {
            conv1: c.conv1,
            conv2: c.conv2,
        }
    }
}

impl Default for RecordMeta {
    fn default() -> Self {
        Self {
            format_version: FORMAT_VERSION,
            test_accuracy: None,
            epochs: None,
            created: None,
            recipe: None,
            preprocessing: Preprocessing::default(),
            int8: None,
        }
    }
}

/// Writes `model`'s weights and `meta` to `path` (atomically: a scratch file renamed into place).
pub fn save_model(model: &Cnn, path: &Path, meta: &RecordMeta) -> Result<(), RecordError> {
    let meta_json = serde_json::to_string(meta).map_err(|e| RecordError::Save(e.to_string()))?;
    let mut store = SafetensorsStore::from_file(path)
        .overwrite(true)
        .metadata(META_KEY, meta_json);
    model
        .save_into(&mut store)
        .map_err(|e| RecordError::Save(e.to_string()))
}

/// Reads and checks the record at `path`, returning the network on `device`.
pub fn load_model(path: &Path, device: &Device) -> Result<(Cnn, RecordMeta), RecordError> {
    load_model_bytes(read(&find(path)?)?, device)
}

/// The largest file taken for a record: the weights (4 bytes per parameter) and 1 MiB for the
/// header and metadata. A larger file is not a record of this network, and is refused before it
/// is read (a server reloading a wrong path must not read a data set into memory).
pub const MAX_RECORD_BYTES: u64 = crate::PARAMETER_COUNT as u64 * 4 + (1 << 20);

/// The record a path names: the file itself, or the one `*.safetensors` file in a folder (as
/// `KServe` copies a model's storage to `/mnt/models`). Resolved at every read, so that a reload
/// of a folder serves the record it holds now.
pub fn find(path: &Path) -> Result<std::path::PathBuf, RecordError> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let io = |source| RecordError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut records = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        // `..`-names are a Kubernetes volume's links to its current contents, not records.
        let is_record = !name.as_encoded_bytes().starts_with(b"..")
            && Path::new(&name).extension() == Some("safetensors".as_ref())
            && entry.path().is_file();
        if is_record {
            records.push(entry.path());
        }
    }
    records.sort();
    match records.len() {
        1 => Ok(records.remove(0)),
        n => Err(RecordError::Folder {
            path: path.display().to_string(),
            found: if n == 0 {
                "no *.safetensors file".into()
            } else {
                let names: Vec<String> = records
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect();
                format!("{n} *.safetensors files: {}", names.join(", "))
            },
        }),
    }
}

/// The file at `path`, if it is no larger than [`MAX_RECORD_BYTES`].
fn read(path: &Path) -> Result<Vec<u8>, RecordError> {
    use std::io::Read;
    let io = |source| RecordError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(RecordError::Format(format!(
            "{} is larger than any record of this network ({MAX_RECORD_BYTES} bytes at most)",
            path.display()
        )));
    }
    Ok(bytes)
}

/// As [`load_model`], from the file's bytes (for a record embedded in a binary).
pub fn load_model_bytes(bytes: Vec<u8>, device: &Device) -> Result<(Cnn, RecordMeta), RecordError> {
    let meta = inspect(&bytes)?;
    Ok((weights_into_new(bytes, device)?, meta))
}

/// A fresh network on `device` with the weights of the safetensors `bytes`, every tensor
/// loaded.
fn weights_into_new(bytes: Vec<u8>, device: &Device) -> Result<Cnn, RecordError> {
    weights_into(bytes, Cnn::init(device))
}

/// `model` with every tensor of the record `bytes` loaded into it.
fn weights_into<N: Network>(bytes: Vec<u8>, mut model: N) -> Result<N, RecordError> {
    let result = model
        .load_from(&mut SafetensorsStore::from_bytes(Some(bytes)))
        .map_err(|e| RecordError::Architecture(e.to_string()))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(RecordError::Architecture(format!(
            "errors {:?}, missing {:?}",
            result.errors, result.missing
        )));
    }
    Ok(model)
}

/// A copy of `net`'s weights in a module of its own on `device`, through an in-memory record.
/// `Module::to_device` keeps each tensor's autodiff context, so weights made on a CPU device and
/// moved to an autodiff device would not be trained; these are (`train` starts every backend
/// from weights drawn on the CPU, so that one seed gives one starting point everywhere).
pub fn copy_to(net: &Cnn, device: &Device) -> Result<Cnn, RecordError> {
    copy_weights(net, Cnn::init(device))
}

/// [`copy_to`] for any network: `net`'s weights loaded into `into`, a fresh module of the same
/// shape on the device wanted (a teacher's, for `train`).
pub fn copy_weights<N: Network>(net: &N, into: N) -> Result<N, RecordError> {
    let mut store = SafetensorsStore::from_bytes(None);
    net.save_into(&mut store)
        .map_err(|e| RecordError::Save(e.to_string()))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| RecordError::Save(e.to_string()))?;
    weights_into(bytes, into)
}

/// Checks that `bytes` hold a record of this network and returns its metadata, without
/// building a model. Every tensor must be present, `f32`, and of the expected shape.
pub fn inspect(bytes: &[u8]) -> Result<RecordMeta, RecordError> {
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| RecordError::Format(e.to_string()))?;
    // `deserialize` also checks that every tensor's bytes lie inside the file.
    let tensors =
        SafeTensors::deserialize(bytes).map_err(|e| RecordError::Format(e.to_string()))?;

    if header
        .metadata()
        .as_ref()
        .is_some_and(|m| m.contains_key(crate::teacher::TEACHER_META_KEY))
    {
        return Err(RecordError::Metadata(
            "this is a teacher's record (`train --arch teacher-…`), trained only to distil the \
             served network from; it is never served"
                .to_string(),
        ));
    }
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| {
            RecordError::Metadata(format!(
                "no '{META_KEY}' entry: this safetensors file was not written by this project"
            ))
        })?;
    let meta: RecordMeta = serde_json::from_str(meta_json)
        .map_err(|e| RecordError::Metadata(format!("'{META_KEY}' is not valid: {e}")))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(RecordError::Metadata(format!(
            "record format version {} is not supported (this build reads version {FORMAT_VERSION})",
            meta.format_version
        )));
    }

    for (name, shape) in EXPECTED_TENSORS {
        let view = tensors
            .tensor(name)
            .map_err(|_| RecordError::Architecture(format!("tensor '{name}' is missing")))?;
        if view.dtype() != Dtype::F32 {
            return Err(RecordError::Architecture(format!(
                "tensor '{name}' is {:?}, expected F32",
                view.dtype()
            )));
        }
        if view.shape() != shape {
            return Err(RecordError::Architecture(format!(
                "tensor '{name}' has shape {:?}, expected {shape:?}",
                view.shape()
            )));
        }
    }
    let extra: Vec<_> = tensors
        .names()
        .into_iter()
        .filter(|n| !EXPECTED_TENSORS.iter().any(|(e, _)| e == n))
        .collect();
    if !extra.is_empty() {
        return Err(RecordError::Architecture(format!(
            "unexpected tensors {extra:?}"
        )));
    }
    Ok(meta)
}

/// The trained record shipped in `assets/`, built into every binary (`None` in a checkout
/// without it).
#[cfg(shipped_record)]
pub static SHIPPED: Option<&[u8]> = Some(include_bytes!("../../../assets/model.safetensors"));
#[cfg(not(shipped_record))]
pub static SHIPPED: Option<&[u8]> = None;

/// Loads the [`SHIPPED`] record.
pub fn load_shipped(device: &Device) -> Result<(Cnn, RecordMeta), RecordError> {
    let bytes = SHIPPED.ok_or_else(|| RecordError::Io {
        path: "assets/model.safetensors".into(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "this build has no shipped record; pass --model <file>",
        ),
    })?;
    load_model_bytes(bytes.to_vec(), device)
}

/// Which record is being served: the hash of the file's bytes (two files with the same weights
/// and metadata are the same version, wherever they lie) and when it was trained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordVersion {
    /// SHA-256 of the record file, lower-case hex.
    pub sha256: String,
    /// The record's training time ([`RecordMeta::created`]), when it says.
    pub created: Option<String>,
    /// Short form for logs, headers and the Open Inference Protocol: the digits of `created`
    /// and the hash's first 12 digits (`20261124052233-3f9a0c41d2e7`), or the hash's alone.
    pub label: String,
}

impl RecordVersion {
    /// What every [`RecordVersion::label`] matches (a regular expression, as JSON Schema's
    /// `pattern`).
    pub const LABEL_PATTERN: &'static str = "^([0-9]+-)?[0-9a-f]{12}$";

    /// The version of the record held in `bytes`, whose metadata is `meta`.
    pub fn of(bytes: &[u8], meta: &RecordMeta) -> Self {
        Self::from_hash(sha256_hex(bytes), meta)
    }

    fn from_hash(sha256: String, meta: &RecordMeta) -> Self {
        let digits: String = meta
            .created
            .as_deref()
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let short = &sha256[..12];
        let label = if digits.is_empty() {
            short.to_string()
        } else {
            format!("{digits}-{short}")
        };
        Self {
            sha256,
            created: meta.created.clone(),
            label,
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    sha2::Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// A loaded record, and where it came from (for logs and `/model/info`).
pub struct Loaded {
    /// The network with the record's weights, on the device asked for.
    pub model: Cnn,
    /// What the record says about itself: format version, accuracy, recipe, preprocessing.
    pub meta: RecordMeta,
    /// The record's path, or "built-in (assets/model.safetensors)".
    pub source: String,
    /// Its content hash and training time.
    pub version: RecordVersion,
}

/// What [`Loaded::source`] says of the [`SHIPPED`] record.
pub const SHIPPED_SOURCE: &str = "built-in (assets/model.safetensors)";

/// Loads the record at `path`, or the [`SHIPPED`] one when there is none: what the server and
/// the CLI both serve from.
pub fn load_or_shipped(path: Option<&Path>, device: &Device) -> Result<Loaded, RecordError> {
    match path {
        Some(path) => load_file(path, device),
        None => {
            let (model, meta) = load_shipped(device)?;
            let version = RecordVersion::of(SHIPPED.unwrap_or_default(), &meta);
            Ok(Loaded {
                model,
                meta,
                source: SHIPPED_SOURCE.to_string(),
                version,
            })
        }
    }
}

/// Loads and checks the record at `path`, with its version.
pub fn load_file(path: &Path, device: &Device) -> Result<Loaded, RecordError> {
    RecordFile::read(path)?.load(device)
}

/// A record file read and hashed, not yet checked or loaded: a server reloading compares the
/// hash with the served record's before it spends a load on the file.
pub struct RecordFile {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
    /// SHA-256 of the file, lower-case hex ([`RecordVersion::sha256`] once loaded).
    pub sha256: String,
}

impl RecordFile {
    /// Reads the file at `path`, or the one record in the folder `path` ([`find`]), no larger
    /// than [`MAX_RECORD_BYTES`], and hashes it.
    pub fn read(path: &Path) -> Result<Self, RecordError> {
        let path = find(path)?;
        let bytes = read(&path)?;
        Ok(Self {
            path,
            sha256: sha256_hex(&bytes),
            bytes,
        })
    }

    /// Checks the record and loads it onto `device`, with its version.
    pub fn load(self, device: &Device) -> Result<Loaded, RecordError> {
        let (model, meta) = load_model_bytes(self.bytes, device)?;
        Ok(Loaded {
            model,
            version: RecordVersion::from_hash(self.sha256, &meta),
            meta,
            source: self.path.display().to_string(),
        })
    }
}

/// Reads weights saved by the original PyTorch project (`torch.save(model.state_dict())` of
/// its `SimpleCNN`, layers `conv1`, `conv2`, `fc1`, `fc2`). The file is parsed by Burn's
/// pickle reader, which rebuilds tensors without running code from the file; `Linear`
/// weights are transposed to Burn's layout.
pub fn import_pytorch(path: &Path, device: &Device) -> Result<Cnn, RecordError> {
    if !path.is_file() {
        return Err(RecordError::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let mut model = Cnn::init(device);
    let mut store = PytorchStore::from_file(path).allow_partial(false);
    let result = model
        .load_from(&mut store)
        .map_err(|e| RecordError::Format(format!("{}: {e}", path.display())))?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(RecordError::Architecture(format!(
            "{}: errors {:?}, missing {:?}, unexpected {:?}",
            path.display(),
            result.errors,
            result.missing,
            result.unused
        )));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_larger_than_any_record_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.safetensors");
        std::fs::write(&path, vec![0u8; MAX_RECORD_BYTES as usize + 1]).unwrap();
        let err = load_file(&path, &crate::Backend::default().device())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("larger than any record"), "{err}");
    }

    /// A folder serves its one record; none, several, or only a volume's `..` links are
    /// errors that say what the folder holds.
    #[test]
    fn a_folder_is_read_as_the_one_record_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path();
        let err = find(folder).unwrap_err().to_string();
        assert!(err.contains("no *.safetensors file"), "{err}");
        std::fs::write(folder.join("..2026_12_06.safetensors"), b"x").unwrap();
        std::fs::write(folder.join("model.json"), b"{}").unwrap();
        assert!(find(folder).is_err());
        std::fs::write(folder.join("model.safetensors"), b"y").unwrap();
        assert_eq!(find(folder).unwrap(), folder.join("model.safetensors"));
        let file = RecordFile::read(folder).unwrap();
        assert_eq!(file.sha256, sha256_hex(b"y"));
        std::fs::write(folder.join("other.safetensors"), b"z").unwrap();
        let err = load_file(folder, &crate::Backend::default().device())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("2 *.safetensors files: model.safetensors, other.safetensors"),
            "{err}"
        );
        // A file is itself, whatever its name.
        let plain = folder.join("model.json");
        assert_eq!(find(&plain).unwrap(), plain);
    }

    #[test]
    fn a_version_is_the_content_hash_and_the_training_time() {
        let trained = RecordMeta {
            created: Some("2026-11-24T05:22:33Z".into()),
            ..RecordMeta::default()
        };
        let v = RecordVersion::of(b"abc", &trained);
        // SHA-256 of "abc" (FIPS 180-2, appendix B.1).
        assert_eq!(
            v.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(v.label, "20261124052233-ba7816bf8f01");
        assert_eq!(v.created.as_deref(), Some("2026-11-24T05:22:33Z"));
        // Without a training time, the hash alone; other bytes, another version.
        let undated = RecordVersion::of(b"abc", &RecordMeta::default());
        assert_eq!(undated.label, "ba7816bf8f01");
        assert_ne!(RecordVersion::of(b"abd", &trained).sha256, v.sha256);
        // Both forms are what LABEL_PATTERN describes: optional digits and '-', 12 hex digits.
        for label in [&v.label, &undated.label] {
            let hash = label.rsplit('-').next().unwrap();
            assert_eq!(hash.len(), 12);
            assert!(
                hash.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(
                label[..label.len() - 12]
                    .trim_end_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            );
        }
    }
}
