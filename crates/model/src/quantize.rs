//! The int8 path's calibration: the activation ranges of a record's network, measured on
//! training images in FP32, and how often the two precisions agree.
//!
//! The kernels and the quantisation itself are `fastcnn`'s ([`fastcnn::int8`]); the ranges are
//! stored in the record ([`Int8Calibration`]) so that serving needs no images.

pub use fastcnn::Precision;

use crate::dataset::Sample;
use crate::error::RecordError;
use crate::inference::{Inference, fast_path};
use crate::net::Cnn;
use crate::preprocess::{IMAGE_FLOATS, normalize_into, resize};
use crate::record::Int8Calibration;

/// Training images calibrated on by default (`cnn calibrate --images`, and `train` at the end
/// of a run): enough for the largest activations to settle (the shipped record's ranges).
pub const CALIBRATION_IMAGES: usize = 500;

/// `n` of `samples`, evenly spread, so that every class is measured (splits are ordered class
/// by class).
pub fn spread(samples: &[Sample], n: usize) -> Vec<Sample> {
    let step = (samples.len() / n.max(1)).max(1);
    samples.iter().step_by(step).take(n).cloned().collect()
}

/// The largest activation of each quantised layer's input over `samples` (training images),
/// with no accuracy yet.
pub fn calibrate(model: &Cnn, samples: &[Sample]) -> Result<Int8Calibration, RecordError> {
    let fast = fast_path(model)?;
    let mut calibration = fastcnn::Calibration {
        conv1: 0.0,
        conv2: 0.0,
    };
    // A batch at a time: the floats of all of them at once would be 48 KiB per image.
    for chunk in samples.chunks(256) {
        let largest = fast.calibrate(&pixels(chunk));
        calibration.conv1 = calibration.conv1.max(largest.conv1);
        calibration.conv2 = calibration.conv2.max(largest.conv2);
    }
    Ok(Int8Calibration {
        conv1: calibration.conv1,
        conv2: calibration.conv2,
        images: samples.len(),
        test_accuracy: None,
    })
}

/// The share of `samples` that `a` and `b` give the same top class.
pub fn agreement(a: &Inference, b: &Inference, samples: &[Sample]) -> f64 {
    let mut same = 0usize;
    for chunk in samples.chunks(256) {
        let pixels = pixels(chunk);
        let (pa, pb) = (a.predict(&pixels, 1), b.predict(&pixels, 1));
        same += pa
            .iter()
            .zip(&pb)
            .filter(|(x, y)| x.best.class_index == y.best.class_index)
            .count();
    }
    if samples.is_empty() {
        return 1.0;
    }
    same as f64 / samples.len() as f64
}

/// The preprocessed floats of `samples`, back to back.
fn pixels(samples: &[Sample]) -> Vec<f32> {
    let mut floats = vec![0.0; samples.len() * IMAGE_FLOATS];
    for (s, out) in samples.iter().zip(floats.chunks_exact_mut(IMAGE_FLOATS)) {
        normalize_into(&resize(&s.image), out);
    }
    floats
}
