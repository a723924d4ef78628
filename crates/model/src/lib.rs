//! The CIFAR-10 classifier shared by every crate of the workspace.
//!
//! One definition of the network ([`Cnn`]) that runs unchanged on every backend the build
//! enables ([`Backend`]); the [`Inference`] wrapper that runs it for predictions, on Burn or on
//! the `fastcnn` CPU fast path built from the same weights; the ten class names ([`CLASSES`]);
//! the single preprocessing path from encoded image bytes to a normalised tensor
//! ([`preprocess`]); the record format the trained weights are saved in ([`record`]) and the
//! helpers that turn logits into predictions ([`predict`](mod@predict)); and the wider networks
//! trained only to teach it ([`teacher`]). Training, the HTTP
//! server and the CLI all go through here, so they see the same pixels and the same weights.

pub mod backend;
pub mod classes;
pub mod dataset;
pub mod error;
pub mod eval;
pub mod explain;
#[cfg(feature = "flex")]
pub mod fused;
pub mod inference;
pub mod multipart;
pub mod net;
pub mod predict;
pub mod preprocess;
pub mod quantize;
pub mod record;
pub mod teacher;
#[cfg(feature = "testdata")]
pub mod testdata;

pub use backend::Backend;
pub use classes::{CLASSES, NUM_CLASSES};
pub use error::{ImageError, RecordError};
pub use inference::{Gathered, Inference, Tta};
pub use net::{Cnn, INPUT_SIZE, Network, PARAMETER_COUNT, arch};
pub use predict::{Prediction, Ranked, predict, rank_logits, rank_probabilities, softmax};
pub use preprocess::{DEFAULT_MAX_PIXELS, Header, IMAGE_BYTES, IMAGE_FLOATS, Preprocessor};
pub use quantize::Precision;
pub use record::{
    Int8Calibration, RecordMeta, RecordVersion, import_pytorch, load_model, load_model_bytes,
    save_model,
};
