//! `POST /v2/models/{name}[/versions/{version}]/explain`: an inference request's images
//! explained (`KServe`'s V1 protocol has `:explain`; this is its V2 form). The request is an
//! inference request (the same inputs, JSON or binary) with the method in its parameters
//! (`method`, `target`, `steps`, as `POST /explain` takes them); the answer has two outputs:
//! `attributions` (`FP32 [N, 64, 64]`, each image's map in the method's own units, larger
//! meaning more evidence for the class) and `target` (`BYTES [N]`, the class explained as
//! `"<probability>:<index>:<label>"`).

use actix_web::{HttpRequest, HttpResponse, web};
use model::{CLASSES, INPUT_SIZE};

use super::infer::{Output, receive, tensor};
use super::request::{ExplainParams, Request};
use super::types::{
    InferProblems, InferRequest, InferResponse, ModelName, ModelVersion, OutputData,
};
use super::{HEADER_LENGTH, V2Error, quote};
use crate::AppState;
use crate::http::openapi::in_chunks;
use crate::inference::explain::{self as explaining, Explained, Explanations, Options};

/// The output holding the maps.
pub const ATTRIBUTIONS: &str = "attributions";
/// The output naming the class each map explains.
pub const TARGET: &str = "target";

#[utoipa::path(post, path = "/v2/models/{name}/explain", tag = "v2",
    params(("name" = ModelName, Path, description = "The model's name")),
    request_body(description = "An inference request; `parameters.method` (`gradcam`, `occlusion`, `saliency`, `integrated-gradients`), `parameters.target` (a class name or index; the predicted class by default) and `parameters.steps` (integrated gradients) say what to explain. At most 8 images", content(
        (InferRequest = "application/json"),
        (InferRequest = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "`attributions` (FP32 [N, 64, 64]) and `target` (BYTES [N])", content(
            (InferResponse = "application/json"),
            (InferResponse = "application/octet-stream"),
        )),
        InferProblems,
    ))]
pub(super) async fn explain(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, V2Error> {
    run(&state, &req, payload).await
}

#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/explain", tag = "v2",
    params(
        ("name" = ModelName, Path, description = "The model's name"),
        ("version" = ModelVersion, Path, description = "The model's version"),
    ),
    request_body(description = "An explain request, as for /v2/models/{name}/explain", content(
        (InferRequest = "application/json"),
        (InferRequest = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "The outputs, as for /v2/models/{name}/explain", content(
            (InferResponse = "application/json"),
            (InferResponse = "application/octet-stream"),
        )),
        InferProblems,
    ))]
pub(super) async fn version_explain(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, V2Error> {
    run(&state, &req, payload).await
}

async fn run(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, V2Error> {
    let (received, request) = receive(state, req, payload).await?;
    let options = options(&request.explain, state.config.explain_max_steps)?;
    let outputs = outputs(&request)?;
    let most = state.explanations.most_images(options.method);
    let asked = request
        .input
        .as_ref()
        .and_then(|i| i.shape.first().copied())
        .unwrap_or(0);
    if asked > most as i64 {
        return Err(V2Error::BadRequest(format!(
            "this server explains at most {most} images a request by {}",
            options.method
        )));
    }
    let ticket = state.explanations.ticket()?;
    let deadline = received.deadline;
    let per_image = Explanations::permits_per_image(options.method);
    let (images, admitted, pixels) = received.read(state, req, request.input, per_image).await?;
    let reserved = match Explanations::copies_bytes(options.method, images) {
        0 => None,
        bytes => Some(state.decode_budget.reserve(bytes, deadline).await?),
    };
    let job = explaining::Request {
        pixels,
        admitted,
        reserved,
        options,
        deadline,
    };
    let (explained, served) = state
        .explanations
        .explain(&state.engine, &ticket, job)
        .await?;
    let response = |outputs| InferResponse {
        model_name: state.config.model_name.clone(),
        model_version: served.version.label.clone(),
        id: request.id.clone(),
        outputs,
    };
    let mut binary = Vec::new();
    let tensors = outputs
        .iter()
        .map(|&(name, in_binary)| tensor(output(name, &explained), in_binary, &mut binary))
        .collect();
    let mut body = serde_json::to_vec(&response(tensors))
        .map_err(|e| V2Error::BadRequest(format!("writing the answer: {e}")))?;
    let mut res = HttpResponse::Ok();
    if outputs.iter().any(|&(_, b)| b) {
        res.content_type("application/octet-stream")
            .insert_header((HEADER_LENGTH, body.len()));
        body.extend_from_slice(&binary);
    } else {
        res.content_type("application/json");
    }
    // The answer keeps the ticket until it is sent: its bytes are counted in the ticket's.
    Ok(res.body(in_chunks(body.into(), ticket)))
}

/// The explain parameters, checked.
fn options(params: &ExplainParams, max_steps: usize) -> Result<Options, V2Error> {
    let steps = params.steps.map(|s| s.to_string());
    Options::parse(
        params.method.as_deref(),
        params.target.as_deref(),
        steps.as_deref(),
        max_steps,
    )
    .map_err(|e| V2Error::BadRequest(format!("parameters: {e}")))
}

/// The outputs asked for (both by default), each with whether it goes in the binary part.
fn outputs(request: &Request) -> Result<Vec<(&'static str, bool)>, V2Error> {
    let Some(asked) = &request.outputs else {
        return Ok(vec![
            (ATTRIBUTIONS, request.binary_output),
            (TARGET, request.binary_output),
        ]);
    };
    let mut outputs: Vec<(&'static str, bool)> = Vec::new();
    for output in asked {
        let name = match output.name.as_str() {
            ATTRIBUTIONS => ATTRIBUTIONS,
            TARGET => TARGET,
            other => {
                return Err(V2Error::BadRequest(format!(
                    "unknown output '{}': an explanation gives '{ATTRIBUTIONS}' and '{TARGET}'",
                    quote(other)
                )));
            }
        };
        if outputs.iter().any(|(n, _)| *n == name) {
            return Err(V2Error::BadRequest(format!(
                "output '{name}' is asked for twice"
            )));
        }
        let params = &output.parameters.0;
        if params.classification.is_some() || params.shared_memory_region.is_some() {
            return Err(V2Error::BadRequest(format!(
                "output '{name}' takes only the binary_data parameter"
            )));
        }
        let binary = params
            .binary_data
            .as_ref()
            .map_or(request.binary_output, |b| b.0);
        outputs.push((name, binary));
    }
    if outputs.is_empty() {
        return Err(V2Error::BadRequest(format!(
            "no output asked for: name '{ATTRIBUTIONS}' or '{TARGET}', or leave 'outputs' out for both"
        )));
    }
    Ok(outputs)
}

/// The output `name` of the explanations.
fn output(name: &'static str, explained: &[Explained]) -> Output {
    let n = explained.len();
    if name == ATTRIBUTIONS {
        let maps = explained
            .iter()
            .flat_map(|e| e.map.iter().copied())
            .collect();
        Output {
            name,
            datatype: "FP32",
            shape: vec![n, INPUT_SIZE, INPUT_SIZE],
            data: OutputData::Numbers(maps),
        }
    } else {
        let targets = explained
            .iter()
            .map(|e| {
                format!(
                    "{}:{}:{}",
                    e.probabilities[e.target], e.target, CLASSES[e.target]
                )
            })
            .collect();
        Output {
            name,
            datatype: "BYTES",
            shape: vec![n],
            data: OutputData::Strings(targets),
        }
    }
}
