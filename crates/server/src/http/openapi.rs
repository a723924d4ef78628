//! The OpenAPI 3 description, generated from the handlers' annotations, and a docs page that
//! works offline (Swagger UI is compiled into the binary).

use std::convert::Infallible;

use actix_web::body::SizedStream;
use actix_web::http::header::{CACHE_CONTROL, ContentType};
use actix_web::{HttpResponse, web};
use futures_util::Stream;
use utoipa::OpenApi;

use crate::AppState;
use crate::http::auth::ApiKey;
use crate::http::problem::Problem;

/// The root of the OpenAPI document: what the whole service says of itself, and what every
/// API shares (the problem document, the tags). Each API derives its own document from its
/// handlers' `#[utoipa::path]` annotations (`api::classic::ClassicApi`, `api::v2::V2Api`) and the router
/// merges them into this one ([`crate::router::openapi_document`]), so that this module names no API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "CIFAR-10 CNN classifier",
        description = "Classifies images into the ten CIFAR-10 classes with a small CNN trained with Burn. \
                       Errors are RFC 9457 problem documents. The Open Inference Protocol \
                       (KServe V2) is served under /v2, with its own error form."
    ),
    components(schemas(Problem)),
    tags(
        (name = "classify", description = "Image classification"),
        (name = "explain", description = "Why the model predicted what it did: heatmaps by Grad-CAM, occlusion, gradient saliency or integrated gradients"),
        (name = "service", description = "Health, metadata and metrics"),
        (name = "v2", description = "The Open Inference Protocol (KServe V2), with the \
                                     classification and binary tensor data extensions"),
    )
)]
pub struct ApiDoc;

/// `doc` (the merged document) as JSON, with the limits of this server's settings where a
/// schema states them (`maxItems` of a batch: `--max-files`; the most steps of an explanation:
/// `--explain-max-steps`), and the served model's version as the example
/// of a `/v2` path's version (a pattern, not a list: a reload changes it), and the name it is
/// served under as the one value of a `/v2` path's model name. With `api_key`, every
/// operation but the probes asks for the bearer token (`crate::http::auth`). Built once, at
/// start-up.
pub fn spec_json(
    doc: utoipa::openapi::OpenApi,
    max_files: usize,
    explain_max_steps: usize,
    model_name: &str,
    model_version: &str,
    api_key: Option<&ApiKey>,
) -> String {
    let mut doc = serde_json::to_value(doc).expect("the OpenAPI document serialises");
    doc["components"]["schemas"]["BatchForm"]["properties"]["files"]["maxItems"] = max_files.into();
    doc["components"]["schemas"]["ExplainForm"]["properties"]["steps"]["maximum"] =
        explain_max_steps.into();
    doc["components"]["schemas"]["RequestParameters"]["properties"]["steps"]["maximum"] =
        explain_max_steps.into();
    let version = &mut doc["components"]["schemas"]["ModelVersion"];
    version["pattern"] = model::RecordVersion::LABEL_PATTERN.into();
    version["example"] = model_version.into();
    doc["components"]["schemas"]["ModelName"]["enum"] = serde_json::json!([model_name]);
    if let Some(key) = api_key {
        doc["components"]["securitySchemes"]["apiKey"] = serde_json::json!({
            "type": "http",
            "scheme": "bearer",
            "description": "The server's --api-key"
        });
        doc["security"] = serde_json::json!([{ "apiKey": [] }]);
        let unauthorized = serde_json::json!({
            "description": "`/problems/unauthorized` (`{\"error\"}` under /v2): no API key, or another",
            "headers": { "WWW-Authenticate": { "schema": { "type": "string" } } }
        });
        if let Some(paths) = doc["paths"].as_object_mut() {
            for (path, item) in paths {
                let Some(operations) = item.as_object_mut() else {
                    continue;
                };
                for operation in operations.values_mut() {
                    if key.is_open(path) {
                        operation["security"] = serde_json::json!([]);
                    } else {
                        operation["responses"]["401"] = unauthorized.clone();
                    }
                }
            }
        }
    }
    serde_json::to_string_pretty(&doc).expect("the OpenAPI document serialises")
}

/// `GET /openapi.json`: the document [`spec_json`] built at start-up.
pub async fn spec(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(in_chunks(state.openapi.clone(), ()))
}

/// Largest piece of a fixed body handed to a connection at once.
///
/// actix-http copies a body's pieces into the connection's write buffer until it holds 32 KiB
/// (`h1_write_buffer_size`), so a body sent as one piece (Swagger UI's 1.7 MB script) sits
/// whole in the buffer of every connection that asked for it and does not read; in pieces of
/// this size a connection holds at most 32 KiB + one piece (`memory::PER_CONNECTION_BYTES`).
pub const CHUNK_BYTES: usize = 64 << 10;

/// A body (static, or shared by every request: no copy is made) sent in pieces of at most
/// [`CHUNK_BYTES`], with its length announced; `keep` lives as long as the answer (a permit
/// that counts it, or `()`).
pub fn in_chunks<K: 'static>(
    body: web::Bytes,
    keep: K,
) -> SizedStream<impl Stream<Item = Result<web::Bytes, Infallible>>> {
    let len = body.len();
    let pieces = (0..len).step_by(CHUNK_BYTES).map(move |at| {
        let _kept = &keep;
        Ok(body.slice(at..(at + CHUNK_BYTES).min(len)))
    });
    SizedStream::new(len as u64, futures_util::stream::iter(pieces))
}

const DOCS_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>CIFAR-10 CNN classifier — API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({ url: "openapi.json", dom_id: "#swagger-ui" });
</script>
</body>
</html>
"##;

/// `GET /docs`: Swagger UI over `/openapi.json`, for trying the API from a browser.
pub async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::html())
        .body(DOCS_PAGE)
}

/// `GET /docs/{file}`: Swagger UI's script and style sheet, served from the binary so the docs
/// page needs no network (404 for any other name).
pub async fn asset(file: web::Path<String>) -> HttpResponse {
    let (body, content_type): (&'static [u8], &str) = match file.as_str() {
        "swagger-ui-bundle.js" => (
            include_bytes!("../../static/swagger-ui/swagger-ui-bundle.js"),
            "text/javascript; charset=utf-8",
        ),
        "swagger-ui.css" => (
            include_bytes!("../../static/swagger-ui/swagger-ui.css"),
            "text/css; charset=utf-8",
        ),
        _ => return HttpResponse::NotFound().finish(),
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((CACHE_CONTROL, "public, max-age=86400"))
        .body(in_chunks(web::Bytes::from_static(body), ()))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn spec() -> Value {
        serde_json::from_str(&spec_json(ApiDoc::openapi(), 64, 128, "m", "v", None)).unwrap()
    }

    /// Without `--api-key` the document asks for no credentials.
    #[test]
    fn no_security_without_a_key() {
        let doc = spec();
        assert!(doc.get("security").is_none());
        assert!(doc["components"].get("securitySchemes").is_none());
    }
}
