//! The HTTP inference service for the CIFAR-10 CNN, on actix-web.
//!
//! [`serve`] binds the server and returns it running; requests are decoded on the blocking
//! pool, gathered into model batches by the [`engine`], and answered in the original Python
//! service's JSON shapes. Errors are RFC 9457 problem documents ([`problem`]); every request
//! is counted in [`metrics`] and logged on one line.
//!
//! Memory is bounded by the settings, whatever clients send: see [`memory`].

pub mod decode;
pub mod engine;
pub mod memory;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod upload;

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_cors::Cors;
use actix_web::dev::{Server, Service};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpResponse, HttpServer, web};
use model::{Backend, Inference, Preprocessor, RecordMeta};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

use crate::decode::DecodeBudget;
use crate::engine::{BatchPolicy, Engine};
use crate::memory::{BLOCKING_THREADS_PER_WORKER, LOG_LINES, LOG_METHOD_BYTES, LOG_PATH_BYTES};
use crate::metrics::Metrics;
use crate::problem::ApiError;
use crate::upload::{BodyBudget, UploadLimits};

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
    /// Open connections, all workers together; more wait in the kernel's accept queue.
    pub max_connections: usize,
    pub batch: BatchPolicy,
    pub upload: UploadLimits,
    /// Request-body bytes all requests may hold in memory at once.
    pub body_memory: usize,
    /// Bytes all image decodes may take at once.
    pub decode_memory: u64,
    pub max_pixels: u64,
    pub request_timeout: Duration,
    pub cors_origins: Vec<String>,
    pub log: LogFormat,
    pub shutdown_timeout: Duration,
    /// Test-time augmentation: each image's probabilities are the mean of its own and its
    /// horizontal mirror's ([`Inference::with_tta`]). Off by default.
    pub tta: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            max_connections: 128,
            batch: BatchPolicy {
                max_batch: 64,
                max_wait: Duration::ZERO,
                max_images: 512,
                top_k: 3,
            },
            upload: UploadLimits {
                body: 10 * 1024 * 1024,
                files: 64,
            },
            body_memory: 32 * 1024 * 1024,
            decode_memory: 192 * 1024 * 1024,
            max_pixels: model::DEFAULT_MAX_PIXELS,
            request_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
            log: LogFormat::Human,
            shutdown_timeout: Duration::from_secs(30),
            tta: false,
        }
    }
}

/// Shared by every handler.
pub struct AppState {
    pub engine: Engine,
    pub body_budget: BodyBudget,
    pub decode_budget: DecodeBudget,
    pub metrics: Arc<Metrics>,
    pub meta: RecordMeta,
    pub model_source: String,
    pub backend: Backend,
    pub preprocessor: Preprocessor,
    pub config: ServerConfig,
    /// The OpenAPI document served at `/openapi.json`.
    pub openapi: web::Bytes,
}

/// The model to serve and where it came from.
pub struct Loaded {
    /// The network; [`serve`] sets its test-time augmentation from [`ServerConfig::tta`].
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
    let inference = loaded.inference.with_tta(config.tta);
    let engine = Engine::start(inference, config.batch, metrics.clone());
    // Request lines go to a writer thread through a bounded queue: a slow or blocked stderr
    // never stalls an async worker, and a flood of lines cannot grow memory.
    let (log_writer, log_guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES)
        .finish(std::io::stderr());
    let workers = config.workers.max(1);
    let state = web::Data::new(AppState {
        engine,
        body_budget: BodyBudget::new(config.body_memory),
        decode_budget: DecodeBudget::new(config.decode_memory),
        metrics,
        meta: loaded.meta,
        model_source: loaded.source,
        backend,
        preprocessor: Preprocessor::new(config.max_pixels),
        config: config.clone(),
        openapi: web::Bytes::from(openapi::spec_json(config.upload.files)),
    });
    let request_ids = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    memory::give_back_when_idle(served.clone(), Duration::from_secs(2));
    let log_guard = Arc::new(log_guard);
    let server = HttpServer::new(move || {
        let state = state.clone();
        let ids = request_ids.clone();
        let served = served.clone();
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
        let log = Log {
            format: state.config.log,
            writer: log_writer.clone(),
            _guard: log_guard.clone(),
        };
        let metrics = state.metrics.clone();
        App::new()
            .app_data(state)
            .configure(routes::configure)
            .default_service(web::to(not_found))
            .wrap(cors)
            .wrap_fn(move |req, srv| {
                let start = Instant::now();
                served.fetch_add(1, Ordering::Relaxed);
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
                let log = log.clone();
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
                    log.line(&id, &method, &path, status, elapsed, kind.as_deref());
                    Ok(res)
                }
            })
    })
    .workers(workers)
    .max_connections(config.connections_per_worker())
    // Blocking threads only decode (CPU work): more than a few per core would only add
    // stacks and allocator arenas.
    .worker_max_blocking_threads(BLOCKING_THREADS_PER_WORKER)
    // A client that closes its side has gone: its request is dropped (and its queued images
    // with it) rather than computed for nobody.
    .h1_allow_half_closed(false)
    .client_request_timeout(config.request_timeout)
    .shutdown_timeout(config.shutdown_timeout.as_secs())
    .listen(listener)?
    .run();
    Ok(server)
}

async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(req.path().to_string()))
}

/// The request log: one line per request, written by a background thread.
#[derive(Clone)]
struct Log {
    format: LogFormat,
    writer: NonBlocking,
    /// Flushes the writer thread when the last worker's copy is dropped.
    _guard: Arc<WorkerGuard>,
}

impl Log {
    fn line(
        &self,
        id: &str,
        method: &str,
        path: &str,
        status: u16,
        elapsed: Duration,
        error: Option<&str>,
    ) {
        let ms = elapsed.as_secs_f64() * 1e3;
        // Client-chosen text is cut, so that a line stays within LOG_LINE_BYTES however it
        // is escaped (at most 6 bytes for a byte of input).
        let path = &path[..path.floor_char_boundary(LOG_PATH_BYTES)];
        let method = &method[..method.floor_char_boundary(LOG_METHOD_BYTES)];
        let line = match self.format {
            LogFormat::Off => return,
            // serde_json escapes control characters, so a hostile path cannot forge log lines.
            LogFormat::Json => serde_json::json!({"request_id": id, "method": method, "path": path, "status": status, "ms": ms, "error": error}).to_string(),
            LogFormat::Human => format!(
                "{method} {path:?} {status} {ms:.2} ms id={id}{}",
                error.map(|e| format!(" error={e}")).unwrap_or_default()
            ),
        };
        // A full queue drops the line (lossy writer): never an error worth a request.
        // One write per line: the writer sends each write as one message.
        let _ = self
            .writer
            .clone()
            .write_all(format!("{line}\n").as_bytes());
    }
}
