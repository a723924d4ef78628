//! The protocol over gRPC: `inference.GRPCInferenceService` (Triton's and `KServe`'s service, as
//! `tritonclient[grpc]` and `KServe`'s `grpc-v2` runtimes call it). The same checks, engine,
//! image permits, decode budget and versions as the HTTP form: only the envelope differs. Inputs
//! come as `raw_input_contents` (what `tritonclient` sends: `BYTES` as 4-byte little-endian
//! lengths and bytes, `FP32` as little-endian floats) or typed `contents`; every output goes
//! back in `raw_output_contents`, in the order of `outputs` (what `tritonclient` reads). The
//! server it runs in is [`crate::grpc`].

use std::time::Duration;

use actix_web::web;
use model::IMAGE_FLOATS;
use model::inference::Scores;
use prost::bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::infer::{
    Output, Wanted, admit, append_binary, check_count, decode_files, files_count, finite,
    floats_from_le, output, tensor_count, want,
};
use super::metadata::{check_name, model_metadata_of, served_as};
use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::{self, infer_parameter::ParameterChoice};
use super::request::Input;
use super::{EXTENSIONS, IMAGE_INPUT, TENSOR_INPUT, V2Error, extensions, quote, tensor};
use crate::AppState;
use crate::http::problem::ApiError;
use crate::ingest::upload::Uploads;

/// What a request's message was charged on the body budget while it arrived (put in its
/// extensions by [`crate::grpc`]'s meter), held until its answer is sent.
#[derive(Clone, Default)]
pub struct Charge(pub std::sync::Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>);

impl Charge {
    fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// The service, over the server's one shared state.
pub struct Service {
    state: web::Data<AppState>,
}

impl Service {
    /// The service answering from `state` (the HTTP server's own).
    pub fn new(state: web::Data<AppState>) -> Self {
        Self { state }
    }

    /// `error` as a status, counted in the metrics by its kind as HTTP counts it.
    fn fail(&self, error: &V2Error) -> Status {
        use actix_web::ResponseError;
        let kind = error.kind();
        self.state.metrics.error(kind);
        let code = error.status_code().as_u16();
        if (400..500).contains(&code) || code == 503 {
            self.state.metrics.refusal(kind);
        }
        status(error)
    }
}

/// A protocol error as a gRPC status: 400 → `INVALID_ARGUMENT`, 404 → `NOT_FOUND`, a request
/// over `--max-files` or `--decode-memory` → `RESOURCE_EXHAUSTED`, no room now →
/// `UNAVAILABLE` with a `RetryInfo` of one second, the model late → `DEADLINE_EXCEEDED`.
pub fn status(error: &V2Error) -> Status {
    use actix_web::ResponseError;
    let message = crate::http::problem::detail(error);
    let code = match error {
        V2Error::Api(ApiError::Timeout | ApiError::RequestTimeout(_)) => Code::DeadlineExceeded,
        V2Error::Api(ApiError::Overloaded) => {
            return Status::with_error_details(
                Code::Unavailable,
                message,
                ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            );
        }
        _ => match error.status_code().as_u16() {
            400 | 415 | 422 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            404 => Code::NotFound,
            413 => Code::ResourceExhausted,
            503 => Code::Unavailable,
            _ => Code::Internal,
        },
    };
    Status::new(code, message)
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _: Request<proto::ServerLiveRequest>,
    ) -> Answer<proto::ServerLiveResponse> {
        Ok(Response::new(proto::ServerLiveResponse {
            live: self.state.engine.is_alive(),
        }))
    }

    async fn server_ready(
        &self,
        _: Request<proto::ServerReadyRequest>,
    ) -> Answer<proto::ServerReadyResponse> {
        Ok(Response::new(proto::ServerReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<proto::ModelReadyRequest>,
    ) -> Answer<proto::ModelReadyResponse> {
        let r = request.get_ref();
        served_as(&self.state, &r.name, Some(&r.version)).map_err(|e| self.fail(&e))?;
        Ok(Response::new(proto::ModelReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<proto::ServerMetadataRequest>,
    ) -> Answer<proto::ServerMetadataResponse> {
        Ok(Response::new(proto::ServerMetadataResponse {
            name: super::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| (*e).to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<proto::ModelMetadataRequest>,
    ) -> Answer<proto::ModelMetadataResponse> {
        let r = request.get_ref();
        let version =
            served_as(&self.state, &r.name, Some(&r.version)).map_err(|e| self.fail(&e))?;
        let meta = model_metadata_of(&self.state, version);
        let tensors = |t: Vec<super::TensorMetadata>| {
            t.into_iter()
                .map(|t| proto::model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(proto::ModelMetadataResponse {
            name: meta.name,
            versions: meta.versions,
            platform: meta.platform,
            inputs: tensors(meta.inputs),
            outputs: tensors(meta.outputs),
        }))
    }

    async fn model_config(
        &self,
        request: Request<proto::ModelConfigRequest>,
    ) -> Answer<proto::ModelConfigResponse> {
        let r = request.get_ref();
        served_as(&self.state, &r.name, Some(&r.version)).map_err(|e| self.fail(&e))?;
        Ok(Response::new(proto::ModelConfigResponse {
            config: Some(extensions::config(&self.state)),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<proto::ModelStatisticsRequest>,
    ) -> Answer<proto::ModelStatisticsResponse> {
        let r = request.get_ref();
        let model_stats = extensions::statistics_for(&self.state, &r.name, &r.version)
            .map_err(|e| self.fail(&e))?;
        Ok(Response::new(proto::ModelStatisticsResponse {
            model_stats,
        }))
    }

    async fn model_infer(
        &self,
        request: Request<proto::ModelInferRequest>,
    ) -> Answer<proto::ModelInferResponse> {
        let charge = request.extensions().get::<Charge>().and_then(Charge::take);
        infer(&self.state, request.into_inner(), charge)
            .await
            .map(Response::new)
            .map_err(|e| self.fail(&e))
    }
}

/// Runs one request: checked as the HTTP form checks it, its images admitted and run by the
/// engine; `charge` (the message's bytes on the body budget) is held until the answer.
async fn infer(
    state: &AppState,
    request: proto::ModelInferRequest,
    charge: Option<OwnedSemaphorePermit>,
) -> Result<proto::ModelInferResponse, V2Error> {
    let deadline = Instant::now() + state.config.request_timeout;
    // Split at once: the parameters are dropped here, the outputs once read, and typed
    // contents as soon as the raw data are known to be the input's.
    let proto::ModelInferRequest {
        model_name,
        model_version,
        id,
        inputs,
        outputs,
        raw_input_contents,
        ..
    } = request;
    check_name(state, &model_name)?;
    if id.len() > super::MAX_ID_BYTES {
        return Err(V2Error::BadRequest(format!(
            "the request id is {} bytes; at most {} are taken",
            id.len(),
            super::MAX_ID_BYTES
        )));
    }
    let version = Some(model_version.as_str()).filter(|v| !v.is_empty());
    let wanted = wanted(outputs)?;
    // At most one of each: the codec counted them (`super::wire`).
    let Some(tensor_in) = inputs.into_iter().next() else {
        return Err(V2Error::BadRequest(format!(
            "no input: send '{IMAGE_INPUT}' (BYTES, encoded images) or '{TENSOR_INPUT}' (FP32, [N, 3, 64, 64])"
        )));
    };
    if tensor_in.parameters.contains_key("shared_memory_region") {
        return Err(V2Error::BadRequest(
            "shared memory is not supported: send the data in the request".into(),
        ));
    }
    let contents = tensor_in.contents.unwrap_or_default();
    let raw = raw_input_contents.into_iter().next();
    let has_contents = !contents.bytes_contents.is_empty() || !contents.fp32_contents.is_empty();
    if raw.is_some() && has_contents {
        return Err(V2Error::BadRequest(format!(
            "input '{}' has both contents and raw_input_contents: send one",
            quote(&tensor_in.name)
        )));
    }
    let input = Input {
        name: tensor_in.name,
        datatype: tensor_in.datatype,
        shape: tensor_in.shape,
        binary_size: None,
        shared_memory: false,
        data: None,
    };
    let max_images = state.config.upload.files;
    let (images, admitted, pixels) = if input.name == IMAGE_INPUT {
        let n = files_count(&input, max_images)?;
        let files: Vec<Vec<u8>> = match raw {
            Some(raw) => {
                let files = tensor::split_bytes(&raw, max_images)?;
                check_count(&input, n, files.len(), max_images)?;
                files
            }
            None if !contents.bytes_contents.is_empty() => {
                // Counted before anything is copied.
                check_count(&input, n, contents.bytes_contents.len(), max_images)?;
                contents
                    .bytes_contents
                    .into_iter()
                    .map(|b: Bytes| b.to_vec())
                    .collect()
            }
            None => return Err(no_data(&input.name)),
        };
        let (admitted, pixels) = decode_files(state, version, 1, files, deadline, |files| {
            Uploads::new(files, charge)
        })
        .await?;
        (n, admitted, pixels)
    } else if input.name == TENSOR_INPUT {
        let count = tensor_count(&input, max_images)?;
        let n = count / IMAGE_FLOATS;
        let bytes = count as u64 * 4;
        let limit = state.decode_budget.limit();
        if bytes > limit {
            return Err(V2Error::TensorTooLarge {
                needed: bytes,
                limit,
            });
        }
        let mismatch = |got: usize| {
            V2Error::BadRequest(format!(
                "input '{TENSOR_INPUT}' has shape {:?} ({count} values) but {got} values",
                input.shape
            ))
        };
        let (floats, admitted, reserved) = match raw {
            Some(raw) => {
                if raw.len() != count * 4 {
                    return Err(mismatch(raw.len() / 4));
                }
                floats_from_le(state, version, 1, &raw, deadline).await?
            }
            None if !contents.fp32_contents.is_empty() => {
                let floats = contents.fp32_contents;
                if floats.len() != count {
                    return Err(mismatch(floats.len()));
                }
                let admitted = admit(state, version, n)?;
                let reserved = state.decode_budget.reserve(bytes, deadline).await?;
                (floats, admitted, reserved)
            }
            None => return Err(no_data(&input.name)),
        };
        // The floats are copied out (and paid for from the decode budget): the message's
        // bytes are let go.
        drop(charge);
        (
            n,
            admitted,
            crate::inference::engine::Pixels::Floats(finite(floats)?, reserved),
        )
    } else {
        return Err(V2Error::BadRequest(super::request::unknown_input(&quote(
            &input.name,
        ))));
    };
    let (scores, answered) = state.engine.scores(pixels, admitted, deadline).await?;
    Ok(respond(
        state.config.model_name.clone(),
        answered.version.label.clone(),
        id,
        &wanted,
        &scores,
        images,
    ))
}

/// The outputs asked for (both, when none is named), checked as the HTTP form checks them.
fn wanted(
    outputs: Vec<proto::model_infer_request::InferRequestedOutputTensor>,
) -> Result<Vec<Wanted>, V2Error> {
    let mut wanted = Vec::with_capacity(outputs.len());
    for output in outputs {
        if output.parameters.contains_key("shared_memory_region") {
            return Err(V2Error::BadRequest(
                "shared memory is not supported: the outputs come in raw_output_contents".into(),
            ));
        }
        let classification = match output
            .parameters
            .get("classification")
            .and_then(|p| p.parameter_choice.as_ref())
        {
            None => None,
            Some(ParameterChoice::Int64Param(k)) => Some(u64::try_from(*k).unwrap_or(0)),
            Some(ParameterChoice::Uint64Param(k)) => Some(*k),
            Some(_) => {
                return Err(V2Error::BadRequest(format!(
                    "output '{}': classification is a number of classes (int64_param)",
                    quote(&output.name)
                )));
            }
        };
        want(&mut wanted, &output.name, classification, true)?;
    }
    if wanted.is_empty() {
        wanted = [true, false]
            .into_iter()
            .map(|logits| Wanted {
                logits,
                classification: None,
                binary: true,
            })
            .collect();
    }
    Ok(wanted)
}

/// The answer: every output asked for, its data in `raw_output_contents` in the same order
/// (what `tritonclient` reads): `FP32` as little-endian floats, classifications as `BYTES`.
fn respond(
    model_name: String,
    model_version: String,
    id: String,
    wanted: &[Wanted],
    scores: &Scores,
    images: usize,
) -> proto::ModelInferResponse {
    let mut outputs = Vec::with_capacity(wanted.len());
    let mut raw_output_contents = Vec::with_capacity(wanted.len());
    for w in wanted {
        let Output {
            name,
            datatype,
            shape,
            data,
        } = output(w, scores, images);
        let mut raw = Vec::new();
        append_binary(&data, &mut raw);
        outputs.push(proto::model_infer_response::InferOutputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.into_iter().map(|d| d as i64).collect(),
            ..Default::default()
        });
        raw_output_contents.push(Bytes::from(raw));
    }
    proto::ModelInferResponse {
        model_name,
        model_version,
        id,
        outputs,
        raw_output_contents,
        ..Default::default()
    }
}

fn no_data(name: &str) -> V2Error {
    V2Error::BadRequest(format!(
        "input '{name}' has no data: send it in raw_input_contents or contents"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::memory::{GRPC_ANSWER_BYTES_PER_IMAGE, GRPC_ANSWER_FIXED_BYTES};
    use model::NUM_CLASSES;
    use prost::Message;

    /// The largest gRPC answer for 64 images (the longest `id` and model name, both outputs
    /// as numbers, or as classifications of all ten classes with the longest values Rust
    /// writes for an f32) fits what the memory bound counts for an unread answer.
    #[test]
    fn the_largest_answer_fits_the_memory_bound() {
        let n = 64;
        let row = [
            -1.175_494_2e-38f32,
            1.0 / 3.0,
            -2e-9,
            -0.123_456_79,
            -3.4e38,
            -1.175_494_2e-37,
            0.2,
            0.3,
            0.4,
            0.5,
        ];
        let scores = Scores {
            logits: row.repeat(n),
            probabilities: row.repeat(n),
        };
        for classification in [None, Some(NUM_CLASSES)] {
            let wanted: Vec<Wanted> = [true, false]
                .into_iter()
                .map(|logits| Wanted {
                    logits,
                    classification,
                    binary: true,
                })
                .collect();
            let answer = respond(
                "m".repeat(64),
                "v".repeat(80),
                "i".repeat(super::super::MAX_ID_BYTES),
                &wanted,
                &scores,
                n,
            );
            let bound = GRPC_ANSWER_FIXED_BYTES + n as u64 * GRPC_ANSWER_BYTES_PER_IMAGE;
            let len = answer.encoded_len() as u64;
            assert!(len <= bound, "{len} bytes over {bound}");
        }
    }
}
