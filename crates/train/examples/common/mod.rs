//! What the validation examples share: their command line (`DATA VALID_SEED RECORD...`), the
//! hold-out `train` makes with that seed, preprocessed as training validates it, the records (on
//! the fast path, or wide teachers), and the accuracy of (summed) probabilities. Never the test set.

use anyhow::{Context, Result};
use model::dataset::{self, OnCorrupt, Sample};
use model::{Backend, IMAGE_FLOATS, NUM_CLASSES};
use train::batcher::CifarBatcher;
use train::teacher::Answers;

/// The validation hold-out of the command line's data and seed, and the records to measure.
pub struct Validation {
    /// The hold-out's seed (`train --valid-seed`).
    pub seed: u64,
    /// The records named after the seed.
    pub records: Vec<String>,
    /// The held-out images.
    pub valid: Vec<Sample>,
    /// Their normalised floats, as validation feeds them to the network.
    pub pixels: Vec<f32>,
}

impl Validation {
    /// Reads `DATA VALID_SEED RECORD...` from the command line (`usage` names the example).
    pub fn from_args(usage: &str) -> Result<Self> {
        let mut args = std::env::args().skip(1);
        let data = args
            .next()
            .with_context(|| format!("usage: {usage} DATA VALID_SEED RECORD..."))?;
        let seed: u64 = args.next().context("a validation seed")?.parse()?;
        let records = args.collect();
        let train = dataset::detect(std::path::Path::new(&data))?.train(OnCorrupt::Skip)?;
        let (_, valid) = train::run::split_valid(train.samples, 0.05, seed)?;
        let pixels = CifarBatcher::new(None, seed).pixels(&valid);
        Ok(Self {
            seed,
            records,
            valid,
            pixels,
        })
    }

    /// The share of the hold-out whose most probable class in `probs` (summed or not) is its
    /// label.
    pub fn accuracy(&self, probs: &[f32]) -> f64 {
        let right = probs
            .chunks_exact(NUM_CLASSES)
            .zip(&self.valid)
            .filter(|(p, s)| model::explain::target(None, p) == usize::from(s.label))
            .count();
        right as f64 / self.valid.len() as f64
    }
}

/// A record (file or folder): a served network's on the fast path, or a wide teacher's.
pub fn load(record: &str) -> Result<Box<dyn Answers>> {
    train::teacher::load_answers(record.as_ref(), Backend::Fast)
}

/// `net`'s probabilities for `pixels`, 256 images at a time.
pub fn probabilities(net: &dyn Answers, pixels: &[f32]) -> Vec<f32> {
    pixels
        .chunks(256 * IMAGE_FLOATS)
        .flat_map(|batch| net.probabilities(batch))
        .collect()
}
