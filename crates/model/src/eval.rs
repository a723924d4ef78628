//! Accuracy of a network on a labelled set: top-1, top-3, per class, confusion matrix.

use serde::{Deserialize, Serialize};

use crate::classes::{CLASSES, NUM_CLASSES};
use crate::dataset::Sample;
use crate::inference::Inference;
use crate::predict::{Prediction, rank_probabilities};
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
    progress: impl FnMut(usize),
) -> Evaluation {
    evaluate_probabilities(|x| model.probabilities(x), samples, batch_size, progress)
}

/// [`evaluate`] for any network that gives class probabilities (`n × classes`) for
/// preprocessed images: the teachers `train` trains, which [`Inference`] does not run.
pub fn evaluate_probabilities(
    mut probabilities: impl FnMut(&[f32]) -> Vec<f32>,
    samples: &[Sample],
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> Evaluation {
    let mut tally = Tally::new();
    for chunk in samples.chunks(batch_size.max(1)) {
        let probs = probabilities(&pixels(chunk));
        tally.add(chunk, &rank_probabilities(&probs, NUM_CLASSES, 3));
        progress(tally.images);
    }
    tally.summarise()
}

/// Two networks on the same `samples`, each batch preprocessed once for both: each one's
/// evaluation, and the share of images to which they give the same top class.
pub fn compare(
    a: &Inference,
    b: &Inference,
    samples: &[Sample],
    batch_size: usize,
) -> (Evaluation, Evaluation, f64) {
    let (mut ta, mut tb) = (Tally::new(), Tally::new());
    let mut same = 0usize;
    for chunk in samples.chunks(batch_size.max(1)) {
        let pixels = pixels(chunk);
        let (pa, pb) = (a.predict(&pixels, 3), b.predict(&pixels, 3));
        same += pa
            .iter()
            .zip(&pb)
            .filter(|(x, y)| x.best.class_index == y.best.class_index)
            .count();
        ta.add(chunk, &pa);
        tb.add(chunk, &pb);
    }
    let agreement = if samples.is_empty() {
        1.0
    } else {
        same as f64 / samples.len() as f64
    };
    (ta.summarise(), tb.summarise(), agreement)
}

/// The preprocessed floats of `samples`, back to back: what the server computes for the same
/// images.
pub(crate) fn pixels(samples: &[Sample]) -> Vec<f32> {
    let mut floats = vec![0.0; samples.len() * IMAGE_FLOATS];
    for (s, out) in samples.iter().zip(floats.chunks_exact_mut(IMAGE_FLOATS)) {
        normalize_into(&resize(&s.image), out);
    }
    floats
}

/// Counts of predictions against the truth, batch by batch.
struct Tally {
    confusion: Vec<Vec<usize>>,
    top3: usize,
    images: usize,
}

impl Tally {
    fn new() -> Self {
        Self {
            confusion: vec![vec![0usize; NUM_CLASSES]; NUM_CLASSES],
            top3: 0,
            images: 0,
        }
    }

    fn add(&mut self, samples: &[Sample], predictions: &[Prediction]) {
        for (s, p) in samples.iter().zip(predictions) {
            let truth = usize::from(s.label);
            self.confusion[truth][p.best.class_index] += 1;
            self.top3 += usize::from(p.top_k.iter().any(|r| r.class_index == truth));
        }
        self.images += samples.len();
    }

    fn summarise(self) -> Evaluation {
        summarise(self.confusion, self.top3)
    }
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
