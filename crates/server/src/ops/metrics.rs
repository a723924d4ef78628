//! Prometheus metrics, recorded with the [`metrics`] crate and exposed at `/metrics` by
//! [`metrics_exporter_prometheus`] (its recorder only: the server's own route renders it, no
//! listener of its own), plus the standard `process_*` metrics of [`metrics_process`].
//!
//! Each server has its own recorder (several servers in one process, as in the tests, never
//! mix their counts): handles are registered on it directly rather than through the global
//! macros, and the process collector writes into it through
//! [`metrics::with_local_recorder`] at scrape time.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `http_requests_total` | counter | `route`, `status` | requests answered |
//! | `http_request_duration_seconds` | histogram | `route` | time from request to response head |
//! | `grpc_requests_total` | counter | `method`, `code` | gRPC calls answered (`--grpc-port`), by method and gRPC status code |
//! | `grpc_request_duration_seconds` | histogram | `method` | time from a gRPC call's arrival to its response head |
//! | `refusals_total` | counter | `reason` | requests refused with a problem document (4xx, 503), by its type |
//! | `errors_total` | counter | `kind` | every failure by kind: refused or failed requests, images that failed inside a batch, jobs abandoned by their client |
//! | `inference_queue_wait_seconds` | histogram | | time a job waited for the model |
//! | `inference_batch_size` | histogram | | images per model batch |
//! | `inference_images_in_flight` | gauge | | images admitted: being decoded, waiting, or in the model |
//! | `images_classified_total` | counter | | images run through the model |
//! | `model_reloads_total` | counter | `result` (`success`, `failure`) | model reloads |
//! | `log_lines_dropped_total` | counter | | log lines dropped because the log writer's queue was full |
//! | `process_*` | | | resident memory, CPU seconds, open and maximum file descriptors, start time, threads |
//!
//! Memory stays bounded: every label takes values from a closed set (route patterns, status
//! codes, problem kinds), and histogram samples, which the recorder keeps until it folds them
//! into buckets, are folded every [`UPKEEP_PERIOD`] by a thread of their own as well as at
//! each scrape.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use ::metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Bucket bounds of the duration histograms, in seconds: sub-millisecond answers up to the
/// default request timeout (30 s) and beyond.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Bucket bounds of the batch-size histogram, in images.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How often histogram samples are folded into their buckets between scrapes.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(1);

const REQUESTS: &str = "http_requests_total";
const LATENCY: &str = "http_request_duration_seconds";
const GRPC_REQUESTS: &str = "grpc_requests_total";
const GRPC_LATENCY: &str = "grpc_request_duration_seconds";
const REFUSALS: &str = "refusals_total";
const ERRORS: &str = "errors_total";
const QUEUE_WAIT: &str = "inference_queue_wait_seconds";
const BATCH_SIZE: &str = "inference_batch_size";
const IN_FLIGHT: &str = "inference_images_in_flight";
const IMAGES: &str = "images_classified_total";
const RELOADS: &str = "model_reloads_total";
const LOG_DROPPED: &str = "log_lines_dropped_total";

/// What the recorder is told about each registration (it keeps none of it).
const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The series of one route: its latency histogram and its request counters by status.
struct RouteSeries {
    latency: Histogram,
    by_status: HashMap<u16, Counter>,
}

/// All server metrics, on a recorder of their own.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    /// Handles by route pattern, registered on first use; a request only takes the read lock.
    routes: RwLock<HashMap<String, RouteSeries>>,
    queue_wait: Histogram,
    batch_size: Histogram,
    in_flight: Gauge,
    images: Counter,
    reloads_ok: Counter,
    reloads_failed: Counter,
    log_dropped: Counter,
    /// Expositions being sent: a client that does not read holds its copy.
    scrapes: Arc<tokio::sync::Semaphore>,
}

/// `/metrics` answers being sent at once; another is refused (503) until one is done, so that
/// clients that do not read hold at most this many expositions (`memory::METRICS_BYTES`).
pub const MAX_SCRAPES: usize = 2;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh recorder with every metric described and the unlabelled ones registered (at 0).
    ///
    /// # Panics
    ///
    /// Never: the bucket lists are constants and not empty.
    #[must_use]
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(LATENCY.into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), SECONDS_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(GRPC_LATENCY.into()), SECONDS_BUCKETS)
            })
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS))
            .expect("bucket lists are not empty")
            .build_recorder();
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            // The recorder keeps one description per name, whatever the metric's type.
            recorder.describe_counter(name, unit, help);
        };
        describe(
            REQUESTS,
            None,
            "Requests answered, by route pattern and status.",
        );
        describe(
            LATENCY,
            Some(Unit::Seconds),
            "Time from a request's arrival to its response head, by route pattern.",
        );
        describe(
            GRPC_REQUESTS,
            None,
            "gRPC calls answered, by method and gRPC status code.",
        );
        describe(
            GRPC_LATENCY,
            Some(Unit::Seconds),
            "Time from a gRPC call's arrival to its response head, by method.",
        );
        describe(
            REFUSALS,
            None,
            "Requests refused with a problem document (status 4xx or 503), by problem type.",
        );
        describe(
            ERRORS,
            None,
            "Failures by kind: refused or failed requests, images that failed inside a batch, jobs abandoned by their client.",
        );
        describe(
            QUEUE_WAIT,
            Some(Unit::Seconds),
            "Time a job waited for the model.",
        );
        describe(BATCH_SIZE, Some(Unit::Count), "Images per model batch.");
        describe(
            IN_FLIGHT,
            Some(Unit::Count),
            "Images admitted: being decoded, waiting for the model, or in it.",
        );
        describe(IMAGES, Some(Unit::Count), "Images run through the model.");
        describe(RELOADS, None, "Model reloads, by result.");
        describe(
            LOG_DROPPED,
            None,
            "Log lines dropped because the log writer's queue was full.",
        );
        let process = metrics_process::Collector::default();
        ::metrics::with_local_recorder(&recorder, || process.describe());
        let reload = |result: &'static str| {
            recorder.register_counter(
                &Key::from_parts(RELOADS, vec![Label::from_static_parts("result", result)]),
                &META,
            )
        };
        let (reloads_ok, reloads_failed) = (reload("success"), reload("failure"));
        let metrics = Self {
            handle: recorder.handle(),
            queue_wait: recorder.register_histogram(&Key::from_static_name(QUEUE_WAIT), &META),
            batch_size: recorder.register_histogram(&Key::from_static_name(BATCH_SIZE), &META),
            in_flight: recorder.register_gauge(&Key::from_static_name(IN_FLIGHT), &META),
            images: recorder.register_counter(&Key::from_static_name(IMAGES), &META),
            log_dropped: recorder.register_counter(&Key::from_static_name(LOG_DROPPED), &META),
            reloads_ok,
            reloads_failed,
            recorder,
            process,
            routes: RwLock::default(),
            scrapes: Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES)),
        };
        // Registered at 0: a reload that never happened is still a series to alert on.
        metrics.reloads_ok.increment(0);
        metrics.reloads_failed.increment(0);
        metrics
    }

    /// Folds histogram samples into their buckets every `period` on a thread of its own, for
    /// as long as `metrics` lives, so that samples never pile up between scrapes.
    pub fn keep_up(metrics: &Arc<Self>, period: Duration) {
        let weak: Weak<Self> = Arc::downgrade(metrics);
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(period);
                    match weak.upgrade() {
                        Some(metrics) => metrics.handle.run_upkeep(),
                        None => return,
                    }
                }
            });
        // Without the thread, scrapes still fold the samples.
        drop(spawned);
    }

    /// Counts a request answered with `status` on `route` (a route pattern, or `unmatched`)
    /// after `elapsed`.
    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        {
            let routes = self
                .routes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(series) = routes.get(route)
                && let Some(counter) = series.by_status.get(&status)
            {
                counter.increment(1);
                series.latency.record(seconds);
                return;
            }
        }
        let mut routes = self
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let series = routes
            .entry(route.to_owned())
            .or_insert_with(|| RouteSeries {
                latency: self.recorder.register_histogram(
                    &Key::from_parts(LATENCY, vec![Label::new("route", route.to_owned())]),
                    &META,
                ),
                by_status: HashMap::new(),
            });
        let counter = series.by_status.entry(status).or_insert_with(|| {
            self.recorder.register_counter(
                &Key::from_parts(
                    REQUESTS,
                    vec![
                        Label::new("route", route.to_owned()),
                        Label::new("status", status.to_string()),
                    ],
                ),
                &META,
            )
        });
        counter.increment(1);
        series.latency.record(seconds);
    }

    /// Counts a gRPC call of `method` (one of the closed set the server answers, or
    /// `unknown`) answered with `code` (a gRPC status code's name) after `elapsed`.
    pub fn grpc_request(&self, method: &'static str, code: &'static str, elapsed: Duration) {
        self.recorder
            .register_counter(
                &Key::from_parts(
                    GRPC_REQUESTS,
                    vec![
                        Label::from_static_parts("method", method),
                        Label::from_static_parts("code", code),
                    ],
                ),
                &META,
            )
            .increment(1);
        self.recorder
            .register_histogram(
                &Key::from_parts(
                    GRPC_LATENCY,
                    vec![Label::from_static_parts("method", method)],
                ),
                &META,
            )
            .record(elapsed.as_secs_f64());
    }

    /// Counts a failure of `kind` (a request's problem type, an image that failed inside a
    /// batch, a job abandoned by its client).
    pub fn error(&self, kind: &str) {
        self.labelled(ERRORS, "kind", kind).increment(1);
    }

    /// Counts a request refused with a problem document of type `reason`.
    pub fn refusal(&self, reason: &str) {
        self.labelled(REFUSALS, "reason", reason).increment(1);
    }

    /// Counts a model reload and whether it succeeded.
    pub fn model_reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.increment(1);
        } else {
            self.reloads_failed.increment(1);
        }
    }

    /// Records how long a job waited for the model.
    pub fn queue_wait(&self, waited: Duration) {
        self.queue_wait.record(waited.as_secs_f64());
    }

    /// Records a model batch of `images` images.
    pub fn batch(&self, images: usize) {
        self.batch_size.record(count(images));
    }

    /// Counts `images` images run through the model.
    pub fn classified(&self, images: usize) {
        self.images
            .increment(u64::try_from(images).unwrap_or(u64::MAX));
    }

    /// Sets the number of images admitted and not yet answered.
    pub fn images_in_flight(&self, images: usize) {
        self.in_flight.set(count(images));
    }

    /// [`Metrics::render`] with one of the [`MAX_SCRAPES`] permits to send it, which the answer
    /// keeps until it is sent; `None` when they are all taken.
    pub fn exposition(&self) -> Option<(String, tokio::sync::OwnedSemaphorePermit)> {
        let permit = self.scrapes.clone().try_acquire_owned().ok()?;
        Some((self.render(), permit))
    }

    /// The Prometheus text exposition of every metric, with the process metrics read now.
    #[must_use]
    pub fn render(&self) -> String {
        ::metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.log_dropped
            .absolute(u64::try_from(crate::ops::logging::dropped_lines()).unwrap_or(u64::MAX));
        self.handle.render()
    }

    fn labelled(&self, name: &'static str, label: &'static str, value: &str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(name, vec![Label::new(label, value.to_owned())]),
            &META,
        )
    }
}

/// A count as a sample value (exact up to 2^53).
fn count(n: usize) -> f64 {
    u32::try_from(n).map_or(f64::from(u32::MAX), f64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds_of(text: &str, name: &str) -> Vec<String> {
        let prefix = format!("{name}_bucket{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| {
                l.split("le=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn bucket_lists_are_finite_and_increasing() {
        for buckets in [SECONDS_BUCKETS, BATCH_BUCKETS] {
            assert!(buckets.iter().all(|b| b.is_finite()), "{buckets:?}");
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        }
    }

    #[test]
    fn histograms_render_their_buckets_in_order_with_inf_last() {
        let m = Metrics::new();
        m.request("/classify", 200, Duration::from_millis(3));
        m.queue_wait(Duration::from_micros(200));
        m.batch(3);
        let text = m.render();
        for (name, buckets) in [
            (LATENCY, SECONDS_BUCKETS),
            (QUEUE_WAIT, SECONDS_BUCKETS),
            (BATCH_SIZE, BATCH_BUCKETS),
        ] {
            let mut want: Vec<String> = buckets.iter().map(f64::to_string).collect();
            want.push("+Inf".into());
            assert_eq!(bounds_of(&text, name), want, "{text}");
        }
        assert!(
            text.contains(
                "http_request_duration_seconds_bucket{route=\"/classify\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("inference_batch_size_bucket{le=\"2\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("inference_batch_size_bucket{le=\"4\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn counts_and_registered_zeros() {
        let m = Metrics::new();
        let text = m.render();
        assert!(
            text.contains("model_reloads_total{result=\"success\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("model_reloads_total{result=\"failure\"} 0"),
            "{text}"
        );
        assert!(text.contains("images_classified_total 0"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        m.request("/health", 200, Duration::ZERO);
        m.request("/health", 200, Duration::ZERO);
        m.request("/health", 404, Duration::ZERO);
        m.error("overloaded");
        m.refusal("overloaded");
        m.classified(5);
        m.images_in_flight(7);
        m.model_reload(true);
        let text = m.render();
        for line in [
            "http_requests_total{route=\"/health\",status=\"200\"} 2",
            "http_requests_total{route=\"/health\",status=\"404\"} 1",
            "errors_total{kind=\"overloaded\"} 1",
            "refusals_total{reason=\"overloaded\"} 1",
            "images_classified_total 5",
            "inference_images_in_flight 7",
            "model_reloads_total{result=\"success\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in {text}");
        }
    }
}
