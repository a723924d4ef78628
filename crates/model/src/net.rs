//! The network: the course project's CNN, layer for layer, built from the one definition of
//! its dimensions ([`arch`]).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;

pub use fastcnn::arch;
pub use fastcnn::arch::{INPUT_SIZE, PARAMETER_COUNT};

/// The architecture's name in the original project, reported by `/model/info`.
pub const ARCHITECTURE: &str = "SimpleCNN";

/// The CNN: conv(3→16) → ReLU → pool → conv(16→32) → ReLU → pool → fc(8192→100) → ReLU →
/// fc(100→10). Field names follow the original PyTorch model so weights map one to one.
///
/// The architecture is fixed (the product's premise), so it has no config to vary: every
/// dimension comes from [`arch`], which the record check, the fast path and `/model/info`
/// read too.
#[derive(Module, Debug)]
pub struct Cnn {
    /// First convolution: RGB to 16 feature maps (3×3, padding 1), at 64×64.
    pub conv1: Conv2d,
    /// Second convolution: 16 to 32 feature maps (3×3, padding 1), at 32×32.
    pub conv2: Conv2d,
    /// Hidden layer: the flattened 32×16×16 feature map to 100 units.
    pub fc1: Linear,
    /// Output layer: 100 hidden units to one logit per class.
    pub fc2: Linear,
    pool: MaxPool2d,
    relu: Relu,
}

impl Cnn {
    /// A freshly initialised network on `device`.
    pub fn init(device: &Device) -> Self {
        let conv = |i, o| {
            let p = arch::PADDING;
            Conv2dConfig::new([i, o], [arch::KERNEL, arch::KERNEL])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .init(device)
        };
        Cnn {
            conv1: conv(arch::INPUT_CHANNELS, arch::CONV1_CHANNELS),
            conv2: conv(arch::CONV1_CHANNELS, arch::CONV2_CHANNELS),
            fc1: LinearConfig::new(arch::FLAT_FEATURES, arch::HIDDEN).init(device),
            fc2: LinearConfig::new(arch::HIDDEN, arch::CLASSES).init(device),
            pool: MaxPool2dConfig::new([arch::POOL, arch::POOL])
                .with_strides([arch::POOL, arch::POOL])
                .init(),
            relu: Relu::new(),
        }
    }

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
        self.head(self.features_with(images, fused))
    }

    /// The pooled output of the second convolution block, `[batch, 32, 16, 16]`: what the
    /// classifier head reads, and what Grad-CAM weighs ([`crate::explain`]).
    pub fn features(&self, images: Tensor<4>) -> Tensor<4> {
        self.features_with(images, true)
    }

    /// The classifier head: fc1 → ReLU → fc2 on [`Cnn::features`], giving logits.
    pub fn head(&self, features: Tensor<4>) -> Tensor<2> {
        let x: Tensor<2> = features.flatten(1, 3);
        let x = self.relu.forward(self.fc1.forward(x));
        self.fc2.forward(x)
    }

    fn features_with(&self, images: Tensor<4>, fused: bool) -> Tensor<4> {
        let x = conv_block(&self.conv1, &self.pool, &self.relu, images, fused);
        conv_block(&self.conv2, &self.pool, &self.relu, x, fused)
    }
}

impl Network for Cnn {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        Cnn::forward(self, images)
    }
}

/// What training needs of a network: logits `[batch, 10]` for normalised images
/// `[batch, 3, 64, 64]`. The served [`Cnn`] and the teachers ([`crate::teacher`]) both train
/// through it.
pub trait Network:
    Module + burn::module::ModuleDisplay + Clone + core::fmt::Debug + Send + 'static
{
    /// Logits for a batch of images.
    fn forward(&self, images: Tensor<4>) -> Tensor<2>;
}

/// conv → ReLU → 2×2 max-pool: one fused op where [`crate::fused`] applies and `fused` asks for
/// it, Burn's generic ops otherwise.
pub(crate) fn conv_block(
    conv: &Conv2d,
    pool: &MaxPool2d,
    relu: &Relu,
    x: Tensor<4>,
    fused: bool,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if fused && let Some(y) = crate::fused::conv_relu_pool(conv, pool, &x) {
        return y;
    }
    #[cfg(not(feature = "flex"))]
    let _ = fused;
    pool.forward(relu.forward(conv.forward(x)))
}

/// The layers in one line, `→` between them (for `cnn info`).
pub fn summary() -> String {
    arch::layers().join(" → ")
}

#[cfg(test)]
mod tests {
    use burn::module::{ModuleVisitor, Param};

    use super::*;

    #[test]
    fn the_module_has_the_defined_tensors() {
        struct Shapes(Vec<Vec<usize>>);
        impl ModuleVisitor for Shapes {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.push(param.val().dims().to_vec());
            }
        }
        let device = crate::Backend::default().device();
        let net = Cnn::init(&device);
        assert_eq!(net.num_params(), PARAMETER_COUNT);
        let mut shapes = Shapes(Vec::new());
        net.visit(&mut shapes);
        let defined: Vec<Vec<usize>> = arch::TENSORS.iter().map(|(_, s)| s.to_vec()).collect();
        assert_eq!(shapes.0, defined);
        let x = Tensor::<4>::zeros([2, 3, INPUT_SIZE, INPUT_SIZE], &device);
        assert_eq!(net.forward(x).dims(), [2, arch::CLASSES]);
    }
}
