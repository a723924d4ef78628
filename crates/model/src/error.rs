//! Typed errors of the model crate.

use thiserror::Error;

/// Why an uploaded or stored image could not be turned into a model input.
#[derive(Debug, Error)]
pub enum ImageError {
    /// Zero bytes were given.
    #[error("the image is empty")]
    Empty,
    /// The bytes are not in an image format this build decodes.
    #[error("unsupported or unrecognised image format")]
    UnsupportedFormat,
    /// The header announces more pixels than the configured limit allows.
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    /// The image has a zero width or height.
    #[error("image has zero width or height")]
    ZeroSized,
    /// The data is corrupt or truncated.
    #[error("could not decode image: {0}")]
    Decode(String),
}

/// Why a weights record could not be saved or loaded.
#[derive(Debug, Error)]
pub enum RecordError {
    #[error("cannot read record {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Not a safetensors file at all, or a damaged one.
    #[error("not a valid record file: {0}")]
    Format(String),
    /// A safetensors file, but not one of ours (or of another version).
    #[error("record metadata: {0}")]
    Metadata(String),
    /// The tensors do not match the network's architecture.
    #[error("record does not match the CNN architecture: {0}")]
    Architecture(String),
    #[error("cannot write record: {0}")]
    Save(String),
}
