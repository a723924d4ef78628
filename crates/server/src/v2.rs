//! The Open Inference Protocol (`KServe` V2) over HTTP, beside the original API, so that the
//! clients written for Triton and `KServe` (`tritonclient[http]`, `kserve`) can call the model as
//! they call any other.
//!
//! One model, [`MODEL_NAME`], takes one input of either kind: [`IMAGE_INPUT`], `BYTES` of shape
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
//! Every bound of the original API holds here too: the body is read and metered by
//! [`upload::read_whole`] (`--max-body`, `--body-memory`), a request takes one image permit per
//! image before anything is decoded ([`crate::inference::engine::Engine::admit`], `--max-images`), images
//! are decoded by [`decode::prepare`] within `--decode-memory`, at most `--max-files` images go
//! in one request, and the images join the same batching engine as the original API's. A
//! tensor's floats are reserved from the decode budget before they are allocated and stay
//! reserved until the model has run. Errors are the protocol's `{"error": "..."}`.

use std::cell::Cell;
use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, Handler, HttpRequest, HttpResponse, Responder, ResponseError, web};
use base64::Engine as _;
use model::inference::Scores;
use model::{CLASSES, IMAGE_FLOATS, INPUT_SIZE, NUM_CLASSES};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::AppState;
use crate::http::problem::{self, ApiError};
use crate::http::resource;
use crate::inference::engine::{Admission, Pixels};
use crate::ingest::decode;
use crate::ingest::upload::{self, Body, Upload};

/// The name the model is served under.
pub const MODEL_NAME: &str = "cifar10-cnn";
/// The input of encoded image files (`BYTES`).
pub const IMAGE_INPUT: &str = "image";
/// The input of preprocessed tensors (`FP32`, `[N, 3, 64, 64]`).
pub const TENSOR_INPUT: &str = "input";
/// The output of logits (never test-time augmented).
pub const LOGITS: &str = "logits";
/// The output of class probabilities (with `--tta`, the mean of each image's and its
/// mirror's, as `/classify` answers).
pub const PROBABILITIES: &str = "probabilities";
/// The protocol extensions served.
pub const EXTENSIONS: [&str; 2] = ["classification", "binary_tensor_data"];
/// The binary tensor data extension's header: the length of the JSON part of a body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
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

/// The protocol's part of the OpenAPI document (merged into [`crate::openapi_document`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        server_metadata,
        live,
        ready,
        model_metadata,
        version_metadata,
        model_ready,
        version_ready,
        infer,
        version_infer
    ),
    components(schemas(ErrorBody, TensorData, ModelName, ModelVersion))
)]
pub struct V2Api;

/// Registers the `/v2` endpoints (called from [`crate::routes::configure`]).
pub fn configure(cfg: &mut web::ServiceConfig) {
    get(cfg, "/v2", server_metadata);
    get(cfg, "/v2/health/live", live);
    get(cfg, "/v2/health/ready", ready);
    get(cfg, "/v2/models/{name}", model_metadata);
    get(
        cfg,
        "/v2/models/{name}/versions/{version}",
        version_metadata,
    );
    get(cfg, "/v2/models/{name}/ready", model_ready);
    get(
        cfg,
        "/v2/models/{name}/versions/{version}/ready",
        version_ready,
    );
    post(cfg, "/v2/models/{name}/infer", infer);
    post(
        cfg,
        "/v2/models/{name}/versions/{version}/infer",
        version_infer,
    );
    // Anything else under /v2 is answered in the protocol's error form too.
    cfg.service(web::resource("/v2/{rest:.*}").to(no_such_path));
}

/// A V2 resource served by GET and HEAD; other methods get the protocol's 405.
fn get<F, Args>(cfg: &mut web::ServiceConfig, path: &str, handler: F)
where
    F: Handler<Args> + Clone,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    resource::get_with(cfg, path, handler, error_405);
}

/// A V2 resource served by POST; other methods get the protocol's 405.
fn post<F, Args>(cfg: &mut web::ServiceConfig, path: &str, handler: F)
where
    F: Handler<Args> + Clone,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    resource::post_with(cfg, path, handler, error_405);
}

/// The protocol's 405: `{"error": ...}` with `Allow`.
fn error_405(methods: &'static str) -> actix_web::Error {
    V2Error::Api(ApiError::MethodNotAllowed(methods)).into()
}

async fn no_such_path(req: HttpRequest) -> Result<HttpResponse, V2Error> {
    Err(V2Error::NoSuchPath(quote(req.path())))
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An error on a `/v2` path, answered as the protocol's `{"error": "..."}`.
#[derive(Debug)]
pub enum V2Error {
    /// What the original API fails with, at its status (but 400 where it says 415 or 422: the
    /// protocol has no other status for a bad input).
    Api(ApiError),
    /// A request that breaks the protocol or does not fit the model.
    BadRequest(String),
    /// A model this server does not serve.
    UnknownModel(String),
    /// A version of the model this server does not serve.
    UnknownVersion(String),
    /// A path under `/v2` that names no endpoint.
    NoSuchPath(String),
    /// One image of the input failed (it cannot be decoded, or is too large).
    Element {
        /// Its place in the input.
        index: usize,
        /// Why.
        error: ApiError,
    },
    /// More images than `--max-files` in one request.
    TooManyImages {
        /// How many were sent, when known before reading them all.
        got: Option<usize>,
        /// `--max-files`.
        limit: usize,
    },
    /// A tensor whose floats would take more than all of `--decode-memory`.
    TensorTooLarge {
        /// Bytes its floats take.
        needed: u64,
        /// The decode budget.
        limit: u64,
    },
}

impl V2Error {
    /// The stable kind, as the original API's (the metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            V2Error::Api(e) | V2Error::Element { error: e, .. } => e.kind(),
            V2Error::BadRequest(_) => "bad-request",
            V2Error::UnknownModel(_) | V2Error::UnknownVersion(_) | V2Error::NoSuchPath(_) => {
                "not-found"
            }
            V2Error::TooManyImages { .. } => "too-many-files",
            V2Error::TensorTooLarge { .. } => "body-too-large",
        }
    }
}

impl fmt::Display for V2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            V2Error::Api(e) => write!(f, "{e}"),
            V2Error::BadRequest(message) => f.write_str(message),
            V2Error::UnknownModel(name) => write!(
                f,
                "unknown model '{name}': this server serves '{MODEL_NAME}'"
            ),
            V2Error::UnknownVersion(version) => write!(
                f,
                "unknown version '{version}' of model '{MODEL_NAME}' (GET /v2/models/{MODEL_NAME} lists its versions)"
            ),
            V2Error::NoSuchPath(path) => write!(f, "no such endpoint: {path}"),
            V2Error::Element { index, error } => {
                write!(f, "input '{IMAGE_INPUT}', element {index}: {error}")
            }
            V2Error::TooManyImages {
                got: Some(got),
                limit,
            } => write!(
                f,
                "{got} images in one request; at most {limit} are taken (--max-files)"
            ),
            V2Error::TooManyImages { got: None, limit } => write!(
                f,
                "more than {limit} images in one request; at most {limit} are taken (--max-files)"
            ),
            V2Error::TensorTooLarge { needed, limit } => write!(
                f,
                "the tensor takes {needed} bytes, over the server's decode memory of {limit} bytes"
            ),
        }
    }
}

impl From<ApiError> for V2Error {
    fn from(e: ApiError) -> Self {
        V2Error::Api(e)
    }
}

/// The protocol's error object.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

impl ResponseError for V2Error {
    fn status_code(&self) -> StatusCode {
        match self {
            V2Error::Api(e) => match e.status_code() {
                StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => {
                    StatusCode::BAD_REQUEST
                }
                status => status,
            },
            V2Error::BadRequest(_) | V2Error::Element { .. } => StatusCode::BAD_REQUEST,
            V2Error::UnknownModel(_) | V2Error::UnknownVersion(_) | V2Error::NoSuchPath(_) => {
                StatusCode::NOT_FOUND
            }
            V2Error::TooManyImages { .. } | V2Error::TensorTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let V2Error::Api(ApiError::Overloaded | ApiError::Timeout) = self {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        if let V2Error::Api(ApiError::MethodNotAllowed(methods)) = self {
            res.insert_header((header::ALLOW, *methods));
        }
        if let V2Error::Api(ApiError::Unauthorized) = self {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.json(ErrorBody {
            error: problem::detail(self),
        })
    }
}

/// `text` cut to a length fit to quote in an error.
fn quote(text: &str) -> String {
    text.chars().take(QUOTED_CHARS).collect()
}

// ---------------------------------------------------------------------------------------------
// Metadata and health

/// `GET /v2`: the server.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerMetadata {
    /// The server's name.
    pub name: String,
    /// The server's version.
    pub version: String,
    /// The protocol extensions it serves.
    pub extensions: Vec<String>,
}

/// A tensor the model takes or gives: its name, element type and shape (`-1`: any size).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TensorMetadata {
    /// The tensor's name.
    pub name: String,
    /// `BYTES` or `FP32`.
    pub datatype: String,
    /// Its dimensions; `-1` for the number of images.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}`: the model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelMetadata {
    /// The model's name.
    pub name: String,
    /// Its versions (one).
    pub versions: Vec<String>,
    /// What runs it.
    pub platform: String,
    /// The inputs; a request sends exactly one of them.
    pub inputs: Vec<TensorMetadata>,
    /// The outputs.
    pub outputs: Vec<TensorMetadata>,
}

/// `GET /v2/health/live`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Live {
    /// Always true: a server that answers is live.
    pub live: bool,
}

/// `GET /v2/health/ready`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// True once the model is loaded and has run once (as `GET /ready`).
    pub ready: bool,
}

/// `GET /v2/models/{name}/ready`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelReady {
    /// The model's name.
    pub name: String,
    /// True once the model is loaded and has run once.
    pub ready: bool,
}

/// The model's name, the only one served.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum ModelName {
    /// The model.
    #[schema(rename = "cifar10-cnn")]
    Cifar10Cnn,
}

/// The model's version: the record's (`model::RecordVersion::label`); the served document gives
/// the server's own as the example.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ModelVersion(String);

/// The errors of the metadata and health endpoints of the model.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ModelProblems {
    /// An unknown model or version
    #[response(status = 404)]
    NotFound(ErrorBody),
}

#[utoipa::path(get, path = "/v2", tag = "v2",
    responses((status = 200, description = "The server's name, version and protocol extensions", body = ServerMetadata)))]
async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(ServerMetadata {
        name: "cifar-cnn".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: EXTENSIONS.iter().map(|e| (*e).to_string()).collect(),
    })
}

#[utoipa::path(get, path = "/v2/health/live", tag = "v2",
    responses((status = 200, description = "The server answers", body = Live)))]
async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Live { live: true })
}

#[utoipa::path(get, path = "/v2/health/ready", tag = "v2", responses(
    (status = 200, description = "The model is loaded and warmed up (as GET /ready)", body = Ready),
    (status = 503, description = "Still starting", body = Ready),
))]
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let ready = state.is_ready();
    readiness(ready).json(Ready { ready })
}

fn readiness(ready: bool) -> actix_web::HttpResponseBuilder {
    if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    }
}

/// Checks the model's name (and version, when the path gives one) in the path.
fn served(state: &AppState, req: &HttpRequest) -> Result<String, V2Error> {
    let name = req.match_info().get("name").unwrap_or_default();
    if name != MODEL_NAME {
        return Err(V2Error::UnknownModel(quote(name)));
    }
    // The record's version (`model::RecordVersion::label`): it changes when a reload
    // swaps in another record.
    let version = state.models.current().version.label.clone();
    match req.match_info().get("version") {
        Some(asked) if asked != version => Err(V2Error::UnknownVersion(quote(asked))),
        _ => Ok(version),
    }
}

fn metadata(state: &AppState, req: &HttpRequest) -> Result<HttpResponse, V2Error> {
    let version = served(state, req)?;
    let tensor = |name: &str, datatype: &str, shape: &[i64]| TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
    };
    let side = INPUT_SIZE as i64;
    let classes = NUM_CLASSES as i64;
    Ok(HttpResponse::Ok().json(ModelMetadata {
        name: MODEL_NAME.into(),
        versions: vec![version],
        platform: PLATFORM.into(),
        inputs: vec![
            tensor(IMAGE_INPUT, "BYTES", &[-1]),
            tensor(TENSOR_INPUT, "FP32", &[-1, CHANNELS as i64, side, side]),
        ],
        outputs: vec![
            tensor(LOGITS, "FP32", &[-1, classes]),
            tensor(PROBABILITIES, "FP32", &[-1, classes]),
        ],
    }))
}

#[utoipa::path(get, path = "/v2/models/{name}", tag = "v2",
    params(("name" = ModelName, Path, description = "The model's name")),
    responses(
        (status = 200, description = "The model's name, versions, platform, inputs and outputs", body = ModelMetadata),
        ModelProblems,
    ))]
async fn model_metadata(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, V2Error> {
    metadata(&state, &req)
}

#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "v2",
    params(
        ("name" = ModelName, Path, description = "The model's name"),
        ("version" = ModelVersion, Path, description = "The model's version"),
    ),
    responses(
        (status = 200, description = "The model's name, versions, platform, inputs and outputs", body = ModelMetadata),
        ModelProblems,
    ))]
async fn version_metadata(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, V2Error> {
    metadata(&state, &req)
}

fn model_readiness(state: &AppState, req: &HttpRequest) -> Result<HttpResponse, V2Error> {
    served(state, req)?;
    let ready = state.is_ready();
    Ok(readiness(ready).json(ModelReady {
        name: MODEL_NAME.into(),
        ready,
    }))
}

#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "v2",
    params(("name" = ModelName, Path, description = "The model's name")),
    responses(
        (status = 200, description = "The model is ready", body = ModelReady),
        (status = 503, description = "Still starting", body = ModelReady),
        ModelProblems,
    ))]
async fn model_ready(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, V2Error> {
    model_readiness(&state, &req)
}

#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "v2",
    params(
        ("name" = ModelName, Path, description = "The model's name"),
        ("version" = ModelVersion, Path, description = "The model's version"),
    ),
    responses(
        (status = 200, description = "The model is ready", body = ModelReady),
        (status = 503, description = "Still starting", body = ModelReady),
        ModelProblems,
    ))]
async fn version_ready(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, V2Error> {
    model_readiness(&state, &req)
}

// ---------------------------------------------------------------------------------------------
// Inference: the documented shapes (the request is read by the parser below)

/// An inference request (the JSON part of the body; with the binary tensor data extension,
/// the `Inference-Header-Content-Length` header gives its length and the inputs' bytes follow).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct InferRequest {
    /// Echoed in the response.
    #[schema(max_length = 1024)]
    id: Option<String>,
    /// Request parameters.
    parameters: Option<RequestParameters>,
    /// Exactly one input: `image` (`BYTES`) or `input` (`FP32`).
    #[schema(min_items = 1, max_items = 1)]
    inputs: Vec<InferInput>,
    /// The outputs wanted (default: both).
    #[schema(min_items = 1, max_items = 2)]
    outputs: Option<Vec<RequestedOutput>>,
}

/// Parameters of a request.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RequestParameters {
    /// Every output not saying otherwise comes back as binary data.
    binary_data_output: Option<bool>,
}

/// An input tensor: the model's two inputs, each with its one datatype (the document names
/// exactly what the server takes).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum InferInput {
    /// Encoded image files.
    Images(ImageInput),
    /// Preprocessed tensors.
    Tensor(TensorInput),
}

/// The `image` input: encoded image files (`BYTES`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ImageInput {
    /// `image`.
    name: ImageInputName,
    /// `[N]` or `[N, 1]`; N from 1 to `--max-files`.
    #[schema(min_items = 1, max_items = 2)]
    shape: Vec<i64>,
    /// `BYTES`.
    datatype: BytesDatatype,
    /// Input parameters.
    parameters: Option<InputParameters>,
    /// The image files in base64, flat or nested. Absent when the data are binary.
    data: Option<TensorData>,
}

/// The `input` input: preprocessed images (`FP32`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TensorInput {
    /// `input`.
    name: TensorInputName,
    /// `[N, 3, 64, 64]`; N from 1 to `--max-files`.
    #[schema(min_items = 4, max_items = 4)]
    shape: Vec<i64>,
    /// `FP32`.
    datatype: Fp32Datatype,
    /// Input parameters.
    parameters: Option<InputParameters>,
    /// The numbers in row-major order, flat or nested. Absent when the data are binary.
    data: Option<TensorData>,
}

/// The name of the input of encoded images.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum ImageInputName {
    /// `image`.
    #[schema(rename = "image")]
    Image,
}

/// The name of the input of preprocessed tensors.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum TensorInputName {
    /// `input`.
    #[schema(rename = "input")]
    Input,
}

/// The datatype of encoded images.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum BytesDatatype {
    /// Byte strings.
    #[schema(rename = "BYTES")]
    Bytes,
}

/// The datatype of preprocessed tensors.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum Fp32Datatype {
    /// 32-bit floats.
    #[schema(rename = "FP32")]
    Fp32,
}

/// The outputs a request may name.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum OutputName {
    /// The logits.
    #[schema(rename = "logits")]
    Logits,
    /// The class probabilities.
    #[schema(rename = "probabilities")]
    Probabilities,
}

/// Parameters of an input.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct InputParameters {
    /// The input's data are this many bytes of the binary part of the body.
    binary_data_size: Option<u64>,
}

/// An output wanted.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RequestedOutput {
    /// `logits` or `probabilities`.
    name: OutputName,
    /// Output parameters.
    parameters: Option<OutputParameters>,
}

/// Parameters of a requested output.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OutputParameters {
    /// Send the output as binary data after the JSON.
    binary_data: Option<bool>,
    /// Send the best `k` classes of each image instead, as `BYTES` `"<value>:<index>:<label>"`.
    #[schema(minimum = 1, maximum = 10)]
    classification: Option<u32>,
}

/// Tensor elements in row-major order: numbers, strings, or nested arrays of them.
pub struct TensorData;

impl utoipa::PartialSchema for TensorData {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        ArrayBuilder::new()
            .items(
                OneOfBuilder::new()
                    .item(ObjectBuilder::new().schema_type(Type::Number))
                    .item(ObjectBuilder::new().schema_type(Type::String))
                    .item(ArrayBuilder::new()),
            )
            .description(Some(
                "Tensor elements in row-major order, flat or nested: numbers for FP32, \
                 base64 strings for BYTES",
            ))
            .into()
    }
}

impl ToSchema for TensorData {}

/// An inference response (with binary outputs, the JSON part of the body: the
/// `Inference-Header-Content-Length` header gives its length and the outputs' bytes follow).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InferResponse {
    /// The model's name.
    pub model_name: String,
    /// The model's version.
    pub model_version: String,
    /// The request's `id`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The outputs, in the order asked.
    pub outputs: Vec<OutputTensor>,
}

/// An output tensor.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OutputTensor {
    /// `logits` or `probabilities`.
    pub name: String,
    /// `FP32`, or `BYTES` for a classification.
    pub datatype: String,
    /// `[N, 10]`, or `[N, k]` for a classification.
    pub shape: Vec<usize>,
    /// Where the data are binary: their size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<OutputTensorParameters>,
    /// The elements in row-major order, when not binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<OutputData>,
}

/// Parameters of an output tensor.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OutputTensorParameters {
    /// The output's bytes in the binary part of the body.
    pub binary_data_size: usize,
}

/// An output's elements.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OutputData {
    /// `FP32` values.
    Numbers(Vec<f32>),
    /// `BYTES` values: `"<value>:<index>:<label>"`.
    Strings(Vec<String>),
}

/// The errors of `POST /v2/models/{name}/infer`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum InferProblems {
    /// A malformed request, an unknown input or output, a wrong datatype or shape, data that
    /// do not match the shape, an element that is not a decodable image (or is over
    /// `--max-pixels` or `--decode-memory`)
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// An unknown model or version
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The body did not arrive within `--request-timeout`
    #[response(status = 408)]
    RequestTimeout(ErrorBody),
    /// The body is over `--max-body`, or more than `--max-files` images
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The model failed
    #[response(status = 500)]
    Internal(ErrorBody),
    /// No room now (`--max-images`, `--body-memory`, `--decode-memory`) or the model did not
    /// answer in time; retry after `Retry-After`
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "v2",
    params(("name" = ModelName, Path, description = "The model's name")),
    request_body(description = "An inference request: JSON, or with the binary tensor data extension JSON followed by the inputs' bytes (`Inference-Header-Content-Length` gives the JSON's length)", content(
        (InferRequest = "application/json"),
        (InferRequest = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "The outputs; with binary outputs the body is the JSON followed by their bytes (`Inference-Header-Content-Length` gives the JSON's length)", content(
            (InferResponse = "application/json"),
            (InferResponse = "application/octet-stream"),
        )),
        InferProblems,
    ))]
async fn infer(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, V2Error> {
    run(&state, &req, payload).await
}

#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "v2",
    params(
        ("name" = ModelName, Path, description = "The model's name"),
        ("version" = ModelVersion, Path, description = "The model's version"),
    ),
    request_body(description = "An inference request, as for /v2/models/{name}/infer", content(
        (InferRequest = "application/json"),
        (InferRequest = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "The outputs, as for /v2/models/{name}/infer", content(
            (InferResponse = "application/json"),
            (InferResponse = "application/octet-stream"),
        )),
        InferProblems,
    ))]
async fn version_infer(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, V2Error> {
    run(&state, &req, payload).await
}

// ---------------------------------------------------------------------------------------------
// Inference: reading, running, answering

/// An output to send back.
struct Wanted {
    logits: bool,
    classification: Option<usize>,
    binary: bool,
}

async fn run(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, V2Error> {
    served(state, req)?;
    // A compressed body would have to be inflated whole, a chunk at a time, before the meter
    // could count it: refused, as the protocol allows.
    if let Some(encoding) = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .filter(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(V2Error::BadRequest(format!(
            "Content-Encoding '{}' is not supported: send the request uncompressed",
            quote(&String::from_utf8_lossy(encoding.as_bytes()))
        )));
    }
    let deadline = resource::deadline(state);
    let max_images = state.config.upload.files;
    let body = tokio::time::timeout_at(
        deadline,
        upload::read_whole(req, payload, state.config.upload.body, &state.body_budget),
    )
    .await
    .map_err(|_| ApiError::RequestTimeout(state.config.request_timeout.as_secs()))??;
    let json_len = match req.headers().get(HEADER_LENGTH) {
        None => body.bytes.len(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.bytes.len())
            .ok_or_else(|| {
                V2Error::BadRequest(format!(
                    "Inference-Header-Content-Length must be a number of bytes no larger than the body ({})",
                    body.bytes.len()
                ))
            })?,
    };
    // Floats sent in the JSON go into one buffer of the most the JSON can hold (each takes at
    // least two bytes), reserved from the decode budget before it is parsed. Only a request
    // that sends floats in its JSON needs it: the first parse keeps none and stops at the first
    // number, so that other requests (images, binary tensors) neither reserve nor wait for it.
    let decode_limit = state.decode_budget.limit();
    let most_floats = max_images * IMAGE_FLOATS;
    let float_cap = (json_len / 2)
        .min(most_floats)
        .min(usize::try_from(decode_limit / 4).unwrap_or(usize::MAX));
    let (mut body, mut parsed) = parse(body, json_len, max_images, 0).await?;
    let mut reserved = None;
    if let Err(ParseError::TooManyFloats) = parsed
        && float_cap > 0
    {
        reserved = Some(
            state
                .decode_budget
                .reserve(float_cap as u64 * 4, deadline)
                .await?,
        );
        (body, parsed) = parse(body, json_len, max_images, float_cap).await?;
    }
    let request = match parsed {
        // JSON cannot hold more than `json_len / 2` numbers: the buffer ran out either at the
        // most images a request may send or at the decode budget.
        Err(ParseError::TooManyFloats) if float_cap < most_floats => {
            return Err(V2Error::TensorTooLarge {
                needed: (float_cap as u64 + 1) * 4,
                limit: decode_limit,
            });
        }
        Err(ParseError::TooManyImages | ParseError::TooManyFloats) => {
            return Err(V2Error::TooManyImages {
                got: None,
                limit: max_images,
            });
        }
        Err(ParseError::Json(e)) => {
            return Err(V2Error::BadRequest(format!(
                "malformed inference request: {e}"
            )));
        }
        Ok(request) => request,
    };
    let wanted = wanted(&request)?;
    let Request { id, mut inputs, .. } = request;
    let input = inputs.pop().ok_or_else(|| {
        V2Error::BadRequest(format!(
            "no input: send '{IMAGE_INPUT}' (BYTES, encoded images) or '{TENSOR_INPUT}' (FP32, [N, 3, 64, 64])"
        ))
    })?;
    let (images, admitted, pixels) = match input.name.as_str() {
        IMAGE_INPUT => {
            drop(reserved);
            images(state, req, body, json_len, input, deadline).await?
        }
        TENSOR_INPUT => {
            let (floats, admitted, reserved) =
                tensor(state, req, &body, json_len, input, reserved, deadline).await?;
            drop(body);
            let images = floats.len() / IMAGE_FLOATS;
            (images, admitted, Pixels::Floats(floats, reserved))
        }
        other => {
            return Err(V2Error::BadRequest(format!(
                "unknown input '{}': this model takes '{IMAGE_INPUT}' (BYTES, encoded images) or '{TENSOR_INPUT}' (FP32, [N, 3, 64, 64])",
                quote(other)
            )));
        }
    };
    // The version is that of the model which answered: the one current at admission
    // ([`admit`] checked it against the one asked for).
    let (scores, answered) = state.engine.scores(pixels, admitted, deadline).await?;
    let version = answered.version.label.clone();
    Ok(respond(id, version, &wanted, &scores, images))
}

/// Parses the JSON part of `body`, keeping at most `float_cap` numbers of tensor data; a large
/// request on the blocking pool, never stalling an async worker. Gives the body back.
async fn parse(
    body: Body,
    json_len: usize,
    max_images: usize,
    float_cap: usize,
) -> Result<(Body, Result<Request, ParseError>), V2Error> {
    if json_len <= INLINE_PARSE_BYTES {
        let parsed = Parsed::read(&body.bytes[..json_len], max_images, float_cap);
        return Ok((body, parsed));
    }
    web::block(move || {
        let parsed = Parsed::read(&body.bytes[..json_len], max_images, float_cap);
        (body, parsed)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("parsing the request: {e}")).into())
}

/// What [`parse_request`] found in a request that parsed.
#[derive(Debug)]
pub struct ParsedRequest {
    /// Encoded images in the JSON (base64-decoded).
    pub images: usize,
    /// Numbers of tensor data kept.
    pub floats: usize,
    /// Outputs asked for.
    pub outputs: usize,
}

/// Parses an inference request's JSON as `POST /v2/models/{name}/infer` does, keeping at most
/// `max_images` image strings and `float_cap` numbers, and checks the outputs it asks for; the
/// error is the parser's text as a client gets it, before the reply's cut. For the fuzzer
/// (`fuzz/fuzz_targets/v2_json.rs`): no input may panic it, break its bounds, or make an error
/// that grows with the input.
pub fn parse_request(
    json: &[u8],
    max_images: usize,
    float_cap: usize,
) -> Result<ParsedRequest, String> {
    let request = match Parsed::read(json, max_images, float_cap) {
        Ok(request) => request,
        Err(ParseError::Json(e)) => return Err(format!("malformed inference request: {e}")),
        Err(ParseError::TooManyFloats) => return Err("too many numbers".into()),
        Err(ParseError::TooManyImages) => return Err("too many images".into()),
    };
    let outputs = wanted(&request).map_err(|e| e.to_string())?.len();
    let (mut images, mut floats) = (0, 0);
    for input in &request.inputs {
        match &input.data {
            Some(Data::Bytes(files)) => images += files.len(),
            Some(Data::Floats(values)) => floats += values.len(),
            Some(Data::Empty) | None => {}
        }
    }
    Ok(ParsedRequest {
        images,
        floats,
        outputs,
    })
}

/// Admits `n` images to the engine under the model served now, and refuses a request for a
/// version other than that one before anything is decoded or run (a reload may have replaced
/// the version asked for while the body was read).
fn admit(state: &AppState, req: &HttpRequest, n: usize) -> Result<Admission, V2Error> {
    let admitted = state.engine.admit(n)?;
    if let Some(asked) = req.match_info().get("version")
        && asked != admitted.served().version.label
    {
        return Err(V2Error::UnknownVersion(quote(asked)));
    }
    Ok(admitted)
}

/// The outputs asked for, checked.
fn wanted(request: &Request) -> Result<Vec<Wanted>, V2Error> {
    let Some(outputs) = &request.outputs else {
        return Ok([true, false]
            .into_iter()
            .map(|logits| Wanted {
                logits,
                classification: None,
                binary: request.binary_output,
            })
            .collect());
    };
    let mut wanted: Vec<Wanted> = Vec::with_capacity(outputs.len());
    for output in outputs {
        let logits = match output.name.as_str() {
            LOGITS => true,
            PROBABILITIES => false,
            other => {
                return Err(V2Error::BadRequest(format!(
                    "unknown output '{}': this model gives '{LOGITS}' and '{PROBABILITIES}'",
                    quote(other)
                )));
            }
        };
        if wanted.iter().any(|w| w.logits == logits) {
            return Err(V2Error::BadRequest(format!(
                "output '{}' is asked for twice",
                output.name
            )));
        }
        let params = &output.parameters.0;
        if params.shared_memory_region.is_some() {
            return Err(V2Error::BadRequest(
                "shared memory is not supported: ask for binary_data instead".into(),
            ));
        }
        let classification = match params.classification.as_ref().map(|k| k.0) {
            None => None,
            Some(k) if (1..=NUM_CLASSES as u64).contains(&k) => Some(k as usize),
            Some(k) => {
                return Err(V2Error::BadRequest(format!(
                    "output '{}': classification must ask for 1 to {NUM_CLASSES} classes, not {k}",
                    output.name
                )));
            }
        };
        wanted.push(Wanted {
            logits,
            classification,
            binary: params
                .binary_data
                .as_ref()
                .map_or(request.binary_output, |b| b.0),
        });
    }
    if wanted.is_empty() {
        return Err(V2Error::BadRequest(format!(
            "no output asked for: name '{LOGITS}' or '{PROBABILITIES}', or leave 'outputs' out for both"
        )));
    }
    Ok(wanted)
}

/// Where an input's data are: in the JSON, or in the binary part of the body.
fn binary_part<'b>(
    body: &'b Body,
    json_len: usize,
    input: &Input,
) -> Result<Option<&'b [u8]>, V2Error> {
    if input.shared_memory {
        return Err(V2Error::BadRequest(
            "shared memory is not supported: send the data in the request".into(),
        ));
    }
    let binary = &body.bytes[json_len..];
    match (input.binary_size, &input.data) {
        (Some(_), Some(_)) => Err(V2Error::BadRequest(format!(
            "input '{}' has both data and binary_data_size",
            input.name
        ))),
        (Some(size), None) if size != binary.len() as u64 => Err(V2Error::BadRequest(format!(
            "input '{}' says binary_data_size {size}, but {} bytes follow the JSON",
            input.name,
            binary.len()
        ))),
        (Some(_), None) => Ok(Some(binary)),
        (None, _) if !binary.is_empty() => Err(V2Error::BadRequest(format!(
            "{} bytes follow the JSON, but no input has binary_data_size",
            binary.len()
        ))),
        (None, Some(_)) => Ok(None),
        (None, None) => Err(V2Error::BadRequest(format!(
            "input '{}' has no data (neither 'data' nor parameters.binary_data_size)",
            input.name
        ))),
    }
}

fn expect_datatype(input: &Input, datatype: &str) -> Result<(), V2Error> {
    if input.datatype == datatype {
        Ok(())
    } else {
        Err(V2Error::BadRequest(format!(
            "input '{}' is {datatype}, not '{}'",
            input.name,
            quote(&input.datatype)
        )))
    }
}

/// The number of images a shape holds, checked against `--max-files`.
fn image_count(shape: &[i64], max_images: usize) -> Result<usize, V2Error> {
    let n = shape.first().copied().unwrap_or(0);
    let n = usize::try_from(n).unwrap_or(0);
    if n == 0 {
        return Err(V2Error::BadRequest(format!(
            "shape {shape:?} holds no image: its first dimension is the number of images, at least 1"
        )));
    }
    if n > max_images {
        return Err(V2Error::TooManyImages {
            got: Some(n),
            limit: max_images,
        });
    }
    Ok(n)
}

/// The `image` input: encoded files, decoded within the decode budget.
async fn images(
    state: &AppState,
    req: &HttpRequest,
    body: Body,
    json_len: usize,
    input: Input,
    deadline: Instant,
) -> Result<(usize, Admission, Pixels), V2Error> {
    expect_datatype(&input, "BYTES")?;
    let max_images = state.config.upload.files;
    let shape = &input.shape;
    let n = image_count(shape, max_images)?;
    if !(shape.len() == 1 || shape.len() == 2 && shape[1] == 1) {
        return Err(V2Error::BadRequest(format!(
            "input '{IMAGE_INPUT}' has shape [N] or [N, 1], not {shape:?}"
        )));
    }
    let files = match binary_part(&body, json_len, &input)? {
        Some(binary) => split_bytes(binary, max_images)?,
        None => match input.data {
            Some(Data::Bytes(files)) => files,
            Some(Data::Empty) => Vec::new(),
            _ => {
                return Err(V2Error::BadRequest(format!(
                    "input '{IMAGE_INPUT}' holds image files, each a base64 string in JSON"
                )));
            }
        },
    };
    if files.len() != n {
        return Err(V2Error::BadRequest(format!(
            "input '{IMAGE_INPUT}' has shape {shape:?} but {} elements",
            files.len()
        )));
    }
    if let Some(index) = files.iter().position(Vec::is_empty) {
        return Err(V2Error::Element {
            index,
            error: ApiError::EmptyFile(index.to_string()),
        });
    }
    // The files keep the body's charge on the body budget; the body's own bytes are freed.
    let uploads = body.into_uploads(
        files
            .into_iter()
            .map(|bytes| Upload {
                filename: None,
                bytes,
            })
            .collect(),
    );
    let admitted = admit(state, req, n)?;
    let prepared =
        decode::prepare(state.preprocessor, &state.decode_budget, uploads, deadline).await?;
    let mut pixels = Vec::with_capacity(n * model::IMAGE_BYTES);
    for (index, (_, image)) in prepared.into_iter().enumerate() {
        match image {
            Ok(image) => pixels.extend_from_slice(&image),
            Err(error) => return Err(V2Error::Element { index, error }),
        }
    }
    Ok((n, admitted, Pixels::Rgb(pixels)))
}

/// `BYTES` elements of the binary tensor data extension: each a 4-byte little-endian length
/// and that many bytes.
fn split_bytes(binary: &[u8], max_images: usize) -> Result<Vec<Vec<u8>>, V2Error> {
    let truncated = |index: usize| {
        V2Error::BadRequest(format!(
            "input '{IMAGE_INPUT}': binary element {index} is cut short (each is a 4-byte little-endian length and that many bytes)"
        ))
    };
    // Counted first, so that a request of too many is refused before anything is copied.
    let mut spans = Vec::new();
    let mut at = 0;
    while at < binary.len() {
        let index = spans.len();
        if index == max_images {
            return Err(V2Error::TooManyImages {
                got: None,
                limit: max_images,
            });
        }
        let prefix: [u8; 4] = binary
            .get(at..at + 4)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| truncated(index))?;
        let len = u32::from_le_bytes(prefix) as usize;
        let start = at + 4;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= binary.len())
            .ok_or_else(|| truncated(index))?;
        spans.push(start..end);
        at = end;
    }
    Ok(spans
        .into_iter()
        .map(|span| binary[span].to_vec())
        .collect())
}

/// The `input` input: preprocessed floats, paid for from the decode budget by the returned
/// permit (`reserved`: what the JSON's parse held, if it kept floats).
async fn tensor(
    state: &AppState,
    req: &HttpRequest,
    body: &Body,
    json_len: usize,
    input: Input,
    reserved: Option<OwnedSemaphorePermit>,
    deadline: Instant,
) -> Result<(Vec<f32>, Admission, OwnedSemaphorePermit), V2Error> {
    expect_datatype(&input, "FP32")?;
    let shape = &input.shape;
    let n = image_count(shape, state.config.upload.files)?;
    let side = INPUT_SIZE as i64;
    if shape.len() != 4 || shape[1..] != [CHANNELS as i64, side, side] {
        return Err(V2Error::BadRequest(format!(
            "input '{TENSOR_INPUT}' has shape [N, {CHANNELS}, {side}, {side}], not {shape:?}"
        )));
    }
    let count = n * IMAGE_FLOATS;
    let bytes = count as u64 * 4;
    let mismatch = |got: usize| {
        V2Error::BadRequest(format!(
            "input '{TENSOR_INPUT}' has shape {shape:?} ({count} values) but {got} values"
        ))
    };
    match binary_part(body, json_len, &input)? {
        Some(binary) => {
            if binary.len() != count * 4 {
                return Err(mismatch(binary.len() / 4));
            }
            let limit = state.decode_budget.limit();
            if bytes > limit {
                return Err(V2Error::TensorTooLarge {
                    needed: bytes,
                    limit,
                });
            }
            let admitted = admit(state, req, n)?;
            // What the JSON's parse held goes back before the floats' room is waited for.
            drop(reserved);
            let reserved = state.decode_budget.reserve(bytes, deadline).await?;
            let floats: Vec<f32> = binary
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            finite(floats).map(|floats| (floats, admitted, reserved))
        }
        None => match (input.data, reserved) {
            (Some(Data::Floats(mut floats)), Some(mut reserved)) if floats.len() == count => {
                // The buffer was sized for the most the JSON could hold: keep what is used.
                floats.shrink_to_fit();
                decode::keep_only(&mut reserved, bytes);
                let floats = finite(floats)?;
                let admitted = admit(state, req, n)?;
                Ok((floats, admitted, reserved))
            }
            (Some(Data::Floats(floats)), _) => Err(mismatch(floats.len())),
            (Some(Data::Empty) | None, _) => Err(mismatch(0)),
            (Some(Data::Bytes(_)), _) => Err(V2Error::BadRequest(format!(
                "input '{TENSOR_INPUT}' holds FP32 numbers, not strings"
            ))),
        },
    }
}

fn finite(floats: Vec<f32>) -> Result<Vec<f32>, V2Error> {
    match floats.iter().position(|v| !v.is_finite()) {
        None => Ok(floats),
        Some(at) => Err(V2Error::BadRequest(format!(
            "input '{TENSOR_INPUT}': value {at} is not a finite number"
        ))),
    }
}

/// The response: JSON, or JSON followed by the binary outputs.
fn respond(
    id: Option<String>,
    version: String,
    wanted: &[Wanted],
    scores: &Scores,
    images: usize,
) -> HttpResponse {
    let mut binary = Vec::new();
    let outputs = wanted
        .iter()
        .map(|w| {
            let values = if w.logits {
                &scores.logits
            } else {
                &scores.probabilities
            };
            let name = if w.logits { LOGITS } else { PROBABILITIES };
            let (datatype, shape, data) = match w.classification {
                None => (
                    "FP32",
                    vec![images, NUM_CLASSES],
                    OutputData::Numbers(values.clone()),
                ),
                Some(k) => (
                    "BYTES",
                    vec![images, k],
                    OutputData::Strings(classify(values, k)),
                ),
            };
            let (parameters, data) = if w.binary {
                let start = binary.len();
                match &data {
                    OutputData::Numbers(values) => {
                        for v in values {
                            binary.extend_from_slice(&v.to_le_bytes());
                        }
                    }
                    OutputData::Strings(strings) => {
                        for s in strings {
                            binary.extend_from_slice(&(s.len() as u32).to_le_bytes());
                            binary.extend_from_slice(s.as_bytes());
                        }
                    }
                }
                let binary_data_size = binary.len() - start;
                (Some(OutputTensorParameters { binary_data_size }), None)
            } else {
                (None, Some(data))
            };
            OutputTensor {
                name: name.into(),
                datatype: datatype.into(),
                shape,
                parameters,
                data,
            }
        })
        .collect();
    let response = InferResponse {
        model_name: MODEL_NAME.into(),
        model_version: version,
        id,
        outputs,
    };
    if wanted.iter().all(|w| !w.binary) {
        return resource::json_exact(HttpResponse::Ok(), &response);
    }
    let mut body = serde_json::to_vec(&response).expect("the response serialises");
    let json_len = body.len();
    body.extend_from_slice(&binary);
    // Exactly its length, as the memory bound counts an unread answer.
    body.shrink_to_fit();
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((HEADER_LENGTH, json_len))
        .body(body)
}

/// The classification extension: the best `k` classes of each row, as
/// `"<value>:<index>:<label>"`, best first.
fn classify(values: &[f32], k: usize) -> Vec<String> {
    values
        .chunks_exact(NUM_CLASSES)
        .flat_map(|row| model::predict::rank(row, k).top_k)
        // `{}` writes the shortest text that reads back as the same f32.
        .map(|r| {
            format!(
                "{}:{}:{}",
                r.confidence, r.class_index, CLASSES[r.class_index]
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Parsing the JSON: bounded in memory, whatever it holds

/// A request's JSON.
struct Request {
    id: Option<String>,
    binary_output: bool,
    inputs: Vec<Input>,
    outputs: Option<Vec<OutputRequest>>,
}

/// One input as the JSON gives it.
struct Input {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    binary_size: Option<u64>,
    shared_memory: bool,
    data: Option<Data>,
}

/// An input's elements from the JSON.
enum Data {
    /// `[]`.
    Empty,
    /// Numbers.
    Floats(Vec<f32>),
    /// Strings, base64-decoded.
    Bytes(Vec<Vec<u8>>),
}

#[derive(Deserialize)]
struct OutputRequest {
    name: String,
    #[serde(default)]
    parameters: NoEcho<OutputParams>,
}

#[derive(Deserialize, Default)]
struct OutputParams {
    binary_data: Option<NoEcho<bool>>,
    classification: Option<NoEcho<u64>>,
    shared_memory_region: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct RequestParams {
    binary_data_output: Option<NoEcho<bool>>,
}

#[derive(Deserialize, Default)]
struct InputParams {
    binary_data_size: Option<NoEcho<u64>>,
    shared_memory_region: Option<IgnoredAny>,
}

/// A value of a type other than string, read so that a string in its place is refused without
/// being quoted back. `serde_json`'s own type error quotes the whole string, escaped (a 9 MiB
/// string of U+0080 made a 33 MB error, built inside the parse and sent back), so every place
/// of the request where a string does not belong is read through this or through a visitor of
/// ours that refuses strings with [`string_here`].
#[derive(Default)]
struct NoEcho<T>(T);

/// What a [`NoEcho`] value is, for its error message.
trait Expected {
    const WHAT: &'static str;
}

impl Expected for bool {
    const WHAT: &'static str = "a boolean";
}
impl Expected for u64 {
    const WHAT: &'static str = "a non-negative integer";
}
impl Expected for i64 {
    const WHAT: &'static str = "an integer";
}
impl Expected for OutputRequest {
    const WHAT: &'static str = "an output object";
}
impl Expected for OutputParams {
    const WHAT: &'static str = "a parameters object";
}
impl Expected for RequestParams {
    const WHAT: &'static str = "a parameters object";
}
impl Expected for InputParams {
    const WHAT: &'static str = "a parameters object";
}

impl<'de, T: Deserialize<'de> + Expected> Deserialize<'de> for NoEcho<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoEchoVisitor(std::marker::PhantomData))
            .map(NoEcho)
    }
}

/// Hands every JSON value but a string on to `T` as it came.
struct NoEchoVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de> + Expected> Visitor<'de> for NoEchoVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::WHAT)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        T::deserialize(de::value::BoolDeserializer::new(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::deserialize(de::value::I64Deserializer::new(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::deserialize(de::value::U64Deserializer::new(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        T::deserialize(de::value::F64Deserializer::new(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        T::deserialize(de::value::UnitDeserializer::new())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Err(string_here(v, &self))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::deserialize(de::value::SeqAccessDeserializer::new(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

/// The error for a string where `expected` belongs: it gives the string's length, never its
/// text.
fn string_here<E: de::Error>(v: &str, expected: &dyn de::Expected) -> E {
    E::invalid_type(
        de::Unexpected::Other(&format!("a string of {} bytes", v.len())),
        expected,
    )
}

enum ParseError {
    Json(serde_json::Error),
    TooManyImages,
    TooManyFloats,
}

/// The bounds the parser holds to, and which of them a request broke.
struct Parsed {
    max_images: usize,
    float_cap: usize,
    overflow: Cell<Option<Overflow>>,
}

#[derive(Clone, Copy)]
enum Overflow {
    Images,
    Floats,
}

impl Parsed {
    /// Parses `json` with at most `max_images` strings and `float_cap` numbers of tensor data,
    /// the numbers into one buffer of `float_cap` allocated when the first one is read; every
    /// other list is bounded too, and fields the protocol has but this model does not use are
    /// skipped without being kept.
    fn read(json: &[u8], max_images: usize, float_cap: usize) -> Result<Request, ParseError> {
        let ctx = Parsed {
            max_images,
            float_cap,
            overflow: Cell::new(None),
        };
        let mut de = serde_json::Deserializer::from_slice(json);
        let result = RequestSeed(&ctx)
            .deserialize(&mut de)
            .and_then(|request| de.end().map(|()| request));
        match (result, ctx.overflow.get()) {
            (_, Some(Overflow::Images)) => Err(ParseError::TooManyImages),
            (_, Some(Overflow::Floats)) => Err(ParseError::TooManyFloats),
            (Err(e), None) => Err(ParseError::Json(e)),
            (Ok(request), None) => Ok(request),
        }
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum RequestField {
    Id,
    Parameters,
    Inputs,
    Outputs,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum InputField {
    Name,
    Shape,
    Datatype,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

struct RequestSeed<'c>(&'c Parsed);

impl<'de> DeserializeSeed<'de> for RequestSeed<'_> {
    type Value = Request;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Request, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed<'_> {
    type Value = Request;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an inference request object")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Request, E> {
        Err(string_here(v, &self))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Request, A::Error> {
        let mut id: Option<String> = None;
        let mut params: Option<RequestParams> = None;
        let mut inputs: Option<Vec<Input>> = None;
        let mut outputs: Option<Vec<OutputRequest>> = None;
        while let Some(field) = map.next_key::<RequestField>()? {
            match field {
                RequestField::Id => {
                    once(id.is_some(), "id")?;
                    let value: String = map.next_value()?;
                    if value.len() > MAX_ID_BYTES {
                        return Err(de::Error::custom(format!(
                            "id is longer than {MAX_ID_BYTES} bytes"
                        )));
                    }
                    id = Some(value);
                }
                RequestField::Parameters => {
                    once(params.is_some(), "parameters")?;
                    params = Some(map.next_value::<NoEcho<RequestParams>>()?.0);
                }
                RequestField::Inputs => {
                    once(inputs.is_some(), "inputs")?;
                    inputs = Some(map.next_value_seed(InputsSeed(self.0))?);
                }
                RequestField::Outputs => {
                    once(outputs.is_some(), "outputs")?;
                    outputs = Some(map.next_value_seed(Bounded::<OutputRequest>::new(
                        MAX_OUTPUTS,
                        "outputs (this model has two)",
                    ))?);
                }
                RequestField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Request {
            id,
            binary_output: params
                .and_then(|p| p.binary_data_output)
                .is_some_and(|b| b.0),
            inputs: inputs.ok_or_else(|| de::Error::missing_field("inputs"))?,
            outputs,
        })
    }
}

/// Refuses a field given twice.
fn once<E: de::Error>(seen: bool, field: &'static str) -> Result<(), E> {
    if seen {
        Err(E::duplicate_field(field))
    } else {
        Ok(())
    }
}

struct InputsSeed<'c>(&'c Parsed);

impl<'de> DeserializeSeed<'de> for InputsSeed<'_> {
    type Value = Vec<Input>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Input>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for InputsSeed<'_> {
    type Value = Vec<Input>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of one input")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<Input>, E> {
        Err(string_here(v, &self))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Input>, A::Error> {
        let Some(input) = seq.next_element_seed(InputSeed(self.0))? else {
            return Ok(Vec::new());
        };
        // A second input is refused where it starts, before any of it is read.
        seq.next_element_seed(SecondInput)?;
        Ok(vec![input])
    }
}

/// Refuses whatever value comes, unread: the place of a second input.
struct SecondInput;

impl<'de> DeserializeSeed<'de> for SecondInput {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(de::Error::custom(format!(
            "this model takes exactly one input: '{IMAGE_INPUT}' (BYTES, encoded images) or '{TENSOR_INPUT}' (FP32, [N, 3, 64, 64])"
        )))
    }
}

struct InputSeed<'c>(&'c Parsed);

impl<'de> DeserializeSeed<'de> for InputSeed<'_> {
    type Value = Input;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Input, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for InputSeed<'_> {
    type Value = Input;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an input tensor object")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Input, E> {
        Err(string_here(v, &self))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Input, A::Error> {
        let mut name: Option<String> = None;
        let mut datatype: Option<String> = None;
        let mut shape: Option<Vec<i64>> = None;
        let mut params: Option<InputParams> = None;
        let mut data: Option<Data> = None;
        while let Some(field) = map.next_key::<InputField>()? {
            match field {
                InputField::Name => {
                    once(name.is_some(), "name")?;
                    name = Some(map.next_value()?);
                }
                InputField::Datatype => {
                    once(datatype.is_some(), "datatype")?;
                    datatype = Some(map.next_value()?);
                }
                InputField::Shape => {
                    once(shape.is_some(), "shape")?;
                    shape = Some(map.next_value_seed(Bounded::<i64>::new(MAX_DIMS, "dimensions"))?);
                }
                InputField::Parameters => {
                    once(params.is_some(), "parameters")?;
                    params = Some(map.next_value::<NoEcho<InputParams>>()?.0);
                }
                InputField::Data => {
                    once(data.is_some(), "data")?;
                    let mut elements = Data::Empty;
                    map.next_value_seed(DataSeed {
                        ctx: self.0,
                        out: &mut elements,
                        top: true,
                    })?;
                    data = Some(elements);
                }
                InputField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let params = params.unwrap_or_default();
        Ok(Input {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            binary_size: params.binary_data_size.map(|s| s.0),
            shared_memory: params.shared_memory_region.is_some(),
            data,
        })
    }
}

/// A list of at most `max` elements.
struct Bounded<T> {
    max: usize,
    what: &'static str,
    _of: std::marker::PhantomData<T>,
}

impl<T> Bounded<T> {
    fn new(max: usize, what: &'static str) -> Self {
        Self {
            max,
            what,
            _of: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de> + Expected> DeserializeSeed<'de> for Bounded<T> {
    type Value = Vec<T>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Deserialize<'de> + Expected> Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of at most {} {}", self.max, self.what)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
        Err(string_here(v, &self))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(NoEcho(value)) = seq.next_element()? {
            if out.len() == self.max {
                return Err(de::Error::custom(format!(
                    "more than {} {}",
                    self.max, self.what
                )));
            }
            out.push(value);
        }
        Ok(out)
    }
}

/// Tensor data, flat or nested, flattened into `out`; at the `top`, only a list.
struct DataSeed<'c, 'o> {
    ctx: &'c Parsed,
    out: &'o mut Data,
    top: bool,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// One element of tensor data: a value, or a nested list.
struct ElementSeed<'c, 'o> {
    ctx: &'c Parsed,
    out: &'o mut Data,
}

impl<'de> DeserializeSeed<'de> for ElementSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(DataSeed {
            ctx: self.ctx,
            out: self.out,
            top: false,
        })
    }
}

/// Base64 as JSON clients send it: the standard alphabet, padded or not.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

impl DataSeed<'_, '_> {
    fn number<E: de::Error>(self, v: f64) -> Result<(), E> {
        if self.top {
            return Err(E::invalid_type(de::Unexpected::Float(v), &self));
        }
        let cap = self.ctx.float_cap;
        if let Data::Empty = self.out {
            *self.out = Data::Floats(Vec::with_capacity(cap));
        }
        let Data::Floats(floats) = self.out else {
            return Err(E::custom("tensor data mix strings and numbers"));
        };
        if floats.len() == cap {
            self.ctx.overflow.set(Some(Overflow::Floats));
            return Err(E::custom("too many values"));
        }
        floats.push(v as f32);
        Ok(())
    }
}

impl<'de> Visitor<'de> for DataSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("tensor data: numbers, or base64 strings, in a list (flat or nested)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(ElementSeed {
                ctx: self.ctx,
                out: &mut *self.out,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.number(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.number(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.number(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.top {
            return Err(string_here(v, &self));
        }
        if let Data::Empty = self.out {
            *self.out = Data::Bytes(Vec::new());
        }
        let Data::Bytes(files) = self.out else {
            return Err(E::custom("tensor data mix strings and numbers"));
        };
        let max = self.ctx.max_images;
        if files.len() == max {
            self.ctx.overflow.set(Some(Overflow::Images));
            return Err(E::custom("too many images"));
        }
        let bytes = BASE64.decode(v).map_err(|e| {
            E::custom(format!(
                "element {} of input '{IMAGE_INPUT}' is not base64 ({e}): in JSON, each element is an image file in base64",
                files.len()
            ))
        })?;
        files.push(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `/v2` request schema names exactly the inputs, datatypes and outputs the server
    /// takes, so that a request the document allows is not refused for its names (the
    /// constants in `v2` are what the server compares with).
    #[test]
    fn the_v2_request_schema_enumerates_what_the_server_takes() {
        let doc = serde_json::to_value(<V2Api as utoipa::OpenApi>::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let enumerated = |name: &str| schemas[name]["enum"].clone();
        assert_eq!(
            enumerated("ImageInputName"),
            serde_json::json!([IMAGE_INPUT])
        );
        assert_eq!(
            enumerated("TensorInputName"),
            serde_json::json!([TENSOR_INPUT])
        );
        assert_eq!(enumerated("BytesDatatype"), serde_json::json!(["BYTES"]));
        assert_eq!(enumerated("Fp32Datatype"), serde_json::json!(["FP32"]));
        assert_eq!(
            enumerated("OutputName"),
            serde_json::json!([LOGITS, PROBABILITIES])
        );
        // An input is one of the two forms, each tying its name to its datatype.
        let forms = schemas["InferInput"]["oneOf"].as_array().unwrap();
        assert_eq!(forms.len(), 2, "{}", schemas["InferInput"]);
    }

    use crate::ops::memory::{ANSWER_BYTES_PER_IMAGE, ANSWER_FIXED_BYTES};

    /// The largest `/v2` answer for `n` images (the longest `id`, of characters JSON writes as
    /// six bytes; both outputs as numbers of the longest form, or as classifications of all
    /// ten classes) fits what the memory bound counts for an answer of `n` images.
    #[test]
    fn the_largest_answer_fits_the_memory_bound() {
        let n = 64;
        let id = Some("\u{1}".repeat(MAX_ID_BYTES));
        // The longest texts f32 values print as (Rust writes them without an exponent).
        let row = [
            -1.175_494_2e-38f32,
            1.0 / 3.0,
            -2e-9,
            -0.123_456_79,
            -3.4e38,
            0.1,
            0.2,
            0.3,
            0.4,
            0.5,
        ];
        let scores = Scores {
            logits: row.repeat(n),
            probabilities: row.repeat(n),
        };
        for (classification, binary) in [
            (None, false),
            (Some(NUM_CLASSES), false),
            (None, true),
            (Some(NUM_CLASSES), true),
        ] {
            let wanted: Vec<Wanted> = [true, false]
                .into_iter()
                .map(|logits| Wanted {
                    logits,
                    classification,
                    binary,
                })
                .collect();
            let res = respond(id.clone(), "v".repeat(80), &wanted, &scores, n);
            let body = actix_web::rt::System::new()
                .block_on(actix_web::body::to_bytes(res.into_body()))
                .unwrap();
            let bound = ANSWER_FIXED_BYTES + n as u64 * ANSWER_BYTES_PER_IMAGE;
            assert!(body.len() as u64 <= bound, "{} bytes", body.len());
        }
    }
}
