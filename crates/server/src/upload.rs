//! Reading uploads: multipart fields or a raw image body, within the configured limits.

use actix_multipart::Multipart;
use actix_web::HttpRequest;
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::web::Bytes;
use futures_util::{FutureExt, Stream, StreamExt, future, stream};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use crate::problem::ApiError;

/// One uploaded file.
#[derive(Debug)]
pub struct Upload {
    pub filename: Option<String>,
    pub bytes: Vec<u8>,
}

/// Limits applied while reading.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// Total body bytes.
    pub body: usize,
    /// Files kept from the expected field.
    pub files: usize,
}

/// Reads the files sent in multipart field `field`, or a raw `image/*` (or
/// `application/octet-stream`) body as one file named by the `X-Filename` header.
/// `payload` is the request body (`web::Payload` in a handler; any byte stream in the fuzzer).
pub async fn read<S>(
    req: &HttpRequest,
    payload: S,
    field: &'static str,
    limits: UploadLimits,
) -> Result<Vec<Upload>, ApiError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin + 'static,
{
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if essence == "multipart/form-data" {
        // Notes when the body has ended: see `next_or_cut`.
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        let payload = payload.chain(stream::poll_fn(move |_| {
            flag.store(true, Ordering::Release);
            Poll::Ready(None)
        }));
        // actix-multipart 0.7.2 panics on some malformed bodies (a slice index in its boundary
        // scan; found by `fuzz/fuzz_targets/upload.rs`, 31 bytes were enough). Uncaught, that
        // kills the HTTP worker and drops the connection: catch it as a bad request.
        AssertUnwindSafe(read_multipart(
            Multipart::new(req.headers(), payload),
            field,
            limits,
            &ended,
        ))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::BadRequest(
                "malformed multipart body: the parser could not read it".into(),
            ))
        })
    } else if essence.starts_with("image/") || essence == "application/octet-stream" {
        let filename = req
            .headers()
            .get("x-filename")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_body(payload, limits.body).await?;
        if bytes.is_empty() {
            return Err(ApiError::EmptyFile(filename.unwrap_or_default()));
        }
        Ok(vec![Upload { filename, bytes }])
    } else {
        Err(ApiError::UnsupportedMediaType(if essence.is_empty() {
            "(none)".into()
        } else {
            essence
        }))
    }
}

async fn read_body<S>(mut payload: S, limit: usize) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The next item of a multipart stream, or an error when the body has ended but the parser
/// still waits for bytes. actix-multipart 0.7 waits forever on a body cut inside a part (found
/// by `fuzz/fuzz_targets/upload.rs`): nothing would ever wake it, and the request would hold
/// its connection until the request timeout.
async fn next_or_cut<S: Stream + Unpin>(
    items: &mut S,
    ended: &AtomicBool,
) -> Result<Option<S::Item>, ApiError> {
    future::poll_fn(|cx| match items.poll_next_unpin(cx) {
        Poll::Ready(item) => Poll::Ready(Ok(item)),
        Poll::Pending if ended.load(Ordering::Acquire) => Poll::Ready(Err(ApiError::BadRequest(
            "malformed multipart body: it ends before its closing boundary".into(),
        ))),
        Poll::Pending => Poll::Pending,
    })
    .await
}

async fn read_multipart(
    mut multipart: Multipart,
    field: &'static str,
    limits: UploadLimits,
    ended: &AtomicBool,
) -> Result<Vec<Upload>, ApiError> {
    let mut total = 0usize;
    let mut uploads = Vec::new();
    while let Some(part) = next_or_cut(&mut multipart, ended).await? {
        let mut part =
            part.map_err(|e| ApiError::BadRequest(format!("malformed multipart body: {e}")))?;
        let wanted = part.name() == Some(field);
        if wanted && uploads.len() == limits.files {
            return Err(ApiError::TooManyFiles {
                limit: limits.files,
            });
        }
        let filename = part
            .content_disposition()
            .and_then(|cd| cd.get_filename())
            .map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = next_or_cut(&mut part, ended).await? {
            let chunk = chunk
                .map_err(|e| ApiError::BadRequest(format!("malformed multipart body: {e}")))?;
            total += chunk.len();
            if total > limits.body {
                return Err(ApiError::BodyTooLarge { limit: limits.body });
            }
            if wanted {
                bytes.extend_from_slice(&chunk);
            }
        }
        if wanted {
            uploads.push(Upload { filename, bytes });
        }
    }
    if uploads.is_empty() {
        return Err(ApiError::MissingField(field));
    }
    Ok(uploads)
}
