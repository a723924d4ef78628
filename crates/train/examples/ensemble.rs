//! Validation accuracy of records alone and of their mean probabilities (an ensemble: a
//! candidate teacher for distillation, issue #30), on the validation hold-out `train` makes with
//! `--valid-seed` (default 42, the shipped record's), never on the test set.
//!
//!     cargo run --release -p train --example ensemble -- data/cifar10 42 RECORD...

use anyhow::{Context, Result};
use model::dataset::{self, OnCorrupt};
use model::preprocess::{IMAGE_FLOATS, normalize_into, resize};
use model::{Backend, Inference, NUM_CLASSES};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let data = args
        .next()
        .context("usage: ensemble DATA VALID_SEED RECORD...")?;
    let seed: u64 = args.next().context("a validation seed")?.parse()?;
    let records: Vec<String> = args.collect();
    let layout = dataset::detect(std::path::Path::new(&data))?;
    let train = layout.train(OnCorrupt::Skip)?;
    let (_, valid) = train::run::split_valid(train.samples, 0.05, seed)?;
    let mut pixels = vec![0.0f32; valid.len() * IMAGE_FLOATS];
    for (s, out) in valid.iter().zip(pixels.chunks_exact_mut(IMAGE_FLOATS)) {
        normalize_into(&resize(&s.image), out);
    }
    let accuracy = |probs: &[f32]| {
        let right = probs
            .chunks_exact(NUM_CLASSES)
            .zip(&valid)
            .filter(|(p, s)| model::explain::target(None, p) == usize::from(s.label))
            .count();
        right as f64 / valid.len() as f64
    };
    let mut sum = vec![0.0f32; valid.len() * NUM_CLASSES];
    for (k, record) in records.iter().enumerate() {
        let loaded = model::record::load_file(record.as_ref(), &Backend::Fast.device())?;
        let net = Inference::new(loaded.model, Backend::Fast)?;
        let probs: Vec<f32> = pixels
            .chunks(256 * IMAGE_FLOATS)
            .flat_map(|batch| net.probabilities(batch))
            .collect();
        for (s, p) in sum.iter_mut().zip(&probs) {
            *s += p;
        }
        println!(
            "{record}: validation {:.2}% ; ensemble of the first {}: {:.2}% ({} images, hold-out seed {seed})",
            accuracy(&probs) * 100.0,
            k + 1,
            accuracy(&sum) * 100.0,
            valid.len()
        );
    }
    Ok(())
}
