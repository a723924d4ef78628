//! The picture in README.md and docs/explanations.md: test images of five classes (rows), each
//! as the model sees it and then under each method's heatmap (columns: Grad-CAM, occlusion,
//! gradient × input, integrated gradients), for the class the shipped record predicts.
//!
//!     cargo build --workspace --examples && target/debug/examples/gallery docs/images/explanations.png

use model::explain::{self, Explainer, Method};
use model::{Backend, Inference, Preprocessor, testdata};

const TILE: u32 = 128;
const GAP: u32 = 4;

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "explanations.png".into());
    let backend = Backend::default_inference();
    let (net, _) = model::record::load_shipped(&backend.device()).expect("the shipped record");
    let explainer = Explainer::new(&net).expect("explainer");
    let inference = Inference::new(net, backend).expect("inference");
    let classes = ["airplane", "cat", "horse", "ship", "truck"];
    let images: Vec<_> = testdata::images("test", 1)
        .into_iter()
        .filter(|i| classes.contains(&i.class.as_str()))
        .collect();
    let columns = 1 + Method::ALL.len() as u32;
    let mut sheet = image::RgbImage::from_pixel(
        columns * (TILE + GAP) - GAP,
        images.len() as u32 * (TILE + GAP) - GAP,
        image::Rgb([255, 255, 255]),
    );
    for (row, img) in images.iter().enumerate() {
        let x = Preprocessor::default()
            .preprocess(&img.bytes)
            .expect("decodes");
        let probabilities = inference.probabilities(&x);
        let target = explain::target(None, &probabilities);
        println!(
            "row {row}: {} predicted {} ({:.0}%)",
            img.path,
            model::CLASSES[target],
            probabilities[target] * 100.0
        );
        let seen = explain::enlarged(&x, TILE);
        let mut tiles = vec![seen.clone()];
        for method in Method::ALL {
            let map = explainer.explain(method, &x, target, explain::DEFAULT_STEPS);
            tiles.push(explain::overlay(&seen, &explain::heat(&map)));
        }
        for (col, tile) in tiles.iter().enumerate() {
            let (px, py) = (col as u32 * (TILE + GAP), row as u32 * (TILE + GAP));
            image::imageops::replace(&mut sheet, tile, i64::from(px), i64::from(py));
        }
    }
    sheet.save(&out).expect("write the picture");
    println!("wrote {out}");
}
