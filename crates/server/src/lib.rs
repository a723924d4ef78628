//! The HTTP inference service for the CIFAR-10 CNN, on actix-web.
//!
//! [`serve`] binds the server and returns it running. The parts, from the edge down (arrows
//! only point down; ARCHITECTURE.md has the map):
//! - [`router`]: the one HTTP route table and what is decided per API (the merged OpenAPI
//!   document, the error kind, the form of a refusal);
//! - [`grpc`]: the gRPC server (`--grpc-port`), the protocol's gRPC form and `grpc.health.v1`
//!   over the same state, its bodies metered on the same budget;
//! - [`api`]: the original service's API ([`api::classic`]) and the Open Inference Protocol
//!   ([`api::v2`], over HTTP and gRPC), each with its routes, wire types, errors and OpenAPI
//!   part;
//! - [`http`]: what every route shares: body reading within limits, problem documents,
//!   resources answering OPTIONS and 405, the middleware, the OpenAPI root, the API key;
//! - [`ingest`] and [`inference`]: bodies into images within the decode budget, and the
//!   batching engine and the served records, with errors of their own and no HTTP in them;
//! - [`ops`]: signals, reload and drain, logs, Prometheus metrics, and the memory bound the
//!   settings ([`config`]) give, whatever clients send.

pub mod api;
pub mod config;
pub mod grpc;
pub mod http;
pub mod inference;
pub mod ingest;
pub mod ops;
pub mod router;
pub mod state;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_cors::Cors;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use model::{Backend, Inference, Preprocessor, RecordMeta, RecordVersion};
use tracing_actix_web::TracingLogger;

pub use crate::config::{ConfigError, LogFormat, ServerConfig};
pub use crate::http::auth::ApiKey;
use crate::http::middleware;
use crate::inference::engine::Engine;
use crate::inference::models::{Models, Served};
use crate::ingest::decode::DecodeBudget;
use crate::ingest::upload::BodyBudget;
use crate::ops::lifecycle::Draining;
use crate::ops::logging::RequestSpan;
use crate::ops::memory::BLOCKING_THREADS_PER_WORKER;
use crate::ops::metrics::{Metrics, UPKEEP_PERIOD};
pub use crate::router::openapi_document;
pub use crate::state::AppState;

/// The model to serve and where it came from.
pub struct Loaded {
    /// The network; [`serve`] sets its test-time augmentation from [`ServerConfig::tta`].
    pub inference: Inference,
    /// The record's metadata (format, accuracy, recipe, preprocessing).
    pub meta: RecordMeta,
    /// The record's path, or [`model::record::SHIPPED_SOURCE`].
    pub source: String,
    /// Its content hash and training time.
    pub version: RecordVersion,
    /// The file reloads read again (`None`: the built-in record, which cannot be reloaded).
    pub path: Option<PathBuf>,
}

impl Loaded {
    /// The record at `path`, or the one built into the binary, on `backend`.
    pub fn open(
        path: Option<&std::path::Path>,
        backend: Backend,
    ) -> Result<Self, model::RecordError> {
        let record = model::record::load_or_shipped(path, &backend.device())?;
        Ok(Self {
            inference: Inference::new(record.model, backend)?,
            meta: record.meta,
            source: record.source,
            version: record.version,
            path: path.map(std::path::Path::to_path_buf),
        })
    }

    /// Weights that were never saved (tests, benchmarks), which cannot be reloaded; their
    /// version hashes `source` in place of a file.
    pub fn unsaved(inference: Inference, meta: RecordMeta, source: &str) -> Self {
        Self {
            version: RecordVersion::of(source.as_bytes(), &meta),
            inference,
            meta,
            source: source.to_string(),
            path: None,
        }
    }
}

/// Where the server listens: HTTP, and gRPC when given (`--grpc-port`).
pub struct Listeners {
    /// The HTTP listener (both APIs).
    pub http: TcpListener,
    /// The gRPC listener, if any.
    pub grpc: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(http: TcpListener) -> Self {
        Self { http, grpc: None }
    }
}

/// A server started by [`serve`]: HTTP (on actix), and gRPC on its own runtime if asked.
pub struct Running {
    http: Server,
    grpc: Option<grpc::Grpc>,
    /// How long the gRPC server's requests in flight may take to finish at a stop.
    shutdown_timeout: Duration,
}

impl Running {
    /// The handle that stops the HTTP server (the gRPC server stops with it).
    pub fn handle(&self) -> ServerHandle {
        self.http.handle()
    }

    /// Runs until the HTTP server stops (by its handle, or a stop signal, which stops gRPC
    /// at the same moment), then waits for the gRPC server's requests in flight to finish,
    /// for up to the shutdown timeout.
    pub async fn wait(self) -> std::io::Result<()> {
        let result = self.http.await;
        if let Some(grpc) = self.grpc {
            let wait = self.shutdown_timeout;
            let _ = actix_web::rt::task::spawn_blocking(move || grpc.stop_within(wait)).await;
        }
        result
    }
}

/// Starts serving on `listeners`; the returned [`Running`] runs when waited for, reloads its
/// record on SIGHUP and drains, then stops, on SIGTERM/SIGINT ([`lifecycle`](ops::lifecycle)).
/// Must be called on an actix (tokio) runtime.
// The settings are the server's to keep (a copy goes into `AppState`): taking a reference would
// only move that clone into every caller.
#[allow(clippy::needless_pass_by_value)]
pub fn serve(
    listeners: impl Into<Listeners>,
    loaded: Loaded,
    config: ServerConfig,
) -> std::io::Result<Running> {
    let Listeners {
        http: listener,
        grpc: grpc_listener,
    } = listeners.into();
    let metrics = Arc::new(Metrics::new());
    Metrics::keep_up(&metrics, UPKEEP_PERIOD);
    let backend = loaded.inference.backend();
    let openapi = http::openapi::spec_json(
        router::openapi_document(),
        config.upload.files,
        config.explain_max_steps,
        &config.model_name,
        &loaded.version.label,
        config.api_key.as_ref(),
    );
    let first = Served {
        inference: loaded
            .inference
            .with_precision(config.precision, loaded.meta.int8.as_ref())
            .map_err(std::io::Error::other)?
            .with_tta(config.tta),
        meta: loaded.meta,
        source: loaded.source,
        version: loaded.version,
        since: inference::models::now(),
        explainer: std::sync::OnceLock::new(),
    };
    // A request holds its model for at most its request timeout (one deadline for every wait);
    // a reload waits that long, and a margin for a batch in the model, for the one it replaced.
    let retire_wait = config.request_timeout + Duration::from_secs(10);
    let models = Arc::new(Models::new(
        first,
        loaded.path,
        config.tta,
        retire_wait,
        metrics.clone(),
    ));
    let watcher = if config.watch_model {
        Some(inference::models::watch(models.clone()).map_err(std::io::Error::other)?)
    } else {
        None
    };
    let engine = Engine::start(models.clone(), config.batch, metrics.clone());
    let workers = config.workers.max(1);
    let draining = Draining::default();
    let state = web::Data::new(AppState {
        engine,
        body_budget: BodyBudget::new(config.body_memory),
        decode_budget: DecodeBudget::new(config.decode_memory),
        metrics,
        models: models.clone(),
        draining: draining.clone(),
        watcher: Mutex::new(watcher),
        backend,
        preprocessor: Preprocessor::new(config.max_pixels),
        config: config.clone(),
        openapi: web::Bytes::from(openapi),
        explanations: inference::explain::Explanations::new(
            config.max_explanations,
            config.batch.max_batch.max(config.upload.files),
            config.batch.max_images,
            config.decode_memory,
        ),
    });
    // Requests served, on either protocol: memory goes back to the system only when it stops
    // growing.
    let served = Arc::new(AtomicU64::new(0));
    let (grpc_state, grpc_served) = (state.clone(), served.clone());
    ops::memory::give_back_when_idle(served.clone(), Duration::from_secs(2));
    let server = HttpServer::new(move || {
        let state = state.clone();
        let served = served.clone();
        let mut cors = Cors::default()
            .allow_any_header()
            .allowed_methods(["GET", "POST"])
            // What a browser client may read of an answer besides the simple headers.
            .expose_headers(router::EXPOSED_HEADERS);
        for origin in &state.config.cors_origins {
            cors = if origin == "*" {
                cors.allow_any_origin()
            } else {
                cors.allowed_origin(origin)
            };
        }
        App::new()
            .app_data(state)
            .configure(router::configure)
            .default_service(web::to(router::not_found))
            .wrap(from_fn(|req, next| {
                middleware::require_key(req, next, router::in_form_of)
            }))
            .wrap(cors)
            .wrap(from_fn(move |req, next| {
                served.fetch_add(1, Ordering::Relaxed);
                middleware::count(req, next, router::error_kind)
            }))
            // Outermost: every request runs in its span, with its id chosen before anything.
            .wrap(TracingLogger::<RequestSpan>::new())
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
    // Signals are lifecycle's: readiness must drop before the listener closes.
    .disable_signals()
    .listen(listener)?
    .run();
    // Once HTTP listens: a server that could not is not left serving gRPC.
    let grpc = match grpc_listener {
        Some(listener) => Some(grpc::start(listener, grpc_state, grpc_served)?),
        None => None,
    };
    if config.signals {
        actix_web::rt::spawn(ops::lifecycle::handle_signals(
            server.handle(),
            grpc.as_ref().map(grpc::Grpc::stopper),
            models,
            draining,
            config.drain,
        ));
    }
    Ok(Running {
        http: server,
        grpc,
        shutdown_timeout: config.shutdown_timeout,
    })
}

/// Runs [`serve`] on a thread of its own, with its own actix runtime, for a program that is
/// not an actix application (tests, benchmarks): returns once the server listens, with the
/// handle that stops it. The process's signals stay the program's ([`ServerConfig::signals`]
/// is turned off).
pub fn spawn(
    listeners: impl Into<Listeners>,
    loaded: Loaded,
    mut config: ServerConfig,
) -> std::io::Result<ServerHandle> {
    let listeners = listeners.into();
    config.signals = false;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("http-server".into())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                match serve(listeners, loaded, config) {
                    Ok(running) => {
                        let _ = tx.send(Ok(running.handle()));
                        let _ = running.wait().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the server thread ended before it listened"))?
}
