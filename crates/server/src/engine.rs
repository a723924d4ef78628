//! Dynamic batching: requests queue their prepared images, one inference thread gathers
//! what has arrived (up to a maximum batch, waiting at most a short while) and runs the
//! model once for all of them, off the async workers.
//!
//! Admission is counted in images, not requests: [`Engine::admit`] takes one permit per image
//! before anything is decoded, and the permits travel with the job until its answer is sent or
//! the job is dropped. Images wait as 64×64 RGB bytes (12 KiB) and become floats only on the
//! inference thread, in a buffer it reuses. A job whose requester has gone (disconnected, timed
//! out) is dropped before it reaches the model.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use model::preprocess::{IMAGE_BYTES, IMAGE_FLOATS, normalize_bytes_into};
use model::{Inference, Prediction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::metrics::Metrics;
use crate::problem::ApiError;

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

struct Job {
    /// `images` prepared images back to back, [`IMAGE_BYTES`] each.
    pixels: Vec<u8>,
    images: usize,
    queued: Instant,
    reply: oneshot::Sender<Result<Vec<Prediction>, String>>,
    _admitted: Admission,
}

/// Permits for some images, from [`Engine::admit`]; returned when dropped.
#[derive(Debug)]
pub struct Admission(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

/// Handle to the inference thread.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Job>,
    ready: Arc<AtomicBool>,
    images: Arc<Semaphore>,
}

impl Engine {
    /// Starts the inference thread with `model`, warms it up, then marks ready.
    pub fn start(model: Inference, policy: BatchPolicy, metrics: Arc<Metrics>) -> Self {
        // Every job holds at least one image permit, so the channel never fills before the
        // permits run out.
        let max_images = policy.max_images.clamp(1, Semaphore::MAX_PERMITS);
        let (tx, rx) = sync_channel(max_images);
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                let serve = || {
                    // Warm-up: the first call allocates and picks kernels.
                    let _ = model.predict(&[0.0; IMAGE_FLOATS], 1);
                    flag.store(true, Ordering::Release);
                    run(rx, &model, policy, &metrics);
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
            images: Arc::new(Semaphore::new(max_images)),
        }
    }

    /// Admits `images` images, or refuses at once (503) when that many are not free.
    pub fn admit(&self, images: usize) -> Result<Admission, ApiError> {
        if images == 0 {
            return Ok(Admission(None));
        }
        u32::try_from(images)
            .ok()
            .and_then(|n| self.images.clone().try_acquire_many_owned(n).ok())
            .map(|permit| Admission(Some(permit)))
            .ok_or(ApiError::Overloaded)
    }

    /// True once the model is loaded and has run once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Queues prepared images ([`IMAGE_BYTES`] each, concatenated) under their admission and
    /// waits for their predictions.
    pub async fn classify(
        &self,
        pixels: Vec<u8>,
        admitted: Admission,
        timeout: Duration,
    ) -> Result<Vec<Prediction>, ApiError> {
        let images = pixels.len() / IMAGE_BYTES;
        if images == 0 {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            pixels,
            images,
            queued: Instant::now(),
            reply,
            _admitted: admitted,
        };
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ApiError::Overloaded,
            TrySendError::Disconnected(_) => ApiError::Internal("inference thread stopped".into()),
        })?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(ApiError::Timeout),
            Ok(Err(_)) => Err(ApiError::Internal("inference thread stopped".into())),
            Ok(Ok(result)) => result.map_err(ApiError::Internal),
        }
    }
}

fn run(rx: Receiver<Job>, model: &Inference, policy: BatchPolicy, metrics: &Metrics) {
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
                Ok(job) if images + job.images <= policy.max_batch => {
                    images += job.images;
                    jobs.push(job);
                }
                Ok(job) => {
                    // Does not fit: it opens the next batch.
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
            infer(jobs, images, &mut floats, model, policy, metrics);
        }
    }
}

fn infer(
    jobs: Vec<Job>,
    images: usize,
    floats: &mut Vec<f32>,
    model: &Inference,
    policy: BatchPolicy,
    metrics: &Metrics,
) {
    let now = Instant::now();
    floats.resize(images * IMAGE_FLOATS, 0.0);
    let mut out = floats.chunks_exact_mut(IMAGE_FLOATS);
    for job in &jobs {
        metrics.queue_wait.observe((now - job.queued).as_secs_f64());
        for (image, dst) in job.pixels.chunks_exact(IMAGE_BYTES).zip(&mut out) {
            normalize_bytes_into(image, dst);
        }
    }
    metrics.batch_size.observe(images as f64);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model.predict(floats, policy.top_k)
    }));
    match result {
        Ok(mut preds) => {
            metrics.images.fetch_add(images as u64, Ordering::Relaxed);
            for job in jobs.into_iter().rev() {
                let mine = preds.split_off(preds.len() - job.images);
                answer(job, Ok(mine));
            }
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
fn answer(job: Job, result: Result<Vec<Prediction>, String>) {
    let Job {
        reply,
        pixels,
        _admitted,
        ..
    } = job;
    drop((pixels, _admitted));
    let _ = reply.send(result);
}
