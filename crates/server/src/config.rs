//! The server's settings: what the command line (or an embedding program) decides, read by
//! every part below, and the checks that they fit together ([`ServerConfig::check`], which the
//! binary runs before it listens; a test may serve settings that fail it, to reach a bound).
//! The memory bound they imply is computed in [`crate::ops::memory`].

use std::time::Duration;

use crate::http::auth::ApiKey;
use crate::inference::engine::BatchPolicy;
use crate::ingest::upload::UploadLimits;

/// The name the model is served under unless `--model-name` says another (what the
/// original service's clients and the Open Inference Protocol's paths use).
pub const DEFAULT_MODEL_NAME: &str = "cifar10-cnn";

/// How the server logs ([`logging`](crate::ops::logging)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text lines for people (`text` is an alias).
    #[value(alias = "text")]
    Human,
    /// One JSON object per line.
    Json,
    /// Text lines, without the per-request ones.
    Off,
}

/// Run-time settings of the service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HTTP worker threads (at least one), each with its own blocking pool for decoding.
    pub workers: usize,
    /// Open connections, all workers together; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How the inference thread forms batches and how many images it admits at once.
    pub batch: BatchPolicy,
    /// What one request may send: body bytes and files per batch.
    pub upload: UploadLimits,
    /// Request-body bytes all requests may hold in memory at once.
    pub body_memory: usize,
    /// Bytes all image decodes may take at once.
    pub decode_memory: u64,
    /// Largest image accepted, in pixels, checked from the header before decoding.
    pub max_pixels: u64,
    /// Time a request may take in all, from its arrival: receiving its body (408 past it),
    /// waiting for decode memory and for the model (503). One deadline for every wait, so that
    /// no request holds what it took for longer.
    pub request_timeout: Duration,
    /// Origins CORS allows (`*`: any); none by default, so browsers allow same-origin only.
    pub cors_origins: Vec<String>,
    /// How requests are logged.
    pub log: LogFormat,
    /// How long a graceful shutdown waits for requests in progress.
    pub shutdown_timeout: Duration,
    /// How long requests are still served after SIGTERM or SIGINT, with readiness off, before
    /// the listener closes ([`lifecycle`](crate::ops::lifecycle)). Zero by default.
    pub drain: Duration,
    /// Reload the record when its file changes ([`watch`](crate::inference::models::watch)). Off by default (SIGHUP
    /// reloads either way).
    pub watch_model: bool,
    /// Handle the process's signals ([`lifecycle`](crate::ops::lifecycle)): on for a server that is the process (the
    /// binary), off for one embedded in another program (tests), whose signals are its own.
    pub signals: bool,
    /// Test-time augmentation: each image's probabilities are the mean over its views (with its
    /// mirror, or also shifted copies: [`model::Tta`], [`Inference::with_tta`](model::Inference::with_tta)). Off by default.
    pub tta: model::Tta,
    /// The fast backend's arithmetic ([`Inference::with_precision`](model::Inference::with_precision)): FP32 by default; int8
    /// needs the record's calibration, and a reload to a record without one is refused.
    pub precision: model::Precision,
    /// The bearer token every route but the probes asks for ([`auth`](crate::http::auth)); none by default.
    pub api_key: Option<ApiKey>,
    /// The name the Open Inference Protocol serves the model under, over HTTP and gRPC
    /// ([`DEFAULT_MODEL_NAME`] by default; `KServe` sets it to the `InferenceService`'s name).
    pub model_name: String,
    /// Explanations in progress at once ([`crate::inference::explain`]); more are refused
    /// with 503.
    pub max_explanations: usize,
    /// Most steps an integrated-gradients explanation may take.
    pub explain_max_steps: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            max_connections: 128,
            batch: BatchPolicy {
                max_batch: 64,
                max_wait: Duration::ZERO,
                max_images: 512,
                top_k: 3,
            },
            upload: UploadLimits {
                body: 10 * 1024 * 1024,
                files: 64,
            },
            body_memory: 32 * 1024 * 1024,
            decode_memory: 192 * 1024 * 1024,
            max_pixels: model::DEFAULT_MAX_PIXELS,
            request_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
            log: LogFormat::Human,
            shutdown_timeout: Duration::from_secs(30),
            drain: Duration::ZERO,
            watch_model: false,
            signals: true,
            tta: model::Tta::Off,
            precision: model::Precision::Fp32,
            api_key: None,
            model_name: DEFAULT_MODEL_NAME.to_string(),
            max_explanations: 2,
            explain_max_steps: 128,
        }
    }
}

/// Settings that cannot work together.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A full batch request could never be admitted.
    #[error(
        "--max-images ({max_images}) must be at least --max-files ({max_files}): a full batch could never be admitted"
    )]
    ImagesBelowFiles {
        /// `--max-images`.
        max_images: usize,
        /// `--max-files`.
        max_files: usize,
    },
    /// A body of the largest size could never be taken.
    #[error(
        "--body-memory ({body_memory}) must be at least --max-body ({max_body}): a body of the largest size could never be taken"
    )]
    BodyMemoryBelowBody {
        /// `--body-memory`.
        body_memory: usize,
        /// `--max-body`.
        max_body: usize,
    },
    /// A model name that cannot be one segment of a URL path.
    #[error(
        "--model-name {0:?} must be 1 to 64 letters, digits, '.', '_' or '-' (it is a segment of the /v2 paths)"
    )]
    ModelName(String),
}

impl ServerConfig {
    /// Checks that the settings can serve every request they allow.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.batch.max_images < self.upload.files {
            return Err(ConfigError::ImagesBelowFiles {
                max_images: self.batch.max_images,
                max_files: self.upload.files,
            });
        }
        if self.body_memory < self.upload.body {
            return Err(ConfigError::BodyMemoryBelowBody {
                body_memory: self.body_memory,
                max_body: self.upload.body,
            });
        }
        let name = &self.model_name;
        let fits = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && name != "."
            && name != "..";
        if !fits {
            return Err(ConfigError::ModelName(name.clone()));
        }
        Ok(())
    }

    /// Open connections each HTTP worker accepts (actix counts them per worker).
    pub fn connections_per_worker(&self) -> usize {
        self.max_connections.div_ceil(self.workers.max(1)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_and_settings_that_cannot_serve_are_refused() {
        let default = ServerConfig::default();
        assert_eq!(default.check(), Ok(()));
        let mut few_images = default.clone();
        few_images.batch.max_images = few_images.upload.files - 1;
        assert!(matches!(
            few_images.check(),
            Err(ConfigError::ImagesBelowFiles { .. })
        ));
        let mut small_budget = default;
        small_budget.body_memory = small_budget.upload.body - 1;
        let error = small_budget.check().unwrap_err().to_string();
        assert!(error.starts_with("--body-memory ("), "{error}");
        for name in ["", "..", "a/b", "a b", &"x".repeat(65)] {
            let named = ServerConfig {
                model_name: name.to_string(),
                ..ServerConfig::default()
            };
            assert_eq!(named.check(), Err(ConfigError::ModelName(name.into())));
        }
        let kserve = ServerConfig {
            model_name: "cifar10.v2_b-1".into(),
            ..ServerConfig::default()
        };
        assert_eq!(kserve.check(), Ok(()));
    }
}
