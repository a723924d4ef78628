//! Dynamic batching: requests queue their prepared images, one inference thread gathers
//! what has arrived (up to a maximum batch, waiting at most a short while) and runs the
//! model once for all of them, off the async workers.
//!
//! Admission is counted in images, not requests: [`Engine::admit`] takes one permit per image
//! before anything is decoded, and the permits travel with the job until its answer is sent or
//! the job is dropped. Decoded images wait as 64×64 RGB bytes (12 KiB) and become floats only
//! on the inference thread, in a buffer it reuses; tensors that arrive already preprocessed
//! (`/v2` FP32 inputs) wait as floats, with the decode-budget reservation that pays for them.
//! A job whose requester has gone (disconnected, timed out) is dropped before it reaches the
//! model. Every job gets its images' logits and probabilities back ([`Scores`]).
//!
//! A job runs on the model that was current when its request was admitted (the [`Served`] in
//! its [`Admission`]): a batch holds the jobs of one model only, so a reload never changes the
//! answer of a request already in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use model::inference::Scores;
use model::preprocess::{IMAGE_BYTES, IMAGE_FLOATS, normalize_bytes_into};
use model::{Prediction, rank_probabilities};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::inference::models::{Models, Served};
use crate::inference::stats::Statistics;
use crate::ops::metrics::Metrics;

/// Why the engine gives no answer; the HTTP edge turns it into each API's error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No room now: the images do not fit the admission permits, or the queue is full.
    #[error("the server is at capacity; retry shortly")]
    Overloaded,
    /// Admitted, but the model did not answer by the request's deadline.
    #[error("inference did not finish in time")]
    Timeout,
    /// The inference thread is gone (a bug: it never ends otherwise).
    #[error("inference thread stopped")]
    Stopped,
    /// The model failed on the batch.
    #[error("{0}")]
    Failed(String),
}

/// Batching policy.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most images per model call.
    pub max_batch: usize,
    /// Longest a first request waits for others to join its batch.
    pub max_wait: Duration,
    /// Images admitted at once (being decoded, waiting, or in the model); beyond that
    /// requests are refused with 503.
    pub max_images: usize,
    /// Classes kept per prediction.
    pub top_k: usize,
}

/// The images of one job, as the model is handed them.
#[derive(Debug)]
pub enum Pixels {
    /// Decoded and resized images back to back, [`IMAGE_BYTES`] of 64×64 RGB each; normalised
    /// on the inference thread.
    Rgb(Vec<u8>),
    /// Preprocessed CHW floats back to back, [`IMAGE_FLOATS`] each, with the reservation
    /// (from the decode budget) that pays for them until the model has run.
    Floats(Vec<f32>, OwnedSemaphorePermit),
}

impl Pixels {
    /// Whole images held.
    fn images(&self) -> usize {
        match self {
            Pixels::Rgb(bytes) => bytes.len() / IMAGE_BYTES,
            Pixels::Floats(floats, _) => floats.len() / IMAGE_FLOATS,
        }
    }
}

struct Job {
    pixels: Pixels,
    images: usize,
    queued: Instant,
    reply: oneshot::Sender<Result<Scores, String>>,
    served: Arc<Served>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Permits for some images, from [`Engine::admit`] (returned when dropped), and the model
/// current at that moment, which will answer them.
pub struct Admission {
    permit: Option<OwnedSemaphorePermit>,
    served: Arc<Served>,
    at: Instant,
}

impl Admission {
    /// The model that will answer these images.
    pub fn served(&self) -> &Arc<Served> {
        &self.served
    }

    /// `images` of these permits as an admission of their own, to the same model (one request
    /// sent to the engine as several jobs: an explanation's occluded copies).
    #[must_use]
    pub fn split(&mut self, images: usize) -> Admission {
        // Callers split what they were admitted for, never more.
        debug_assert!(
            self.permit
                .as_ref()
                .is_some_and(|p| p.num_permits() >= images)
                || images == 0
        );
        Admission {
            permit: self.permit.as_mut().and_then(|p| p.split(images)),
            served: self.served.clone(),
            at: self.at,
        }
    }
}

/// Clears the readiness and liveness flags when dropped: held by the inference thread for its
/// whole life.
struct UnreadyAtExit {
    ready: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
}

impl Drop for UnreadyAtExit {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Release);
        self.ready.store(false, Ordering::Release);
    }
}

/// Handle to the inference thread.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Job>,
    ready: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
    images: Arc<Semaphore>,
    models: Arc<Models>,
    /// The permits `images` started with.
    max_images: usize,
    /// Classes kept by [`Engine::classify`].
    top_k: usize,
    /// What the model has done.
    statistics: Arc<Statistics>,
}

impl Engine {
    /// Starts the inference thread, warms the current model up, then marks ready.
    pub fn start(models: Arc<Models>, policy: BatchPolicy, metrics: Arc<Metrics>) -> Self {
        // Every job holds at least one image permit, so the channel never fills before the
        // permits run out.
        let max_images = policy.max_images.clamp(1, Semaphore::MAX_PERMITS);
        let (tx, rx) = sync_channel(max_images);
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let alive = Arc::new(AtomicBool::new(true));
        let thread_alive = alive.clone();
        let first = models.current();
        let statistics = Arc::new(Statistics::default());
        let stats = statistics.clone();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                // However this thread ends (a panic outside the batch's own catch included),
                // readiness goes with it: requests would only fail from then on.
                let _unready_at_exit = UnreadyAtExit {
                    ready: flag.clone(),
                    alive: thread_alive,
                };
                let serve = || {
                    // Warm-up: the first call allocates and picks kernels.
                    let _ = first.inference.predict(&vec![0.0; IMAGE_FLOATS], 1);
                    drop(first);
                    flag.store(true, Ordering::Release);
                    run(rx, policy, &metrics, &stats);
                };
                // The batching loop runs on a worker of the model's own rayon pool, so that the
                // fast path's fork-join keeps half of its work on this thread instead of
                // handing all of it over (one thread wake-up per split instead of two).
                match rayon::ThreadPoolBuilder::new()
                    .thread_name(|i| format!("inference-{i}"))
                    .build()
                {
                    Ok(pool) => pool.install(serve),
                    Err(_) => serve(),
                }
            })
            .expect("spawn inference thread");
        Self {
            tx,
            ready,
            alive,
            images: Arc::new(Semaphore::new(max_images)),
            models,
            max_images,
            top_k: policy.top_k,
            statistics,
        }
    }

    /// What the model has done since the server started.
    pub fn statistics(&self) -> &Statistics {
        &self.statistics
    }

    /// Admits `images` images to the model served now, or refuses at once (503) when that
    /// many are not free.
    pub fn admit(&self, images: usize) -> Result<Admission, EngineError> {
        let permit = if images == 0 {
            None
        } else {
            let permit = u32::try_from(images)
                .ok()
                .and_then(|n| self.images.clone().try_acquire_many_owned(n).ok())
                .ok_or(EngineError::Overloaded)?;
            Some(permit)
        };
        Ok(Admission {
            permit,
            served: self.models.current(),
            at: Instant::now(),
        })
    }

    /// Images admitted and not yet answered: being decoded, waiting for the model, or in it.
    #[must_use]
    pub fn images_in_flight(&self) -> usize {
        self.max_images
            .saturating_sub(self.images.available_permits())
    }

    /// True once the model is loaded and has run once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// False once the inference thread has ended (it never does but by a bug): every request
    /// would fail, so liveness fails too and an orchestrator restarts the process.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Queues prepared images ([`IMAGE_BYTES`] each, concatenated) under their admission and
    /// waits for their predictions (the policy's `top_k` classes of each), and the model that
    /// made them.
    pub async fn classify(
        &self,
        pixels: Vec<u8>,
        admitted: Admission,
        deadline: tokio::time::Instant,
    ) -> Result<(Vec<Prediction>, Arc<Served>), EngineError> {
        let (scores, served) = self.scores(Pixels::Rgb(pixels), admitted, deadline).await?;
        let classes = model::NUM_CLASSES;
        let ranked = rank_probabilities(&scores.probabilities, classes, self.top_k);
        Ok((ranked, served))
    }

    /// Queues images under their admission and waits for their logits and probabilities
    /// (`images × classes` each, in the images' order), and the model that made them; at the
    /// request's `deadline` it gives up (the job, if still queued, is then skipped).
    pub async fn scores(
        &self,
        pixels: Pixels,
        admitted: Admission,
        deadline: tokio::time::Instant,
    ) -> Result<(Scores, Arc<Served>), EngineError> {
        let Admission { permit, served, at } = admitted;
        let images = pixels.images();
        if images == 0 {
            let none = Scores {
                logits: Vec::new(),
                probabilities: Vec::new(),
            };
            return Ok((none, served));
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            pixels,
            images,
            queued: Instant::now(),
            reply,
            served: served.clone(),
            _permit: permit,
        };
        let result = match self.tx.try_send(job) {
            Err(TrySendError::Full(_)) => Err(EngineError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Stopped),
            Ok(()) => match tokio::time::timeout_at(deadline, rx).await {
                Err(_) => Err(EngineError::Timeout),
                Ok(Err(_)) => Err(EngineError::Stopped),
                Ok(Ok(result)) => result
                    .map(|scores| (scores, served))
                    .map_err(EngineError::Failed),
            },
        };
        match &result {
            Ok(_) => self.statistics.success(at.elapsed()),
            Err(_) => self.statistics.fail(at.elapsed()),
        }
        result
    }
}

// By value: the receiver is not `Sync`, so the closure that hands this loop to the model's
// rayon pool must own it, not borrow it; and the loop owning it says whose end it is.
#[allow(clippy::needless_pass_by_value)]
fn run(rx: Receiver<Job>, policy: BatchPolicy, metrics: &Metrics, stats: &Statistics) {
    let mut pending: Option<Job> = None;
    let mut floats = Vec::new();
    loop {
        let first = match pending.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // every sender dropped: the server is gone
            },
        };
        if first.reply.is_closed() {
            metrics.error("abandoned");
            continue;
        }
        let deadline = Instant::now() + policy.max_wait;
        let mut images = first.images;
        let mut jobs = vec![first];
        while images < policy.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = if left.is_zero() {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(left)
            };
            match next {
                Ok(job) if job.reply.is_closed() => metrics.error("abandoned"),
                Ok(job)
                    if images + job.images <= policy.max_batch
                        && Arc::ptr_eq(&job.served, &jobs[0].served) =>
                {
                    images += job.images;
                    jobs.push(job);
                }
                Ok(job) => {
                    // Does not fit, or is for another model: it opens the next batch.
                    pending = Some(job);
                    break;
                }
                Err(_) => break,
            }
        }
        // A client may have gone while the batch was gathering (with `--max-wait-ms`).
        jobs.retain(|job| {
            let gone = job.reply.is_closed();
            if gone {
                metrics.error("abandoned");
            }
            !gone
        });
        let images = jobs.iter().map(|job| job.images).sum();
        if images > 0 {
            infer(jobs, images, &mut floats, metrics, stats);
        }
    }
}

fn infer(
    jobs: Vec<Job>,
    images: usize,
    floats: &mut Vec<f32>,
    metrics: &Metrics,
    stats: &Statistics,
) {
    // Every job of a batch holds the same model; this clone keeps it alive while it runs.
    let served = jobs[0].served.clone();
    let model = &served.inference;
    let now = Instant::now();
    floats.resize(images * IMAGE_FLOATS, 0.0);
    let mut out = floats.chunks_exact_mut(IMAGE_FLOATS);
    let mut queued = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let waited = now - job.queued;
        metrics.queue_wait(waited);
        queued.push(waited);
        match &job.pixels {
            Pixels::Rgb(bytes) => {
                for (image, dst) in bytes.chunks_exact(IMAGE_BYTES).zip(&mut out) {
                    normalize_bytes_into(image, dst);
                }
            }
            Pixels::Floats(tensor, _) => {
                for (image, dst) in tensor.chunks_exact(IMAGE_FLOATS).zip(&mut out) {
                    dst.copy_from_slice(image);
                }
            }
        }
    }
    metrics.batch(images);
    let input = now.elapsed();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.scores(floats)));
    let infer = now.elapsed().saturating_sub(input);
    match result {
        Ok(scores) => {
            metrics.classified(images);
            let classes = scores.logits.len() / images;
            let mut start = 0;
            for job in jobs {
                let rows = start..start + job.images * classes;
                start = rows.end;
                let mine = Scores {
                    logits: scores.logits[rows.clone()].to_vec(),
                    probabilities: scores.probabilities[rows].to_vec(),
                };
                answer(job, Ok(mine));
            }
            stats.batch(
                images,
                &queued,
                [input, infer, now.elapsed().saturating_sub(input + infer)],
            );
        }
        Err(_) => {
            for job in jobs {
                answer(job, Err("the model failed on this batch".into()));
            }
        }
    }
}

/// Sends a job's answer, its images and permits released first: the requester, woken by the
/// answer, may come back with its next request before this thread runs again.
fn answer(job: Job, result: Result<Scores, String>) {
    let Job {
        reply,
        pixels,
        _permit: permit,
        ..
    } = job;
    drop((pixels, permit));
    let _ = reply.send(result);
}
