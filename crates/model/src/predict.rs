//! Turning logits into ranked class predictions.

use burn::prelude::*;
use serde::Serialize;

use crate::classes::CLASSES;
use crate::net::Cnn;

/// One class with its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ranked {
    /// Class name.
    #[serde(rename = "class")]
    pub class: &'static str,
    /// Label index in [`CLASSES`].
    pub class_index: usize,
    /// Softmax probability in [0, 1].
    pub confidence: f32,
}

/// The prediction for one image: the most likely class and the `k` best.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The most likely class (the first of `top_k`).
    pub best: Ranked,
    /// The `k` most likely classes, most likely first.
    pub top_k: Vec<Ranked>,
}

/// Runs `images` (`[n, 3, 64, 64]`, preprocessed) through `model` and ranks each image's
/// classes, keeping the `k` most likely (at least one).
pub fn predict(model: &Cnn, images: Tensor<4>, k: usize) -> Vec<Prediction> {
    let logits = model.forward(images);
    let [_, classes] = logits.dims();
    rank_logits(&values(logits), classes, k)
}

/// A tensor's values as `f32`, row-major, whatever the backend's float type.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

/// Softmax of each row of `logits` (`classes` wide), ranked.
pub fn rank_logits(logits: &[f32], classes: usize, k: usize) -> Vec<Prediction> {
    rank_probabilities(&softmax(logits, classes), classes, k)
}

/// Softmax of each row of `logits` (`classes` wide): class probabilities, row-major.
pub fn softmax(logits: &[f32], classes: usize) -> Vec<f32> {
    let mut probs = logits.to_vec();
    for row in probs.chunks_exact_mut(classes.max(1)) {
        // Shift by the maximum so that exp never overflows.
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for p in row.iter_mut() {
            *p = (*p - max).exp();
            sum += *p;
        }
        for p in row.iter_mut() {
            *p /= sum;
        }
    }
    probs
}

/// Ranks each row of `probs` (`classes` wide), keeping the `k` most likely classes.
pub fn rank_probabilities(probs: &[f32], classes: usize, k: usize) -> Vec<Prediction> {
    probs
        .chunks_exact(classes.max(1))
        .map(|row| rank(row, k))
        .collect()
}

/// Ranks one row of probabilities.
pub fn rank(probs: &[f32], k: usize) -> Prediction {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Stable sort by descending probability: ties keep label order, so results are deterministic.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let top_k: Vec<Ranked> = order
        .iter()
        .take(k.clamp(1, probs.len()))
        .map(|&i| Ranked {
            class: CLASSES.get(i).copied().unwrap_or("unknown"),
            class_index: i,
            confidence: probs[i],
        })
        .collect();
    Prediction {
        best: top_k[0].clone(),
        top_k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_descending_with_stable_ties() {
        let p = rank(&[0.1, 0.3, 0.3, 0.0, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05], 3);
        let idx: Vec<_> = p.top_k.iter().map(|r| r.class_index).collect();
        assert_eq!(idx, vec![1, 2, 0]);
        assert_eq!(p.best.class, "automobile");
        assert_eq!(rank(&[0.5; 10], 0).top_k.len(), 1);
        assert_eq!(rank(&[0.5; 10], 99).top_k.len(), 10);
    }

    #[test]
    fn softmax_of_logits_sums_to_one_and_survives_large_values() {
        let preds = rank_logits(
            &[1000.0, 0.0, 999.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            10,
            10,
        );
        assert_eq!(preds.len(), 1);
        let p = &preds[0];
        let sum: f32 = p.top_k.iter().map(|r| r.confidence).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        assert_eq!(p.best.class_index, 0);
        let e = std::f32::consts::E;
        assert!((p.best.confidence - e / (e + 1.0)).abs() < 1e-5);
        assert_eq!(p.top_k[1].class_index, 2);
    }
}
