//! The HTTP endpoints. Paths, field names and JSON shapes follow the original Python service
//! so its clients keep working.

use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use model::{CLASSES, PARAMETER_COUNT, Prediction, Ranked};
use serde::Serialize;
use serde_json::json;

use crate::AppState;
use crate::problem::ApiError;
use crate::upload::{self, Upload};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(root))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/model/info", web::get().to(model_info))
        .route("/classes", web::get().to(classes))
        .route("/metrics", web::get().to(metrics))
        .route("/ui", web::get().to(ui))
        .route("/classify", web::post().to(classify))
        .route("/classify/batch", web::post().to(classify_batch));
}

async fn root() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "message": "CIFAR-10 CNN Image Classifier API",
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "endpoints": {
            "GET /health": "liveness check",
            "GET /ready": "readiness: model loaded and warmed up",
            "GET /model/info": "model architecture and parameters",
            "GET /classes": "list of classes",
            "GET /metrics": "Prometheus metrics",
            "GET /ui": "web page to classify an image",
            "POST /classify": "classify one image (multipart field 'file', or an image/* body)",
            "POST /classify/batch": "classify several images (multipart field 'files')",
        },
    }))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "healthy", "model_loaded": true}))
}

async fn ready(state: web::Data<AppState>) -> HttpResponse {
    if state.engine.is_ready() {
        HttpResponse::Ok().json(json!({"ready": true}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"ready": false}))
    }
}

async fn model_info(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "architecture": "SimpleCNN",
        "input_size": [model::INPUT_SIZE, model::INPUT_SIZE, 3],
        "layers": [
            "Conv2d(3,16,k=3,s=1,p=1)", "ReLU", "MaxPool2d(2,2)",
            "Conv2d(16,32,k=3,s=1,p=1)", "ReLU", "MaxPool2d(2,2)",
            "Flatten", "Linear(8192,100)", "ReLU", "Linear(100,10)",
        ],
        "total_parameters": PARAMETER_COUNT,
        "expected_parameters": PARAMETER_COUNT,
        "num_classes": CLASSES.len(),
        "classes": CLASSES,
        "dataset": "CIFAR-10",
        "test_accuracy": state.meta.test_accuracy,
        "record": state.meta,
        "model_source": state.model_source,
        "backend": state.backend.name(),
    }))
}

async fn classes() -> HttpResponse {
    let by_index: serde_json::Map<String, serde_json::Value> = CLASSES
        .iter()
        .enumerate()
        .map(|(i, c)| (i.to_string(), json!(c)))
        .collect();
    HttpResponse::Ok()
        .json(json!({"classes": CLASSES, "num_classes": CLASSES.len(), "by_index": by_index}))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

async fn ui() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::html())
        .body(include_str!("ui.html"))
}

/// One image's answer, in the original's shape.
#[derive(Serialize)]
struct Classified {
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
#[derive(Serialize)]
#[serde(untagged)]
enum BatchItem {
    Classified(Classified),
    Failed {
        filename: Option<String>,
        error: String,
        problem: crate::problem::Problem,
    },
}

#[derive(Serialize)]
struct BatchAnswer {
    results: Vec<BatchItem>,
    total: usize,
}

async fn uploads(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    field: &'static str,
) -> Result<Vec<Upload>, ApiError> {
    let secs = state.config.request_timeout.as_secs();
    tokio::time::timeout(
        state.config.request_timeout,
        upload::read(req, payload, field, state.config.upload),
    )
    .await
    .map_err(|_| ApiError::RequestTimeout(secs))?
}

/// Decodes and preprocesses on the blocking pool: a large JPEG must not stall an async worker.
async fn preprocess(
    state: &AppState,
    files: Vec<Upload>,
) -> Result<Vec<(Option<String>, Result<Vec<f32>, ApiError>)>, ApiError> {
    let pre = state.preprocessor;
    web::block(move || {
        files
            .into_iter()
            .map(|f| {
                let result = if f.bytes.is_empty() {
                    Err(ApiError::EmptyFile(f.filename.clone().unwrap_or_default()))
                } else {
                    pre.preprocess(&f.bytes).map_err(ApiError::from)
                };
                (f.filename, result)
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("preprocessing: {e}")))
}

async fn classify(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut files = uploads(&state, &req, payload, "file").await?;
    files.truncate(1);
    let (filename, pixels) = preprocess(&state, files).await?.remove(0);
    let pixels = pixels?;
    let mut preds = state
        .engine
        .classify(pixels, Duration::from_secs(30))
        .await?;
    Ok(HttpResponse::Ok().json(Classified::new(filename, preds.remove(0))))
}

async fn classify_batch(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let files = uploads(&state, &req, payload, "files").await?;
    let total = files.len();
    let prepared = preprocess(&state, files).await?;
    let mut pixels = Vec::new();
    for (_, r) in &prepared {
        if let Ok(p) = r {
            pixels.extend_from_slice(p);
        }
    }
    let mut preds = state
        .engine
        .classify(pixels, Duration::from_secs(30))
        .await?
        .into_iter();
    let results: Vec<BatchItem> = prepared
        .into_iter()
        .map(|(filename, r)| match r {
            Ok(_) => {
                let p = preds.next().expect("one prediction per decoded image");
                BatchItem::Classified(Classified::new(filename, p))
            }
            Err(e) => {
                state.metrics.error(e.kind());
                BatchItem::Failed {
                    filename,
                    error: e.to_string(),
                    problem: e.problem(),
                }
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(BatchAnswer { results, total }))
}
