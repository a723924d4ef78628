//! The HTTP inference service for the CIFAR-10 CNN, on actix-web.
//!
//! [`serve`] binds the server and returns it running; requests are decoded on the blocking
//! pool, gathered into model batches by the [`engine`], and answered in the original Python
//! service's JSON shapes. Errors are RFC 9457 problem documents ([`problem`]); every request
//! is counted in [`metrics`] and logged on one line.

pub mod engine;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod upload;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_cors::Cors;
use actix_web::dev::{Server, Service};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpResponse, HttpServer, web};
use model::{Backend, Inference, Preprocessor, RecordMeta};

use crate::engine::{BatchPolicy, Engine};
use crate::metrics::Metrics;
use crate::problem::ApiError;
use crate::upload::UploadLimits;

/// How request lines are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
    Off,
}

/// Run-time settings of the service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub workers: usize,
    pub batch: BatchPolicy,
    pub upload: UploadLimits,
    pub max_pixels: u64,
    pub request_timeout: Duration,
    pub cors_origins: Vec<String>,
    pub log: LogFormat,
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            batch: BatchPolicy {
                max_batch: 64,
                max_wait: Duration::ZERO,
                queue: 256,
                top_k: 3,
            },
            upload: UploadLimits {
                body: 10 * 1024 * 1024,
                files: 64,
            },
            max_pixels: model::DEFAULT_MAX_PIXELS,
            request_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
            log: LogFormat::Human,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// Shared by every handler.
pub struct AppState {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub meta: RecordMeta,
    pub model_source: String,
    pub backend: Backend,
    pub preprocessor: Preprocessor,
    pub config: ServerConfig,
}

/// The model to serve and where it came from.
pub struct Loaded {
    pub inference: Inference,
    pub meta: RecordMeta,
    pub source: String,
}

/// Starts serving on `listener`; the returned [`Server`] runs when awaited (or spawned) and
/// stops gracefully on SIGINT/SIGTERM.
pub fn serve(
    listener: TcpListener,
    loaded: Loaded,
    config: ServerConfig,
) -> std::io::Result<Server> {
    let metrics = Arc::new(Metrics::default());
    let backend = loaded.inference.backend();
    let engine = Engine::start(loaded.inference, config.batch, metrics.clone());
    let state = web::Data::new(AppState {
        engine,
        metrics,
        meta: loaded.meta,
        model_source: loaded.source,
        backend,
        preprocessor: Preprocessor::new(config.max_pixels),
        config: config.clone(),
    });
    let request_ids = Arc::new(AtomicU64::new(0));
    let server = HttpServer::new(move || {
        let state = state.clone();
        let ids = request_ids.clone();
        let mut cors = Cors::default()
            .allow_any_header()
            .allowed_methods(["GET", "POST"]);
        for origin in &state.config.cors_origins {
            cors = if origin == "*" {
                cors.allow_any_origin()
            } else {
                cors.allowed_origin(origin)
            };
        }
        let log = state.config.log;
        let metrics = state.metrics.clone();
        App::new()
            .app_data(state)
            .configure(routes::configure)
            .default_service(web::to(not_found))
            .wrap(cors)
            .wrap_fn(move |req, srv| {
                let start = Instant::now();
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| {
                        !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
                    })
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        format!(
                            "{:x}-{}",
                            std::process::id(),
                            ids.fetch_add(1, Ordering::Relaxed)
                        )
                    });
                let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
                let method = req.method().to_string();
                let path = req.path().to_string();
                let fut = srv.call(req);
                let metrics = metrics.clone();
                async move {
                    let mut res = fut.await?;
                    let status = res.status().as_u16();
                    let elapsed = start.elapsed();
                    metrics.request(&route, status, elapsed);
                    let kind = res
                        .headers_mut()
                        .remove("x-error-kind")
                        .next()
                        .and_then(|v| v.to_str().ok().map(str::to_string));
                    if let Some(kind) = &kind {
                        metrics.error(kind);
                    }
                    if let Ok(v) = HeaderValue::from_str(&id) {
                        res.headers_mut()
                            .insert(HeaderName::from_static("x-request-id"), v);
                    }
                    log_line(log, &id, &method, &path, status, elapsed, kind.as_deref());
                    Ok(res)
                }
            })
    })
    .workers(config.workers.max(1))
    .client_request_timeout(config.request_timeout)
    .shutdown_timeout(config.shutdown_timeout.as_secs())
    .listen(listener)?
    .run();
    Ok(server)
}

async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(req.path().to_string()))
}

fn log_line(
    format: LogFormat,
    id: &str,
    method: &str,
    path: &str,
    status: u16,
    elapsed: Duration,
    error: Option<&str>,
) {
    let ms = elapsed.as_secs_f64() * 1e3;
    match format {
        LogFormat::Off => {}
        // serde_json escapes control characters, so a hostile path cannot forge log lines.
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({"request_id": id, "method": method, "path": path, "status": status, "ms": ms, "error": error})
        ),
        LogFormat::Human => eprintln!(
            "{method} {path:?} {status} {ms:.2} ms id={id}{}",
            error.map(|e| format!(" error={e}")).unwrap_or_default()
        ),
    }
}
