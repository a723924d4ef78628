//! The middleware every request passes, outermost last: the API key ([`require_key`], inside
//! CORS, which answers browsers' pre-flight requests, sent without credentials, and adds its
//! headers to a refusal), then [`count`]: the answer's metrics, its `x-request-id` header and
//! its log line. What differs by API (the form of a refusal, the kind of an error) is handed in
//! by the router, so that this module names no API.

use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};

use crate::AppState;
use crate::http::problem::ApiError;
use crate::ops::logging::{REQUEST_TARGET, RequestTag};

/// `error` in the form of the API that `path` belongs to.
pub type InFormOf = fn(&str, ApiError) -> Error;
/// The stable kind of the error an answer was made from, whichever API's it is.
pub type ErrorKind = fn(&Error) -> Option<&'static str>;

/// Refuses a request that does not present the API key (`--api-key`) with 401, in `form`.
pub async fn require_key<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
    form: InFormOf,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    let state = req.app_data::<web::Data<AppState>>();
    let key = state.and_then(|s| s.config.api_key.as_ref());
    if let Some(key) = key {
        let authorization = req.headers().get(header::AUTHORIZATION);
        if !key.allows(req.path(), authorization.map(header::HeaderValue::as_bytes)) {
            // As an error, not a ready-made answer: `count` reads its kind.
            let refusal = form(req.path(), ApiError::Unauthorized);
            return Ok(req.error_response(refusal).map_into_right_body());
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Counts the answer in the metrics (its route, status, time and error kind), gives it the
/// request's id, and logs it.
pub async fn count<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
    kind_of: ErrorKind,
) -> Result<ServiceResponse<B>, Error> {
    let start = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    // Put there by RequestSpan, which chose the request id.
    let tag = req.extensions_mut().remove::<RequestTag>();
    let mut res = next.call(req).await?;
    let status = res.status().as_u16();
    let elapsed = start.elapsed();
    let kind = res.response().error().and_then(kind_of);
    if let Some(state) = state {
        let metrics = &state.metrics;
        let route = tag.as_ref().map_or("unmatched", |t| t.route.as_str());
        metrics.request(route, status, elapsed);
        if let Some(kind) = kind {
            metrics.error(kind);
            if (400..500).contains(&status) || status == 503 {
                metrics.refusal(kind);
            }
        }
        if state.config.log != crate::LogFormat::Off {
            answered(status, elapsed, kind);
        }
    }
    if let Some(tag) = tag {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), tag.id);
    }
    Ok(res)
}

/// Logs a request's outcome in its span (which holds its id, method, path and route).
fn answered(status: u16, elapsed: Duration, error: Option<&str>) {
    // Whole microseconds: exact in the log, and 71 minutes at most (any longer reads 71 minutes).
    let duration_ms = f64::from(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)) / 1e3;
    if status >= 500 && status != 503 {
        tracing::warn!(target: REQUEST_TARGET, status, duration_ms, error, "answered");
    } else {
        tracing::info!(target: REQUEST_TARGET, status, duration_ms, error, "answered");
    }
}
