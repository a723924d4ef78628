//! Validation accuracy of records under test-time augmentations made on the preprocessed
//! 64×64 image (what a server can do to any upload), on the hold-out of `--valid-seed`, never
//! on the test set (issue #30): the image alone, with its mirror ([`Tta::Flip`]), and the
//! mirror with shifted copies of both — [`Tta::Crops`]'s shift of 4 px and the candidates it was
//! chosen over.
//!
//!     cargo run --release -p train --example tta -- data/cifar10 42 RECORD...

use anyhow::{Context, Result};
use model::dataset::{self, OnCorrupt};
use model::inference::shifted;
use model::preprocess::{IMAGE_FLOATS, normalize_into, resize};
use model::{Backend, Inference, NUM_CLASSES, Tta};

/// A named set of views: (shift right, shift down, mirrored).
type Views = (String, Vec<(isize, isize, bool)>);

/// The image and its mirror at the centre and at `offsets`.
fn with_mirrors(name: &str, offsets: &[(isize, isize)]) -> Views {
    let views = [(0, 0)]
        .iter()
        .chain(offsets)
        .flat_map(|&(x, y)| [(x, y, false), (x, y, true)])
        .collect();
    (name.to_string(), views)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let data = args
        .next()
        .context("usage: tta DATA VALID_SEED RECORD...")?;
    let seed: u64 = args.next().context("a validation seed")?.parse()?;
    let records: Vec<String> = args.collect();
    let layout = dataset::detect(std::path::Path::new(&data))?;
    let train = layout.train(OnCorrupt::Skip)?;
    let (_, valid) = train::run::split_valid(train.samples, 0.05, seed)?;
    let mut pixels = vec![0.0f32; valid.len() * IMAGE_FLOATS];
    for (s, out) in valid.iter().zip(pixels.chunks_exact_mut(IMAGE_FLOATS)) {
        normalize_into(&resize(&s.image), out);
    }
    let mut sets: Vec<Views> = Tta::ALL
        .iter()
        .map(|t| (format!("{t}"), t.views().to_vec()))
        .collect();
    let plus = |s: isize| [(s, 0), (-s, 0), (0, s), (0, -s)];
    sets.push(with_mirrors("flip x plus 2 px", &plus(2)));
    sets.push(with_mirrors("flip x plus 1 px", &plus(1)));
    sets.push(with_mirrors(
        "flip x diagonals 2 px",
        &[(2, 2), (-2, -2), (2, -2), (-2, 2)],
    ));
    for record in &records {
        let loaded = model::record::load_file(record.as_ref(), &Backend::Fast.device())?;
        let net = Inference::new(loaded.model, Backend::Fast)?;
        for (name, views) in &sets {
            let started = std::time::Instant::now();
            let mut sum = vec![0.0f32; valid.len() * NUM_CLASSES];
            for &(dx, dy, flip) in views {
                let view = shifted(&pixels, dx, dy, flip);
                let probs = view
                    .chunks(256 * IMAGE_FLOATS)
                    .flat_map(|batch| net.probabilities(batch));
                for (s, p) in sum.iter_mut().zip(probs) {
                    *s += p;
                }
            }
            let right = sum
                .chunks_exact(NUM_CLASSES)
                .zip(&valid)
                .filter(|(p, s)| model::explain::target(None, p) == usize::from(s.label))
                .count();
            println!(
                "{record} {name:>22} ({:>2} views): validation {:.2}%, {:.2} s",
                views.len(),
                right as f64 * 100.0 / valid.len() as f64,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
