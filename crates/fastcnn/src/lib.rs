//! A CPU fast path for the forward pass of the CIFAR-10 CNN
//! (conv 3→16 → ReLU → pool → conv 16→32 → ReLU → pool → fc 8192→hidden → ReLU → fc → classes),
//! and the home of the network's dimensions ([`arch`]).
//!
//! Burn's CPU backend spends most of this small network's time outside matrix multiplication
//! (layout conversions, per-tile dispatch, separate passes for bias, ReLU and pooling). Here
//! each block is one kernel shaped for its sizes, with bias, ReLU and the 2×2 max-pool applied
//! in registers: the first convolution is direct (`direct.rs`: 16 output channels per register,
//! 27 taps), the second is Winograd F(2×2, 3×3) (`winograd.rs`: 2.25× fewer multiplications, and
//! each 2×2 output patch is a pooling window). Weights are reordered once, at construction. The
//! kernels are written once over a `Simd` trait (`simd.rs`) and compiled for AVX-512, AVX2 + FMA and scalar
//! code, chosen at run time. The fully connected layers are `gemm` calls: for a batch, once
//! over all its images so that fc1's 3.3 MB of weights are read once; for one image, half the
//! features on each core. The images of a batch are spread over rayon's threads.
//!
//! The crate knows nothing about Burn: it takes plain weight arrays in Burn's (and PyTorch's)
//! layouts. The `model` crate builds it from the one network definition and tests its logits
//! against the reference backend; the tests here check each kernel against naive loops.
//!
//! [`train`] has the forward and backward of one convolution block (conv → bias → ReLU → pool)
//! for training, matching Burn's semantics down to how pooling breaks ties; its backward
//! (`sparse.rs`) sums over the pool's winners only.

use std::cell::RefCell;
use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

pub mod arch;
mod direct;
pub mod int8;
mod simd;
mod sparse;
pub mod train;
mod winograd;

pub use arch::{IMAGE_FLOATS, INPUT_SIZE};
pub use simd::Isa;

use simd::dispatch;

const C0: usize = arch::INPUT_CHANNELS;
const C1: usize = arch::CONV1_CHANNELS;
const C2: usize = arch::CONV2_CHANNELS;
const S1: usize = INPUT_SIZE; // conv1 works at 64×64
const S2: usize = INPUT_SIZE / arch::POOL; // conv2 at 32×32
const FEATURES: usize = arch::FLAT_FEATURES;
// The im2col and pooling loops below are written out for these (`9` is a 3×3 kernel's taps).
const _: () = assert!(arch::KERNEL == 3 && arch::PADDING == 1 && arch::POOL == 2);

/// The network's parameters, each flattened row-major in Burn's layout: conv weights
/// `[out, in, 3, 3]`, linear weights `[in, out]` (the transpose of PyTorch's), biases `[out]`.
#[derive(Debug, Clone)]
pub struct Weights {
    /// First convolution's kernels, `[16, 3, 3, 3]`: RGB input to 16 feature maps.
    pub conv1_weight: Vec<f32>,
    /// First convolution's bias, one per output channel (`[16]`).
    pub conv1_bias: Vec<f32>,
    /// Second convolution's kernels, `[32, 16, 3, 3]`.
    pub conv2_weight: Vec<f32>,
    /// Second convolution's bias, one per output channel (`[32]`).
    pub conv2_bias: Vec<f32>,
    /// Hidden layer's weights, `[8192, hidden]`: the flattened feature map to the hidden units.
    pub fc1_weight: Vec<f32>,
    /// Hidden layer's bias; its length sets the hidden width.
    pub fc1_bias: Vec<f32>,
    /// Output layer's weights, `[hidden, classes]`.
    pub fc2_weight: Vec<f32>,
    /// Output layer's bias; its length sets the number of classes (logits per image).
    pub fc2_bias: Vec<f32>,
}

/// A weight array does not have the size the architecture needs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name} has {got} values, the architecture needs {expected}")]
pub struct ShapeError {
    /// The parameter, as named in the record (`"conv1.weight"`, `"fc2.bias"`, ...).
    pub name: &'static str,
    /// Values the architecture (and the hidden width and class count) call for.
    pub expected: usize,
    /// Values the array has.
    pub got: usize,
}

/// The network, ready to run: weights reordered once for the kernels.
#[derive(Debug, Clone)]
pub struct FastCnn {
    isa: Isa,
    /// `[27 taps][16]` (see [`direct::pack_weights`]).
    conv1_weight: Vec<f32>,
    conv1_bias: Vec<f32>,
    /// As given, `[32][16][3][3]`: the int8 path quantises it.
    conv2_weight: Vec<f32>,
    /// Winograd-transformed, `[16][16][32]` (see [`winograd::transform_weights`]).
    conv2_u: Vec<f32>,
    conv2_bias: Vec<f32>,
    /// Rows permuted to the channel-last feature order the second block writes.
    fc1_weight: Vec<f32>,
    fc1_bias: Vec<f32>,
    fc2_weight: Vec<f32>,
    fc2_bias: Vec<f32>,
    hidden: usize,
    classes: usize,
    /// The int8 path's weights and scales, once [`FastCnn::quantized`].
    int8: Option<Box<Int8>>,
}

/// The arithmetic the second block and the hidden layer run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats throughout.
    Fp32,
    /// 8-bit weights and activations in the second block and the hidden layer ([`int8`]).
    Int8,
}

impl Precision {
    /// `"fp32"` or `"int8"`, as the command lines and `/model/info` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "int8" => Ok(Self::Int8),
            other => Err(format!("unknown precision {other:?} (fp32 or int8)")),
        }
    }
}

/// The largest value each quantised activation takes on calibration images: the `u8` scales
/// are these over 255. The first block's pooled output feeds the second block, the second's
/// the hidden layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Largest output of the first block (after ReLU and pooling).
    pub conv1: f32,
    /// Largest output of the second block.
    pub conv2: f32,
}

/// The quantised weights and the scales that connect them.
#[derive(Debug, Clone)]
struct Int8 {
    calibration: Calibration,
    /// 255 over the first block's largest output: floats to `u8` steps.
    conv1_inverse_scale: f32,
    /// Packed by [`int8::pack_conv`].
    conv2_weight: Vec<i8>,
    /// Per output channel: `u8` output steps per unit of the integer sum, and the bias in
    /// output steps.
    conv2_m: Vec<f32>,
    conv2_c: Vec<f32>,
    /// Packed by [`int8::pack_linear`].
    fc1_weight: Vec<i8>,
    /// Per hidden unit: the float value of one unit of the integer sum.
    fc1_scale: Vec<f32>,
}

impl FastCnn {
    /// Checks every array's size; the hidden width and class count come from the biases. The
    /// kernels run on the widest instruction set the CPU has ([`Isa::detect`]), in FP32.
    pub fn new(w: Weights) -> Result<Self, ShapeError> {
        let hidden = w.fc1_bias.len();
        let classes = w.fc2_bias.len();
        let check = |name, got: usize, expected| {
            if got == expected && expected > 0 {
                Ok(())
            } else {
                Err(ShapeError {
                    name,
                    expected,
                    got,
                })
            }
        };
        check("conv1.weight", w.conv1_weight.len(), C1 * C0 * 9)?;
        check("conv1.bias", w.conv1_bias.len(), C1)?;
        check("conv2.weight", w.conv2_weight.len(), C2 * C1 * 9)?;
        check("conv2.bias", w.conv2_bias.len(), C2)?;
        check("fc1.bias", hidden, hidden.max(1))?;
        check("fc1.weight", w.fc1_weight.len(), FEATURES * hidden)?;
        check("fc2.bias", classes, classes.max(1))?;
        check("fc2.weight", w.fc2_weight.len(), hidden * classes)?;
        // Burn flattens the feature map channel-major (index c·256 + position); the second
        // block writes it channel-last (position·32 + c).
        let positions = FEATURES / C2;
        let mut fc1_weight = vec![0.0; FEATURES * hidden];
        for c in 0..C2 {
            for p in 0..positions {
                let from = (c * positions + p) * hidden;
                let to = (p * C2 + c) * hidden;
                fc1_weight[to..to + hidden].copy_from_slice(&w.fc1_weight[from..from + hidden]);
            }
        }
        Ok(Self {
            isa: Isa::detect(),
            conv1_weight: direct::pack_weights(&w.conv1_weight),
            conv1_bias: w.conv1_bias,
            conv2_u: winograd::transform_weights(&w.conv2_weight),
            conv2_weight: w.conv2_weight,
            conv2_bias: w.conv2_bias,
            fc1_weight,
            fc1_bias: w.fc1_bias,
            fc2_weight: w.fc2_weight,
            fc2_bias: w.fc2_bias,
            hidden,
            classes,
            int8: None,
        })
    }

    /// The same network on another instruction set (to compare them), or `None` where this
    /// CPU lacks it.
    pub fn with_isa(mut self, isa: Isa) -> Option<Self> {
        Isa::available().contains(&isa).then(|| {
            self.isa = isa;
            self
        })
    }

    /// The instruction set the kernels run on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The arithmetic [`FastCnn::forward`] runs in.
    pub fn precision(&self) -> Precision {
        if self.int8.is_some() {
            Precision::Int8
        } else {
            Precision::Fp32
        }
    }

    /// The calibration the int8 path was quantised with, if it is the one in use.
    pub fn calibration(&self) -> Option<Calibration> {
        self.int8.as_ref().map(|q| q.calibration)
    }

    /// Number of logits per image.
    pub fn num_classes(&self) -> usize {
        self.classes
    }

    /// The largest activation of each quantised layer's input over `images` (preprocessed,
    /// back to back), in FP32: what [`FastCnn::quantized`] takes.
    pub fn calibrate(&self, images: &[f32]) -> Calibration {
        let mut features = vec![0.0f32; FEATURES];
        let mut largest = Calibration {
            conv1: 0.0,
            conv2: 0.0,
        };
        for image in images.chunks_exact(IMAGE_FLOATS) {
            self.features(image, 0..winograd::PATCHES, &mut features);
            // The scratch still holds this image's first-block output (zeros at the border
            // change no maximum of values that are ≥ 0).
            let conv1 = SCRATCH.with_borrow(|s| s.pooled.iter().fold(0.0f32, |m, &v| m.max(v)));
            largest.conv1 = largest.conv1.max(conv1);
            largest.conv2 = features.iter().fold(largest.conv2, |m, &v| m.max(v));
        }
        largest
    }

    /// This network on the int8 path: the second convolution and the hidden layer quantised
    /// (weights per channel, activations at the calibrated scales), the rest in FP32.
    #[must_use]
    pub fn quantized(mut self, calibration: Calibration) -> Self {
        let step = |largest: f32| if largest > 0.0 { largest / 255.0 } else { 1.0 };
        let (s1, s2) = (step(calibration.conv1), step(calibration.conv2));
        let (conv2, conv2_scales) =
            int8::quantize_rows(&self.conv2_weight, C2, C1 * 9, |r, i| r * C1 * 9 + i);
        let hidden = self.hidden;
        let (fc1, fc1_scales) =
            int8::quantize_rows(&self.fc1_weight, hidden, FEATURES, |r, i| i * hidden + r);
        self.int8 = Some(Box::new(Int8 {
            calibration,
            conv1_inverse_scale: 1.0 / s1,
            conv2_weight: int8::pack_conv(&conv2),
            conv2_m: conv2_scales.iter().map(|w| s1 * w / s2).collect(),
            conv2_c: self.conv2_bias.iter().map(|b| b / s2).collect(),
            fc1_weight: int8::pack_linear(&fc1, FEATURES, hidden),
            fc1_scale: fc1_scales.iter().map(|w| s2 * w).collect(),
        }));
        self
    }

    /// The same weights on the FP32 path.
    #[must_use]
    pub fn fp32(mut self) -> Self {
        self.int8 = None;
        self
    }

    /// Logits (`n × classes`, row-major) for `images`: `n` preprocessed images of
    /// [`IMAGE_FLOATS`] values each, back to back. A trailing partial image is ignored.
    pub fn forward(&self, images: &[f32]) -> Vec<f32> {
        let n = images.len() / IMAGE_FLOATS;
        let all = 0..winograd::PATCHES;
        let mut hidden = vec![0.0f32; n * self.hidden];
        if n == 1 {
            // One image: the top and the bottom half on one core each, through the hidden
            // layer, whose sum splits over the features: one fork and one join per image. Each
            // half computes the first block's rows that its half of the second block reads
            // (two rows more than half), rather than waiting for the other's.
            let half = all.end / 2;
            let part = |patches| {
                let mut sums = vec![0.0f32; self.hidden];
                self.hidden_sums(images, patches, &mut sums);
                sums
            };
            let (top, bottom) = rayon::join(|| part(0..half), || part(half..all.end));
            for ((h, a), b) in hidden.iter_mut().zip(&top).zip(&bottom) {
                *h = a + b;
            }
        } else if n > 1 {
            // A batch: one share of the images per thread, each taken through the hidden layer
            // on its own thread, so the batch costs one fork and one join. (gemm's own
            // threading of the hidden layer spent a quarter of the time waking threads and
            // yielding.)
            let share = n.div_ceil(rayon::current_num_threads());
            hidden
                .par_chunks_mut(share * self.hidden)
                .zip(images.par_chunks(share * IMAGE_FLOATS))
                .for_each(|(hidden, images)| self.hidden_sums(images, all.clone(), hidden));
        }
        for row in hidden.chunks_exact_mut(self.hidden) {
            for (h, b) in row.iter_mut().zip(&self.fc1_bias) {
                *h = (*h + b).max(0.0);
            }
        }
        let mut logits = vec![0.0f32; n * self.classes];
        matmul(
            n,
            self.classes,
            self.hidden,
            &hidden,
            &self.fc2_weight,
            &mut logits,
            Parallelism::None,
        );
        for row in logits.chunks_exact_mut(self.classes) {
            for (l, b) in row.iter_mut().zip(&self.fc2_bias) {
                *l += b;
            }
        }
        logits
    }

    /// The hidden layer's sums before bias (`images.len() / IMAGE_FLOATS` rows into `out`),
    /// over the features of the second block's patch rows `patches` only.
    fn hidden_sums(&self, images: &[f32], patches: Range<usize>, out: &mut [f32]) {
        let m = images.len() / IMAGE_FLOATS;
        let len = patches.len() * winograd::PATCHES * C2;
        let first = patches.start * winograd::PATCHES * C2;
        let images = images.chunks_exact(IMAGE_FLOATS);
        let Some(q) = &self.int8 else {
            let mut features = vec![0.0f32; m * len];
            for (f, image) in features.chunks_exact_mut(len).zip(images) {
                self.features(image, patches.clone(), f);
            }
            let weight = &self.fc1_weight[first * self.hidden..];
            matmul(
                m,
                self.hidden,
                len,
                &features,
                weight,
                out,
                Parallelism::None,
            );
            return;
        };
        let mut features = vec![0u8; m * len];
        for (f, image) in features.chunks_exact_mut(len).zip(images) {
            self.features_int8(q, image, patches.clone(), f);
        }
        let width = self.hidden.div_ceil(int8::BLOCK) * int8::BLOCK;
        let mut sums = vec![0i32; m * width];
        let groups = first / 4..(first + len) / 4;
        dispatch!(self.isa, fc1_int8 [1, 4] [2, 2] [16, 1]
            (&features, len, m, groups, &q.fc1_weight, FEATURES / 4, &mut sums));
        for (out, sums) in out
            .chunks_exact_mut(self.hidden)
            .zip(sums.chunks_exact(width))
        {
            for ((o, &s), scale) in out.iter_mut().zip(sums).zip(&q.fc1_scale) {
                *o = s as f32 * scale;
            }
        }
    }

    /// Both convolution blocks for the patch rows `patches` of the second block (all 16 for a
    /// whole image), writing those rows of the channel-last feature map to `out`.
    fn features(&self, image: &[f32], patches: Range<usize>, out: &mut [f32]) {
        SCRATCH.with_borrow_mut(|s| {
            self.first_block(image, &patches, s);
            let (u, bias) = (&self.conv2_u, &self.conv2_bias);
            dispatch!(self.isa, conv2_kernel [1, 2, 8] [2, 4, 2] [16, 32, 1]
                (&s.pooled, u, bias, patches, out));
        });
    }

    /// [`FastCnn::features`] on the int8 path: `u8` features.
    fn features_int8(&self, q: &Int8, image: &[f32], patches: Range<usize>, out: &mut [u8]) {
        SCRATCH.with_borrow_mut(|s| {
            let rows = self.first_block(image, &patches, s);
            let inverse = q.conv1_inverse_scale;
            dispatch!(self.isa, quantize_map [] [] [] (&s.pooled, inverse, rows, &mut s.quantized));
            let (w, m, c) = (&q.conv2_weight, &q.conv2_m, &q.conv2_c);
            dispatch!(self.isa, conv2_int8 [2, 4] [4, 2] [32, 2]
                (&s.quantized, w, m, c, patches, out));
        });
    }

    /// The first block's pooled rows that the second block's patch rows `patches` read, into
    /// the scratch's bordered map; returns those rows.
    fn first_block(&self, image: &[f32], patches: &Range<usize>, s: &mut Scratch) -> Range<usize> {
        // The second block's patch row p reads the first block's rows 2p - 1 ..= 2p + 2.
        let rows = (2 * patches.start).saturating_sub(1)..(2 * patches.end + 1).min(S2);
        direct::pad_input(image, rows.clone(), &mut s.input);
        let (weight, bias) = (&self.conv1_weight, &self.conv1_bias);
        dispatch!(self.isa, conv1_kernel [1, 8] [2, 2] [16, 2]
            (&s.input, weight, bias, rows.clone(), &mut s.pooled));
        rows
    }
}

use direct::conv_pool as conv1_kernel;
use int8::{conv_pool as conv2_int8, linear as fc1_int8, quantize_map};
use winograd::conv_pool as conv2_kernel;

/// Per-thread buffers, allocated once per thread rather than once per image. Their zero
/// borders are never written, so each image only fills the interior.
struct Scratch {
    /// The image inside a zero border, `[3][66][66]`.
    input: Vec<f32>,
    /// The first block's pooled output inside a zero border, `[34][34][16]`.
    pooled: Vec<f32>,
    /// The same in `u8` steps, for the int8 path.
    quantized: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        input: vec![0.0; direct::PADDED_INPUT],
        pooled: vec![0.0; direct::PADDED_OUTPUT],
        quantized: vec![0; direct::PADDED_OUTPUT],
    });
}

/// The instruction set the kernels run on, chosen at run time on this CPU: `"avx512f+vnni"`,
/// `"avx2+fma"` or `"scalar"` (the forward benchmark prints it). `gemm`, which runs the fully
/// connected layers and training's GEMMs, makes the same choice with the same detection.
pub fn simd() -> &'static str {
    Isa::detect().name()
}

/// `c = a · b` for row-major `a` (`m × k`), `b` (`k × n`) and `c` (`m × n`): the crate's one
/// call into `gemm`.
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    par: Parallelism,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the assert keeps every element of the three row-major matrices inside its slice;
    // `c` is borrowed mutably, so it aliases neither input. With `read_dst = false` gemm
    // ignores `c`'s old contents.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            // c = 0·c + 1·a·b.
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Unfolds the output rows `rows` of a `c × size × size` image for a 3×3 convolution with
/// stride 1 and padding 1: row `ci·9 + kh·3 + kw` holds the input shifted by
/// `(kh - 1, kw - 1)`, zeros outside the image.
pub(crate) fn im2col_3x3(
    input: &[f32],
    c: usize,
    size: usize,
    rows: Range<usize>,
    cols: &mut [f32],
) {
    let (w, plane_len) = (size, size * size);
    let band = rows.len() * w;
    for ci in 0..c {
        let plane = &input[ci * plane_len..(ci + 1) * plane_len];
        for kh in 0..3 {
            for kw in 0..3 {
                let row = &mut cols[(ci * 9 + kh * 3 + kw) * band..][..band];
                for (i, y) in rows.clone().enumerate() {
                    let dst = &mut row[i * w..(i + 1) * w];
                    let Some(sy) = (y + kh).checked_sub(1).filter(|&sy| sy < size) else {
                        dst.fill(0.0);
                        continue;
                    };
                    let src = &plane[sy * w..(sy + 1) * w];
                    match kw {
                        0 => {
                            dst[0] = 0.0;
                            dst[1..].copy_from_slice(&src[..w - 1]);
                        }
                        1 => dst.copy_from_slice(src),
                        _ => {
                            dst[..w - 1].copy_from_slice(&src[1..]);
                            dst[w - 1] = 0.0;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels' tests run once natively and once under `qemu-x86_64 -cpu Haswell`
    /// (`scripts/test`), which has AVX2 and FMA but no AVX-512: `FASTCNN_EXPECT_SIMD` names
    /// the path a run must have taken, so that the emulated run cannot pass on the wrong one.
    #[test]
    fn the_expected_instruction_set_is_in_use() {
        let simd = simd();
        eprintln!("GEMMs run on {simd}");
        if let Ok(expected) = std::env::var("FASTCNN_EXPECT_SIMD") {
            assert_eq!(simd, expected);
        }
    }

    /// Deterministic pseudo-random values in [-1, 1) (the training kernels' tests use them too).
    pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn weights(hidden: usize, classes: usize) -> Weights {
        Weights {
            conv1_weight: values(C1 * C0 * 9, 1),
            conv1_bias: values(C1, 2),
            conv2_weight: values(C2 * C1 * 9, 3).iter().map(|v| v * 0.3).collect(),
            conv2_bias: values(C2, 4),
            fc1_weight: values(FEATURES * hidden, 5)
                .iter()
                .map(|v| v * 0.02)
                .collect(),
            fc1_bias: values(hidden, 6),
            fc2_weight: values(hidden * classes, 7),
            fc2_bias: values(classes, 8),
        }
    }

    /// Direct 3×3 convolution, padding 1, then ReLU, then 2×2 max-pool: the textbook loops.
    fn naive_conv_block(
        x: &[f32],
        cin: usize,
        cout: usize,
        s: usize,
        w: &[f32],
        b: &[f32],
    ) -> Vec<f32> {
        let mut conv = vec![0.0f32; cout * s * s];
        for co in 0..cout {
            for y in 0..s {
                for xx in 0..s {
                    let mut acc = f64::from(b[co]);
                    for ci in 0..cin {
                        for kh in 0..3 {
                            for kw in 0..3 {
                                let (sy, sx) =
                                    (y as isize + kh as isize - 1, xx as isize + kw as isize - 1);
                                if sy >= 0 && sx >= 0 && (sy as usize) < s && (sx as usize) < s {
                                    acc += f64::from(
                                        w[((co * cin + ci) * 3 + kh) * 3 + kw]
                                            * x[(ci * s + sy as usize) * s + sx as usize],
                                    );
                                }
                            }
                        }
                    }
                    conv[(co * s + y) * s + xx] = (acc as f32).max(0.0);
                }
            }
        }
        let h = s / 2;
        let mut out = vec![0.0f32; cout * h * h];
        for co in 0..cout {
            for y in 0..h {
                for xx in 0..h {
                    let at = |dy: usize, dx: usize| conv[(co * s + 2 * y + dy) * s + 2 * xx + dx];
                    out[(co * h + y) * h + xx] = at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                }
            }
        }
        out
    }

    fn naive_forward(w: &Weights, image: &[f32]) -> Vec<f32> {
        let hidden = w.fc1_bias.len();
        let classes = w.fc2_bias.len();
        let p1 = naive_conv_block(image, C0, C1, S1, &w.conv1_weight, &w.conv1_bias);
        let f = naive_conv_block(&p1, C1, C2, S2, &w.conv2_weight, &w.conv2_bias);
        let h: Vec<f32> = (0..hidden)
            .map(|j| {
                let s: f64 = (0..FEATURES)
                    .map(|i| f64::from(f[i] * w.fc1_weight[i * hidden + j]))
                    .sum();
                ((s + f64::from(w.fc1_bias[j])) as f32).max(0.0)
            })
            .collect();
        (0..classes)
            .map(|j| {
                let s: f64 = (0..hidden)
                    .map(|i| f64::from(h[i] * w.fc2_weight[i * classes + j]))
                    .sum();
                (s + f64::from(w.fc2_bias[j])) as f32
            })
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= tol, "max |difference| {worst} > {tol}");
    }

    #[test]
    fn matches_naive_loops_for_single_images_and_batches_on_every_instruction_set() {
        let w = weights(100, 10);
        let net = FastCnn::new(w.clone()).unwrap();
        for n in [1usize, 2, 7, 64] {
            let images = values(n * IMAGE_FLOATS, 100 + n as u64);
            let want: Vec<f32> = images
                .chunks_exact(IMAGE_FLOATS)
                .flat_map(|img| naive_forward(&w, img))
                .collect();
            for isa in Isa::available() {
                eprintln!("{isa:?}, batch {n}");
                let got = net.clone().with_isa(isa).unwrap().forward(&images);
                assert_close(&got, &want, 1e-3);
            }
        }
    }

    /// Each block's kernel alone, over a band of rows in the middle and at both edges, against
    /// the textbook loops (in the kernels' layouts: channel-last inside a zero border).
    #[test]
    fn each_block_matches_naive_loops_on_any_band_of_rows() {
        let image = values(IMAGE_FLOATS, 11);
        let (w1, b1) = (values(C1 * C0 * 9, 12), values(C1, 13));
        let w2: Vec<f32> = values(C2 * C1 * 9, 14).iter().map(|v| v * 0.3).collect();
        let b2 = values(C2, 15);
        let p1 = naive_conv_block(&image, C0, C1, S1, &w1, &b1);
        let p2 = naive_conv_block(&p1, C1, C2, S2, &w2, &b2);
        let (packed, u) = (direct::pack_weights(&w1), winograd::transform_weights(&w2));
        let side = direct::OUT_PADDED;
        let patches = winograd::PATCHES;
        for isa in Isa::available() {
            for rows in [0..S2, 0..3, 13..19, 29..S2] {
                let mut padded = vec![0.0; direct::PADDED_INPUT];
                direct::pad_input(&image, rows.clone(), &mut padded);
                let mut out = vec![f32::NAN; direct::PADDED_OUTPUT];
                dispatch!(isa, conv1_kernel [1, 8] [2, 2] [16, 2]
                    (&padded, &packed, &b1, rows.clone(), &mut out));
                for y in rows.clone() {
                    for x in 0..S2 {
                        for c in 0..C1 {
                            let got = out[((y + 1) * side + x + 1) * C1 + c];
                            let want = p1[(c * S2 + y) * S2 + x];
                            assert!((got - want).abs() < 1e-4, "{isa:?} conv1 {c} {y} {x}");
                        }
                    }
                }
            }
            // The second block reads the first's output in its bordered channel-last layout.
            let mut bordered = vec![0.0; direct::PADDED_OUTPUT];
            for c in 0..C1 {
                for y in 0..S2 {
                    for x in 0..S2 {
                        bordered[((y + 1) * side + x + 1) * C1 + c] = p1[(c * S2 + y) * S2 + x];
                    }
                }
            }
            for rows in [0..patches, 0..1, 5..11, 15..patches] {
                let mut out = vec![f32::NAN; rows.len() * patches * C2];
                dispatch!(isa, conv2_kernel [1, 2, 8] [2, 4, 2] [16, 32, 1]
                    (&bordered, &u, &b2, rows.clone(), &mut out));
                for y in rows.clone() {
                    for x in 0..patches {
                        for c in 0..C2 {
                            let got = out[((y - rows.start) * patches + x) * C2 + c];
                            let want = p2[(c * patches + y) * patches + x];
                            assert!((got - want).abs() < 1e-4, "{isa:?} conv2 {c} {y} {x}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_int8_path_agrees_across_instruction_sets_and_splits_and_stays_near_fp32() {
        let w = weights(100, 10);
        let fp32 = FastCnn::new(w.clone()).unwrap();
        let images = values(64 * IMAGE_FLOATS, 21);
        let calibration = fp32.calibrate(&images[..16 * IMAGE_FLOATS]);
        assert!(calibration.conv1 > 0.0 && calibration.conv2 > 0.0);
        let int8 = fp32.clone().quantized(calibration);
        assert_eq!(
            (int8.precision(), int8.calibration()),
            (Precision::Int8, Some(calibration))
        );
        let reference = fp32.forward(&images);
        let widest = int8.forward(&images);
        let range = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = widest
            .iter()
            .zip(&reference)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("int8 vs fp32: largest |difference| {worst} for logits up to {range}");
        assert!(
            worst < 0.05 * range,
            "int8 strays {worst} from logits up to {range}"
        );
        for isa in Isa::available() {
            let net = int8.clone().with_isa(isa).unwrap();
            // The integer kernels agree bit for bit; a batch and its images one by one differ
            // only by how the hidden layer's two halves are summed.
            assert_close(&net.forward(&images), &widest, 1e-5);
            let seven = &images[..7 * IMAGE_FLOATS];
            assert_close(&net.forward(seven), &widest[..70], 1e-4);
            for (i, image) in seven.chunks_exact(IMAGE_FLOATS).enumerate() {
                assert_close(&net.forward(image), &widest[i * 10..(i + 1) * 10], 1e-4);
            }
        }
        let back = int8.fp32();
        assert_eq!(
            (back.precision(), back.calibration()),
            (Precision::Fp32, None)
        );
        assert_close(&back.forward(&images), &reference, 0.0);
    }

    #[test]
    fn an_instruction_set_this_cpu_lacks_is_refused() {
        let net = FastCnn::new(weights(100, 10)).unwrap();
        assert_eq!(net.isa(), Isa::detect());
        assert_eq!(
            net.clone().with_isa(Isa::Scalar).unwrap().isa(),
            Isa::Scalar
        );
        for isa in [Isa::Avx512, Isa::Avx2] {
            assert_eq!(
                net.clone().with_isa(isa).is_some(),
                Isa::available().contains(&isa)
            );
        }
    }

    #[test]
    fn hidden_width_and_class_count_follow_the_weights() {
        let w = weights(7, 3);
        let net = FastCnn::new(w.clone()).unwrap();
        assert_eq!(net.num_classes(), 3);
        let image = values(IMAGE_FLOATS, 9);
        assert_close(&net.forward(&image), &naive_forward(&w, &image), 1e-3);
    }

    #[test]
    fn empty_input_gives_no_logits_and_partial_images_are_ignored() {
        let net = FastCnn::new(weights(100, 10)).unwrap();
        assert!(net.forward(&[]).is_empty());
        assert_eq!(net.forward(&values(IMAGE_FLOATS + 5, 1)).len(), 10);
    }

    #[test]
    fn rejects_weights_of_the_wrong_size() {
        let mut w = weights(100, 10);
        w.conv2_weight.pop();
        assert_eq!(
            FastCnn::new(w).unwrap_err(),
            ShapeError {
                name: "conv2.weight",
                expected: C2 * C1 * 9,
                got: C2 * C1 * 9 - 1
            }
        );
        let mut w = weights(100, 10);
        w.fc1_weight.truncate(10);
        assert_eq!(FastCnn::new(w).unwrap_err().name, "fc1.weight");
    }

    #[test]
    fn im2col_shifts_with_zero_padding() {
        // One 3×3 channel holding 1..=9.
        let input: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut cols = vec![f32::NAN; 9 * 9];
        im2col_3x3(&input, 1, 3, 0..3, &mut cols);
        // Row (kh=0, kw=0) reads (y-1, x-1).
        assert_eq!(&cols[0..9], &[0., 0., 0., 0., 1., 2., 0., 4., 5.]);
        // Row (kh=1, kw=1) is the image itself.
        assert_eq!(&cols[4 * 9..5 * 9], input.as_slice());
        // Row (kh=2, kw=2) reads (y+1, x+1).
        assert_eq!(&cols[8 * 9..9 * 9], &[5., 6., 0., 8., 9., 0., 0., 0., 0.]);
        // A band of output rows 1..3 sees the rows above it, not zeros.
        let mut band = vec![f32::NAN; 9 * 6];
        im2col_3x3(&input, 1, 3, 1..3, &mut band);
        assert_eq!(&band[0..6], &[0., 1., 2., 0., 4., 5.]);
        assert_eq!(&band[8 * 6..9 * 6], &[8., 9., 0., 0., 0., 0.]);
    }
}
