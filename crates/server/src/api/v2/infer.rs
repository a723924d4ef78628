//! `POST /v2/models/{name}/infer`: the body read within its bounds, the input checked against
//! the model and read ([`super::request`], [`super::tensor`]), its images admitted to the engine,
//! and the outputs answered as JSON or binary data.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use model::inference::Scores;
use model::{CLASSES, IMAGE_FLOATS, INPUT_SIZE, NUM_CLASSES};
use tokio::time::Instant;

use std::ops::Range;

use super::metadata::served;
use super::request::{self, Input, Request};
use super::tensor;
use super::types::{
    InferProblems, InferRequest, InferResponse, ModelName, ModelVersion, OutputData, OutputTensor,
    OutputTensorParameters,
};
use super::{
    CHANNELS, HEADER_LENGTH, IMAGE_INPUT, INLINE_PARSE_BYTES, LOGITS, PROBABILITIES, TENSOR_INPUT,
    V2Error, quote,
};
use crate::AppState;
use crate::http::body;
use crate::http::problem::ApiError;
use crate::http::resource;
use crate::inference::engine::{Admission, Pixels};
use crate::ingest::decode;
use crate::ingest::upload::{Body, Upload};

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
pub(super) async fn infer(
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
pub(super) async fn version_infer(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, V2Error> {
    run(&state, &req, payload).await
}

/// An output to send back.
pub(super) struct Wanted {
    /// The logits (else the probabilities).
    pub logits: bool,
    /// As the classification extension's best `k` classes.
    pub classification: Option<usize>,
    /// In the binary part of the answer.
    pub binary: bool,
}

async fn run(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, V2Error> {
    let (received, request) = receive(state, req, payload).await?;
    let wanted = wanted(&request)?;
    let deadline = received.deadline;
    let (images, admitted, pixels) = received.read(state, req, request.input, 1).await?;
    // The version is that of the model which answered: the one current at admission
    // ([`admit`] checked it against the one asked for).
    let (scores, answered) = state.engine.scores(pixels, admitted, deadline).await?;
    let version = answered.version.label.clone();
    Ok(respond(
        state.config.model_name.clone(),
        request.id,
        version,
        &wanted,
        &scores,
        images,
    ))
}

/// A request's body, read within its bounds, and its deadline.
pub(super) struct Received {
    body: Body,
    /// The JSON part's length (the rest is binary tensor data).
    json_len: usize,
    /// The request's one deadline.
    pub deadline: Instant,
}

/// Reads a request to the model at the request's path (infer or explain): its body within
/// the body limits and its JSON envelope.
pub(super) async fn receive(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<(Received, Request), V2Error> {
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
    let body = tokio::time::timeout_at(
        deadline,
        body::read_whole(req, payload, state.config.upload.body, &state.body_budget),
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
    let (body, request) = off_worker(body, json_len, move |body| {
        request::read(&body.bytes[..json_len])
    })
    .await?;
    let request =
        request.map_err(|e| V2Error::BadRequest(format!("malformed inference request: {e}")))?;
    Ok((
        Received {
            body,
            json_len,
            deadline,
        },
        request,
    ))
}

impl Received {
    /// Reads `input` (the request's one input) into images admitted to the engine, with
    /// `per_image` image permits each: the number of images, their admission and pixels.
    pub(super) async fn read(
        self,
        state: &AppState,
        req: &HttpRequest,
        input: Option<Input>,
        per_image: usize,
    ) -> Result<(usize, Admission, Pixels), V2Error> {
        let input = input.ok_or_else(|| {
            V2Error::BadRequest(format!(
                "no input: send '{IMAGE_INPUT}' (BYTES, encoded images) or '{TENSOR_INPUT}' (FP32, [N, 3, 64, 64])"
            ))
        })?;
        let inputs = Inputs {
            state,
            req,
            body: self.body,
            json_len: self.json_len,
            deadline: self.deadline,
            per_image,
        };
        if input.name == IMAGE_INPUT {
            inputs.images(input).await
        } else if input.name == TENSOR_INPUT {
            inputs.tensor(input).await
        } else {
            Err(V2Error::BadRequest(request::unknown_input(&quote(
                &input.name,
            ))))
        }
    }
}

/// Runs `f` on `body`: right here for a small one (tens of microseconds), on the blocking pool
/// for one of more than [`INLINE_PARSE_BYTES`], so that a large request never stalls an async
/// worker. Gives the body back.
async fn off_worker<T: Send + 'static>(
    body: Body,
    len: usize,
    f: impl FnOnce(&Body) -> T + Send + 'static,
) -> Result<(Body, T), V2Error> {
    if len <= INLINE_PARSE_BYTES {
        let out = f(&body);
        return Ok((body, out));
    }
    web::block(move || {
        let out = f(&body);
        (body, out)
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

/// Parses an inference request's JSON as `POST /v2/models/{name}/infer` does: the envelope,
/// the outputs it asks for, the input's shape (at most `max_images` images), and its data in
/// JSON, kept only up to what the shape says (at most `max_floats` numbers); the error is the
/// text a client gets, before the reply's cut. For the fuzzer (`fuzz/fuzz_targets/v2_json.rs`):
/// no input may panic it, break its bounds, or make an error that grows with the input.
pub fn parse_request(
    json: &[u8],
    max_images: usize,
    max_floats: usize,
) -> Result<ParsedRequest, String> {
    let text = |e: V2Error| e.to_string();
    let request = request::read(json).map_err(|e| format!("malformed inference request: {e}"))?;
    let outputs = wanted(&request).map_err(text)?.len();
    let (mut images, mut floats) = (0, 0);
    if let Some(input) = request.input
        && let Some(data) = input.data.clone()
    {
        let data = &json[data];
        match input.name.as_str() {
            IMAGE_INPUT => {
                let n = files_count(&input, max_images).map_err(text)?;
                let (files, seen) = tensor::files(data, n).map_err(text)?;
                check_count(&input, n, seen, max_images).map_err(text)?;
                images = files.len();
            }
            TENSOR_INPUT => {
                let count = tensor_count(&input, max_images)
                    .map_err(text)?
                    .min(max_floats);
                let (kept, _) =
                    tensor::floats(data, count, could_hold(data, count)).map_err(text)?;
                floats = kept.len();
            }
            _ => {}
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
pub(super) fn admit(
    state: &AppState,
    version: Option<&str>,
    n: usize,
) -> Result<Admission, V2Error> {
    let admitted = state.engine.admit(n)?;
    if let Some(asked) = version.filter(|v| !v.is_empty())
        && asked != admitted.served().version.label
    {
        return Err(super::metadata::unknown_version(state, asked));
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
        let params = &output.parameters.0;
        if params.shared_memory_region.is_some() {
            return Err(V2Error::BadRequest(
                "shared memory is not supported: ask for binary_data instead".into(),
            ));
        }
        want(
            &mut wanted,
            &output.name,
            params.classification.as_ref().map(|k| k.0),
            params
                .binary_data
                .as_ref()
                .map_or(request.binary_output, |b| b.0),
        )?;
    }
    if wanted.is_empty() {
        return Err(V2Error::BadRequest(format!(
            "no output asked for: name '{LOGITS}' or '{PROBABILITIES}', or leave 'outputs' out for both"
        )));
    }
    Ok(wanted)
}

/// Adds the output `name` to `wanted`, checked: a known output, asked once, with a
/// classification of 1 to 10 classes if any.
pub(super) fn want(
    wanted: &mut Vec<Wanted>,
    name: &str,
    classification: Option<u64>,
    binary: bool,
) -> Result<(), V2Error> {
    let logits = match name {
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
            "output '{name}' is asked for twice"
        )));
    }
    let classification = match classification {
        None => None,
        Some(k) if (1..=NUM_CLASSES as u64).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(V2Error::BadRequest(format!(
                "output '{name}': classification must ask for 1 to {NUM_CLASSES} classes, not {k}"
            )));
        }
    };
    wanted.push(Wanted {
        logits,
        classification,
        binary,
    });
    Ok(())
}

/// Where an input's data are in the body: in the JSON, or its binary part.
enum Data {
    Json(Range<usize>),
    Binary(Range<usize>),
}

/// The numbers of images a shape holds, checked against `--max-files`.
pub(super) fn image_count(shape: &[i64], max_images: usize) -> Result<usize, V2Error> {
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

/// The images of the `image` input: its shape checked, their number returned.
pub(super) fn files_count(input: &Input, max_images: usize) -> Result<usize, V2Error> {
    expect_datatype(input, "BYTES")?;
    let shape = &input.shape;
    let n = image_count(shape, max_images)?;
    if !(shape.len() == 1 || shape.len() == 2 && shape[1] == 1) {
        return Err(V2Error::BadRequest(format!(
            "input '{IMAGE_INPUT}' has shape [N] or [N, 1], not {shape:?}"
        )));
    }
    Ok(n)
}

/// The numbers of the `input` input: its shape checked, their number returned.
pub(super) fn tensor_count(input: &Input, max_images: usize) -> Result<usize, V2Error> {
    expect_datatype(input, "FP32")?;
    let shape = &input.shape;
    let n = image_count(shape, max_images)?;
    let side = INPUT_SIZE as i64;
    if shape.len() != 4 || shape[1..] != [CHANNELS as i64, side, side] {
        return Err(V2Error::BadRequest(format!(
            "input '{TENSOR_INPUT}' has shape [N, {CHANNELS}, {side}, {side}], not {shape:?}"
        )));
    }
    Ok(n * IMAGE_FLOATS)
}

/// Whether JSON `data` are long enough to hold `count` numbers (each a digit and a comma at
/// least): only then is room for them reserved, so that a request whose shape promises more
/// than it sends costs nothing but its parse.
fn could_hold(data: &[u8], count: usize) -> bool {
    data.len() > 2 * count
}

/// Checks the number of images sent against the shape's, and `--max-files`.
pub(super) fn check_count(
    input: &Input,
    n: usize,
    seen: usize,
    max_images: usize,
) -> Result<(), V2Error> {
    if seen > max_images {
        return Err(V2Error::TooManyImages {
            got: Some(seen),
            limit: max_images,
        });
    }
    if seen != n {
        return Err(V2Error::BadRequest(format!(
            "input '{IMAGE_INPUT}' has shape {:?} but {seen} elements",
            input.shape
        )));
    }
    Ok(())
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

/// One request's input being read: the body it came in and what reading it may take.
struct Inputs<'a> {
    state: &'a AppState,
    req: &'a HttpRequest,
    body: Body,
    json_len: usize,
    deadline: Instant,
    /// Image permits each image takes (more than one for an explanation by occlusion).
    per_image: usize,
}

impl Inputs<'_> {
    /// Where `input`'s data are.
    fn data(&self, input: &Input) -> Result<Data, V2Error> {
        if input.shared_memory {
            return Err(V2Error::BadRequest(
                "shared memory is not supported: send the data in the request".into(),
            ));
        }
        let binary = &self.body.bytes[self.json_len..];
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
            (Some(_), None) => Ok(Data::Binary(self.json_len..self.body.bytes.len())),
            (None, _) if !binary.is_empty() => Err(V2Error::BadRequest(format!(
                "{} bytes follow the JSON, but no input has binary_data_size",
                binary.len()
            ))),
            (None, Some(span)) => Ok(Data::Json(span.clone())),
            (None, None) => Err(V2Error::BadRequest(format!(
                "input '{}' has no data (neither 'data' nor parameters.binary_data_size)",
                input.name
            ))),
        }
    }

    /// The `image` input: encoded files, decoded within the decode budget.
    async fn images(self, input: Input) -> Result<(usize, Admission, Pixels), V2Error> {
        let max_images = self.state.config.upload.files;
        let n = files_count(&input, max_images)?;
        let data = self.data(&input)?;
        let Inputs {
            state,
            req,
            body,
            deadline,
            per_image,
            ..
        } = self;
        let (body, files) = match data {
            Data::Binary(span) => {
                let files = tensor::split_bytes(&body.bytes[span], max_images)?;
                check_count(&input, n, files.len(), max_images)?;
                (body, files)
            }
            Data::Json(span) => {
                let (body, read) = off_worker(body, span.len(), move |body| {
                    tensor::files(&body.bytes[span], n)
                })
                .await?;
                let (files, seen) = read?;
                check_count(&input, n, seen, max_images)?;
                (body, files)
            }
        };
        let version = req.match_info().get("version");
        // The files keep the body's charge on the body budget; the body's own bytes are freed.
        let (admitted, pixels) =
            decode_files(state, version, per_image, files, deadline, |files| {
                body.into_uploads(files)
            })
            .await?;
        Ok((n, admitted, pixels))
    }

    /// The `input` input: preprocessed floats, paid for from the decode budget (exactly what
    /// the shape says) before they are read, and held until the model has run.
    async fn tensor(self, input: Input) -> Result<(usize, Admission, Pixels), V2Error> {
        let count = tensor_count(&input, self.state.config.upload.files)?;
        let data = self.data(&input)?;
        let Inputs {
            state,
            req,
            body,
            deadline,
            per_image,
            ..
        } = self;
        let n = count / IMAGE_FLOATS;
        let bytes = count as u64 * 4;
        let mismatch = |got: usize| {
            V2Error::BadRequest(format!(
                "input '{TENSOR_INPUT}' has shape {:?} ({count} values) but {got} values",
                input.shape
            ))
        };
        let limit = state.decode_budget.limit();
        let too_large = V2Error::TensorTooLarge {
            needed: bytes,
            limit,
        };
        let (floats, admitted, reserved) = match data {
            Data::Binary(span) => {
                if span.len() != count * 4 {
                    return Err(mismatch(span.len() / 4));
                }
                if bytes > limit {
                    return Err(too_large);
                }
                let version = req.match_info().get("version");
                floats_from_le(state, version, per_image, &body.bytes[span], deadline).await?
            }
            Data::Json(span) => {
                let keep = could_hold(&body.bytes[span.clone()], count);
                if keep && bytes > limit {
                    return Err(too_large);
                }
                let reserved = if keep {
                    Some(state.decode_budget.reserve(bytes, deadline).await?)
                } else {
                    None
                };
                let (body, read) = off_worker(body, span.len(), move |body| {
                    tensor::floats(&body.bytes[span], count, keep)
                })
                .await?;
                drop(body);
                let (floats, seen) = read?;
                let reserved = match reserved {
                    Some(reserved) if seen == count => reserved,
                    _ => return Err(mismatch(seen)),
                };
                let admitted = admit(state, req.match_info().get("version"), n * per_image)?;
                (floats, admitted, reserved)
            }
        };
        let floats = finite(floats)?;
        Ok((n, admitted, Pixels::Floats(floats, reserved)))
    }
}

/// Encoded image files, none empty, admitted under `version` (`per_image` permits each) and
/// decoded within the decode budget; `uploads` makes them [`Uploads`](crate::ingest::upload::Uploads) holding what
/// their bytes are charged to.
pub(super) async fn decode_files(
    state: &AppState,
    version: Option<&str>,
    per_image: usize,
    files: Vec<Vec<u8>>,
    deadline: Instant,
    uploads: impl FnOnce(Vec<Upload>) -> crate::ingest::upload::Uploads,
) -> Result<(Admission, Pixels), V2Error> {
    if let Some(index) = files.iter().position(Vec::is_empty) {
        return Err(V2Error::Element {
            index,
            error: ApiError::EmptyFile(index.to_string()),
        });
    }
    let n = files.len();
    let admitted = admit(state, version, n * per_image)?;
    let uploads = uploads(
        files
            .into_iter()
            .map(|bytes| Upload {
                filename: None,
                bytes,
            })
            .collect(),
    );
    let prepared =
        decode::prepare(state.preprocessor, &state.decode_budget, uploads, deadline).await?;
    let mut pixels = Vec::with_capacity(n * model::IMAGE_BYTES);
    for (index, (_, image)) in prepared.into_iter().enumerate() {
        match image {
            Ok(image) => pixels.extend_from_slice(&image),
            Err(error) => {
                return Err(V2Error::Element {
                    index,
                    error: error.into(),
                });
            }
        }
    }
    Ok((admitted, Pixels::Rgb(pixels)))
}

/// Raw little-endian floats (whole images, their length checked by the caller, no more than
/// the decode budget), admitted under `version` (`per_image` permits each) and paid for from the decode budget before
/// they are copied out.
pub(super) async fn floats_from_le(
    state: &AppState,
    version: Option<&str>,
    per_image: usize,
    raw: &[u8],
    deadline: Instant,
) -> Result<(Vec<f32>, Admission, tokio::sync::OwnedSemaphorePermit), V2Error> {
    let admitted = admit(state, version, raw.len() / 4 / IMAGE_FLOATS * per_image)?;
    let reserved = state
        .decode_budget
        .reserve(raw.len() as u64, deadline)
        .await?;
    let floats: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((floats, admitted, reserved))
}

pub(super) fn finite(floats: Vec<f32>) -> Result<Vec<f32>, V2Error> {
    match floats.iter().position(|v| !v.is_finite()) {
        None => Ok(floats),
        Some(at) => Err(V2Error::BadRequest(format!(
            "input '{TENSOR_INPUT}': value {at} is not a finite number"
        ))),
    }
}

/// The response: JSON, or JSON followed by the binary outputs.
fn respond(
    model_name: String,
    id: Option<String>,
    version: String,
    wanted: &[Wanted],
    scores: &Scores,
    images: usize,
) -> HttpResponse {
    let mut binary = Vec::new();
    let outputs = wanted
        .iter()
        .map(|w| tensor(output(w, scores, images), w.binary, &mut binary))
        .collect();
    let response = InferResponse {
        model_name,
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

/// One output asked for, made from the model's scores.
pub(super) struct Output {
    /// [`LOGITS`] or [`PROBABILITIES`].
    pub name: &'static str,
    /// `FP32`, or `BYTES` for a classification.
    pub datatype: &'static str,
    /// `[N, 10]`, or `[N, k]` for a classification.
    pub shape: Vec<usize>,
    /// The elements in row-major order.
    pub data: OutputData,
}

/// The output `w` asks for, of `images` images' `scores`.
pub(super) fn output(w: &Wanted, scores: &Scores, images: usize) -> Output {
    let (name, values) = if w.logits {
        (LOGITS, &scores.logits)
    } else {
        (PROBABILITIES, &scores.probabilities)
    };
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
    Output {
        name,
        datatype,
        shape,
        data,
    }
}

/// `out` as an answer's output tensor over HTTP: its elements in the JSON, or with `in_binary`
/// appended to `binary` (the answer's binary part) and their size in its parameters.
pub(super) fn tensor(out: Output, in_binary: bool, binary: &mut Vec<u8>) -> OutputTensor {
    let Output {
        name,
        datatype,
        shape,
        data,
    } = out;
    let (parameters, data) = if in_binary {
        let start = binary.len();
        append_binary(&data, binary);
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
}

/// `data` as the binary tensor data extension and gRPC's raw contents write it, after what
/// `out` holds: `FP32` as little-endian floats, `BYTES` elements each as a 4-byte
/// little-endian length and the bytes.
pub(super) fn append_binary(data: &OutputData, out: &mut Vec<u8>) {
    match data {
        OutputData::Numbers(values) => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        OutputData::Strings(strings) => {
            for s in strings {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

/// The classification extension: the best `k` classes of each row, as
/// `"<value>:<index>:<label>"`, best first.
pub(super) fn classify(values: &[f32], k: usize) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::memory::{ANSWER_BYTES_PER_IMAGE, ANSWER_FIXED_BYTES};

    /// The largest `/v2` answer for `n` images (the longest `id`, of characters JSON writes as
    /// six bytes; both outputs as numbers of the longest form, or as classifications of all
    /// ten classes) fits what the memory bound counts for an answer of `n` images.
    #[test]
    fn the_largest_answer_fits_the_memory_bound() {
        let n = 64;
        let id = Some("\u{1}".repeat(super::super::MAX_ID_BYTES));
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
            let res = respond(
                "m".repeat(64),
                id.clone(),
                "v".repeat(80),
                &wanted,
                &scores,
                n,
            );
            let body = actix_web::rt::System::new()
                .block_on(actix_web::body::to_bytes(res.into_body()))
                .unwrap();
            let bound = ANSWER_FIXED_BYTES + n as u64 * ANSWER_BYTES_PER_IMAGE;
            assert!(body.len() as u64 <= bound, "{} bytes", body.len());
        }
    }
}
