//! The int8 path's calibration: the activation ranges of a record's network, measured on
//! training images in FP32 (how the two precisions then compare: [`crate::eval::compare`]).
//!
//! The kernels and the quantisation itself are `fastcnn`'s ([`fastcnn::int8`]); the ranges are
//! stored in the record ([`Int8Calibration`]) so that serving needs no images.

pub use fastcnn::Precision;

use crate::dataset::Sample;
use crate::error::RecordError;
use crate::eval::pixels;
use crate::inference::fast_path;
use crate::net::Cnn;
use crate::record::Int8Calibration;

/// Training images calibrated on by default (`cnn calibrate --images`, and `train` at the end
/// of a run): enough for the largest activations to settle (the shipped record's ranges).
pub const CALIBRATION_IMAGES: usize = 500;

/// `n` of `samples`, evenly spread, so that every class is measured (splits are ordered class
/// by class).
pub fn spread<T: Clone>(samples: &[T], n: usize) -> Vec<T> {
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
