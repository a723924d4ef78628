//! The server's memory, bounded by its settings whatever clients send.
//!
//! Each term of [`MemoryBound`] is held to its size by a limit in the code: open connections
//! (`max_connections`), request bodies (the body budget in [`crate::ingest::upload`]), decoding (the
//! decode budget in [`crate::ingest::decode`]), images waiting for the model (the image permits in
//! [`crate::inference::engine`]), the log (a bounded, lossy queue of bounded lines, and one bounded span
//! per request in progress) and the metrics (closed label sets, histogram samples folded every
//! second). [`give_back_when_idle`]
//! returns freed memory to the system once a burst is over.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use model::preprocess::{IMAGE_BYTES, IMAGE_FLOATS};

use crate::ServerConfig;
use crate::ingest::decode::INLINE_DECODE_BYTES;

/// What the process needs besides the listed terms: code, runtime, threads, the model's weights
/// (in the Burn module and in the fast path) and allocator slack. Measured: about 21 MB idle.
pub const BASE_BYTES: u64 = 48 << 20;

/// A second record, held while a reload reads and checks it and then until the last request
/// admitted to the old one is answered ([`crate::inference::models`]): the file's bytes, the Burn module and
/// the fast path's copy of the weights (3.3 MB each) and the probe batch, rounded up.
pub const RELOAD_BYTES: u64 = 16 << 20;

/// One open connection at most (actix-http 3.20), besides the answer it is sending: its read
/// buffer (up to 128 KiB + 8 KiB, the head limit), the payload queue it feeds (32 KiB + one
/// read buffer), its write buffer (filled to 32 KiB plus one piece of a body: fixed bodies go
/// in pieces of `openapi::CHUNK_BYTES`, 64 KiB), and the multipart parser's 64 KiB buffer with
/// one pending chunk.
pub const PER_CONNECTION_BYTES: u64 = 512 << 10;

/// Most bytes one image adds to an answer: a `/classify/batch` entry (a file name of at most
/// `body::MAX_FILENAME_BYTES` and two error texts of at most `problem::MAX_DETAIL_BYTES`, each
/// at most doubled by JSON's escaping, and the fixed fields) or a `/v2` answer's rows (both
/// outputs, as numbers or as classification strings). The routes' tests serialise the largest
/// answers and check them against this.
pub const ANSWER_BYTES_PER_IMAGE: u64 = 2 << 10;

/// An answer's part that does not grow with its images: a `/v2` answer's `id` (at most 1 KiB,
/// escaped at most sixfold), names and brackets; any error document.
pub const ANSWER_FIXED_BYTES: u64 = 8 << 10;

/// Log lines waiting for the log writer thread; beyond that lines are dropped, never waited
/// for.
pub const LOG_LINES: usize = 4096;

/// Longest log line; the writer cuts any longer one. A request's line fits whole: the logged
/// path and method are cut to [`LOG_PATH_BYTES`] and [`LOG_METHOD_BYTES`], escaping at most
/// sextuples them, and the request id is at most 128 printable bytes.
pub const LOG_LINE_BYTES: u64 = 2 << 10;
/// Longest request path logged (the rest is cut).
pub const LOG_PATH_BYTES: usize = 200;
/// Longest request method logged (the rest is cut).
pub const LOG_METHOD_BYTES: usize = 16;

/// One request in progress (at most one per open connection) holds a log span: its fields,
/// formatted once (as bounded as a line), and its slot in the span registry.
pub const REQUEST_SPAN_BYTES: u64 = 4 << 10;

/// The metrics: a closed set of series (route patterns × status codes, problem kinds) and the
/// histogram samples of at most a second (folded into buckets every second), and the
/// expositions of at most `metrics::MAX_SCRAPES` `/metrics` requests being sent (tens of KiB
/// each), with room to spare.
pub const METRICS_BYTES: u64 = 1 << 20;

/// Threads of each worker's blocking pool (they decode images).
pub const BLOCKING_THREADS_PER_WORKER: usize = 4;

/// Requests at once on one gRPC connection (HTTP/2 streams).
pub const GRPC_STREAMS: u32 = 4;

/// HTTP/2 flow-control window of a gRPC connection and of each of its streams: the bytes a
/// client may send ahead of what the server has read (and so not yet charged on the body
/// budget).
pub const GRPC_WINDOW_BYTES: u32 = 256 << 10;

/// Largest header list of a gRPC request (HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE`).
pub const GRPC_HEADER_LIST_BYTES: u32 = 16 << 10;

/// One gRPC connection besides its window: hyper's and h2's read and write buffers and frame
/// state, and the headers of each of its streams.
const GRPC_CONNECTION_BYTES: u64 = (64 << 10) + GRPC_STREAMS as u64 * GRPC_HEADER_LIST_BYTES as u64;

/// Most bytes one image adds to a gRPC answer: both outputs, as raw floats (40 bytes each) or
/// as classifications of all ten classes (ten length-prefixed `"<value>:<index>:<label>"`, the
/// value as long as 48 characters as Rust writes an f32), and protobuf's framing.
pub const GRPC_ANSWER_BYTES_PER_IMAGE: u64 = 2 << 10;

/// A gRPC answer's part that does not grow with its images: the `id` (at most 1 KiB), the
/// names, version and shapes.
pub const GRPC_ANSWER_FIXED_BYTES: u64 = 2 << 10;

/// The gRPC server's runtime: its worker and blocking threads' stacks as far as they are
/// touched, and tonic's routing state.
const GRPC_RUNTIME_BYTES: u64 = 4 << 20;

/// One explanation in progress (`--max-explanations` of them), held until its answer is sent
/// ([`crate::inference::explain`]): the gradient methods' working memory
/// ([`model::explain::GRADIENT_BYTES`]), its images' floats, and its answer (a heatmap of at
/// most 512×512 values as JSON, a 256×256 PNG, or eight 64×64 maps), rounded up. Occluded
/// copies waiting for the model are charged on the decode budget.
pub const EXPLANATION_BYTES: u64 = model::explain::GRADIENT_BYTES + (8 << 20);

/// A record's explainer, made at its first explanation: its weights again on the autodiff
/// device and fc1's as plain floats (3.3 MB each), and while it is made the record's bytes
/// and a second module (measured: the first explanation raised the peak RSS by 18 MB, the
/// blocking thread's stack included), rounded up; two records may be held during a reload.
pub const EXPLAINER_BYTES: u64 = 16 << 20;

/// Bytes the fast path keeps per image of a batch besides its input: the 8,192 features and
/// the hidden layer.
const FAST_PATH_BYTES_PER_IMAGE: u64 = 33 << 10;

/// The most memory the server takes, term by term, as a function of its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBound {
    /// `BASE_BYTES`: what the process takes before it serves anything.
    pub base: u64,
    /// `workers × ceil(max_connections / workers) × PER_CONNECTION_BYTES`.
    pub connections: u64,
    /// The largest answer, three times per open connection: a client that pipelines requests
    /// and reads nothing leaves one answer copied into the connection's write buffer (whose
    /// capacity may grow to twice what it holds) and the next one waiting to be sent
    /// (`3 × (ANSWER_FIXED_BYTES + max_files × ANSWER_BYTES_PER_IMAGE)`; answers are
    /// serialised to their exact size). Fixed bodies (the docs' assets, the OpenAPI document)
    /// are shared by every connection, not copied; `/metrics` expositions are counted in
    /// `metrics`.
    pub answers: u64,
    /// `3 × body_memory`: a growing buffer may hold up to twice the bytes charged to it, and
    /// a JPEG decoder takes a copy of its file.
    pub bodies: u64,
    /// `decode_memory + workers × INLINE_DECODE_BYTES`.
    pub decoding: u64,
    /// `max_images × 12 KiB` waiting, plus one batch of floats, features and logits (and with
    /// test-time augmentation one view's floats and the probabilities summed so far). A
    /// batch holds up to `max(max_batch, max_files)` images: one request's job is never split.
    pub images: u64,
    /// `LOG_LINES × LOG_LINE_BYTES` queued, plus `REQUEST_SPAN_BYTES` per open connection.
    pub log: u64,
    /// `METRICS_BYTES`.
    pub metrics: u64,
    /// `RELOAD_BYTES`: a second record during a reload.
    pub reload: u64,
    /// With `--grpc-port` ([`MemoryBound::with_grpc`]): per connection, its flow-control
    /// window, its buffers, and an unread answer on each of its streams; the runtime. Its
    /// messages' bytes are charged on the body budget (`bodies`), its images on the image
    /// permits and the decode budget, as HTTP's.
    pub grpc: u64,
    /// `2 × EXPLAINER_BYTES + max_explanations × EXPLANATION_BYTES`.
    pub explanations: u64,
}

impl MemoryBound {
    /// The sum of the terms: the most the server takes with these settings, logged at start-up
    /// and what a container's memory limit should allow.
    pub fn total(&self) -> u64 {
        self.base
            + self.connections
            + self.answers
            + self.bodies
            + self.decoding
            + self.images
            + self.log
            + self.metrics
            + self.reload
            + self.grpc
            + self.explanations
    }

    /// This bound with the gRPC server's terms (`--grpc-port`): at most `max_connections`
    /// connections of their own.
    #[must_use]
    pub fn with_grpc(mut self, config: &ServerConfig) -> Self {
        let answer =
            GRPC_ANSWER_FIXED_BYTES + config.upload.files as u64 * GRPC_ANSWER_BYTES_PER_IMAGE;
        let per_connection =
            u64::from(GRPC_WINDOW_BYTES) + GRPC_CONNECTION_BYTES + u64::from(GRPC_STREAMS) * answer;
        self.grpc = config.max_connections.max(1) as u64 * per_connection + GRPC_RUNTIME_BYTES;
        self
    }
}

impl fmt::Display for MemoryBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        write!(
            f,
            "{:.0} MiB = base {:.0} + connections {:.0} + answers {:.0} + bodies {:.0} + decoding {:.0} + images {:.1} + log {:.1} + metrics {:.1} + reload {:.0} + gRPC {:.0} + explanations {:.0}",
            mib(self.total()),
            mib(self.base),
            mib(self.connections),
            mib(self.answers),
            mib(self.bodies),
            mib(self.decoding),
            mib(self.images),
            mib(self.log),
            mib(self.metrics),
            mib(self.reload),
            mib(self.grpc),
            mib(self.explanations)
        )
    }
}

impl MemoryBound {
    /// The bound `config`'s settings give (docs/serving.md, "Memory").
    pub fn of(config: &ServerConfig) -> Self {
        let n = |v: usize| v as u64;
        let workers = n(config.workers.max(1));
        let mut per_image =
            n(IMAGE_FLOATS * 4 + model::NUM_CLASSES * 8) + FAST_PATH_BYTES_PER_IMAGE;
        if config.tta.is_on() {
            // One view's copy and the probabilities summed so far live through each further
            // pass (model::Inference::probabilities), which runs the batch's size again.
            per_image += n(IMAGE_FLOATS * 4 + model::NUM_CLASSES * 4);
        }
        let connections = workers * n(config.connections_per_worker());
        let largest_batch = n(config.batch.max_batch.max(config.upload.files));
        MemoryBound {
            base: BASE_BYTES,
            connections: connections * PER_CONNECTION_BYTES,
            answers: connections
                * 3
                * (ANSWER_FIXED_BYTES + n(config.upload.files) * ANSWER_BYTES_PER_IMAGE),
            bodies: 3 * n(config.body_memory),
            decoding: config.decode_memory + workers * INLINE_DECODE_BYTES,
            images: n(config.batch.max_images) * n(IMAGE_BYTES) + largest_batch * per_image,
            log: n(LOG_LINES) * LOG_LINE_BYTES + connections * REQUEST_SPAN_BYTES,
            metrics: METRICS_BYTES,
            reload: RELOAD_BYTES,
            grpc: 0,
            explanations: 2 * EXPLAINER_BYTES
                + n(config.max_explanations.max(1)) * EXPLANATION_BYTES,
        }
    }
}

/// Returns freed heap memory to the system once requests stop: when a `period` passes without
/// a request after a burst, glibc's `malloc_trim` releases the free pages of every arena (and
/// again a few periods later). Never runs under load, so it costs no throughput. (glibc keeps
/// a burst's freed memory otherwise: docs/serving.md, "Memory", has the figures.)
pub fn give_back_when_idle(requests: Arc<AtomicU64>, period: Duration) {
    let spawned = std::thread::Builder::new()
        .name("memory-trim".into())
        .spawn(move || {
            let mut seen = requests.load(Ordering::Relaxed);
            // Periods without a request since the last burst, while there is one to clean up.
            let mut idle: Option<u32> = None;
            // Ends with the server: then this thread holds the last handle.
            while Arc::strong_count(&requests) > 1 {
                std::thread::sleep(period);
                let now = requests.load(Ordering::Relaxed);
                if now != seen {
                    idle = Some(0);
                } else if let Some(periods) = idle {
                    // Once right after the burst, and once more after the blocking pool's idle
                    // threads (kept 10 s) have exited and freed their arenas.
                    if periods == 0 || periods + 1 == LATE_TRIM_PERIODS {
                        trim();
                    }
                    idle = (periods + 1 < LATE_TRIM_PERIODS).then_some(periods + 1);
                }
                seen = now;
            }
        });
    // Without the thread the server still works; it only keeps what a burst left behind.
    drop(spawned);
}

/// The second trim comes this many idle periods after a burst.
const LATE_TRIM_PERIODS: u32 = 8;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks and shrinks glibc's own arenas, under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README and the Kubernetes Deployment quote this figure.
    #[test]
    fn the_default_settings_give_the_documented_bound() {
        let bound = MemoryBound::of(&ServerConfig::default());
        // Rounded to the MiB, as the start-up line prints it.
        assert_eq!((bound.total() + (1 << 19)) >> 20, 569, "{bound}");
        assert_eq!(bound.connections, 128 * PER_CONNECTION_BYTES);
        assert_eq!(bound.answers, 128 * 3 * ((8 << 10) + 64 * (2 << 10)));
    }

    /// A batch request's job goes whole into one batch, however large `--max-batch` is.
    #[test]
    fn a_batch_is_counted_at_the_largest_request() {
        let default = ServerConfig::default();
        let small_batches = ServerConfig {
            batch: crate::inference::engine::BatchPolicy {
                max_batch: 8,
                ..default.batch
            },
            ..default.clone()
        };
        // 64 files per request: a batch of 64 images all the same.
        assert_eq!(
            MemoryBound::of(&small_batches).images,
            MemoryBound::of(&default).images
        );
    }

    /// Test-time augmentation holds one view's copy of the batch's floats besides the batch,
    /// however many views it averages (they run one after another).
    #[test]
    fn tta_adds_one_batch_of_view_floats() {
        let plain = ServerConfig::default();
        let tta = ServerConfig {
            tta: model::Tta::Flip,
            ..ServerConfig::default()
        };
        let extra = MemoryBound::of(&tta).images - MemoryBound::of(&plain).images;
        assert_eq!(
            extra,
            64 * (IMAGE_FLOATS as u64 * 4 + model::NUM_CLASSES as u64 * 4)
        );
        let crops = ServerConfig {
            tta: model::Tta::Crops,
            ..ServerConfig::default()
        };
        assert_eq!(MemoryBound::of(&crops).images, MemoryBound::of(&tta).images);
    }

    #[test]
    fn connections_are_counted_as_the_workers_take_them() {
        let config = ServerConfig {
            workers: 3,
            max_connections: 100,
            ..ServerConfig::default()
        };
        // 34 per worker: 102 in all.
        assert_eq!(config.connections_per_worker(), 34);
        assert_eq!(
            MemoryBound::of(&config).connections,
            102 * PER_CONNECTION_BYTES
        );
    }
}
