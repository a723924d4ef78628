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
        /// Width from the header, in pixels.
        width: u32,
        /// Height from the header, in pixels.
        height: u32,
        /// `width × height`: what decoding would allocate, in pixels.
        pixels: u64,
        /// The most pixels the preprocessor accepts.
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
    /// The file could not be read (or this build has no shipped record to fall back on).
    #[error("cannot read record {path}: {source}")]
    Io {
        /// The record's path, as shown to the user.
        path: String,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// A folder given as the record holds no `*.safetensors` file, or several (which one to
    /// serve would be a guess).
    #[error("{path} is a folder with {found}: it must hold exactly one record (*.safetensors)")]
    Folder {
        /// The folder, as shown to the user.
        path: String,
        /// What it holds, in words ("no *.safetensors file", "3 *.safetensors files: a, b, c").
        found: String,
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
    /// Serialising the metadata or writing the file failed.
    #[error("cannot write record: {0}")]
    Save(String),
    /// The precision asked for cannot run with this record or backend (int8 needs the fast
    /// backend and a calibrated record).
    #[error("{0}")]
    Precision(String),
}
