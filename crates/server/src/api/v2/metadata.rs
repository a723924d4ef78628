//! The metadata and health endpoints: the server, its liveness and readiness, the model.

use actix_web::{HttpRequest, HttpResponse, web};
use model::{INPUT_SIZE, NUM_CLASSES};

use super::types::{
    Live, ModelMetadata, ModelName, ModelProblems, ModelReady, ModelVersion, Ready, ServerMetadata,
    TensorMetadata,
};
use super::{
    CHANNELS, EXTENSIONS, IMAGE_INPUT, LOGITS, PLATFORM, PROBABILITIES, TENSOR_INPUT, V2Error,
    quote,
};
use crate::AppState;

#[utoipa::path(get, path = "/v2", tag = "v2",
    responses((status = 200, description = "The server's name, version and protocol extensions", body = ServerMetadata)))]
pub(super) async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(ServerMetadata {
        name: super::SERVER_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: EXTENSIONS.iter().map(|e| (*e).to_string()).collect(),
    })
}

#[utoipa::path(get, path = "/v2/health/live", tag = "v2",
    responses((status = 200, description = "The server answers", body = Live)))]
pub(super) async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Live { live: true })
}

#[utoipa::path(get, path = "/v2/health/ready", tag = "v2", responses(
    (status = 200, description = "The model is loaded and warmed up (as GET /ready)", body = Ready),
    (status = 503, description = "Still starting", body = Ready),
))]
pub(super) async fn ready(state: web::Data<AppState>) -> HttpResponse {
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
pub(super) fn served(state: &AppState, req: &HttpRequest) -> Result<String, V2Error> {
    let info = req.match_info();
    served_as(
        state,
        info.get("name").unwrap_or_default(),
        info.get("version"),
    )
}

/// Checks a model name and version (`None` or empty: any) against the served model's; gives
/// the version served now.
pub(super) fn served_as(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<String, V2Error> {
    check_name(state, name)?;
    // The record's version (`model::RecordVersion::label`): it changes when a reload
    // swaps in another record.
    let served = state.models.current().version.label.clone();
    match version {
        Some(asked) if !asked.is_empty() && asked != served => Err(unknown_version(state, asked)),
        _ => Ok(served),
    }
}

/// Checks a model name against the served one.
pub(super) fn check_name(state: &AppState, name: &str) -> Result<(), V2Error> {
    if name == state.config.model_name {
        Ok(())
    } else {
        Err(V2Error::UnknownModel {
            asked: quote(name),
            serving: state.config.model_name.clone(),
        })
    }
}

/// The error for a version other than the one served.
pub(super) fn unknown_version(state: &AppState, asked: &str) -> V2Error {
    V2Error::UnknownVersion {
        asked: quote(asked),
        model: state.config.model_name.clone(),
    }
}

fn metadata(state: &AppState, req: &HttpRequest) -> Result<HttpResponse, V2Error> {
    let version = served(state, req)?;
    Ok(HttpResponse::Ok().json(model_metadata_of(state, version)))
}

/// The model's metadata, at `version`.
pub(super) fn model_metadata_of(state: &AppState, version: String) -> ModelMetadata {
    let tensor = |name: &str, datatype: &str, shape: &[i64]| TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
    };
    let side = INPUT_SIZE as i64;
    let classes = NUM_CLASSES as i64;
    ModelMetadata {
        name: state.config.model_name.clone(),
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
    }
}

#[utoipa::path(get, path = "/v2/models/{name}", tag = "v2",
    params(("name" = ModelName, Path, description = "The model's name")),
    responses(
        (status = 200, description = "The model's name, versions, platform, inputs and outputs", body = ModelMetadata),
        ModelProblems,
    ))]
pub(super) async fn model_metadata(
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
pub(super) async fn version_metadata(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, V2Error> {
    metadata(&state, &req)
}

fn model_readiness(state: &AppState, req: &HttpRequest) -> Result<HttpResponse, V2Error> {
    served(state, req)?;
    let ready = state.is_ready();
    Ok(readiness(ready).json(ModelReady {
        name: state.config.model_name.clone(),
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
pub(super) async fn model_ready(
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
pub(super) async fn version_ready(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, V2Error> {
    model_readiness(&state, &req)
}
