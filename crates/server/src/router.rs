//! The one route table: every path the server answers, by the API that owns it, and what is
//! decided per API above them all: the OpenAPI document merged from each API's own part, the
//! error kind an answer was made from (for the metrics), and the form of a refusal by path.
//! The only module that names both APIs.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::api::{classic, explain, v2};
use crate::http::openapi;
use crate::http::problem::ApiError;
use crate::http::resource::PROBLEMS;

/// Registers every endpoint (each answering `OPTIONS` and a wrong method itself); what
/// [`crate::serve`] mounts.
pub fn configure(cfg: &mut web::ServiceConfig) {
    classic::configure(cfg);
    explain::configure(cfg);
    PROBLEMS.get(cfg, "/openapi.json", openapi::spec);
    PROBLEMS.get(cfg, "/docs", openapi::docs);
    PROBLEMS.get(cfg, "/docs/{file}", openapi::asset);
    // The Open Inference Protocol (KServe V2) beside the original API.
    v2::configure(cfg);
}

/// What a path no route matches gets: a problem document.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(req.path().to_string()))
}

/// The service's OpenAPI document: the root ([`openapi::ApiDoc`]) with each API's own part
/// merged in.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    let mut doc = openapi::ApiDoc::openapi();
    doc.merge(classic::ClassicApi::openapi());
    doc.merge(explain::ExplainApi::openapi());
    doc.merge(v2::V2Api::openapi());
    doc
}

/// The stable kind of the error an answer was made from, whichever API's it is.
pub fn error_kind(error: &actix_web::Error) -> Option<&'static str> {
    error
        .as_error::<ApiError>()
        .map(ApiError::kind)
        .or_else(|| error.as_error::<v2::V2Error>().map(v2::V2Error::kind))
}

/// `error` in the form of the API `path` belongs to.
pub fn in_form_of(path: &str, error: ApiError) -> actix_web::Error {
    if path == "/v2" || path.starts_with("/v2/") {
        v2::V2Error::from(error).into()
    } else {
        error.into()
    }
}

/// Headers a browser client may read of an answer besides the simple ones (CORS).
pub const EXPOSED_HEADERS: [&str; 3] = ["model-version", "x-request-id", v2::HEADER_LENGTH];
