//! The convolution blocks (3×3 conv, stride 1, padding 1 → bias → ReLU → 2×2 max-pool) as one
//! Burn op on the Flex CPU backend, with a hand-written backward.
//!
//! Burn's generic path runs the block as four ops, and burn-flex implements none of the
//! convolution backward ops: the input gradient becomes a transposed convolution and the weight
//! gradient a convolution whose kernel is the whole gradient map, with fresh zero-filled buffers
//! each step. Here the forward is im2col + one GEMM + a fused bias/ReLU/pool pass that keeps one
//! byte per output (which window position won, or that ReLU cut it), and the backward is a sum
//! over those winners, the only outputs a gradient reaches (the input's part only when the
//! input needs a gradient: never for the images). The kernels live in `fastcnn::train`; this module is the Burn glue: a backend
//! extension for `Flex` (inference, validation) and `Autodiff<Flex>` (training).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Flex, TensorData, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::prelude::*;
use fastcnn::train::{self as kernels, Block};

/// `x [N, C, H, H] (H even), weight [O, C, 3, 3], bias [O] → [N, O, H/2, H/2]`.
#[backend_extension(Flex, Autodiff)]
pub trait ConvReluPoolBackend: Backend {
    /// One convolution block as a single op: 3×3 convolution (stride 1, padding 1) plus bias,
    /// ReLU, then 2×2 max-pool (stride 2). Under autodiff it keeps one argmax byte per output
    /// for the hand-written backward instead of the four ops' intermediate tensors.
    fn conv3x3_relu_pool2(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// `relu(conv(x) + b)` pooled, through the fused op when it applies (a Flex device, f32, and
/// the block's exact configuration); `None` otherwise, and the caller runs Burn's generic ops.
pub fn conv_relu_pool(conv: &Conv2d, pool: &MaxPool2d, x: &Tensor<4>) -> Option<Tensor<4>> {
    let [_, channels, h, w] = x.dims();
    let bias = conv.bias.as_ref()?;
    let [_, cin, kh, kw] = conv.weight.dims();
    let applies = x.device() == Device::flex()
        && x.dtype() == DType::F32
        && [kh, kw] == [3, 3]
        && cin == channels
        && conv.kernel_size == [3, 3]
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && conv.padding == PaddingConfig2d::Explicit(1, 1, 1, 1)
        && pool.kernel_size == [2, 2]
        && pool.stride == [2, 2]
        && pool.padding == PaddingConfig2d::Valid
        && pool.dilation == [1, 1]
        && !pool.ceil_mode
        && h == w
        && h % 2 == 0;
    if !applies {
        return None;
    }
    let out = <burn::backend::Dispatch as ConvReluPoolBackend>::conv3x3_relu_pool2(
        x.clone().into_dispatch(),
        conv.weight.val().into_dispatch(),
        bias.val().into_dispatch(),
    );
    Some(Tensor::from_dispatch(out))
}

/// A contiguous f32 tensor (the incoming gradient may be a strided view).
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    }
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("a contiguous f32 tensor (checked before the op)")
}

fn dims<const D: usize>(t: &FlexTensor) -> [usize; D] {
    let shape = t.layout().shape();
    std::array::from_fn(|i| shape[i])
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn block(x: &FlexTensor, weight: &FlexTensor) -> Block {
    let [batch, cin, size, _] = dims::<4>(x);
    let [cout, ..] = dims::<4>(weight);
    Block {
        batch,
        cin,
        cout,
        size,
    }
}

fn output_shape(b: Block) -> [usize; 4] {
    [b.batch, b.cout, b.size / 2, b.size / 2]
}

/// The forward alone: no gradient will be asked for (inference, validation, test).
impl ConvReluPoolBackend for Flex {
    fn conv3x3_relu_pool2(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
        let b = block(&x, &weight);
        let (out, _) = kernels::forward(b, values(&x), values(&weight), values(&bias));
        tensor(out, output_shape(b))
    }
}

/// What the backward needs: the input and weights (shared, not copied) and one byte per output.
#[derive(Clone)]
struct Saved {
    x: FlexTensor,
    weight: FlexTensor,
    argmax: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved")
            .field("x", &dims::<4>(&self.x))
            .field("weight", &dims::<4>(&self.weight))
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct ConvReluPoolBackward;

impl Backward<Flex, 3> for ConvReluPoolBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, weight_node, bias_node] = ops.parents;
        let dout = contiguous(grads.consume::<Flex>(&ops.node));
        let saved = ops.state;
        let b = block(&saved.x, &saved.weight);
        let (dx, dweight, dbias) = kernels::backward(
            b,
            values(&saved.x),
            values(&saved.weight),
            &saved.argmax,
            values(&dout),
            x_node.is_some(),
        );
        if let (Some(node), Some(dx)) = (x_node, dx) {
            grads.register::<Flex>(node.id, tensor(dx, dims::<4>(&saved.x)));
        }
        if let Some(node) = weight_node {
            grads.register::<Flex>(node.id, tensor(dweight, dims::<4>(&saved.weight)));
        }
        if let Some(node) = bias_node {
            grads.register::<Flex>(node.id, tensor(dbias, [b.cout]));
        }
    }
}

impl<C: CheckpointStrategy> ConvReluPoolBackend for Autodiff<Flex, C> {
    fn conv3x3_relu_pool2(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (weight, weight_node) = weight.into_parts();
        let (bias, bias_node) = bias.into_parts();
        // Compute-bound, with what the backward needs kept in its state: nothing is recomputed
        // under either checkpointing strategy.
        match ConvReluPoolBackward
            .prepare::<C>([x_node, weight_node, bias_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
                let b = block(&x, &weight);
                let (out, argmax) = kernels::forward(b, values(&x), values(&weight), values(&bias));
                let saved = Saved {
                    x,
                    weight,
                    argmax: Arc::new(argmax),
                };
                prep.finish(saved, tensor(out, output_shape(b)))
            }
            OpsKind::UnTracked(prep) => prep.finish(
                <Flex as ConvReluPoolBackend>::conv3x3_relu_pool2(x, weight, bias),
            ),
        }
    }
}
