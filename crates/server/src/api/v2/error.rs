//! The protocol's errors: `{"error": "..."}` at the status each one means.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{IMAGE_INPUT, QUOTED_CHARS};
use crate::http::problem::{self, ApiError};
use crate::inference::engine::EngineError;
use crate::ingest::decode::DecodeError;

/// An error on a `/v2` path, answered as the protocol's `{"error": "..."}`.
#[derive(Debug)]
pub enum V2Error {
    /// What the original API fails with, at its status (but 400 where it says 415 or 422: the
    /// protocol has no other status for a bad input).
    Api(ApiError),
    /// A request that breaks the protocol or does not fit the model.
    BadRequest(String),
    /// A model this server does not serve.
    UnknownModel {
        /// The name asked for (cut to quote).
        asked: String,
        /// The one served.
        serving: String,
    },
    /// A version of the model this server does not serve.
    UnknownVersion {
        /// The version asked for (cut to quote).
        asked: String,
        /// The model's name.
        model: String,
    },
    /// A path under `/v2` that names no endpoint.
    NoSuchPath(String),
    /// One image of the input failed (it cannot be decoded, or is too large).
    Element {
        /// Its place in the input.
        index: usize,
        /// Why.
        error: ApiError,
    },
    /// More images than `--max-files` in one request.
    TooManyImages {
        /// How many were sent, when known before reading them all.
        got: Option<usize>,
        /// `--max-files`.
        limit: usize,
    },
    /// A tensor whose floats would take more than all of `--decode-memory`.
    TensorTooLarge {
        /// Bytes its floats take.
        needed: u64,
        /// The decode budget.
        limit: u64,
    },
}

impl V2Error {
    /// The stable kind, as the original API's (the metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            V2Error::Api(e) | V2Error::Element { error: e, .. } => e.kind(),
            V2Error::BadRequest(_) => "bad-request",
            V2Error::UnknownModel { .. }
            | V2Error::UnknownVersion { .. }
            | V2Error::NoSuchPath(_) => "not-found",
            V2Error::TooManyImages { .. } => "too-many-files",
            V2Error::TensorTooLarge { .. } => "body-too-large",
        }
    }
}

impl fmt::Display for V2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            V2Error::Api(e) => write!(f, "{e}"),
            V2Error::BadRequest(message) => f.write_str(message),
            V2Error::UnknownModel { asked, serving } => {
                write!(f, "unknown model '{asked}': this server serves '{serving}'")
            }
            V2Error::UnknownVersion { asked, model } => write!(
                f,
                "unknown version '{asked}' of model '{model}' (GET /v2/models/{model} lists its versions)"
            ),
            V2Error::NoSuchPath(path) => write!(f, "no such endpoint: {path}"),
            V2Error::Element { index, error } => {
                write!(f, "input '{IMAGE_INPUT}', element {index}: {error}")
            }
            V2Error::TooManyImages {
                got: Some(got),
                limit,
            } => write!(
                f,
                "{got} images in one request; at most {limit} are taken (--max-files)"
            ),
            V2Error::TooManyImages { got: None, limit } => write!(
                f,
                "more than {limit} images in one request; at most {limit} are taken (--max-files)"
            ),
            V2Error::TensorTooLarge { needed, limit } => write!(
                f,
                "the tensor takes {needed} bytes, over the server's decode memory of {limit} bytes"
            ),
        }
    }
}

impl From<ApiError> for V2Error {
    fn from(e: ApiError) -> Self {
        V2Error::Api(e)
    }
}

impl From<EngineError> for V2Error {
    fn from(e: EngineError) -> Self {
        V2Error::Api(e.into())
    }
}

impl From<DecodeError> for V2Error {
    fn from(e: DecodeError) -> Self {
        V2Error::Api(e.into())
    }
}

/// The protocol's error object.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

impl ResponseError for V2Error {
    fn status_code(&self) -> StatusCode {
        match self {
            V2Error::Api(e) => match e.status_code() {
                StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => {
                    StatusCode::BAD_REQUEST
                }
                status => status,
            },
            V2Error::BadRequest(_) | V2Error::Element { .. } => StatusCode::BAD_REQUEST,
            V2Error::UnknownModel { .. }
            | V2Error::UnknownVersion { .. }
            | V2Error::NoSuchPath(_) => StatusCode::NOT_FOUND,
            V2Error::TooManyImages { .. } | V2Error::TensorTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let V2Error::Api(ApiError::Overloaded | ApiError::Timeout) = self {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        if let V2Error::Api(ApiError::MethodNotAllowed(methods)) = self {
            res.insert_header((header::ALLOW, *methods));
        }
        if let V2Error::Api(ApiError::Unauthorized) = self {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.json(ErrorBody {
            error: problem::detail(self),
        })
    }
}

/// `text` cut to a length fit to quote in an error.
pub(super) fn quote(text: &str) -> String {
    text.chars().take(QUOTED_CHARS).collect()
}
