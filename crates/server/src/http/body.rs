//! Reading request bodies: multipart fields or a raw image body ([`read`]), or a whole body of
//! any type ([`read_whole`], the `/v2` requests), within the configured limits.
//!
//! Every byte of a body is counted as it streams in, whatever its framing (Content-Length,
//! chunked, multipart): against the request's own limit (`--max-body`, 413) and against
//! [`BodyBudget`], the bytes all requests together may hold in memory at once (503 when it is
//! spent). The bytes a request was charged stay charged until what it read is dropped.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use actix_multipart::Multipart;
use actix_web::HttpRequest;
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;

use crate::http::problem::{self, ApiError};
use crate::ingest::upload::{Body, BodyBudget, Upload, UploadLimits, Uploads};

/// Longest file name kept (and echoed back), in bytes: the most a file system allows in one
/// name. Longer ones are cut (and control characters replaced), so that a batch answer's size
/// is bounded by its file count.
pub const MAX_FILENAME_BYTES: usize = 255;

/// Reads the files sent in multipart field `field`, or a raw `image/*` (or
/// `application/octet-stream`) body as one file named by the `X-Filename` header.
/// `payload` is the request body (`web::Payload` in a handler; any byte stream in the fuzzer).
pub async fn read<S>(
    req: &HttpRequest,
    payload: S,
    field: &'static str,
    limits: UploadLimits,
    budget: &BodyBudget,
) -> Result<Uploads, ApiError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin + 'static,
{
    read_form(req, payload, field, &[], limits, budget).await
}

/// Longest value of a form field besides the files ([`read_form`]'s `options`), in bytes.
pub const MAX_OPTION_BYTES: usize = 64;

/// [`read`], where a multipart body may also carry the form values named in `options` (parts
/// without a file name, each at most once and [`MAX_OPTION_BYTES`] long): they come back in
/// [`Uploads::options`], in the order sent.
pub async fn read_form<S>(
    req: &HttpRequest,
    payload: S,
    field: &'static str,
    options: &'static [&'static str],
    limits: UploadLimits,
    budget: &BodyBudget,
) -> Result<Uploads, ApiError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin + 'static,
{
    refuse_announced(req, limits.body)?;
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
    let (meter, metered) = Meter::wrap(payload, budget, limits.body);
    let mut values = Vec::new();
    let files = if essence == "multipart/form-data" {
        read_multipart(
            Multipart::new(req.headers(), metered),
            field,
            (options, &mut values),
            limits,
        )
        .await
    } else if essence.starts_with("image/") || essence == "application/octet-stream" {
        let filename = req
            .headers()
            .get("x-filename")
            .and_then(|v| v.to_str().ok())
            .map(filename);
        match read_body(metered).await {
            Ok(bytes) if bytes.is_empty() => Err(ApiError::EmptyFile(filename.unwrap_or_default())),
            Ok(bytes) => Ok(vec![Upload { filename, bytes }]),
            Err(e) => Err(e),
        }
    } else {
        Err(ApiError::UnsupportedMediaType(if essence.is_empty() {
            "(none)".into()
        } else {
            essence
        }))
    };
    // The meter's verdict comes first: the parser only saw its stream end in an error.
    let charged = meter.verdict()?;
    Ok(Uploads::new(files?, charged).with_options(values))
}

/// Reads a whole body of any content type (the `/v2` inference requests), metered as [`read`]
/// meters uploads: over `limit` bytes is 413, past the shared `budget` 503.
pub async fn read_whole<S>(
    req: &HttpRequest,
    payload: S,
    limit: usize,
    budget: &BodyBudget,
) -> Result<Body, ApiError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    refuse_announced(req, limit)?;
    let (meter, metered) = Meter::wrap(payload, budget, limit);
    let bytes = read_body(metered).await;
    let charged = meter.verdict()?;
    let mut bytes = bytes?;
    // A grown buffer may be up to twice its length: give the slack back while the body is held.
    bytes.shrink_to_fit();
    Ok(Body::new(bytes, charged))
}

/// Refuses a request whose announced length is over `limit` before a byte of its body is read.
fn refuse_announced(req: &HttpRequest, limit: usize) -> Result<(), ApiError> {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Refusal {
    TooLarge,
    BudgetSpent,
}

/// Counts one request's body bytes and charges them to the shared budget.
struct Meter {
    budget: BodyBudget,
    limit: usize,
    received: Cell<usize>,
    charged: RefCell<Option<OwnedSemaphorePermit>>,
    refused: Cell<Option<Refusal>>,
}

impl Meter {
    /// A meter for one request's body and the body stream it counts.
    fn wrap<S>(payload: S, budget: &BodyBudget, limit: usize) -> (Rc<Self>, Metered<S>) {
        let meter = Rc::new(Meter {
            budget: budget.clone(),
            limit,
            received: Cell::new(0),
            charged: RefCell::new(None),
            refused: Cell::new(None),
        });
        let metered = Metered {
            inner: payload,
            meter: meter.clone(),
        };
        (meter, metered)
    }

    /// The bytes charged, or why the body was refused.
    fn verdict(&self) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        match self.refused.get() {
            Some(Refusal::TooLarge) => Err(ApiError::BodyTooLarge { limit: self.limit }),
            Some(Refusal::BudgetSpent) => Err(ApiError::Overloaded),
            None => Ok(self.charged.take()),
        }
    }

    fn charge(&self, n: usize) -> Result<(), Refusal> {
        let received = self.received.get() + n;
        if received > self.limit {
            return Err(Refusal::TooLarge);
        }
        self.received.set(received);
        if n == 0 {
            return Ok(());
        }
        let permit = self.budget.try_charge(n).ok_or(Refusal::BudgetSpent)?;
        let mut charged = self.charged.borrow_mut();
        match charged.as_mut() {
            Some(held) => held.merge(permit),
            None => *charged = Some(permit),
        }
        Ok(())
    }
}

/// The body stream, ended with an error as soon as the meter refuses a chunk.
struct Metered<S> {
    inner: S,
    meter: Rc<Meter>,
}

impl<S> Stream for Metered<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.meter.refused.get().is_some() {
            return Poll::Ready(None);
        }
        Poll::Ready(match ready!(self.inner.poll_next_unpin(cx)) {
            Some(Ok(chunk)) => match self.meter.charge(chunk.len()) {
                Ok(()) => Some(Ok(chunk)),
                Err(why) => {
                    self.meter.refused.set(Some(why));
                    Some(Err(PayloadError::Overflow))
                }
            },
            other => other,
        })
    }
}

/// A file name as kept: cut to [`MAX_FILENAME_BYTES`], without control characters.
pub(crate) fn filename(name: &str) -> String {
    problem::echo(name, MAX_FILENAME_BYTES)
}

async fn read_body<S>(mut payload: S) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn read_multipart(
    mut multipart: Multipart,
    field: &'static str,
    (options, values): (&'static [&'static str], &mut Vec<(&'static str, String)>),
    limits: UploadLimits,
) -> Result<Vec<Upload>, ApiError> {
    let malformed = |e: actix_multipart::MultipartError| {
        ApiError::BadRequest(format!("malformed multipart body: {e}"))
    };
    let mut uploads = Vec::new();
    while let Some(part) = multipart.next().await {
        let mut part = part.map_err(malformed)?;
        if let Some(&option) = options.iter().find(|o| part.name() == Some(**o)) {
            if values.iter().any(|(name, _)| *name == option) {
                return Err(ApiError::BadRequest(format!(
                    "form field '{option}' is given twice"
                )));
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = part.next().await {
                bytes.extend_from_slice(&chunk.map_err(malformed)?);
                if bytes.len() > MAX_OPTION_BYTES {
                    return Err(ApiError::BadRequest(format!(
                        "form field '{option}' is longer than {MAX_OPTION_BYTES} bytes"
                    )));
                }
            }
            let value = String::from_utf8(bytes).map_err(|_| {
                ApiError::BadRequest(format!("form field '{option}' is not UTF-8 text"))
            })?;
            values.push((option, value));
            continue;
        }
        // Only the expected fields are accepted, as the OpenAPI document says: a misspelt
        // field is named in the answer rather than silently ignored.
        if part.name() != Some(field) {
            return Err(ApiError::UnexpectedField {
                got: part.name().unwrap_or_default().chars().take(64).collect(),
                expected: field,
            });
        }
        if uploads.len() == limits.files {
            return Err(ApiError::TooManyFiles {
                limit: limits.files,
            });
        }
        // A part without a filename is a form value, not a file upload (as browsers, curl -F
        // name=@file and the original FastAPI service all see it).
        let Some(filename) = part
            .content_disposition()
            .and_then(|cd| cd.get_filename())
            .map(filename)
        else {
            return Err(ApiError::BadRequest(format!(
                "multipart field '{field}' must be a file upload (a part with a filename)"
            )));
        };
        let mut bytes = Vec::new();
        while let Some(chunk) = part.next().await {
            bytes.extend_from_slice(&chunk.map_err(malformed)?);
        }
        // An empty part is a broken request, not an image that failed: the whole request is
        // refused, batch or not.
        if bytes.is_empty() {
            return Err(ApiError::EmptyFile(filename));
        }
        uploads.push(Upload {
            filename: Some(filename),
            bytes,
        });
    }
    if uploads.is_empty() {
        return Err(ApiError::MissingField(field));
    }
    Ok(uploads)
}
