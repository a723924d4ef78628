//! The OpenAPI 3 description, generated from the handlers' annotations, and a docs page that
//! works offline (Swagger UI is compiled into the binary).

use actix_web::http::header::{CACHE_CONTROL, ContentType};
use actix_web::{HttpResponse, web};
use utoipa::OpenApi;

use crate::AppState;
use crate::problem::Problem;
use crate::{routes, v2};

/// The API's OpenAPI document, derived from the `#[utoipa::path]` annotations of the handlers
/// in `paths`; [`spec_json`] fills in what depends on the server's settings.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "CIFAR-10 CNN classifier",
        description = "Classifies images into the ten CIFAR-10 classes with a small CNN trained with Burn. \
                       Errors are RFC 9457 problem documents. The Open Inference Protocol \
                       (KServe V2) is served under /v2, with its own error form."
    ),
    paths(
        routes::root,
        routes::health,
        routes::ready,
        routes::model_info,
        routes::classes,
        routes::metrics,
        routes::ui,
        routes::classify,
        routes::classify_batch,
        v2::server_metadata,
        v2::live,
        v2::ready,
        v2::model_metadata,
        v2::version_metadata,
        v2::model_ready,
        v2::version_ready,
        v2::infer,
        v2::version_infer,
    ),
    components(schemas(
        Problem,
        model::Ranked,
        model::RecordMeta,
        routes::ImageFile,
        v2::ErrorBody,
        v2::TensorData,
        v2::ModelName,
        v2::ModelVersion,
    )),
    tags(
        (name = "classify", description = "Image classification"),
        (name = "service", description = "Health, metadata and metrics"),
        (name = "v2", description = "The Open Inference Protocol (KServe V2), with the \
                                     classification and binary tensor data extensions"),
    )
)]
pub struct ApiDoc;

/// The description as JSON, with the limits of this server's settings where a schema states
/// them (`maxItems` of a batch: `--max-files`), and the served model's version as the example
/// of a `/v2` path's version (a pattern, not a list: a reload changes it). Built once, at
/// start-up.
pub fn spec_json(max_files: usize, model_version: &str) -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    doc["components"]["schemas"]["BatchForm"]["properties"]["files"]["maxItems"] = max_files.into();
    let version = &mut doc["components"]["schemas"]["ModelVersion"];
    version["pattern"] = model::RecordVersion::LABEL_PATTERN.into();
    version["example"] = model_version.into();
    serde_json::to_string_pretty(&doc).expect("the OpenAPI document serialises")
}

/// `GET /openapi.json`: the document [`spec_json`] built at start-up.
pub async fn spec(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(state.openapi.clone())
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
            include_bytes!("../static/swagger-ui/swagger-ui-bundle.js"),
            "text/javascript; charset=utf-8",
        ),
        "swagger-ui.css" => (
            include_bytes!("../static/swagger-ui/swagger-ui.css"),
            "text/css; charset=utf-8",
        ),
        _ => return HttpResponse::NotFound().finish(),
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((CACHE_CONTROL, "public, max-age=86400"))
        .body(body)
}
