//! `server`: serve the CIFAR-10 CNN over HTTP.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use model::Backend;
use server::inference::engine::BatchPolicy;
use server::ingest::upload::UploadLimits;
use server::ops::memory::MemoryBound;
use server::{Loaded, LogFormat, ServerConfig};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serve the CIFAR-10 CNN over HTTP (the original API, plus batching, metrics and a web page).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[arg(long, env = "CNN_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "CNN_PORT", default_value_t = 8000)]
    port: u16,
    /// Also serve the Open Inference Protocol over gRPC (and grpc.health.v1) on this port, on
    /// the same host. Off unless set.
    #[arg(long, env = "CNN_GRPC_PORT")]
    grpc_port: Option<u16>,
    /// Record to serve: a file, or a folder holding exactly one `*.safetensors` file (as
    /// `KServe`'s /mnt/models); default: the trained model built into this binary. SIGHUP
    /// reloads it from there without a restart.
    #[arg(long, env = "CNN_MODEL")]
    model: Option<PathBuf>,
    /// The name the Open Inference Protocol serves the model under (/v2/models/NAME, gRPC).
    #[arg(long, env = "CNN_MODEL_NAME", default_value = server::config::DEFAULT_MODEL_NAME)]
    model_name: String,
    /// Reload the record whenever its file changes (needs --model). `CNN_WATCH_MODEL` takes
    /// true/false, 1/0, on/off.
    #[arg(long, env = "CNN_WATCH_MODEL", value_parser = clap::builder::BoolishValueParser::new())]
    watch_model: bool,
    /// Seconds to keep serving after SIGTERM or SIGINT with /ready answering 503, so load
    /// balancers route elsewhere before the listener closes (set it above their health-check
    /// interval); then requests in flight finish and the server stops.
    #[arg(long, env = "CNN_DRAIN_SECONDS", default_value_t = 0)]
    drain_seconds: u64,
    /// Compute backend: `fast` (CPU fast path, the default), or a Burn backend compiled in.
    #[arg(long, env = "CNN_BACKEND", default_value_t = Backend::default_inference())]
    backend: Backend,
    /// HTTP worker threads.
    #[arg(long, env = "CNN_WORKERS", default_value_t = 2)]
    workers: usize,
    /// Open connections, all workers together (more wait in the kernel's accept queue).
    #[arg(long, env = "CNN_MAX_CONNECTIONS", default_value_t = 128)]
    max_connections: usize,
    /// Most images per model batch.
    #[arg(long, env = "CNN_MAX_BATCH", default_value_t = 64)]
    max_batch: usize,
    /// Longest wait, in milliseconds, for more requests to join a batch. 0 (the default)
    /// sends what is queued as soon as the model is free: batches still form under load,
    /// while the model is busy, and a lone request never waits.
    #[arg(long, env = "CNN_MAX_WAIT_MS", default_value_t = 0)]
    max_wait_ms: u64,
    /// Images admitted at once (being decoded, waiting for the model, or in it); a request
    /// whose images do not fit is refused at once with 503 and Retry-After.
    #[arg(long, env = "CNN_MAX_IMAGES", default_value_t = 512)]
    max_images: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "CNN_MAX_BODY", default_value_t = 10 * 1024 * 1024)]
    max_body: usize,
    /// Request-body bytes all requests together may hold in memory; beyond that, 503.
    #[arg(long, env = "CNN_BODY_MEMORY", default_value_t = 32 * 1024 * 1024)]
    body_memory: usize,
    /// Bytes all image decodes together may take (images wait for room; one that needs more
    /// than all of it is refused with 422).
    #[arg(long, env = "CNN_DECODE_MEMORY", default_value_t = 192 * 1024 * 1024)]
    decode_memory: u64,
    /// Most files in one batch request.
    #[arg(long, env = "CNN_MAX_FILES", default_value_t = 64)]
    max_files: usize,
    /// Largest image accepted, in pixels (width × height), checked before decoding.
    #[arg(long, env = "CNN_MAX_PIXELS", default_value_t = model::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Seconds a request may take in all: receiving its body (408 past it), waiting for decode
    /// memory and for the model (503). What a request holds is let go at its deadline.
    #[arg(long, env = "CNN_REQUEST_TIMEOUT", default_value_t = 30)]
    request_timeout: u64,
    /// Origins allowed by CORS (comma-separated; `*` for any). None by default.
    #[arg(long, env = "CNN_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Log format: `human` (or `text`) lines, one `json` object per line, or `off`: human
    /// lines without the one per request. `RUST_LOG` filters them (default `info`).
    #[arg(long, env = "CNN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Test-time augmentation: `flip` (or `--tta` alone) averages each image's class
    /// probabilities with its horizontal mirror's (twice the model's compute per image);
    /// `--tta=crops` also with both shifted 4 px left, right, up and down (ten times); `off` by
    /// default. `CNN_TTA` takes the same, or true/false, 1/0, on/off (on: flip).
    #[arg(
        long,
        env = "CNN_TTA",
        value_name = "off|flip|crops",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "flip",
        default_value = "off"
    )]
    tta: model::Tta,
    /// Arithmetic of the fast backend: `fp32`, or `int8` (about twice the images per second,
    /// 0.04 points of accuracy on the built-in record; needs a record calibrated by
    /// `cnn calibrate`, as the built-in one is).
    #[arg(long, env = "CNN_PRECISION", default_value_t = model::Precision::Fp32)]
    precision: model::Precision,
    /// A bearer token every route but the probes (/health, /ready, /v2/health/*) asks for:
    /// requests without `Authorization: Bearer <key>` get 401. Prefer the environment variable
    /// to the flag, which other users of the machine can read in the process list.
    #[arg(long, env = "CNN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// With --api-key, leave /metrics open too (for a scraper without the key).
    #[arg(long, env = "CNN_PUBLIC_METRICS", value_parser = clap::builder::BoolishValueParser::new())]
    public_metrics: bool,
    /// Explanations (POST /explain, /v2/.../explain) in progress at once; more get 503. Each
    /// counts 24 MiB in the memory bound.
    #[arg(long, env = "CNN_MAX_EXPLANATIONS", default_value_t = 2)]
    max_explanations: usize,
    /// Most steps an integrated-gradients explanation may ask for (its cost grows with them).
    #[arg(long, env = "CNN_EXPLAIN_MAX_STEPS", default_value_t = 128)]
    explain_max_steps: usize,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Probe GET /health on the local server; exit 0 when healthy (for container HEALTHCHECK).
    Healthcheck,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Healthcheck) = args.command {
        return match healthcheck(&args.host, args.port) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let logs = server::ops::logging::init(args.log_format);
    let result = run(args);
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    // Writes out the lines still queued.
    drop(logs);
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(args: Args) -> Result<()> {
    // What only the command line can get wrong; the settings' own checks are
    // `ServerConfig::check`, run once they are gathered.
    if args.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        bail!("--api-key (CNN_API_KEY) is empty: give a token, or leave it unset for no key");
    }
    if args.public_metrics && args.api_key.is_none() {
        bail!("--public-metrics only means something with --api-key: /metrics is open without one");
    }
    if args.watch_model && args.model.is_none() {
        bail!("--watch-model needs --model <file>: the built-in record has no file to watch");
    }
    let loaded =
        Loaded::open(args.model.as_deref(), args.backend).with_context(|| match &args.model {
            Some(path) => format!("cannot serve the record {}", path.display()),
            None => "the record built into this binary is damaged".to_string(),
        })?;
    // Before listening, so that a record int8 cannot run ends the start with its reason.
    let mut loaded = loaded;
    loaded.inference = loaded
        .inference
        .with_precision(args.precision, loaded.meta.int8.as_ref())
        .context("--precision")?;
    let config = ServerConfig {
        workers: args.workers,
        max_connections: args.max_connections.max(1),
        batch: BatchPolicy {
            max_batch: args.max_batch.max(1),
            max_wait: Duration::from_millis(args.max_wait_ms),
            max_images: args.max_images.max(1),
            top_k: 3,
        },
        upload: UploadLimits {
            body: args.max_body,
            files: args.max_files.max(1),
        },
        body_memory: args.body_memory,
        decode_memory: args.decode_memory,
        max_pixels: args.max_pixels,
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        cors_origins: args.cors_origins,
        log: args.log_format,
        tta: args.tta,
        precision: args.precision,
        drain: Duration::from_secs(args.drain_seconds),
        watch_model: args.watch_model,
        api_key: args
            .api_key
            .as_deref()
            .map(|key| server::ApiKey::new(key.trim(), args.public_metrics)),
        model_name: args.model_name,
        max_explanations: args.max_explanations.max(1),
        explain_max_steps: args.explain_max_steps.max(1),
        ..ServerConfig::default()
    };
    config.check()?;
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let grpc = match args.grpc_port {
        Some(port) => {
            let listener = TcpListener::bind((args.host.as_str(), port))
                .with_context(|| format!("cannot listen for gRPC on {}:{port}", args.host))?;
            tracing::info!(addr = %listener.local_addr()?, "gRPC on {}", listener.local_addr()?);
            Some(listener)
        }
        None => None,
    };
    let listeners = server::Listeners {
        http: listener,
        grpc,
    };
    let bound = if listeners.grpc.is_some() {
        MemoryBound::of(&config).with_grpc(&config)
    } else {
        MemoryBound::of(&config)
    };
    tracing::info!(
        %addr,
        backend = %args.backend,
        tta = %config.tta,
        precision = %config.precision,
        memory_bound_bytes = bound.total(),
        version = %loaded.version.label,
        "serving {} (version {}, test accuracy {}) on http://{addr} with backend {} in {}, test-time augmentation {}; memory bound {bound}",
        loaded.source,
        loaded.version.label,
        loaded.meta.test_accuracy
            .map_or("unknown".into(), |a| format!("{:.2}%", a * 100.0)),
        args.backend,
        config.precision,
        config.tta,
    );
    actix_web::rt::System::new()
        .block_on(async move { server::serve(listeners, loaded, config)?.wait().await })?;
    tracing::info!("stopped");
    Ok(())
}

/// A dependency-free HTTP/1.0 probe, so container images need no curl.
fn healthcheck(host: &str, port: u16) -> Result<()> {
    let host = if host == "0.0.0.0" { "127.0.0.1" } else { host };
    let mut stream = TcpStream::connect((host, port))
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /health HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("unhealthy: /health answered {status:?}");
    }
    println!("healthy");
    Ok(())
}
