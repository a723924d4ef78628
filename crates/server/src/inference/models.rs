//! The served record, and replacing it while the server runs.
//!
//! [`Models`] holds the record being served behind a lock that is only ever held to clone an
//! `Arc`. A reload ([`Models::reload`]: on SIGHUP, or when the watched file changes) reads the
//! file and checks it beside the model being served: the record's header against the
//! architecture, then one probe batch whose outputs must be finite probabilities, which also
//! warms the new model up. Only then is it swapped in. Each request takes the model current
//! when it is admitted and keeps it until answered ([`crate::inference::engine`]), so requests in flight
//! finish on the model they started with, and the old model is freed with the last of them. At
//! most two models are held at once (a few MiB each): a reload first waits for the one the
//! previous reload replaced to be freed. A record that fails leaves the old one
//! serving; the failure is logged, counted (`model_reloads_total{result="failure"}`) and shown
//! in `/model/info`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use model::explain::Explainer;
use model::{Backend, Inference, RecordError, RecordMeta, RecordVersion};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ops::metrics::Metrics;

/// A record being served, with what `/model/info` says of it.
pub struct Served {
    /// The network, ready to run.
    pub inference: Inference,
    /// What the record says about itself.
    pub meta: RecordMeta,
    /// The record's path, or [`model::record::SHIPPED_SOURCE`].
    pub source: String,
    /// Its content hash and training time.
    pub version: RecordVersion,
    /// When this server started serving it (RFC 3339, UTC).
    pub since: String,
    /// Its explainer (Grad-CAM's weights and an autodiff copy of the network), made at the
    /// first explanation asked of it: most servers are never asked one.
    pub explainer: OnceLock<Result<Explainer, String>>,
}

impl Served {
    /// The explainer of this record, made on first use.
    pub fn explainer(&self) -> Result<&Explainer, String> {
        self.explainer
            .get_or_init(|| Explainer::new(self.inference.model()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// What set a reload off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The record file changed (`--watch-model`).
    Watch,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The new record is being served.
    Loaded,
    /// The file holds the record already served (same bytes): nothing to do.
    Unchanged,
    /// The record was refused; the previous one is still served.
    Failed,
}

/// The last reload, as `/model/info` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReloadReport {
    /// When it ended (RFC 3339, UTC).
    pub at: String,
    /// What set it off.
    pub trigger: Trigger,
    /// How it ended.
    pub outcome: Outcome,
    /// The version served after it.
    pub version: String,
    /// Why the record was refused.
    pub error: Option<String>,
}

/// Why a record was not swapped in.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The server serves the record built into its binary: there is no file to read again.
    #[error(
        "this server serves the record built into its binary; start it with --model <file> to reload"
    )]
    NoFile,
    /// The file is missing, unreadable, damaged or not a record of this network.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The record loads, but its probe batch does not give finite probabilities.
    #[error("the record loads but its outputs are unusable: {0}")]
    Unusable(String),
    /// The record the last reload replaced is still answering requests.
    #[error(
        "the record replaced by the last reload was still answering requests after {0} s; try again"
    )]
    StillRetiring(u64),
    /// Loading or checking the record panicked (a bug; the served record is untouched).
    #[error("loading the record failed unexpectedly: {0}")]
    Panicked(String),
}

/// The record being served, and where to reload it from.
pub struct Models {
    current: RwLock<Arc<Served>>,
    /// The record the last reload replaced, alive while requests admitted to it are.
    retired: Mutex<Weak<Served>>,
    /// The file reloads read (`None`: the built-in record, which cannot change).
    path: Option<PathBuf>,
    backend: Backend,
    /// Reloads run in the precision the first record was served in.
    precision: model::Precision,
    tta: model::Tta,
    last: Mutex<Option<ReloadReport>>,
    /// One reload at a time (a signal and a file change may arrive together).
    reloading: Mutex<()>,
    /// How long a reload waits for the record the previous one replaced to be freed.
    retire_wait: Duration,
    metrics: Arc<Metrics>,
}

impl Models {
    /// Serves `first` (loaded from `path`, or built in when `None`); reloads go through its
    /// backend, with test-time augmentation as `tta` says, and wait up to `retire_wait` for the
    /// record the previous reload replaced to answer its last request.
    pub fn new(
        first: Served,
        path: Option<PathBuf>,
        tta: model::Tta,
        retire_wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            backend: first.inference.backend(),
            precision: first.inference.precision(),
            current: RwLock::new(Arc::new(first)),
            retired: Mutex::new(Weak::new()),
            path,
            tta,
            last: Mutex::new(None),
            reloading: Mutex::new(()),
            retire_wait,
            metrics,
        }
    }

    /// The record served now. Requests keep the `Arc` they took until answered.
    pub fn current(&self) -> Arc<Served> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last reload, if any.
    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The file reloads read, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Reads the record file again and, when it differs from the one served and passes the
    /// checks, serves it. Blocking (reads a file and runs the model): call it off the async
    /// workers. Logs, counts and records the outcome.
    pub fn reload(&self, trigger: Trigger) -> Result<Outcome, ReloadError> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        // A panic while loading (a bug in a decoder or a kernel) is a failed reload, reported
        // as one; the served record is only replaced at the very end.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.try_reload()))
            .unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_default();
                Err(ReloadError::Panicked(why))
            });
        let version = self.current().version.label.clone();
        let (outcome, error) = match &result {
            Ok(outcome) => (*outcome, None),
            Err(e) => (Outcome::Failed, Some(e.to_string())),
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Outcome::Loaded => {
                tracing::info!(?trigger, %version, duration_ms = ms, "reloaded the model: serving version {version}");
            }
            Outcome::Unchanged => {
                tracing::info!(?trigger, %version, "reload: the record is unchanged (version {version})");
            }
            Outcome::Failed => {
                let why = error.as_deref().unwrap_or_default();
                tracing::error!(?trigger, %version, error = why, "reload refused, still serving version {version}: {why}");
            }
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(ReloadReport {
            at: now(),
            trigger,
            outcome,
            version,
            error,
        });
        // Counted last: once the count moves, `/model/info` already tells this reload.
        if outcome != Outcome::Unchanged {
            self.metrics.model_reload(outcome == Outcome::Loaded);
        }
        result
    }

    fn try_reload(&self) -> Result<Outcome, ReloadError> {
        let path = self.path.as_deref().ok_or(ReloadError::NoFile)?;
        // Two records at most (the memory bound counts one besides the served one).
        let deadline = Instant::now() + self.retire_wait;
        while self
            .retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .strong_count()
            > 0
        {
            if Instant::now() > deadline {
                return Err(ReloadError::StillRetiring(self.retire_wait.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let device = self.backend.device();
        let file = model::record::RecordFile::read(path)?;
        if file.sha256 == self.current().version.sha256 {
            return Ok(Outcome::Unchanged);
        }
        let loaded = file.load(&device)?;
        let inference = Inference::new(loaded.model, self.backend)?
            .with_precision(self.precision, loaded.meta.int8.as_ref())?
            .with_tta(self.tta);
        // On one thread of its own: the fast path would otherwise start rayon's global pool
        // (a thread per core, with scratch memory) for this one probe.
        match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
            Ok(pool) => pool.install(|| check(&inference))?,
            Err(_) => check(&inference)?,
        }
        let next = Arc::new(Served {
            inference,
            meta: loaded.meta,
            source: loaded.source,
            version: loaded.version,
            since: now(),
            explainer: OnceLock::new(),
        });
        // The old model stays alive in the requests that hold it, and is dropped by the last.
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            next,
        );
        *self.retired.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(&old);
        Ok(Outcome::Loaded)
    }
}

/// Runs a probe batch through a freshly loaded model: weights that load but hold NaN or
/// infinities (a diverged run) are refused here, before a client sees them. Also the warm-up:
/// the first call allocates and picks kernels.
fn check(inference: &Inference) -> Result<(), ReloadError> {
    const PROBES: usize = 2;
    // A blank image and one with every value of the normalised range.
    let mut pixels = vec![0.0f32; PROBES * model::IMAGE_FLOATS];
    for (i, v) in pixels[model::IMAGE_FLOATS..].iter_mut().enumerate() {
        *v = (i % 97) as f32 / 24.0 - 2.0;
    }
    let scores = inference.scores(&pixels);
    if let Some(bad) = scores.logits.iter().find(|v| !v.is_finite()) {
        return Err(ReloadError::Unusable(format!("a logit is {bad}")));
    }
    for row in scores.probabilities.chunks(model::NUM_CLASSES) {
        let sum: f32 = row.iter().sum();
        if !sum.is_finite() || (sum - 1.0).abs() > 1e-3 {
            return Err(ReloadError::Unusable(format!("probabilities sum to {sum}")));
        }
    }
    Ok(())
}

/// Now, as RFC 3339 (UTC, whole seconds).
pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The debounced watcher [`watch`] returns; watching stops when it is dropped.
pub type Watcher = notify_debouncer_mini::Debouncer<notify::RecommendedWatcher>;

/// Reloads the record when its file changes (`--watch-model`), half a second after the last
/// change, so that a file being written is read once complete. The folder is watched rather
/// than the file: a new record renamed over the old one (the atomic way to replace it) and a
/// Kubernetes volume swapping its `..data` link are changes of the folder's entries.
pub fn watch(models: Arc<Models>) -> Result<Watcher, WatchError> {
    let path = models.path().ok_or(WatchError::NoFile)?.to_path_buf();
    // A folder given as the record (`model::record::find`) is watched for any record in it.
    let (dir, name) = if path.is_dir() {
        (path.clone(), None)
    } else {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (dir, path.file_name().map(std::ffi::OsStr::to_os_string))
    };
    let mut debouncer = notify_debouncer_mini::new_debouncer(
        std::time::Duration::from_millis(500),
        move |events: notify_debouncer_mini::DebounceEventResult| match events {
            Ok(events) => {
                // Other files of the folder are not the record's business; `..`-names are
                // Kubernetes' links to the volume's current contents. `AnyContinuous` comes
                // every half second while a file is still being written: wait for its end.
                let ours = events.iter().any(|e| {
                    let file = e.path.file_name();
                    let named = match &name {
                        Some(name) => file == Some(name.as_os_str()),
                        None => e.path.extension() == Some("safetensors".as_ref()),
                    };
                    e.kind == notify_debouncer_mini::DebouncedEventKind::Any
                        && (named || file.is_some_and(|f| f.as_encoded_bytes().starts_with(b"..")))
                });
                if ours {
                    let _ = models.reload(Trigger::Watch);
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching the record file: {e}"),
        },
    )?;
    debouncer
        .watcher()
        .watch(&dir, notify::RecursiveMode::NonRecursive)?;
    tracing::info!(path = %path.display(), "watching {} for a new record", path.display());
    Ok(debouncer)
}

/// `--watch-model` could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The server serves the record built into its binary.
    #[error(
        "--watch-model needs --model <file or folder>: the built-in record has no file to watch"
    )]
    NoFile,
    /// The operating system refused the watch.
    #[error("cannot watch the record's folder: {0}")]
    Notify(#[from] notify::Error),
}
