//! `POST /explain`: why the model said what it said about one image, as a heatmap in JSON or
//! as a PNG of the heatmap over the image. The methods and what each costs and means are
//! [`model::explain`]'s; how an explanation runs on the server (its admission, the engine, the
//! ticket that bounds its memory) is [`crate::inference::explain`]'s.

use actix_web::{HttpRequest, HttpResponse, web};
use model::explain::{self, Method};
use model::{CLASSES, INPUT_SIZE, Ranked};
use serde::Serialize;
use utoipa::ToSchema;

use super::classic::{ImageFile, model_version};
use crate::AppState;
use crate::http::body;
use crate::http::openapi::in_chunks;
use crate::http::problem::{ApiError, Problem};
use crate::http::resource::{PROBLEMS, deadline};
use crate::inference::engine::Pixels;
use crate::inference::explain::{Explained, Explanations, Options, Request};
use crate::ingest::decode;
use crate::ingest::upload::UploadLimits;

/// This API's part of the OpenAPI document (merged into [`crate::router::openapi_document`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(explain),
    components(schemas(Explanation, ExplainForm, MethodName, Format, Size, ClassName))
)]
pub struct ExplainApi;

/// Registers `POST /explain` (mounted by [`crate::router::configure`]).
pub fn configure(cfg: &mut web::ServiceConfig) {
    PROBLEMS.post(cfg, "/explain", explain);
}

/// The form values `POST /explain` takes beside `file`.
const OPTIONS: &[&str] = &["method", "target", "format", "size", "steps"];

/// Side of the PNG answer: the 64×64 image the model saw, enlarged four times.
pub const PNG_SIDE: u32 = 256;

/// Longest side of a heatmap at the image's own size (`size=original`); a larger image's map
/// is scaled down to fit, keeping its proportions.
pub const ORIGINAL_MAX_SIDE: u32 = 512;

/// The explanation methods (`method`).
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
#[allow(dead_code)]
pub enum MethodName {
    /// Grad-CAM on the second convolution block (element-wise form, closed-form gradient):
    /// about one forward pass. The default.
    Gradcam,
    /// Each 8×8 patch greyed in turn: 64 more images through the model.
    Occlusion,
    /// Gradient × input, through autodiff: one forward and backward pass.
    Saliency,
    /// Integrated gradients from a grey image: `steps` forward and backward passes.
    IntegratedGradients,
}

/// What `POST /explain` answers with (`format`).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum Format {
    /// The heatmap's values (the default).
    Json,
    /// A 256×256 PNG of the heatmap over the image as the model saw it.
    Png,
}

/// The heatmap's size in a JSON answer (`size`).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum Size {
    /// 64×64, the model's input (the default).
    Model,
    /// The uploaded image's own size, scaled down to fit 512×512 when larger.
    Original,
}

/// A class, by name or by index: the class an explanation is of.
pub struct ClassName;

impl utoipa::PartialSchema for ClassName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let names = CLASSES.iter().map(|c| (*c).to_string());
        let indices = (0..CLASSES.len()).map(|i| i.to_string());
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(names.chain(indices)))
            .description(Some("A class name (any case) or its index"))
            .into()
    }
}

impl ToSchema for ClassName {}

/// Multipart form of `POST /explain`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ExplainForm {
    /// The image (JPEG, PNG, BMP, TIFF, WebP or GIF).
    file: ImageFile,
    /// The method; `gradcam` by default.
    #[serde(default)]
    method: MethodName,
    /// The class to explain, by name (`cat`) or index (`3`); the predicted class by default.
    #[serde(default)]
    target: ClassName,
    /// `json` (default) or `png`.
    #[serde(default)]
    format: Format,
    /// The JSON heatmap's size: `model` (default) or `original`.
    #[serde(default)]
    size: Size,
    /// Integrated gradients' steps (1 to `--explain-max-steps`, default 32).
    #[serde(default)]
    #[schema(minimum = 1)]
    steps: u32,
}

/// A JSON explanation.
#[derive(Serialize, ToSchema)]
pub struct Explanation {
    filename: Option<String>,
    /// The method that made it.
    method: &'static str,
    /// The class explained, with its probability.
    target: Ranked,
    /// The most likely class.
    prediction: Ranked,
    top_3_predictions: Vec<Ranked>,
    /// The heatmap's width.
    width: u32,
    /// The heatmap's height.
    height: u32,
    /// `height × width` values in [0, 1], row by row from the top left: the positive evidence
    /// for the target, scaled so that its 99th percentile is 1 (the few stronger values are
    /// clipped to 1), rounded to 1/1000.
    heatmap: Vec<f32>,
}

/// The problems `POST /explain` answers with.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ExplainProblems {
    /// `/problems/invalid-option` (an unknown method, format or size, a target that is not a
    /// class, steps out of range), `/problems/bad-request` (malformed multipart, a form value
    /// given twice or too long), `/problems/missing-field` (no `file`),
    /// `/problems/unexpected-field`, `/problems/empty-file`
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// `/problems/request-timeout`: the body did not arrive within `--request-timeout`
    #[response(status = 408, content_type = "application/problem+json")]
    RequestTimeout(Problem),
    /// `/problems/body-too-large` (over `--max-body`), `/problems/too-many-files` (a second
    /// `file`)
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// `/problems/unsupported-media-type`: not multipart
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// `/problems/invalid-image`, `/problems/image-too-large`
    #[response(status = 422, content_type = "application/problem+json")]
    InvalidImage(Problem),
    /// `/problems/internal`: the model failed
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(Problem),
    /// `/problems/overloaded` (`--max-explanations` in progress, or no room for the images)
    /// or `/problems/timeout`; retry after `Retry-After`
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

#[utoipa::path(post, path = "/explain", tag = "explain",
    request_body(description = "An image and how to explain its prediction", content(
        (ExplainForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "The explanation: JSON, or with `format=png` a PNG of the heatmap over the image", content(
            (Explanation = "application/json"),
            (Vec<u8> = "image/png"),
        )),
        ExplainProblems,
    ))]
async fn explain(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let deadline = deadline(&state);
    let limits = UploadLimits {
        files: 1,
        ..state.config.upload
    };
    let secs = state.config.request_timeout.as_secs();
    let uploads = tokio::time::timeout_at(
        deadline,
        body::read_form(&req, payload, "file", OPTIONS, limits, &state.body_budget),
    )
    .await
    .map_err(|_| ApiError::RequestTimeout(secs))??;
    let asked = Asked::read(&uploads.options, state.config.explain_max_steps)?;
    // The uploaded image's own size, for `size=original` (a bad header fails in decoding).
    let dimensions = if asked.original {
        state
            .preprocessor
            .header(&uploads.files[0].bytes)
            .ok()
            .map(|h| (h.width, h.height))
    } else {
        None
    };
    let method = asked.options.method;
    if state.explanations.most_images(method) == 0 {
        return Err(ApiError::InvalidOption(format!(
            "this server cannot explain by {method}: its --max-images or --decode-memory is too small"
        )));
    }
    let ticket = state.explanations.ticket()?;
    let admitted = state
        .engine
        .admit(Explanations::permits_per_image(method))?;
    let (filename, pixels) =
        decode::prepare(state.preprocessor, &state.decode_budget, uploads, deadline)
            .await?
            .remove(0);
    let pixels = pixels?;
    // After decoding, which takes from the same budget.
    let reserved = match Explanations::copies_bytes(method, 1) {
        0 => None,
        bytes => Some(state.decode_budget.reserve(bytes, deadline).await?),
    };
    let request = Request {
        pixels: Pixels::Rgb(pixels),
        admitted,
        reserved,
        options: asked.options,
        deadline,
    };
    let (mut explained, served) = state
        .explanations
        .explain(&state.engine, &ticket, request)
        .await?;
    let explained = explained.remove(0);
    let mut res = HttpResponse::Ok();
    res.insert_header(model_version(&served));
    // The answer keeps the ticket until it is sent: its bytes are counted in the ticket's.
    let body = if asked.png {
        let png = web::block(move || png(&explained))
            .await
            .map_err(|e| ApiError::Internal(format!("drawing the heatmap: {e}")))??;
        res.content_type("image/png");
        png
    } else {
        let size = if asked.original {
            explain::fit(
                dimensions.unwrap_or((INPUT_SIZE as u32, INPUT_SIZE as u32)),
                1,
                ORIGINAL_MAX_SIDE,
            )
        } else {
            (INPUT_SIZE as u32, INPUT_SIZE as u32)
        };
        res.content_type("application/json");
        serde_json::to_vec(&answer(filename, method, &explained, size))
            .map_err(|e| ApiError::Internal(format!("writing the answer: {e}")))?
    };
    Ok(res.body(in_chunks(body.into(), ticket)))
}

/// The form values, read and checked.
struct Asked {
    options: Options,
    png: bool,
    original: bool,
}

impl Asked {
    fn read(values: &[(&'static str, String)], max_steps: usize) -> Result<Self, ApiError> {
        let get = |name: &str| {
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.trim())
        };
        let options = Options::parse(get("method"), get("target"), get("steps"), max_steps)
            .map_err(ApiError::InvalidOption)?;
        let choice = |name: &str, default: &str, other: &str| match get(name) {
            None => Ok(false),
            Some(v) if v == default => Ok(false),
            Some(v) if v == other => Ok(true),
            Some(v) => Err(ApiError::InvalidOption(format!(
                "unknown {name} '{}' ({default} or {other})",
                v.chars().take(64).collect::<String>()
            ))),
        };
        Ok(Asked {
            options,
            png: choice("format", "json", "png")?,
            original: choice("size", "model", "original")?,
        })
    }
}

/// The JSON answer for one image, its heatmap at `(width, height)`.
fn answer(
    filename: Option<String>,
    method: Method,
    e: &Explained,
    (width, height): (u32, u32),
) -> Explanation {
    let ranked = model::predict::rank(&e.probabilities, 3);
    let heat = explain::heat(&e.map);
    let heat = if (width, height) == (INPUT_SIZE as u32, INPUT_SIZE as u32) {
        heat
    } else {
        explain::resize(
            &heat,
            INPUT_SIZE,
            INPUT_SIZE,
            width as usize,
            height as usize,
        )
    };
    Explanation {
        filename,
        method: method.name(),
        target: Ranked {
            class: CLASSES[e.target],
            class_index: e.target,
            confidence: e.probabilities[e.target],
        },
        prediction: ranked.best,
        top_3_predictions: ranked.top_k,
        width,
        height,
        heatmap: explain::thousandths(heat),
    }
}

/// The heatmap over the image the model saw, [`PNG_SIDE`] square, as PNG.
fn png(e: &Explained) -> Result<Vec<u8>, ApiError> {
    explain::overlay_png(&explain::enlarged(&e.pixels, PNG_SIDE), &e.map)
        .map_err(|e| ApiError::Internal(format!("encoding the PNG: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::memory::EXPLANATION_BYTES;

    /// The largest answers (a heatmap of 512×512 values of the longest text, the PNG of
    /// noise, which compresses worst) fit what the memory bound counts for an explanation
    /// besides the gradient methods' working memory.
    #[test]
    fn the_largest_answers_fit_the_memory_bound() {
        let noise: Vec<f32> = (0..explain::MAP_PIXELS)
            .map(|i| ((i * 7919) % 1000) as f32 / 999.0 + 0.000_123)
            .collect();
        let pixels: Vec<f32> = (0..model::IMAGE_FLOATS)
            .map(|i| ((i * 104_729) % 255) as f32 / 127.5 - 1.0)
            .collect();
        let e = Explained {
            target: 3,
            map: noise,
            probabilities: vec![0.1; 10],
            pixels,
        };
        let json = serde_json::to_vec(&answer(
            Some("\"".repeat(255)),
            Method::IntegratedGradients,
            &e,
            (512, 512),
        ))
        .unwrap();
        let png = png(&e).unwrap();
        let room = EXPLANATION_BYTES - model::explain::GRADIENT_BYTES;
        for (what, bytes) in [("json", json.len()), ("png", png.len())] {
            assert!((bytes as u64) < room / 2, "{what}: {bytes} bytes");
        }
    }
}
