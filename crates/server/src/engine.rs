//! Dynamic batching: requests queue their preprocessed images, one inference thread gathers
//! what has arrived (up to a maximum batch, waiting at most a short while) and runs the
//! model once for all of them, off the async workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use model::preprocess::IMAGE_FLOATS;
use model::{Inference, Prediction};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::problem::ApiError;

/// Batching policy.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most images per model call.
    pub max_batch: usize,
    /// Longest a first request waits for others to join its batch.
    pub max_wait: Duration,
    /// Jobs allowed to wait; beyond that requests are refused with 503.
    pub queue: usize,
    /// Classes kept per prediction.
    pub top_k: usize,
}

struct Job {
    pixels: Vec<f32>,
    images: usize,
    queued: Instant,
    reply: oneshot::Sender<Result<Vec<Prediction>, String>>,
}

/// Handle to the inference thread.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Job>,
    ready: Arc<AtomicBool>,
}

impl Engine {
    /// Starts the inference thread with `model`, warms it up, then marks ready.
    pub fn start(model: Inference, policy: BatchPolicy, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = sync_channel(policy.queue.max(1));
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
        Self { tx, ready }
    }

    /// True once the model is loaded and has run once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Queues `images` preprocessed images (concatenated) and waits for their predictions.
    pub async fn classify(
        &self,
        pixels: Vec<f32>,
        timeout: Duration,
    ) -> Result<Vec<Prediction>, ApiError> {
        let images = pixels.len() / IMAGE_FLOATS;
        if images == 0 {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            pixels,
            images,
            queued: Instant::now(),
            reply,
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
    loop {
        let first = match pending.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // every sender dropped: the server is gone
            },
        };
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
        infer(jobs, images, model, policy, metrics);
    }
}

fn infer(jobs: Vec<Job>, images: usize, model: &Inference, policy: BatchPolicy, metrics: &Metrics) {
    let now = Instant::now();
    let mut pixels = Vec::with_capacity(images * IMAGE_FLOATS);
    for job in &jobs {
        metrics.queue_wait.observe((now - job.queued).as_secs_f64());
        pixels.extend_from_slice(&job.pixels);
    }
    metrics.batch_size.observe(images as f64);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model.predict(&pixels, policy.top_k)
    }));
    match result {
        Ok(mut preds) => {
            metrics.images.fetch_add(images as u64, Ordering::Relaxed);
            for job in jobs.into_iter().rev() {
                let mine = preds.split_off(preds.len() - job.images);
                let _ = job.reply.send(Ok(mine));
            }
        }
        Err(_) => {
            for job in jobs {
                let _ = job.reply.send(Err("the model failed on this batch".into()));
            }
        }
    }
}
