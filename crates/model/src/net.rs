//! The network: the course project's CNN, layer for layer.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;

use crate::classes::NUM_CLASSES;

/// Side of the square RGB input, in pixels.
pub const INPUT_SIZE: usize = 64;

/// Trainable parameters of the network; fixed by the architecture.
pub const PARAMETER_COUNT: usize = 825_398;

/// Width of the flattened feature map fed to `fc1`: 32 channels of 16×16.
const FLAT_FEATURES: usize = 32 * (INPUT_SIZE / 4) * (INPUT_SIZE / 4);

/// The CNN: conv(3→16) → ReLU → pool → conv(16→32) → ReLU → pool → fc(8192→100) → ReLU →
/// fc(100→10). Field names follow the original PyTorch model so weights map one to one.
#[derive(Module, Debug)]
pub struct Cnn {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc1: Linear,
    pub fc2: Linear,
    pool: MaxPool2d,
    relu: Relu,
}

/// Configuration of [`Cnn`]. The architecture is fixed; only the class count is exposed so
/// that the config is self-describing when saved next to a run.
#[derive(Config, Debug)]
pub struct CnnConfig {
    #[config(default = 10)]
    pub num_classes: usize,
    #[config(default = 100)]
    pub hidden: usize,
}

impl Default for CnnConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl CnnConfig {
    /// A freshly initialised network on `device`.
    pub fn init(&self, device: &Device) -> Cnn {
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Cnn {
            conv1: conv(3, 16),
            conv2: conv(16, 32),
            fc1: LinearConfig::new(FLAT_FEATURES, self.hidden).init(device),
            fc2: LinearConfig::new(self.hidden, self.num_classes).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            relu: Relu::new(),
        }
    }
}

impl Cnn {
    /// Logits `[batch, 10]` for normalised images `[batch, 3, 64, 64]`. On a Flex device each
    /// convolution block runs as one fused op with a hand-written backward ([`crate::fused`]);
    /// elsewhere (wgpu, ndarray) as Burn's generic ops.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with(images, true)
    }

    /// [`Cnn::forward`] with Burn's generic ops on every device: the reference the fused op is
    /// tested against.
    pub fn forward_unfused(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with(images, false)
    }

    fn forward_with(&self, images: Tensor<4>, fused: bool) -> Tensor<2> {
        let x = self.conv_block(&self.conv1, images, fused);
        let x = self.conv_block(&self.conv2, x, fused);
        let x: Tensor<2> = x.flatten(1, 3);
        let x = self.relu.forward(self.fc1.forward(x));
        self.fc2.forward(x)
    }

    /// conv → ReLU → 2×2 max-pool.
    fn conv_block(&self, conv: &Conv2d, x: Tensor<4>, fused: bool) -> Tensor<4> {
        #[cfg(feature = "flex")]
        if fused && let Some(y) = crate::fused::conv_relu_pool(conv, &self.pool, &x) {
            return y;
        }
        #[cfg(not(feature = "flex"))]
        let _ = fused;
        self.pool.forward(self.relu.forward(conv.forward(x)))
    }
}

/// Default config with the CIFAR-10 class count.
pub fn default_config() -> CnnConfig {
    CnnConfig::new().with_num_classes(NUM_CLASSES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_and_output_shape() {
        let device = crate::Backend::default().device();
        let net = default_config().init(&device);
        assert_eq!(net.num_params(), PARAMETER_COUNT);
        let x = Tensor::<4>::zeros([2, 3, INPUT_SIZE, INPUT_SIZE], &device);
        assert_eq!(net.forward(x).dims(), [2, NUM_CLASSES]);
    }
}
