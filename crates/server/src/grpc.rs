//! The gRPC server (`--grpc-port`): the Open Inference Protocol's service
//! ([`crate::api::v2::grpc`]) and the standard `grpc.health.v1` service (for Kubernetes `grpc:`
//! probes), on tonic, over the HTTP server's own state: one engine, one set of image permits,
//! one decode budget, one body budget, one served model.
//!
//! Its bounds, as the HTTP server's: at most `--max-connections` connections (more wait in the
//! kernel's queue), [`MAX_STREAMS`] requests at once on each, a message of at most
//! `--max-body` bytes, and every message's bytes charged on the body budget as they arrive
//! (the layer every call passes), before tonic has buffered them whole: a request that finds the budget spent is
//! refused with `UNAVAILABLE`, as HTTP answers 503. HTTP/2's flow-control windows
//! ([`WINDOW_BYTES`]) bound what a connection buffers ahead of that.
//!
//! It runs on a tokio runtime of its own (as many threads as HTTP workers), started by
//! [`start`]; health follows readiness (so it turns `NOT_SERVING` when a drain starts), and
//! [`GrpcStop::stop`] ends it with the HTTP server.

use std::net::TcpListener;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::web;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Bytes, Service, http};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic_health::ServingStatus;

use crate::AppState;
use crate::api::v2::grpc::{Charge, Service as InferenceService};
use crate::api::v2::proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::ingest::upload::BodyBudget;
use crate::ops::memory::{
    BLOCKING_THREADS_PER_WORKER, GRPC_HEADER_LIST_BYTES as HEADER_LIST_BYTES,
    GRPC_STREAMS as MAX_STREAMS, GRPC_WINDOW_BYTES as WINDOW_BYTES,
};

/// Longest a connection is kept (then closed gracefully: its requests finish).
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(600);

/// How often health is brought in line with readiness.
const HEALTH_PERIOD: Duration = Duration::from_millis(100);

/// The running gRPC server.
pub struct Grpc {
    stop: GrpcStop,
    done: std::sync::mpsc::Receiver<()>,
}

/// What stops the gRPC server: held by [`crate::ops::lifecycle`], which stops it with HTTP.
#[derive(Clone)]
pub struct GrpcStop {
    notify: Arc<tokio::sync::Notify>,
    /// Set by a stop that must not wait for requests in flight.
    now: Arc<std::sync::atomic::AtomicBool>,
}

impl GrpcStop {
    /// Stops accepting; `graceful`: requests in flight finish (for up to the shutdown
    /// timeout), else the server is let go at once.
    pub fn stop(&self, graceful: bool) {
        if !graceful {
            self.now.store(true, std::sync::atomic::Ordering::Release);
        }
        self.notify.notify_one();
    }
}

impl Grpc {
    /// What stops this server, for the signal handler.
    pub fn stopper(&self) -> GrpcStop {
        self.stop.clone()
    }

    /// Stops the server (if not already stopping) and waits up to `wait` for its requests in
    /// flight to finish (not at all after a stop that was not graceful): a client holding a
    /// stream open (`Health.Watch`) cannot hold up the process's exit.
    pub fn stop_within(self, wait: Duration) {
        self.stop.stop(true);
        let wait = if self.stop.now.load(std::sync::atomic::Ordering::Acquire) {
            Duration::ZERO
        } else {
            wait
        };
        let _ = self.done.recv_timeout(wait);
    }
}

/// Starts serving gRPC on `listener` from `state`, counting each call in `served` (as HTTP
/// counts its requests); returns once its runtime runs.
pub fn start(
    listener: TcpListener,
    state: web::Data<AppState>,
    served: Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<Grpc> {
    listener.set_nonblocking(true)?;
    let config = &state.config;
    let workers = config.workers.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(BLOCKING_THREADS_PER_WORKER * workers)
        .thread_name("grpc")
        .enable_all()
        .build()?;
    let stop = GrpcStop {
        notify: Arc::new(tokio::sync::Notify::new()),
        now: Arc::default(),
    };
    let stopped = stop.notify.clone();
    let (finished, done) = std::sync::mpsc::channel();
    let max_message = config.upload.body;
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    // Longer than a request may take, so that a client waiting for its answer is never cut.
    let idle = config.request_timeout + Duration::from_secs(10);
    let layer_state = state.clone();
    std::thread::Builder::new()
        .name("grpc-server".into())
        .spawn(move || {
            // Dropped when the server ends, however: the sender's end says so.
            let _finished = finished;
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(error = %e, "gRPC: cannot listen: {e}");
                        return;
                    }
                };
                let (reporter, health) = tonic_health::server::health_reporter();
                // tonic-health starts at SERVING: not before the model has run.
                reporter
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                tokio::spawn(follow_readiness(reporter, state.clone()));
                let inference = GrpcInferenceServiceServer::new(InferenceService::new(state))
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(usize::MAX);
                let incoming = futures_util::stream::unfold(
                    (listener, connections),
                    move |(listener, connections)| async move {
                        let accepted = accept(&listener, &connections, idle).await;
                        Some((accepted, (listener, connections)))
                    },
                );
                let result = tonic::transport::Server::builder()
                    .max_concurrent_streams(MAX_STREAMS)
                    .initial_connection_window_size(WINDOW_BYTES)
                    .initial_stream_window_size(WINDOW_BYTES)
                    .http2_max_header_list_size(HEADER_LIST_BYTES)
                    // A connection is closed after a while, gracefully, so that a client
                    // trickling bytes cannot hold one of --max-connections for ever.
                    .max_connection_age(MAX_CONNECTION_AGE)
                    .max_connection_age_grace(idle)
                    .layer(tower_layer::layer_fn(move |inner| Meter {
                        inner,
                        state: layer_state.clone(),
                        served: served.clone(),
                    }))
                    .add_service(health)
                    .add_service(inference)
                    .serve_with_incoming_shutdown(incoming, stopped.notified())
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "gRPC server: {e}");
                }
            });
        })?;
    Ok(Grpc { stop, done })
}

/// Accepts the next connection once fewer than `--max-connections` are open; it is closed
/// when nothing has come from it for `idle`.
async fn accept(
    listener: &tokio::net::TcpListener,
    connections: &Arc<Semaphore>,
    idle: Duration,
) -> std::io::Result<Counted> {
    let permit = connections
        .clone()
        .acquire_owned()
        .await
        .map_err(std::io::Error::other)?;
    let (stream, _) = listener.accept().await?;
    stream.set_nodelay(true)?;
    Ok(Counted {
        stream,
        _permit: permit,
        idle,
        deadline: Box::pin(tokio::time::sleep(idle)),
    })
}

/// Keeps the health service's answer (the server's, `""`, and the protocol service's) equal
/// to readiness: `SERVING` once the model has run once, `NOT_SERVING` from a stop signal on.
async fn follow_readiness(
    reporter: tonic_health::server::HealthReporter,
    state: web::Data<AppState>,
) {
    let mut last = None;
    loop {
        let now = if state.is_ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(now) {
            use tonic::server::NamedService;
            type Inference = GrpcInferenceServiceServer<InferenceService>;
            reporter.set_service_status("", now).await;
            reporter.set_service_status(Inference::NAME, now).await;
            last = Some(now);
        }
        tokio::time::sleep(HEALTH_PERIOD).await;
    }
}

/// A connection, holding its place among `--max-connections` until closed, and closed when
/// nothing has come from it for `idle` (a client that opens connections and sends nothing
/// cannot keep others out).
struct Counted {
    stream: tokio::net::TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let next = tokio::time::Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection"),
            )),
            polled => polled,
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// What every call goes through: asks for `--api-key` where HTTP does (every call but the
/// probes: `grpc.health.v1`, `ServerLive`, `ServerReady`), as `authorization: Bearer <key>`
/// metadata; charges the request body's bytes on the body budget as they arrive, into a
/// [`Charge`] the request carries in its extensions (the handler keeps it until its answer),
/// a body the budget has no room for ending in `UNAVAILABLE`; counts the call in the metrics
/// and logs it (`protocol="grpc"`), as HTTP's middleware does.
#[derive(Clone)]
struct Meter<S> {
    inner: S,
    state: web::Data<AppState>,
    served: Arc<std::sync::atomic::AtomicU64>,
}

/// The calls the server answers, by path, and their names in metrics and logs (a closed set:
/// any other path counts as `unknown`).
const METHODS: [(&str, &str); 10] = [
    ("/inference.GRPCInferenceService/ModelInfer", "ModelInfer"),
    ("/inference.GRPCInferenceService/ServerLive", "ServerLive"),
    ("/inference.GRPCInferenceService/ServerReady", "ServerReady"),
    ("/inference.GRPCInferenceService/ModelReady", "ModelReady"),
    (
        "/inference.GRPCInferenceService/ServerMetadata",
        "ServerMetadata",
    ),
    (
        "/inference.GRPCInferenceService/ModelMetadata",
        "ModelMetadata",
    ),
    ("/inference.GRPCInferenceService/ModelConfig", "ModelConfig"),
    (
        "/inference.GRPCInferenceService/ModelStatistics",
        "ModelStatistics",
    ),
    ("/grpc.health.v1.Health/Check", "Health.Check"),
    ("/grpc.health.v1.Health/Watch", "Health.Watch"),
];

/// A gRPC status code's name, as the metrics label it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The code of an answer from its head: `grpc-status` is there when the call failed before
/// any message (every error of this server's unary calls); an answer with a message carries
/// its status in the trailers, and is counted `OK`.
fn answered_code(response: &http::Response<Body>) -> &'static str {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or("OK", |c| code_name(tonic::Code::from_i32(c)))
}

impl<S> Service<http::Request<Body>> for Meter<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let start = std::time::Instant::now();
        self.served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state = self.state.clone();
        let path = request.uri().path();
        let method = METHODS
            .iter()
            .find(|(p, _)| *p == path)
            .map_or("unknown", |(_, name)| name);
        let done = move |response: http::Response<Body>| {
            let code = answered_code(&response);
            let elapsed = start.elapsed();
            state.metrics.grpc_request(method, code, elapsed);
            if state.config.log != crate::LogFormat::Off {
                let duration_ms = elapsed.as_secs_f64() * 1e3;
                tracing::info!(
                    target: crate::ops::logging::REQUEST_TARGET,
                    protocol = "grpc",
                    method,
                    code,
                    duration_ms,
                    "answered"
                );
            }
            response
        };
        if let Some(key) = &self.state.config.api_key {
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(http::HeaderValue::as_bytes);
            if !key.allows(path, authorization) {
                let refused = Status::unauthenticated(
                    "this server asks for its API key: send `authorization: Bearer <key>` metadata",
                );
                return Box::pin(std::future::ready(Ok(done(refused.into_http()))));
            }
        }
        let charge = Charge::default();
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(charge.clone());
        let body = Body::new(Metered {
            body,
            budget: self.state.body_budget.clone(),
            charge,
            max_message: self.state.config.upload.body,
            header: Vec::with_capacity(FRAME_HEADER),
            seen: 0,
        });
        let deadline = deadline(&parts.headers, self.state.config.request_timeout);
        let answer = self.inner.call(http::Request::from_parts(parts, body));
        Box::pin(async move {
            match tokio::time::timeout(deadline, answer).await {
                Ok(answer) => answer.map(done),
                Err(_) => Ok(done(
                    Status::deadline_exceeded(format!(
                        "no answer within {:.3} s (--request-timeout, or the client's deadline)",
                        deadline.as_secs_f64()
                    ))
                    .into_http(),
                )),
            }
        })
    }
}

/// How long a call may take: `--request-timeout`, or the client's `grpc-timeout` when shorter
/// (an amount and a unit: `H`, `M`, `S`, `m`, `u`, `n`).
fn deadline(headers: &http::HeaderMap, request_timeout: Duration) -> Duration {
    let asked = headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .filter(|v| (2..=9).contains(&v.len()))
        .and_then(|v| {
            let (amount, unit) = v.split_at(v.len() - 1);
            let amount: u64 = amount.parse().ok()?;
            Some(match unit {
                "H" => Duration::from_secs(amount.saturating_mul(3600)),
                "M" => Duration::from_secs(amount.saturating_mul(60)),
                "S" => Duration::from_secs(amount),
                "m" => Duration::from_millis(amount),
                "u" => Duration::from_micros(amount),
                "n" => Duration::from_nanos(amount),
                _ => return None,
            })
        });
    asked.map_or(request_timeout, |asked| asked.min(request_timeout))
}

/// A gRPC message's header: a compression flag and its length (4 bytes, big-endian).
const FRAME_HEADER: usize = 5;

/// A request body whose bytes are charged on the budget as they come, and whose first
/// message is refused from its header when it says it is longer than `--max-body`
/// (`RESOURCE_EXHAUSTED`, as gRPC's own servers answer; tonic's check, behind this one, says
/// `OUT_OF_RANGE`).
struct Metered {
    body: Body,
    budget: BodyBudget,
    charge: Charge,
    max_message: usize,
    /// The first message's header, until whole.
    header: Vec<u8>,
    /// Bytes of the body so far.
    seen: usize,
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let Poll::Ready(Some(Ok(frame))) = polled else {
            return polled;
        };
        if let Some(data) = frame.data_ref() {
            self.seen += data.len();
            if let [_, a, b, c, d] = self.header[..] {
                // Every call here takes one message: anything after it would only be decoded,
                // and charged, for nothing.
                let message = u32::from_be_bytes([a, b, c, d]) as usize;
                if self.seen > FRAME_HEADER + message {
                    return Poll::Ready(Some(Err(Status::invalid_argument(
                        "more than one message in a call that takes one",
                    ))));
                }
            }
            if self.header.len() < FRAME_HEADER {
                let take = (FRAME_HEADER - self.header.len()).min(data.len());
                self.header.extend_from_slice(&data[..take]);
                if let [_, a, b, c, d] = self.header[..] {
                    let length = u32::from_be_bytes([a, b, c, d]) as usize;
                    if length > self.max_message {
                        return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                            "the message is {length} bytes, too large: at most {} are taken (--max-body)",
                            self.max_message
                        )))));
                    }
                }
            }
            let Some(more) = self.budget.try_charge(data.len()) else {
                return Poll::Ready(Some(Err(Status::unavailable(
                    "the server is at capacity (--body-memory); retry shortly",
                ))));
            };
            let mut held = self
                .charge
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match held.as_mut() {
                Some(permit) => permit.merge(more),
                None => *held = Some(more),
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
