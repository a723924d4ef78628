//! The OpenAPI 3 description, generated from the handlers' annotations, and a docs page that
//! works offline (Swagger UI is compiled into the binary).

use actix_web::http::header::{CACHE_CONTROL, ContentType};
use actix_web::{HttpResponse, web};
use utoipa::OpenApi;

use crate::AppState;
use crate::problem::Problem;
use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "CIFAR-10 CNN classifier",
        description = "Classifies images into the ten CIFAR-10 classes with a small CNN trained with Burn. \
                       Errors are RFC 9457 problem documents."
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
    ),
    components(schemas(Problem, model::Ranked, model::RecordMeta, routes::ImageFile)),
    tags(
        (name = "classify", description = "Image classification"),
        (name = "service", description = "Health, metadata and metrics"),
    )
)]
pub struct ApiDoc;

/// The description as JSON, with the limits of this server's settings where a schema states
/// them (`maxItems` of a batch: `--max-files`). Built once, at start-up.
pub fn spec_json(max_files: usize) -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    doc["components"]["schemas"]["BatchForm"]["properties"]["files"]["maxItems"] = max_files.into();
    serde_json::to_string_pretty(&doc).expect("the OpenAPI document serialises")
}

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

pub async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::html())
        .body(DOCS_PAGE)
}

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
