//! The protocol's JSON shapes: those the server writes (metadata, readiness, the inference
//! response) and those documented only (the request, which [`super::request`] reads).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ErrorBody;

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
    /// Explain requests only: `gradcam` (the default), `occlusion`, `saliency` or
    /// `integrated-gradients`.
    #[schema(max_length = 64)]
    method: Option<String>,
    /// Explain requests only: the class to explain, by name or index (the predicted class by
    /// default).
    target: Option<crate::api::explain::ClassName>,
    /// Explain requests only: integrated gradients' steps (1 to `--explain-max-steps`).
    #[schema(minimum = 1)]
    steps: Option<u64>,
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

#[cfg(test)]
mod tests {
    use super::super::*;

    /// The `/v2` request schema names exactly the inputs, datatypes and outputs the server
    /// takes, so that a request the document allows is not refused for its names (the
    /// constants in `v2` are what the server compares with).
    #[test]
    fn the_v2_request_schema_enumerates_what_the_server_takes() {
        let doc =
            serde_json::to_value(<crate::api::v2::V2Api as utoipa::OpenApi>::openapi()).unwrap();
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
}
