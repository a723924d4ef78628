//! Explanations on the server: which pixels a prediction rests on ([`model::explain`]), for
//! `POST /explain` and the `/v2` explain form.
//!
//! An explanation starts as a prediction: the images go through the engine like any other
//! request's (their image permits, batches shared with other requests, the model current at
//! admission), and the class explained is the one asked for or the one predicted, as served
//! (with `--tta` or `--precision int8` where set). Occlusion then sends each image's 64 occluded
//! copies through the engine too, as jobs no larger than any other request's, under permits
//! taken with the originals' (so that a reload cannot put the copies on another model) and
//! paid for from the decode budget while they wait. Grad-CAM and the gradient methods run on the
//! blocking pool with the served record's [`Explainer`](model::explain::Explainer).
//!
//! At most `--max-explanations` explanations are in progress at once (beyond that: 503). Each
//! holds its [`Ticket`] until its answer is sent and its work has stopped: a request that is
//! dropped (its client gone) or past its deadline tells its work on the blocking pool to stop at
//! the next image or integrated-gradients pass, and the ticket is only given back then. What one
//! explanation holds (the gradient methods' working memory, its answer) is counted once per
//! ticket in the memory bound ([`crate::ops::memory`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Bytes one image's occluded copies take as floats.
const COPIES_BYTES: u64 = (PATCHES * IMAGE_FLOATS * 4) as u64;

/// What to explain, and how.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The method.
    pub method: Method,
    /// The class to explain; the predicted one when `None`.
    pub target: Option<usize>,
    /// Integrated gradients' steps.
    pub steps: usize,
}

impl Options {
    /// The options as a request gives them (`method`, `target` by name or index, `steps` as
    /// text), checked: `steps` from 1 to `max_steps`. The error says which and why, in words
    /// a client can act on.
    pub fn parse(
        method: Option<&str>,
        target: Option<&str>,
        steps: Option<&str>,
        max_steps: usize,
    ) -> Result<Self, String> {
        let method = method
            .map(str::parse::<Method>)
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let target = target
            .map(explain::parse_class)
            .transpose()
            .map_err(|e| e.to_string())?;
        let steps = match steps {
            None => explain::DEFAULT_STEPS.min(max_steps),
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|s| (1..=max_steps).contains(s))
                .ok_or_else(|| format!("steps must be a whole number from 1 to {max_steps}"))?,
        };
        Ok(Options {
            method,
            target,
            steps,
        })
    }
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

/// Room for one explanation: held by its answer until sent and by its work until stopped
/// (clones share the one place).
#[derive(Debug, Clone)]
pub struct Ticket(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// What one explanation request brings: its images as the engine takes them, admitted with
/// [`Explanations::permits_per_image`] permits each, and by occlusion
/// [`Explanations::copies_bytes`] reserved on the decode budget.
pub struct Request {
    /// The images.
    pub pixels: Pixels,
    /// Their admission.
    pub admitted: Admission,
    /// The copies' reservation (occlusion only).
    pub reserved: Option<OwnedSemaphorePermit>,
    /// What to explain.
    pub options: Options,
    /// The request's one deadline.
    pub deadline: Instant,
}

/// The explanations in progress, and their limits.
#[derive(Debug, Clone)]
pub struct Explanations {
    tickets: Arc<Semaphore>,
    largest_job: usize,
    max_images: usize,
    decode_memory: u64,
}

impl Explanations {
    /// At most `at_once` explanations at a time; occluded copies go to the engine in jobs of
    /// at most `largest_job` images (the most any request sends: `max(--max-batch,
    /// --max-files)`); the engine admits `max_images` at once (`--max-images`), and the decode
    /// budget is `decode_memory` bytes (`--decode-memory`).
    pub fn new(at_once: usize, largest_job: usize, max_images: usize, decode_memory: u64) -> Self {
        Self {
            tickets: Arc::new(Semaphore::new(at_once.max(1))),
            largest_job: largest_job.max(1),
            max_images,
            decode_memory,
        }
    }

    /// The most images one request may have explained by `method`: [`MAX_IMAGES`], or fewer
    /// where their permits would not fit `--max-images` or their occluded copies the decode
    /// budget (0: this server cannot explain by `method` at all).
    pub fn most_images(&self, method: Method) -> usize {
        let by_permits = self.max_images / Self::permits_per_image(method);
        let by_memory = if method == Method::Occlusion {
            // The copies beside the images' own floats (a `/v2` tensor's stay reserved).
            let per_image = COPIES_BYTES + (IMAGE_FLOATS * 4) as u64;
            usize::try_from(self.decode_memory / per_image).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        };
        by_permits.min(by_memory).min(MAX_IMAGES)
    }

    /// Room for one more explanation, or a refusal (503) when `--max-explanations` are in
    /// progress.
    pub fn ticket(&self) -> Result<Ticket, EngineError> {
        self.tickets
            .clone()
            .try_acquire_owned()
            .map(|p| Ticket(Arc::new(p)))
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
            images as u64 * COPIES_BYTES
        } else {
            0
        }
    }

    /// Explains a request's images under `ticket`.
    pub async fn explain(
        &self,
        engine: &Engine,
        ticket: &Ticket,
        request: Request,
    ) -> Result<(Vec<Explained>, Arc<Served>), EngineError> {
        let Request {
            pixels,
            mut admitted,
            reserved,
            options,
            deadline,
        } = request;
        let floats = floats(&pixels);
        let n = floats.len() / IMAGE_FLOATS;
        let originals = admitted.split(n);
        let copies = admitted;
        let (scores, served) = engine.scores(pixels, originals, deadline).await?;
        let targets: Vec<usize> = scores
            .probabilities
            .chunks_exact(NUM_CLASSES)
            .map(|p| explain::target(options.target, p))
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
            gradients(&served, ticket, &floats, &targets, options, deadline).await?
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
    /// images sent at once (they share batches with other requests), each holding its share of
    /// the reservation until the model has run it: their probabilities, image by image.
    async fn occlusion(
        &self,
        engine: &Engine,
        floats: &[f32],
        mut admitted: Admission,
        reserved: Option<OwnedSemaphorePermit>,
        deadline: Instant,
    ) -> Result<Vec<f32>, EngineError> {
        let total = floats.len() / IMAGE_FLOATS * PATCHES;
        let mut reserved =
            reserved.ok_or_else(|| EngineError::Failed("no reservation for the copies".into()))?;
        let initial = reserved.num_permits();
        let mut jobs = Vec::new();
        let mut sent = 0;
        for image in floats.chunks_exact(IMAGE_FLOATS) {
            // One image's copies at a time, cut into jobs without copying them again.
            let mut copies = explain::occlusion_inputs(image);
            while !copies.is_empty() {
                let images = (copies.len() / IMAGE_FLOATS).min(self.largest_job);
                let rest = copies.split_off(images * IMAGE_FLOATS);
                let job = std::mem::replace(&mut copies, rest);
                sent += images;
                let share = if sent == total {
                    reserved.num_permits()
                } else {
                    initial * images / total
                };
                let permit = reserved
                    .split(share)
                    .ok_or_else(|| EngineError::Failed("splitting the reservation".into()))?;
                jobs.push(engine.scores(
                    Pixels::Floats(job, permit),
                    admitted.split(images),
                    deadline,
                ));
            }
        }
        let mut probabilities = Vec::with_capacity(total * NUM_CLASSES);
        for result in futures_util::future::join_all(jobs).await {
            probabilities.extend(result?.0.probabilities);
        }
        Ok(probabilities)
    }
}

/// Sets its flag when dropped: the request's future is gone (answered, timed out, or dropped
/// with its client), so the work it started may stop.
struct StopWhenDropped(Arc<AtomicBool>);

impl Drop for StopWhenDropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Grad-CAM or a gradient method on the blocking pool, within the request's deadline. The work
/// holds a clone of the ticket, so its place is only given back when it has stopped; past the
/// deadline, or when the request is dropped, it stops at the next image or pass.
async fn gradients(
    served: &Arc<Served>,
    ticket: &Ticket,
    floats: &[f32],
    targets: &[usize],
    options: Options,
    deadline: Instant,
) -> Result<Vec<Vec<f32>>, EngineError> {
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_when_dropped = StopWhenDropped(stop.clone());
    let (served, ticket) = (served.clone(), ticket.clone());
    let floats = floats.to_vec();
    let targets = targets.to_vec();
    let work = tokio::task::spawn_blocking(move || {
        let _ticket = ticket;
        let explainer = served.explainer()?;
        let go_on = || !stop.load(Ordering::Relaxed);
        let mut maps = Vec::with_capacity(targets.len());
        for (image, &t) in floats.chunks_exact(IMAGE_FLOATS).zip(&targets) {
            match explainer.explain_until(options.method, image, t, options.steps, &go_on) {
                Some(map) => maps.push(map),
                None => return Err("stopped: the request is gone".to_string()),
            }
        }
        Ok(maps)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_parsed_and_checked() {
        let o = Options::parse(Some("ig"), Some("cat"), Some("64"), 128).unwrap();
        assert_eq!(
            (o.method, o.target, o.steps),
            (Method::IntegratedGradients, Some(3), 64)
        );
        let d = Options::parse(None, None, None, 16).unwrap();
        assert_eq!((d.method, d.target, d.steps), (Method::GradCam, None, 16));
        assert!(
            Options::parse(Some("lime"), None, None, 8)
                .unwrap_err()
                .contains("lime")
        );
        assert!(Options::parse(None, Some("10"), None, 8).is_err());
        assert!(
            Options::parse(None, None, Some("0"), 8)
                .unwrap_err()
                .contains("1 to 8")
        );
        assert!(Options::parse(None, None, Some("9"), 8).is_err());
    }

    /// Occlusion of as many images as the decode budget holds copies of, and no more.
    #[test]
    fn occlusion_is_limited_by_permits_and_decode_memory() {
        let e = Explanations::new(2, 64, 512, 192 << 20);
        assert_eq!(e.most_images(Method::Occlusion), 7);
        assert_eq!(e.most_images(Method::GradCam), MAX_IMAGES);
        let small = Explanations::new(2, 64, 512, 4 << 20);
        assert_eq!(small.most_images(Method::Occlusion), 1);
        let few_permits = Explanations::new(2, 64, 64, 1 << 30);
        assert_eq!(few_permits.most_images(Method::Occlusion), 0);
    }
}
