//! `cnn explain`: why the model predicted what it did for each image, drawn as a heatmap over
//! the image (a PNG per image) and, with `--json`, the heatmap's values. The methods are
//! [`model::explain`]'s, run here on the CPU without a server.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use image::RgbImage;
use model::explain::{self, Explainer, Method};
use model::{CLASSES, Inference, Preprocessor, Ranked};
use serde_json::json;

use crate::report::Report;

/// What to explain and where the pictures go.
pub struct Request<'a> {
    pub method: Method,
    pub target: Option<usize>,
    pub steps: usize,
    pub out: &'a Path,
    pub json: bool,
    pub jsonl: bool,
}

/// The overlay's longer side: small images (CIFAR's 32×32) are enlarged to this, larger ones
/// kept up to [`MAX_SIDE`].
const MIN_SIDE: u32 = 256;
const MAX_SIDE: u32 = 1024;

/// Explains every file and writes `<out>/<stem>.<method>.png` for each; exit code 1 when a
/// file failed (the others are still explained).
pub fn run(
    net: &Inference,
    explainer: &Explainer,
    files: &[PathBuf],
    r: &Request,
) -> Result<ExitCode> {
    std::fs::create_dir_all(r.out).with_context(|| format!("cannot create {}", r.out.display()))?;
    let pre = Preprocessor::default();
    let mut report = Report::new(std::io::stdout().lock(), r.json, r.jsonl).saying("explained");
    let mut names = HashSet::new();
    for path in files {
        let result = explain_one(net, explainer, pre, path, r, &mut names);
        report.push(match result {
            Ok(v) => v,
            Err(e) => json!({"file": path, "error": format!("{e:#}")}),
        })?;
    }
    Ok(report.finish()?)
}

fn explain_one(
    net: &Inference,
    explainer: &Explainer,
    pre: Preprocessor,
    path: &Path,
    r: &Request,
    names: &mut HashSet<PathBuf>,
) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).context("cannot read")?;
    let image = pre.decode(&bytes)?;
    let x = pre.preprocess(&bytes)?;
    let probabilities = net.probabilities(&x);
    let target = explain::target(r.target, &probabilities);
    let map = if r.method == Method::Occlusion {
        // The copies through the same model run as the prediction (as the server does), so
        // that the fall is measured from the probability shown.
        let all: Vec<f32> = x
            .iter()
            .copied()
            .chain(explain::occlusion_inputs(&x))
            .collect();
        explain::occlusion(&net.probabilities(&all), target)
    } else {
        explainer.explain(r.method, &x, target, r.steps)
    };
    let png = explain::overlay_png(&sized(&image), &map)?;
    let written = out_path(r.out, path, r.method, names);
    std::fs::write(&written, png).with_context(|| format!("cannot write {}", written.display()))?;
    let ranked = model::predict::rank(&probabilities, 3);
    let mut v = json!({
        "file": path,
        "method": r.method.name(),
        "target": Ranked { class: CLASSES[target], class_index: target, confidence: probabilities[target] },
        "prediction": ranked.best,
        "top_k": ranked.top_k,
        "written": written,
    });
    if r.json || r.jsonl {
        let heat = explain::thousandths(explain::heat(&map));
        v["heatmap"] =
            json!({"width": model::INPUT_SIZE, "height": model::INPUT_SIZE, "values": heat});
    }
    Ok(v)
}

/// `image` with its longer side brought within [`MIN_SIDE`]..=[`MAX_SIDE`], proportions kept.
fn sized(image: &RgbImage) -> RgbImage {
    let (w, h) = explain::fit(image.dimensions(), MIN_SIDE, MAX_SIDE);
    if (w, h) == image.dimensions() {
        return image.clone();
    }
    image::imageops::resize(image, w, h, image::imageops::FilterType::Triangle)
}

/// `<out>/<stem>.<method>.png`, numbered when two inputs share a stem.
fn out_path(out: &Path, input: &Path, method: Method, names: &mut HashSet<PathBuf>) -> PathBuf {
    let stem = input
        .file_stem()
        .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
    let mut candidate = out.join(format!("{stem}.{method}.png"));
    let mut n = 2;
    while !names.insert(candidate.clone()) {
        candidate = out.join(format!("{stem}-{n}.{method}.png"));
        n += 1;
    }
    candidate
}
