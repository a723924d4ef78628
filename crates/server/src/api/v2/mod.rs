//! The Open Inference Protocol (`KServe` V2) over HTTP, beside the original API, so that the
//! clients written for Triton and `KServe` (`tritonclient[http]`, `kserve`) can call the model as
//! they call any other.
//!
//! One model, named by [`ServerConfig::model_name`](crate::config::ServerConfig::model_name), takes one input of either kind: [`IMAGE_INPUT`], `BYTES` of shape
//! `[N]` (or `[N, 1]`) whose elements are encoded image files, or [`TENSOR_INPUT`], `FP32` of
//! shape `[N, 3, 64, 64]` preprocessed as [`model::Preprocessor::preprocess`] does. It answers
//! [`LOGITS`] and [`PROBABILITIES`] (`FP32`, `[N, 10]`), both unless the request names the ones
//! it wants. Two extensions: `classification` (an output asked with `parameters.classification:
//! k` comes back as `BYTES` `[N, k]` of `"<value>:<index>:<label>"`, best first) and
//! `binary_tensor_data` (the `Inference-Header-Content-Length` header; `BYTES` elements as a
//! 4-byte little-endian length and the bytes, `FP32` as raw little-endian floats; an output
//! with `parameters.binary_data: true`, or every output with the request's
//! `parameters.binary_data_output: true`, comes back after the JSON). In JSON, a `BYTES`
//! element is the image file in base64.
//!
//! `POST /v2/models/{name}/explain` takes the same request and answers each image's
//! explanation (`explain.rs`: `attributions`, `target`).
//!
//! Every bound of the original API holds here too: the body is read and metered by
//! [`body::read_whole`](crate::http::body::read_whole) (`--max-body`, `--body-memory`), a request takes one image permit per
//! image before anything is decoded ([`crate::inference::engine::Engine::admit`], `--max-images`), images
//! are decoded by [`decode::prepare`](crate::ingest::decode::prepare) within `--decode-memory`, at most `--max-files` images go
//! in one request, and the images join the same batching engine as the original API's. A
//! tensor's floats are reserved from the decode budget before they are allocated and stay
//! reserved until the model has run. Errors are the protocol's `{"error": "..."}`.

mod error;
mod explain;
mod extensions;
pub mod grpc;
mod infer;
mod metadata;
pub mod proto;
mod request;
mod tensor;
mod types;
pub mod wire;

use actix_web::{HttpRequest, HttpResponse, web};

use self::error::quote;
pub use self::error::{ErrorBody, V2Error};
pub use self::infer::{ParsedRequest, parse_request};
pub use self::types::*;
use crate::http::problem::ApiError;
use crate::http::resource::Resources;

/// The input of encoded image files (`BYTES`).
pub const IMAGE_INPUT: &str = "image";
/// The input of preprocessed tensors (`FP32`, `[N, 3, 64, 64]`).
pub const TENSOR_INPUT: &str = "input";
/// The output of logits (never test-time augmented).
pub const LOGITS: &str = "logits";
/// The output of class probabilities (with `--tta`, the mean over each image's views, as
/// `/classify` answers).
pub const PROBABILITIES: &str = "probabilities";
/// The protocol extensions served.
pub const EXTENSIONS: [&str; 4] = [
    "classification",
    "binary_tensor_data",
    "model_configuration",
    "statistics",
];
/// The binary tensor data extension's header: the length of the JSON part of a body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// The server's name in the server metadata.
const SERVER_NAME: &str = "cifar-cnn";
/// What the model metadata gives as the platform.
const PLATFORM: &str = "burn";
/// Longest request `id` echoed back.
const MAX_ID_BYTES: usize = 1024;
/// Longest name quoted back in an error.
const QUOTED_CHARS: usize = 64;
/// Most dimensions of a shape.
const MAX_DIMS: usize = 8;
/// Most outputs one request may name (there are two, each at most once).
const MAX_OUTPUTS: usize = 2;
/// Requests whose JSON is at most this long are parsed right on the async worker (tens of
/// microseconds); longer ones on the blocking pool.
const INLINE_PARSE_BYTES: usize = 64 * 1024;
/// Channels of a preprocessed image.
const CHANNELS: usize = model::arch::INPUT_CHANNELS;

/// The protocol's part of the OpenAPI document (merged into [`crate::router::openapi_document`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        metadata::server_metadata,
        metadata::live,
        metadata::ready,
        metadata::model_metadata,
        metadata::version_metadata,
        metadata::model_ready,
        metadata::version_ready,
        infer::infer,
        infer::version_infer,
        explain::explain,
        explain::version_explain,
        extensions::model_config,
        extensions::version_config,
        extensions::model_stats,
        extensions::version_stats,
        extensions::all_stats
    ),
    components(schemas(ErrorBody, TensorData, ModelName, ModelVersion))
)]
pub struct V2Api;

/// Registers the `/v2` endpoints (mounted by [`crate::router::configure`]).
pub fn configure(cfg: &mut web::ServiceConfig) {
    use metadata::{
        live, model_metadata, model_ready, ready, server_metadata, version_metadata, version_ready,
    };
    V2.get(cfg, "/v2", server_metadata);
    V2.get(cfg, "/v2/health/live", live);
    V2.get(cfg, "/v2/health/ready", ready);
    // Before `/v2/models/{name}`, which it would otherwise be.
    V2.get(cfg, "/v2/models/stats", extensions::all_stats);
    V2.get(cfg, "/v2/models/{name}", model_metadata);
    V2.get(
        cfg,
        "/v2/models/{name}/versions/{version}",
        version_metadata,
    );
    V2.get(cfg, "/v2/models/{name}/ready", model_ready);
    V2.get(
        cfg,
        "/v2/models/{name}/versions/{version}/ready",
        version_ready,
    );
    V2.get(cfg, "/v2/models/{name}/config", extensions::model_config);
    V2.get(
        cfg,
        "/v2/models/{name}/versions/{version}/config",
        extensions::version_config,
    );
    V2.get(cfg, "/v2/models/{name}/stats", extensions::model_stats);
    V2.get(
        cfg,
        "/v2/models/{name}/versions/{version}/stats",
        extensions::version_stats,
    );
    V2.post(cfg, "/v2/models/{name}/infer", infer::infer);
    V2.post(
        cfg,
        "/v2/models/{name}/versions/{version}/infer",
        infer::version_infer,
    );
    V2.post(cfg, "/v2/models/{name}/explain", explain::explain);
    V2.post(
        cfg,
        "/v2/models/{name}/versions/{version}/explain",
        explain::version_explain,
    );
    // Anything else under /v2 is answered in the protocol's error form too.
    cfg.service(web::resource("/v2/{rest:.*}").to(no_such_path));
}

/// The protocol's resources: a wrong method gets its 405.
const V2: Resources = Resources(error_405);

/// The protocol's 405: `{"error": ...}` with `Allow`.
fn error_405(methods: &'static str) -> actix_web::Error {
    V2Error::Api(ApiError::MethodNotAllowed(methods)).into()
}

async fn no_such_path(req: HttpRequest) -> Result<HttpResponse, V2Error> {
    Err(V2Error::NoSuchPath(quote(req.path())))
}
