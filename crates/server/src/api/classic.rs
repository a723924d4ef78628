//! The original service's API: `/`, `/health`, `/ready`, `/model/info`, `/classes`,
//! `/classify`, `/classify/batch`, and `/metrics` and `/ui` beside them. Paths, field names and
//! JSON shapes follow the original Python service so its clients keep working; errors are
//! problem documents ([`crate::http::problem`]).

use std::collections::BTreeMap;

use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use model::{CLASSES, Gathered, PARAMETER_COUNT, Prediction, Ranked, RecordMeta, RecordVersion};
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::AppState;
use crate::http::body;
use crate::http::problem::{ApiError, Problem};
use crate::http::resource::{PROBLEMS, deadline, json_exact};
use crate::inference::models::ReloadReport;
use crate::ingest::decode::{self, Prepared};
use crate::ingest::upload::{UploadLimits, Uploads};

/// The original API's part of the OpenAPI document (merged into [`crate::router::openapi_document`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        root,
        health,
        ready,
        model_info,
        classes,
        metrics,
        ui,
        classify,
        classify_batch
    ),
    components(schemas(model::Ranked, model::RecordMeta, ImageFile))
)]
pub struct ClassicApi;

/// Registers the original API's endpoints (mounted by [`crate::router::configure`]).
pub fn configure(cfg: &mut web::ServiceConfig) {
    PROBLEMS.get(cfg, "/", root);
    PROBLEMS.get(cfg, "/health", health);
    PROBLEMS.get(cfg, "/ready", ready);
    PROBLEMS.get(cfg, "/model/info", model_info);
    PROBLEMS.get(cfg, "/classes", classes);
    PROBLEMS.get(cfg, "/metrics", metrics);
    PROBLEMS.get(cfg, "/ui", ui);
    PROBLEMS.post(cfg, "/classify", classify);
    PROBLEMS.post(cfg, "/classify/batch", classify_batch);
}

/// What `GET /` answers.
#[derive(Serialize, ToSchema)]
pub struct ServiceInfo {
    message: &'static str,
    name: &'static str,
    version: &'static str,
    endpoints: BTreeMap<&'static str, &'static str>,
}

#[utoipa::path(get, path = "/", tag = "service", responses((status = 200, description = "Service name, version and endpoints", body = ServiceInfo)))]
async fn root() -> HttpResponse {
    let endpoints = BTreeMap::from([
        ("GET /health", "liveness check"),
        ("GET /ready", "readiness: model loaded and warmed up"),
        ("GET /model/info", "model architecture and parameters"),
        ("GET /classes", "list of classes"),
        ("GET /metrics", "Prometheus metrics"),
        ("GET /ui", "web page to classify and explain images"),
        ("GET /docs", "API documentation (OpenAPI at /openapi.json)"),
        (
            "POST /classify",
            "classify one image (multipart field 'file', or an image/* body)",
        ),
        (
            "POST /classify/batch",
            "classify several images (multipart field 'files')",
        ),
        (
            "POST /explain",
            "why the model predicted what it did: a heatmap as JSON or PNG (multipart 'file', 'method', 'target', 'format')",
        ),
        (
            "GET /v2",
            "Open Inference Protocol (KServe V2): server metadata; the model is /v2/models/cifar10-cnn",
        ),
        (
            "POST /v2/models/cifar10-cnn/infer",
            "Open Inference Protocol inference: BYTES images or FP32 [N,3,64,64] tensors, JSON or binary",
        ),
    ]);
    HttpResponse::Ok().json(ServiceInfo {
        message: "CIFAR-10 CNN Image Classifier API",
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        endpoints,
    })
}

/// Liveness.
#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
    model_loaded: bool,
}

#[utoipa::path(get, path = "/health", tag = "service", responses(
    (status = 200, description = "The process is alive", body = Health),
    (status = 503, description = "The inference thread has ended: restart the process", body = Health),
))]
async fn health(state: web::Data<AppState>) -> HttpResponse {
    if state.engine.is_alive() {
        HttpResponse::Ok().json(Health {
            status: "healthy",
            model_loaded: true,
        })
    } else {
        HttpResponse::ServiceUnavailable().json(Health {
            status: "unhealthy",
            model_loaded: false,
        })
    }
}

/// Readiness.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    ready: bool,
}

#[utoipa::path(get, path = "/ready", tag = "service", responses(
    (status = 200, description = "Model loaded and warmed up", body = Readiness),
    (status = 503, description = "Still starting, or draining after SIGTERM", body = Readiness),
))]
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let ready = state.is_ready();
    let mut res = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    res.json(Readiness { ready })
}

/// The network and the record being served.
#[derive(Serialize, ToSchema)]
pub struct ModelInfo {
    architecture: &'static str,
    /// Height, width, channels.
    input_size: Vec<usize>,
    layers: Vec<String>,
    total_parameters: usize,
    expected_parameters: usize,
    num_classes: usize,
    classes: Vec<&'static str>,
    dataset: &'static str,
    /// Top-1 accuracy of the served record on the CIFAR-10 test set, when known.
    test_accuracy: Option<f64>,
    record: RecordMeta,
    model_source: String,
    /// The served record's content hash and training time; changes with a reload.
    version: RecordVersion,
    /// When this server started serving the record (RFC 3339, UTC).
    serving_since: String,
    /// The last reload (SIGHUP or `--watch-model`), if any: a failed one says why.
    last_reload: Option<ReloadReport>,
    backend: &'static str,
    /// The forward pass's arithmetic: `fp32` or `int8` (`--precision`).
    precision: &'static str,
    /// Whether predictions average the probabilities of several views of each image (`--tta`:
    /// the image and its mirror, or also shifted copies).
    test_time_augmentation: bool,
}

#[utoipa::path(get, path = "/model/info", tag = "service", responses((status = 200, description = "Architecture, parameters, record", body = ModelInfo)))]
async fn model_info(state: web::Data<AppState>) -> HttpResponse {
    let served = state.models.current();
    HttpResponse::Ok().json(ModelInfo {
        architecture: model::net::ARCHITECTURE,
        input_size: vec![
            model::INPUT_SIZE,
            model::INPUT_SIZE,
            model::arch::INPUT_CHANNELS,
        ],
        layers: model::arch::layers(),
        total_parameters: PARAMETER_COUNT,
        expected_parameters: PARAMETER_COUNT,
        num_classes: CLASSES.len(),
        classes: CLASSES.to_vec(),
        dataset: "CIFAR-10",
        test_accuracy: served.meta.test_accuracy,
        record: served.meta.clone(),
        model_source: served.source.clone(),
        version: served.version.clone(),
        serving_since: served.since.clone(),
        last_reload: state.models.last_reload(),
        backend: state.backend.name(),
        precision: served.inference.precision().name(),
        test_time_augmentation: state.config.tta.is_on(),
    })
}

/// The classes in label order.
#[derive(Serialize, ToSchema)]
pub struct ClassList {
    classes: Vec<&'static str>,
    num_classes: usize,
    /// Label index (as a string key) to class name.
    by_index: BTreeMap<String, &'static str>,
}

#[utoipa::path(get, path = "/classes", tag = "service", responses((status = 200, description = "The ten classes", body = ClassList)))]
async fn classes() -> HttpResponse {
    HttpResponse::Ok().json(ClassList {
        classes: CLASSES.to_vec(),
        num_classes: CLASSES.len(),
        by_index: CLASSES
            .iter()
            .enumerate()
            .map(|(i, c)| (i.to_string(), *c))
            .collect(),
    })
}

#[utoipa::path(get, path = "/metrics", tag = "service", responses(
    (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"),
    (status = 503, description = "`/problems/overloaded`: two expositions are being sent already (clients that do not read hold them); retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .metrics
        .images_in_flight(state.engine.images_in_flight());
    let (text, permit) = state.metrics.exposition().ok_or(ApiError::Overloaded)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::http::openapi::in_chunks(text.into(), permit)))
}

#[utoipa::path(get, path = "/ui", tag = "service", responses((status = 200, description = "A web page to classify and explain images", body = String, content_type = "text/html")))]
async fn ui() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::html())
        .body(include_str!("ui.html"))
}

/// One image's answer, in the original's shape.
#[derive(Serialize, ToSchema)]
pub struct Classified {
    filename: Option<String>,
    prediction: Ranked,
    top_3_predictions: Vec<Ranked>,
}

impl Classified {
    fn new(filename: Option<String>, p: Prediction) -> Self {
        Self {
            filename,
            prediction: p.best,
            top_3_predictions: p.top_k,
        }
    }
}

/// One entry of a batch answer: a result, or why this image failed (the original's
/// `error` string, plus the problem document).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    /// The image was classified.
    Classified(Classified),
    /// The image could not be used; the batch's other images are answered all the same.
    Failed {
        /// The file's name as uploaded, if it had one.
        filename: Option<String>,
        /// Why, in words (the original service's field).
        error: String,
        /// Why, as a problem document with a stable `type`.
        problem: Problem,
    },
}

impl BatchItem {
    /// The entry of a file that failed with `error`: its words once, in both fields.
    fn failed(filename: Option<String>, error: &ApiError) -> Self {
        let problem = error.problem();
        BatchItem::Failed {
            filename,
            error: problem.detail.clone(),
            problem,
        }
    }
}

/// What `POST /classify/batch` answers: one entry per file, in upload order.
#[derive(Serialize, ToSchema)]
pub struct BatchAnswer {
    results: Vec<BatchItem>,
    total: usize,
}

/// The request's files from multipart field `field`, at most `max_files` of them.
async fn uploads(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    field: &'static str,
    max_files: usize,
    deadline: Instant,
) -> Result<Uploads, ApiError> {
    let secs = state.config.request_timeout.as_secs();
    let limits = UploadLimits {
        files: max_files,
        ..state.config.upload
    };
    tokio::time::timeout_at(
        deadline,
        body::read(req, payload, field, limits, &state.body_budget),
    )
    .await
    .map_err(|_| ApiError::RequestTimeout(secs))?
}

async fn prepare(
    state: &AppState,
    uploads: Uploads,
    deadline: Instant,
) -> Result<Vec<Prepared>, ApiError> {
    decode::prepare(state.preprocessor, &state.decode_budget, uploads, deadline)
        .await
        .map_err(ApiError::from)
}

/// An encoded image file: at least one byte (an empty file is refused with 400).
pub struct ImageFile;

impl utoipa::PartialSchema for ImageFile {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .min_length(Some(1))
            .description(Some("An image file: JPEG, PNG, BMP, TIFF, WebP or GIF"))
            .into()
    }
}

impl ToSchema for ImageFile {}

/// Multipart form of `POST /classify`: the one field `file`, nothing else.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ClassifyForm {
    /// The image (JPEG, PNG, BMP, TIFF, WebP or GIF).
    file: ImageFile,
}

/// Multipart form of `POST /classify/batch`. At most `--max-files` files (the served document
/// gives the server's own figure as `maxItems`).
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct BatchForm {
    /// The images, in the order the answers come back.
    #[schema(min_items = 1)]
    files: Vec<ImageFile>,
}

/// The problems `POST /classify` answers with.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ClassifyProblems {
    /// `/problems/bad-request` (malformed multipart, a part without a filename),
    /// `/problems/missing-field` (no `file`), `/problems/unexpected-field` (a field besides
    /// `file`), `/problems/empty-file` (a zero-byte upload)
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// `/problems/request-timeout`: the body did not arrive within `--request-timeout`
    #[response(status = 408, content_type = "application/problem+json")]
    RequestTimeout(Problem),
    /// `/problems/body-too-large`: the body is over `--max-body`
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// `/problems/unsupported-media-type`: neither multipart nor an image type
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// `/problems/invalid-image` (not a decodable image: corrupt, truncated, unknown format),
    /// `/problems/image-too-large` (over `--max-pixels`, or decoding it would take more than
    /// `--decode-memory`)
    #[response(status = 422, content_type = "application/problem+json")]
    InvalidImage(Problem),
    /// `/problems/internal`: the model failed
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(Problem),
    /// `/problems/overloaded` (no room for the image now) or `/problems/timeout` (the model
    /// did not answer in time); retry after `Retry-After`
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

/// The problems `POST /classify/batch` answers with (a failing image gets its problem inside
/// the 200 answer instead).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum BatchProblems {
    /// `/problems/bad-request` (malformed multipart, a part without a filename),
    /// `/problems/missing-field` (no `files`), `/problems/unexpected-field` (a field besides
    /// `files`), `/problems/empty-file` (a zero-byte file)
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// `/problems/request-timeout`: the body did not arrive within `--request-timeout`
    #[response(status = 408, content_type = "application/problem+json")]
    RequestTimeout(Problem),
    /// `/problems/body-too-large` (over `--max-body`), `/problems/too-many-files` (over
    /// `--max-files`)
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// `/problems/unsupported-media-type`: not multipart
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// `/problems/internal`: the model failed
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(Problem),
    /// `/problems/overloaded` (no room for the images now) or `/problems/timeout` (the model
    /// did not answer in time); retry after `Retry-After`
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

#[utoipa::path(post, path = "/classify", tag = "classify",
    request_body(description = "An image, as multipart field `file` or as the raw body", content(
        (ClassifyForm = "multipart/form-data"),
        (ImageFile = "image/jpeg"),
        (ImageFile = "image/png"),
        (ImageFile = "image/gif"),
        (ImageFile = "image/bmp"),
        (ImageFile = "image/tiff"),
        (ImageFile = "image/webp"),
        (ImageFile = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "The prediction and the top 3", body = Classified),
        ClassifyProblems,
    ))]
async fn classify(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let deadline = deadline(&state);
    // One file: a second part named `file` is refused (413), not ignored.
    let files = uploads(&state, &req, payload, "file", 1, deadline).await?;
    let admitted = state.engine.admit(1)?;
    let (filename, pixels) = prepare(&state, files, deadline).await?.remove(0);
    let pixels = pixels?;
    let (mut preds, served) = state.engine.classify(pixels, admitted, deadline).await?;
    Ok(HttpResponse::Ok()
        .insert_header(model_version(&served))
        .json(Classified::new(filename, preds.remove(0))))
}

#[utoipa::path(post, path = "/classify/batch", tag = "classify",
    request_body(description = "Images as repeated multipart field `files`", content(
        (BatchForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "One entry per image, in order; failed images carry an error", body = BatchAnswer),
        BatchProblems,
    ))]
async fn classify_batch(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let deadline = deadline(&state);
    let max_files = state.config.upload.files;
    let files = uploads(&state, &req, payload, "files", max_files, deadline).await?;
    let total = files.files.len();
    let admitted = state.engine.admit(total)?;
    // The decoded images go to the engine as one job (batched there with other requests');
    // their predictions come back to their files, failures in their places. Each image is
    // copied once into the job and its own buffer freed before the wait.
    let (gathered, images) = Gathered::split(prepare(&state, files, deadline).await?);
    let pixels = images.concat();
    drop(images);
    let (preds, served) = state.engine.classify(pixels, admitted, deadline).await?;
    let results: Vec<BatchItem> = gathered
        .answer(preds)
        .into_iter()
        .map(|(filename, r)| match r {
            Ok(p) => BatchItem::Classified(Classified::new(filename, p)),
            Err(e) => {
                let e = ApiError::from(e);
                state.metrics.error(e.kind());
                BatchItem::failed(filename, &e)
            }
        })
        .collect();
    let mut res = HttpResponse::Ok();
    res.insert_header(model_version(&served));
    Ok(json_exact(res, &BatchAnswer { results, total }))
}

/// The `Model-Version` header: which record answered (its [`RecordVersion::label`]), so a
/// client can tell answers from before and after a reload apart.
pub(crate) fn model_version(served: &crate::inference::models::Served) -> (&'static str, String) {
    ("model-version", served.version.label.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::memory::ANSWER_BYTES_PER_IMAGE;

    /// The largest entries a batch answer can hold, serialised: a file name of the longest
    /// kept length of characters JSON escapes, and error texts of the longest kept length of
    /// the same. Each fits `memory::ANSWER_BYTES_PER_IMAGE`, which the memory bound counts.
    #[test]
    fn the_largest_batch_entries_fit_the_memory_bound() {
        let filename = Some(body::filename(&"\"".repeat(10_000)));
        let error = ApiError::BadRequest("\\".repeat(10_000));
        let failed = BatchItem::failed(filename.clone(), &error);
        let probabilities = [
            1e-30f32,
            0.1,
            0.2,
            1.0 / 3.0,
            1e-7,
            0.05,
            2e-9,
            0.11,
            0.07,
            0.0,
        ];
        let classified = BatchItem::Classified(Classified::new(
            filename,
            model::predict::rank(&probabilities, 3),
        ));
        for item in [failed, classified] {
            let json = serde_json::to_vec(&item).unwrap();
            assert!(
                // With the comma between entries.
                (json.len() as u64) < ANSWER_BYTES_PER_IMAGE,
                "{} bytes",
                json.len()
            );
        }
    }
}
