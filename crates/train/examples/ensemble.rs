//! Validation accuracy of records alone and of their mean probabilities (an ensemble: a
//! candidate teacher for distillation, issue #30), on the validation hold-out `train` makes with
//! `--valid-seed` (default 42, the shipped record's), never on the test set.
//!
//!     cargo run --release -p train --example ensemble -- data/cifar10 42 RECORD...

mod common;

use anyhow::Result;
use common::{Validation, load, probabilities};

fn main() -> Result<()> {
    let v = Validation::from_args("ensemble")?;
    let mut sum = vec![0.0f32; v.valid.len() * model::NUM_CLASSES];
    for (k, record) in v.records.iter().enumerate() {
        let probs = probabilities(&*load(record)?, &v.pixels);
        for (s, p) in sum.iter_mut().zip(&probs) {
            *s += p;
        }
        println!(
            "{record}: validation {:.2}% ; ensemble of the first {}: {:.2}% ({} images, hold-out seed {})",
            v.accuracy(&probs) * 100.0,
            k + 1,
            v.accuracy(&sum) * 100.0,
            v.valid.len(),
            v.seed
        );
    }
    Ok(())
}
