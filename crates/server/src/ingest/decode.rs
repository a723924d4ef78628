//! Decoding uploads into model inputs within a memory budget.
//!
//! A decoded frame is far larger than its file (a 40-megapixel JPEG of a few MB decodes to
//! 120 MB), so decoding is where a few small requests could take the most memory. Each image
//! reserves what its header says decoding it takes ([`model::preprocess::Header`]) from
//! [`DecodeBudget`] before it is decoded, and waits while the budget is in use; an image that
//! would need more than the whole budget is refused (422). Small single images are decoded
//! right on the async worker, off the budget: they cost at most [`INLINE_DECODE_BYTES`].

use std::sync::Arc;

use model::{ImageError, Preprocessor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::ingest::upload::{Upload, Uploads};

/// Why an image was not prepared, or a request's images not decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not an image this server can use (unknown format, corrupt, too many pixels).
    #[error("{0}")]
    Image(#[from] ImageError),
    /// Decoding it would take more than the whole decode budget, so it could never be admitted.
    #[error(
        "decoding this image takes {needed} bytes, over the server's decode memory of {limit} bytes"
    )]
    TooLarge {
        /// What decoding it would allocate at its peak, in bytes.
        needed: u64,
        /// The decode budget, in bytes.
        limit: u64,
    },
    /// The budget had no room before the request's deadline.
    #[error("the server is at capacity; retry shortly")]
    Overloaded,
    /// A decoding thread failed (a bug, not the client's doing).
    #[error("preprocessing: {0}")]
    Internal(String),
}

/// A single upload at most this large and of at most [`INLINE_PIXELS`] pixels is decoded right
/// on the async worker: that takes tens of microseconds, less than the two thread hand-offs
/// of the blocking pool (measured: `/classify` p50 at concurrency 1 went from 0.58 to 0.54 ms).
const INLINE_BYTES: usize = 64 * 1024;
const INLINE_PIXELS: u64 = 128 * 128;

/// Uploads of at most this many bytes in all have their headers read on the async worker.
const INLINE_HEADER_BYTES: usize = 256 * 1024;

/// Most memory an inline decode takes: a 128×128 frame of up to 16 bytes a pixel, its RGB
/// copy and the resize's rows.
pub const INLINE_DECODE_BYTES: u64 = INLINE_PIXELS * 19 + 256 * 64 * 16;

/// The budget is kept in KiB so that any size fits the semaphore's `u32` requests.
const UNIT: u64 = 1024;

/// Bytes that all decodes together may take at once.
#[derive(Debug, Clone)]
pub struct DecodeBudget {
    kib: Arc<Semaphore>,
    limit: u64,
}

impl DecodeBudget {
    /// A budget of `bytes` (`--decode-memory`), counted in whole KiB. Decodes wait for room in
    /// it, so a burst of large images queues instead of taking the memory all at once.
    pub fn new(bytes: u64) -> Self {
        let kib = (bytes / UNIT).min(Semaphore::MAX_PERMITS as u64) as usize;
        Self {
            kib: Arc::new(Semaphore::new(kib)),
            limit: kib as u64 * UNIT,
        }
    }

    /// The whole budget, in bytes: what one reservation can take at most.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Waits (asynchronously, until the request's `deadline` at most) until `bytes` of the
    /// budget are free and reserves them until the returned permit is dropped (also for other
    /// decoded data than images: the floats of a `/v2` tensor).
    pub(crate) async fn reserve(
        &self,
        bytes: u64,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, DecodeError> {
        let kib = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        tokio::time::timeout_at(deadline, self.kib.clone().acquire_many_owned(kib))
            .await
            .map_err(|_| DecodeError::Overloaded)?
            .map_err(|_| DecodeError::Internal("the decode budget is closed".into()))
    }
}

/// One file's name and its prepared image (or why it has none).
pub type Prepared = (Option<String>, Result<Vec<u8>, DecodeError>);

/// Decodes and prepares every upload; anything but a small single image goes to the blocking
/// pool, so that a large JPEG never stalls an async worker.
///
/// Headers are read first; then the images are decoded in groups, each group once the budget
/// has room for what its headers say decoding takes (a group is one image, or small images
/// together up to a quarter of the budget). Every wait is asynchronous and ends at the
/// request's one `deadline` (not a wait per group: a request of many groups would otherwise
/// hold its permits for many timeouts): no blocking thread ever waits for the budget, and a
/// request that is dropped meanwhile (client gone) or out of time releases everything it held. The uploads' bytes, and their share of the body
/// budget, are released once every image is decoded.
pub async fn prepare(
    pre: Preprocessor,
    budget: &DecodeBudget,
    uploads: Uploads,
    deadline: Instant,
) -> Result<Vec<Prepared>, DecodeError> {
    // Uploads are never empty (`http::body::read` refuses empty files).
    if let [file] = uploads.files.as_slice()
        && file.bytes.len() <= INLINE_BYTES
    {
        // The small limit refuses larger images from the header alone, before any decoding.
        match Preprocessor::new(INLINE_PIXELS.min(pre.max_pixels())).prepare(&file.bytes) {
            Err(ImageError::TooLarge { .. }) => {}
            result => {
                return Ok(vec![(
                    file.filename.clone(),
                    result.map_err(DecodeError::from),
                )]);
            }
        }
    }
    let uploads = Arc::new(uploads);
    let limit = budget.limit;
    // Reading headers takes microseconds (a JPEG decoder copies its file): for small uploads
    // that is cheaper on this worker than a hand-off to the blocking pool.
    let total: usize = uploads.files.iter().map(|f| f.bytes.len()).sum();
    let costs = if total <= INLINE_HEADER_BYTES {
        uploads.files.iter().map(|f| cost(pre, f, limit)).collect()
    } else {
        let uploads = uploads.clone();
        blocking(move || {
            uploads
                .files
                .iter()
                .map(|f| cost(pre, f, limit))
                .collect::<Vec<_>>()
        })
        .await?
    };
    let mut prepared: Vec<Prepared> = Vec::with_capacity(costs.len());
    let mut costs = costs.into_iter().enumerate().peekable();
    while costs.peek().is_some() {
        // The next group: images up to a quarter of the budget (at least one), and failures.
        let mut group = Vec::new();
        let mut bytes = 0;
        while let Some((_, cost)) = costs.peek() {
            let more = *cost.as_ref().unwrap_or(&0);
            if !group.is_empty() && bytes + more > limit / 4 {
                break;
            }
            bytes += more;
            group.extend(costs.next());
        }
        let reserved = if bytes > 0 {
            Some(budget.reserve(bytes, deadline).await?)
        } else {
            None
        };
        let uploads = uploads.clone();
        let decoded = blocking(move || {
            let _reserved = reserved;
            group
                .into_iter()
                .map(|(i, cost)| {
                    let file = &uploads.files[i];
                    let result = cost.and_then(|_| Ok(pre.prepare(&file.bytes)?));
                    (file.filename.clone(), result)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        prepared.extend(decoded);
    }
    Ok(prepared)
}

/// What decoding `file` takes, or why it will not be decoded.
fn cost(pre: Preprocessor, file: &Upload, limit: u64) -> Result<u64, DecodeError> {
    let needed = pre.header(&file.bytes)?.decode_bytes;
    if needed > limit {
        return Err(DecodeError::TooLarge { needed, limit });
    }
    Ok(needed)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DecodeError> {
    // The worker's own blocking pool (actix runs each worker on a tokio runtime, whose
    // blocking threads `--workers` sizes).
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DecodeError::Internal(e.to_string()))
}
