//! Accuracy of a network on a labelled set: top-1, top-3, per class, confusion matrix.

use serde::{Deserialize, Serialize};

use crate::classes::{CLASSES, NUM_CLASSES};
use crate::dataset::Sample;
use crate::inference::Inference;
use crate::preprocess::{IMAGE_FLOATS, normalize_into, resize};

/// The result of [`evaluate`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    /// Images evaluated: what the top-1 and top-3 accuracies are shares of.
    pub images: usize,
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Top-3 accuracy in [0, 1].
    pub top3_accuracy: f64,
    /// Accuracy of each class in label order, `None` where the set has no image of it.
    pub per_class: Vec<(String, Option<f64>)>,
    /// `confusion[truth][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Evaluates `model` on `samples` in batches of `batch_size`, calling `progress` with the
/// number of images done after each batch.
pub fn evaluate(
    model: &Inference,
    samples: &[Sample],
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> Evaluation {
    let mut confusion = vec![vec![0usize; NUM_CLASSES]; NUM_CLASSES];
    let mut top3 = 0usize;
    let mut done = 0usize;
    for chunk in samples.chunks(batch_size.max(1)) {
        let mut floats = vec![0.0; chunk.len() * IMAGE_FLOATS];
        for (s, out) in chunk.iter().zip(floats.chunks_exact_mut(IMAGE_FLOATS)) {
            normalize_into(&resize(&s.image), out);
        }
        let preds = model.predict(&floats, 3);
        for (s, p) in chunk.iter().zip(preds) {
            let truth = usize::from(s.label);
            confusion[truth][p.best.class_index] += 1;
            top3 += usize::from(p.top_k.iter().any(|r| r.class_index == truth));
        }
        done += chunk.len();
        progress(done);
    }
    summarise(confusion, top3)
}

fn summarise(confusion: Vec<Vec<usize>>, top3: usize) -> Evaluation {
    let images: usize = confusion.iter().flatten().sum();
    let correct: usize = (0..NUM_CLASSES).map(|i| confusion[i][i]).sum();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class = CLASSES
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let total: usize = confusion[i].iter().sum();
            (
                c.to_string(),
                (total > 0).then(|| ratio(confusion[i][i], total)),
            )
        })
        .collect();
    Evaluation {
        images,
        accuracy: ratio(correct, images),
        top3_accuracy: ratio(top3, images),
        per_class,
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts() {
        let mut m = vec![vec![0; NUM_CLASSES]; NUM_CLASSES];
        m[0][0] = 3;
        m[0][1] = 1;
        m[2][2] = 4;
        let e = summarise(m, 8);
        assert_eq!(e.images, 8);
        assert!((e.accuracy - 7.0 / 8.0).abs() < 1e-12);
        assert_eq!(e.per_class[0].1, Some(0.75));
        assert_eq!(e.per_class[1].1, None);
        assert_eq!(e.top3_accuracy, 1.0);
    }
}
