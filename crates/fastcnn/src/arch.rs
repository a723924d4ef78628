//! The network's fixed dimensions: the one definition that every crate builds from.
//!
//! They live here, in the workspace's lowest crate, because the fast path compiles its kernels
//! for these sizes (constant loop bounds let the compiler unroll and vectorise them), and every
//! other crate reaches them through `model`: the Burn module is built from them, the record
//! check and `/model/info` describe them, the training kernels assume them.

/// Side of the square RGB input, in pixels.
pub const INPUT_SIZE: usize = 64;
/// Colour channels of the input.
pub const INPUT_CHANNELS: usize = 3;
/// Output channels of the first convolution.
pub const CONV1_CHANNELS: usize = 16;
/// Output channels of the second convolution.
pub const CONV2_CHANNELS: usize = 32;
/// Side of both convolutions' square kernels (stride 1, zero padding [`PADDING`]).
pub const KERNEL: usize = 3;
/// Zero padding of both convolutions: `KERNEL / 2` keeps the side.
pub const PADDING: usize = KERNEL / 2;
/// Side and stride of both max-pools.
pub const POOL: usize = 2;
/// Width of the hidden fully connected layer.
pub const HIDDEN: usize = 100;
/// Classes the network tells apart.
pub const CLASSES: usize = 10;
/// Floats in one preprocessed image (channel-major).
pub const IMAGE_FLOATS: usize = INPUT_CHANNELS * INPUT_SIZE * INPUT_SIZE;
/// Side of the feature map after both pools.
pub const FEATURE_SIZE: usize = INPUT_SIZE / (POOL * POOL);
/// Width of the flattened feature map fed to the hidden layer.
pub const FLAT_FEATURES: usize = CONV2_CHANNELS * FEATURE_SIZE * FEATURE_SIZE;

/// Every parameter tensor, named as in the original PyTorch model and in the record, with its
/// shape in Burn's layout (`Linear` weights are `[in, out]`, the transpose of PyTorch's).
pub const TENSORS: [(&str, &[usize]); 8] = [
    (
        "conv1.weight",
        &[CONV1_CHANNELS, INPUT_CHANNELS, KERNEL, KERNEL],
    ),
    ("conv1.bias", &[CONV1_CHANNELS]),
    (
        "conv2.weight",
        &[CONV2_CHANNELS, CONV1_CHANNELS, KERNEL, KERNEL],
    ),
    ("conv2.bias", &[CONV2_CHANNELS]),
    ("fc1.weight", &[FLAT_FEATURES, HIDDEN]),
    ("fc1.bias", &[HIDDEN]),
    ("fc2.weight", &[HIDDEN, CLASSES]),
    ("fc2.bias", &[CLASSES]),
];

/// Trainable parameters: the sum of [`TENSORS`]' sizes (825,398).
pub const PARAMETER_COUNT: usize = {
    let mut total = 0;
    let mut i = 0;
    while i < TENSORS.len() {
        let shape = TENSORS[i].1;
        let mut size = 1;
        let mut d = 0;
        while d < shape.len() {
            size *= shape[d];
            d += 1;
        }
        total += size;
        i += 1;
    }
    total
};

/// The layers in order, one line each, in the notation of PyTorch's module printout.
pub fn layers() -> Vec<String> {
    let conv = |i, o| format!("Conv2d({i},{o},k={KERNEL},s=1,p={PADDING})");
    let pool = format!("MaxPool2d({POOL},{POOL})");
    vec![
        conv(INPUT_CHANNELS, CONV1_CHANNELS),
        "ReLU".into(),
        pool.clone(),
        conv(CONV1_CHANNELS, CONV2_CHANNELS),
        "ReLU".into(),
        pool,
        "Flatten".into(),
        format!("Linear({FLAT_FEATURES},{HIDDEN})"),
        "ReLU".into(),
        format!("Linear({HIDDEN},{CLASSES})"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_course_projects_network() {
        assert_eq!(PARAMETER_COUNT, 825_398);
        assert_eq!(FLAT_FEATURES, 8192);
        assert_eq!(layers()[0], "Conv2d(3,16,k=3,s=1,p=1)");
        assert_eq!(layers()[7], "Linear(8192,100)");
    }
}
