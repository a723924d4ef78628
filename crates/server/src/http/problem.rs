//! Errors as RFC 9457 `application/problem+json`, each with a stable `type`.
//!
//! An error's words never grow with what a client sent: a detail goes out through [`echo`]
//! (at most [`MAX_DETAIL_BYTES`]), so that an error reply stays small however large the
//! request that caused it (a reply that is never read stays in its connection's write buffer,
//! which the memory bound counts per connection).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use model::ImageError;
use serde::Serialize;

use crate::inference::engine::EngineError;
use crate::ingest::decode::DecodeError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A body that cannot be read or parsed (a broken multipart body, a stream error); the
    /// text says what went wrong.
    #[error("{0}")]
    BadRequest(String),
    /// No route matches the path given.
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// `--api-key` is set and the request did not present it.
    #[error("this server needs an API key: send 'Authorization: Bearer <key>'")]
    Unauthorized,
    /// The path exists but not for this method; holds the methods it does take (the `Allow`
    /// header).
    #[error("method not allowed here; allowed: {0}")]
    MethodNotAllowed(&'static str),
    /// A multipart body without the field the endpoint reads its image(s) from.
    #[error("missing multipart field '{0}'")]
    MissingField(&'static str),
    /// A multipart body with a field the endpoint does not take: refused rather than ignored,
    /// so a misspelt field name does not go unnoticed.
    #[error("unexpected multipart field '{got}': send only '{expected}'")]
    UnexpectedField {
        /// The field's name as sent.
        got: String,
        /// The one field the endpoint reads.
        expected: &'static str,
    },
    /// A form value the route takes, with a value it does not (`POST /explain`'s `method`,
    /// `target`, `format`, `size`, `steps`); the text says which and why.
    #[error("{0}")]
    InvalidOption(String),
    /// An uploaded file with no bytes; holds its file name (or position).
    #[error("the uploaded file '{0}' is empty")]
    EmptyFile(String),
    /// The body is, or announces itself as, larger than one request may send.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The per-request limit (`--max-body`), in bytes.
        limit: usize,
    },
    /// A request with more files than the endpoint takes at once (`--max-files` for a batch,
    /// one for `/classify`).
    #[error("at most {limit} file(s) per request")]
    TooManyFiles {
        /// The most files one batch may hold (`--max-files`).
        limit: usize,
    },
    /// A body that is neither multipart nor an image; holds the content type sent.
    #[error("unsupported content type '{0}': send multipart/form-data or an image/* body")]
    UnsupportedMediaType(String),
    /// The bytes are not an image this server can use (empty, unknown format, corrupt, too
    /// many pixels).
    #[error("{0}")]
    InvalidImage(ImageError),
    /// The image would take more memory to decode than the server's whole decode budget, so it
    /// could never be admitted.
    #[error(
        "decoding this image takes {needed} bytes, over the server's decode memory of {limit} bytes"
    )]
    DecodeTooLarge {
        /// What decoding this image would allocate at its peak, in bytes.
        needed: u64,
        /// The decode budget, in bytes.
        limit: u64,
    },
    /// The client sent its body too slowly; holds the request timeout in seconds.
    #[error("the request body did not arrive within {0} s")]
    RequestTimeout(u64),
    /// A queue or memory budget is full: the request is refused at once (with `Retry-After`)
    /// instead of waiting.
    #[error("the server is at capacity; retry shortly")]
    Overloaded,
    /// The request was admitted but inference did not answer in time.
    #[error("inference did not finish in time")]
    Timeout,
    /// A failure inside the server (an inference thread gone, a preprocessing bug), not the
    /// client's doing.
    #[error("inference failed: {0}")]
    Internal(String),
}

impl ApiError {
    /// The stable, machine-readable kind (also the metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::NotFound(_) => "not-found",
            ApiError::Unauthorized => "unauthorized",
            ApiError::MethodNotAllowed(_) => "method-not-allowed",
            ApiError::MissingField(_) => "missing-field",
            ApiError::UnexpectedField { .. } => "unexpected-field",
            ApiError::InvalidOption(_) => "invalid-option",
            ApiError::EmptyFile(_) => "empty-file",
            ApiError::BodyTooLarge { .. } => "body-too-large",
            ApiError::TooManyFiles { .. } => "too-many-files",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::InvalidImage(ImageError::TooLarge { .. })
            | ApiError::DecodeTooLarge { .. } => "image-too-large",
            ApiError::InvalidImage(_) => "invalid-image",
            ApiError::RequestTimeout(_) => "request-timeout",
            ApiError::Overloaded => "overloaded",
            ApiError::Timeout => "timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The error as the problem document every error response carries.
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("/problems/{}", self.kind()),
            title: self
                .status_code()
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status_code().as_u16(),
            detail: detail(self),
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        ApiError::InvalidImage(e)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Overloaded => ApiError::Overloaded,
            EngineError::Timeout => ApiError::Timeout,
            EngineError::Stopped | EngineError::Failed(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Image(e) => ApiError::InvalidImage(e),
            DecodeError::TooLarge { needed, limit } => ApiError::DecodeTooLarge { needed, limit },
            DecodeError::Overloaded => ApiError::Overloaded,
            DecodeError::Internal(_) => ApiError::Internal(e.to_string()),
        }
    }
}

/// Longest error detail sent back, in bytes. Every error text of this server is written to
/// fit; the cut is for the parts of a request an error names (a field name, a file name, a
/// content type, a parser's message).
pub const MAX_DETAIL_BYTES: usize = 256;

/// An error's words as every answer carries them: [`echo`]ed to [`MAX_DETAIL_BYTES`] (the
/// problem document's `detail`, a batch entry's `error`, the `/v2` `{"error"}`).
pub fn detail(error: &impl std::fmt::Display) -> String {
    echo(&error.to_string(), MAX_DETAIL_BYTES)
}

/// `text` fit to send back: control characters (which JSON writes as six bytes each) replaced
/// by U+FFFD, then cut to at most `max` bytes at a character boundary. JSON's escaping then
/// at most doubles it (`"` and `\`).
pub fn echo(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { '\u{fffd}' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// The problem document (RFC 9457).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable error kind, e.g. `/problems/invalid-image`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's reason phrase, e.g. `Unprocessable Entity`.
    pub title: String,
    /// The HTTP status code, repeated for clients that only see the body.
    pub status: u16,
    /// What went wrong with this request, in words.
    pub detail: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_)
            | ApiError::MissingField(_)
            | ApiError::UnexpectedField { .. }
            | ApiError::InvalidOption(_)
            | ApiError::EmptyFile(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge { .. } | ApiError::TooManyFiles { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidImage(_) | ApiError::DecodeTooLarge { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded | ApiError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if matches!(self, ApiError::Overloaded | ApiError::Timeout) {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        if let ApiError::MethodNotAllowed(methods) = self {
            res.insert_header((header::ALLOW, *methods));
        }
        if let ApiError::Unauthorized = self {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.json(self.problem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_is_cut_at_a_character_boundary_without_control_characters() {
        assert_eq!(echo("abc", 3), "abc");
        assert_eq!(echo("abcd", 3), "abc");
        // 'é' is two bytes: a cut in its middle steps back before it.
        assert_eq!(echo("aé", 2), "a");
        assert_eq!(echo("a\nb\u{7}", 16), "a\u{fffd}b\u{fffd}");
        let long = ApiError::UnsupportedMediaType("\u{80}\u{1}".repeat(100_000));
        let problem = long.problem();
        assert!(problem.detail.len() <= MAX_DETAIL_BYTES);
        assert!(problem.detail.starts_with("unsupported content type"));
        // Escaped, the document stays within twice the detail and its fixed fields.
        let json = serde_json::to_string(&problem).unwrap();
        assert!(json.len() <= 2 * MAX_DETAIL_BYTES + 128, "{}", json.len());
    }
}
