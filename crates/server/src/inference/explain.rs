//! Explanations on the server: which pixels a prediction rests on ([`model::explain`]), for
//! `POST /explain` and the `/v2` explain form.
//!
//! An explanation starts as a prediction: the images go through the engine like any other
//! request's (their image permits, batches shared with other requests, the model current at
//! admission), and the class explained is the one asked for or the one predicted, as served
//! (with `--tta` or `--precision int8` where set). Occlusion then sends each image's 64 occluded
//! copies through the engine too, as jobs no larger than any other request's, under permits
//! taken with the originals' (so that a reload cannot put the copies on another model). Grad-CAM
//! and the gradient methods run on the blocking pool with the served record's
//! [`Explainer`](model::explain::Explainer).
//!
//! At most `--max-explanations` explanations are in progress at once (beyond that: 503), and
//! each holds its [`Ticket`] until its answer is sent: what one holds (the gradient methods'
//! working memory, its answer) is counted once per ticket in the memory bound
//! ([`crate::ops::memory`]).

use std::sync::Arc;

use model::explain::{self, Method, PATCHES};
use model::preprocess::normalize_bytes_into;
use model::{IMAGE_BYTES, IMAGE_FLOATS, NUM_CLASSES};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::inference::engine::{Admission, Engine, EngineError, Pixels};
use crate::inference::models::Served;

/// Images one explanation request may hold (the `/v2` form takes several): each adds its
/// map to the answer and, by occlusion, 64 images to the engine.
pub const MAX_IMAGES: usize = 8;

/// What to explain, and how.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The method.
    pub method: Method,
    /// The class to explain; the predicted one when `None`.
    pub target: Option<usize>,
    /// Integrated gradients' steps (checked against `--explain-max-steps` by the caller).
    pub steps: usize,
}

/// One image explained.
#[derive(Debug)]
pub struct Explained {
    /// The class explained.
    pub target: usize,
    /// One value per input pixel (64×64, row-major), larger meaning more evidence for
    /// `target`, in the method's own units.
    pub map: Vec<f32>,
    /// The image's probabilities as served.
    pub probabilities: Vec<f32>,
    /// The image as the model saw it (preprocessed, CHW), to draw the map over.
    pub pixels: Vec<f32>,
}

/// Room for one explanation, held until its answer is sent.
#[derive(Debug)]
pub struct Ticket(#[allow(dead_code)] OwnedSemaphorePermit);

/// The explanations in progress, and their limits.
#[derive(Debug, Clone)]
pub struct Explanations {
    tickets: Arc<Semaphore>,
    largest_job: usize,
    max_images: usize,
}

impl Explanations {
    /// At most `at_once` explanations at a time; occluded copies go to the engine in jobs of
    /// at most `largest_job` images (the most any request sends: `max(--max-batch,
    /// --max-files)`); the engine admits `max_images` at once (`--max-images`).
    pub fn new(at_once: usize, largest_job: usize, max_images: usize) -> Self {
        Self {
            tickets: Arc::new(Semaphore::new(at_once.max(1))),
            largest_job: largest_job.max(1),
            max_images,
        }
    }

    /// The most images one request may have explained by `method`: [`MAX_IMAGES`], or fewer
    /// where their permits would not fit `--max-images` (0: this server cannot explain by
    /// `method` at all).
    pub fn most_images(&self, method: Method) -> usize {
        (self.max_images / Self::permits_per_image(method)).min(MAX_IMAGES)
    }

    /// Room for one more explanation, or a refusal (503) when `--max-explanations` are in
    /// progress.
    pub fn ticket(&self) -> Result<Ticket, EngineError> {
        self.tickets
            .clone()
            .try_acquire_owned()
            .map(Ticket)
            .map_err(|_| EngineError::Overloaded)
    }

    /// Image permits one image takes by `method`: itself, and by occlusion its copies.
    pub fn permits_per_image(method: Method) -> usize {
        if method == Method::Occlusion {
            1 + PATCHES
        } else {
            1
        }
    }

    /// Bytes of decode budget the occluded copies of `images` images take while they wait
    /// for the model (none for the other methods).
    pub fn copies_bytes(method: Method, images: usize) -> u64 {
        if method == Method::Occlusion {
            (images * PATCHES * IMAGE_FLOATS * 4) as u64
        } else {
            0
        }
    }

    /// Explains `pixels` (the request's images as the engine takes them), admitted with
    /// [`Explanations::permits_per_image`] permits per image; `reserved` is
    /// [`Explanations::copies_bytes`] of the decode budget (occlusion only).
    pub async fn explain(
        &self,
        engine: &Engine,
        pixels: Pixels,
        mut admitted: Admission,
        reserved: Option<OwnedSemaphorePermit>,
        options: Options,
        deadline: Instant,
    ) -> Result<(Vec<Explained>, Arc<Served>), EngineError> {
        let floats = floats(&pixels);
        let n = floats.len() / IMAGE_FLOATS;
        let originals = admitted.split(n);
        let copies = admitted;
        let (scores, served) = engine.scores(pixels, originals, deadline).await?;
        let targets: Vec<usize> = scores
            .probabilities
            .chunks_exact(NUM_CLASSES)
            .map(|p| options.target.unwrap_or_else(|| explain::target(None, p)))
            .collect();
        let maps = if options.method == Method::Occlusion {
            let copies = self
                .occlusion(engine, &floats, copies, reserved, deadline)
                .await?;
            copies
                .chunks_exact(PATCHES * NUM_CLASSES)
                .zip(scores.probabilities.chunks_exact(NUM_CLASSES))
                .zip(&targets)
                .map(|((copies, original), &target)| {
                    // The original's row first, as served: the fall is measured from it.
                    let rows: Vec<f32> = original.iter().chain(copies).copied().collect();
                    explain::occlusion(&rows, target)
                })
                .collect()
        } else {
            drop(copies);
            gradients(&served, &floats, &targets, options, deadline).await?
        };
        let explained = maps
            .into_iter()
            .zip(&targets)
            .zip(scores.probabilities.chunks_exact(NUM_CLASSES))
            .zip(floats.chunks_exact(IMAGE_FLOATS))
            .map(|(((map, &target), probabilities), pixels)| Explained {
                target,
                map,
                probabilities: probabilities.to_vec(),
                pixels: pixels.to_vec(),
            })
            .collect();
        Ok((explained, served))
    }

    /// Each image's 64 occluded copies through the engine, in jobs of at most `largest_job`
    /// images sent at once (they share batches with other requests): their probabilities,
    /// image by image.
    async fn occlusion(
        &self,
        engine: &Engine,
        floats: &[f32],
        mut admitted: Admission,
        reserved: Option<OwnedSemaphorePermit>,
        deadline: Instant,
    ) -> Result<Vec<f32>, EngineError> {
        let copies: Vec<f32> = floats
            .chunks_exact(IMAGE_FLOATS)
            .flat_map(explain::occlusion_inputs)
            .collect();
        let total = copies.len() / IMAGE_FLOATS;
        let mut reserved =
            reserved.ok_or_else(|| EngineError::Failed("no reservation for the copies".into()))?;
        let initial = reserved.num_permits();
        let mut jobs = Vec::new();
        for (i, chunk) in copies.chunks(self.largest_job * IMAGE_FLOATS).enumerate() {
            let images = chunk.len() / IMAGE_FLOATS;
            // Each job holds its share of the reservation until the model has run it.
            let last = (i + 1) * self.largest_job >= total;
            let share = if last {
                reserved.num_permits()
            } else {
                initial * images / total
            };
            let permit = reserved
                .split(share)
                .ok_or_else(|| EngineError::Failed("splitting the reservation".into()))?;
            let job = Pixels::Floats(chunk.to_vec(), permit);
            jobs.push(engine.scores(job, admitted.split(images), deadline));
        }
        drop(copies);
        let mut probabilities = Vec::with_capacity(total * NUM_CLASSES);
        for result in futures_util::future::join_all(jobs).await {
            probabilities.extend(result?.0.probabilities);
        }
        Ok(probabilities)
    }
}

/// Grad-CAM or a gradient method on the blocking pool, within the request's deadline (past
/// it the answer is dropped; the ticket the caller holds still counts what runs).
async fn gradients(
    served: &Arc<Served>,
    floats: &[f32],
    targets: &[usize],
    options: Options,
    deadline: Instant,
) -> Result<Vec<Vec<f32>>, EngineError> {
    let served = served.clone();
    let floats = floats.to_vec();
    let targets = targets.to_vec();
    let work = tokio::task::spawn_blocking(move || {
        let explainer = served.explainer()?;
        Ok::<_, String>(
            floats
                .chunks_exact(IMAGE_FLOATS)
                .zip(&targets)
                .map(|(image, &t)| explainer.explain(options.method, image, t, options.steps))
                .collect::<Vec<_>>(),
        )
    });
    match tokio::time::timeout_at(deadline, work).await {
        Err(_) => Err(EngineError::Timeout),
        Ok(Err(e)) => Err(EngineError::Failed(format!("explaining: {e}"))),
        Ok(Ok(result)) => result.map_err(EngineError::Failed),
    }
}

/// The images as preprocessed floats, whichever form the engine is handed them in.
fn floats(pixels: &Pixels) -> Vec<f32> {
    match pixels {
        Pixels::Floats(floats, _) => floats.clone(),
        Pixels::Rgb(bytes) => {
            let mut out = vec![0.0f32; bytes.len() / IMAGE_BYTES * IMAGE_FLOATS];
            for (rgb, floats) in bytes
                .chunks_exact(IMAGE_BYTES)
                .zip(out.chunks_exact_mut(IMAGE_FLOATS))
            {
                normalize_bytes_into(rgb, floats);
            }
            out
        }
    }
}
