//! Errors as RFC 9457 `application/problem+json`, each with a stable `type`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use model::ImageError;
use serde::Serialize;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error("method not allowed here; allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("missing multipart field '{0}'")]
    MissingField(&'static str),
    #[error("unexpected multipart field '{got}': send only '{expected}'")]
    UnexpectedField { got: String, expected: &'static str },
    #[error("the uploaded file '{0}' is empty")]
    EmptyFile(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("at most {limit} files per batch request")]
    TooManyFiles { limit: usize },
    #[error("unsupported content type '{0}': send multipart/form-data or an image/* body")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    InvalidImage(ImageError),
    #[error(
        "decoding this image takes {needed} bytes, over the server's decode memory of {limit} bytes"
    )]
    DecodeTooLarge { needed: u64, limit: u64 },
    #[error("the request body did not arrive within {0} s")]
    RequestTimeout(u64),
    #[error("the server is at capacity; retry shortly")]
    Overloaded,
    #[error("inference did not finish in time")]
    Timeout,
    #[error("inference failed: {0}")]
    Internal(String),
}

impl ApiError {
    /// The stable, machine-readable kind (also the metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed(_) => "method-not-allowed",
            ApiError::MissingField(_) => "missing-field",
            ApiError::UnexpectedField { .. } => "unexpected-field",
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

    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("/problems/{}", self.kind()),
            title: self
                .status_code()
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status_code().as_u16(),
            detail: self.to_string(),
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        ApiError::InvalidImage(e)
    }
}

/// The problem document (RFC 9457).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable error kind, e.g. `/problems/invalid-image`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_)
            | ApiError::MissingField(_)
            | ApiError::UnexpectedField { .. }
            | ApiError::EmptyFile(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge { .. } | ApiError::TooManyFiles { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidImage(_) | ApiError::DecodeTooLarge { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
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
        // Errors carry their kind so the metrics middleware can count them.
        res.insert_header(("x-error-kind", self.kind()));
        res.json(self.problem())
    }
}
