//! Forward and backward of one convolution block for training, for a batch: 3×3 convolution
//! (stride 1, padding 1) → + bias → ReLU → 2×2 max-pool (stride 2), in any size.
//!
//! The forward is the inference path's im2col + one GEMM per image + a fused bias/ReLU/pool
//! pass, which here also records one byte per output: which of the window's four elements won,
//! or [`DEAD`] when ReLU cut the output to 0. That byte and the input are all the backward needs:
//! each output's gradient reaches only its winner, so the backward is a sum over the live
//! winners (`sparse.rs`), a quarter of a dense backward's work or less.
//!
//! # Matching Burn (burn-flex 0.22.1 under burn-autodiff 0.22.1)
//!
//! The reference is `max_pool2d(relu(conv2d(x, weight, bias)))`:
//!
//! - burn-flex's max-pool (`src/ops/pool.rs`, `max_pool3d_with_indices_impl`, line 293:
//!   `if max_idx < 0 || val > max_val || val.is_nan()`) scans the window row-major, takes the
//!   first element and then only a *strictly* greater one: on a tie the first maximum in scan
//!   order wins; a NaN always wins, so the last NaN does. Its backward
//!   (`max_pool3d_backward_impl`) adds each output's gradient to the element at that index.
//! - burn-autodiff's ReLU backward (`src/ops/activation.rs`) checkpoints the ReLU's *input* and
//!   hands it to burn-flex's `relu_backward` (`src/ops/activation.rs:35`), which passes the
//!   gradient where that value is `> 0` or NaN and zeroes it elsewhere, exactly 0 included.
//!
//! Here the pool runs on `t = conv + bias`, before ReLU. The pooled value is exact: `fl(c + b)`
//! and ReLU are both monotonic, so they commute with `max`. So is the winner:
//!
//! - If the window's largest `t` is `> 0`, the elements where `relu(t)` reaches its maximum are
//!   exactly those where `t` reaches its own (they are positive, where ReLU is the identity), so
//!   the first-strict-maximum scan picks the same element on `t` as Burn does on `relu(t)`.
//! - If it is `<= 0`, all four ReLU outputs are 0 and Burn routes the gradient to the first of
//!   them, where ReLU's backward (`t > 0` is false) drops it: nothing reaches the convolution
//!   from that window. That is [`DEAD`].
//! - ReLU keeps NaN, so the NaN rule gives the same winner on `t`, and the gradient passes.
//!
//! The bias is added to each of the four values before comparing, not once to the maximum:
//! `fl(c + b)` can merge distinct conv values (`1` and `1 + ε`, plus `1e8`), Burn compares the
//! merged values, and so breaks that tie by scan order where comparing `c` would not.
//!
//! What cannot match bit for bit is the convolution itself: Burn sums the products in another
//! order, so `t` may differ in its last bits and a near-tie may then go the other way. Exact ties
//! (constant image regions, exactly representable data) are broken the same way.
//!
//! # Determinism
//!
//! Same inputs give bit-identical outputs whatever the thread count or scheduling: each image's
//! forward output, argmax bytes and input gradient are computed by one task and written straight
//! into their place; the weight and bias gradients are summed sequentially within fixed chunks
//! of `CHUNK` images (independent of the thread count), then the chunk sums are added in chunk
//! order; every GEMM runs on one thread. The instruction set changes the order of the sums in
//! the backward (its register width), so runs are bit-identical on one kind of CPU.

use std::cell::{Cell, RefCell};

use gemm::Parallelism;
use rayon::prelude::*;

use crate::simd::{Isa, dispatch};
use crate::sparse::{
    Rows, backward as sparse_backward, from_padded_channel_last, to_padded_channel_last,
};
use crate::{im2col_3x3, matmul};

/// The argmax byte of an output that ReLU cut to 0: no gradient flows back through it.
pub const DEAD: u8 = 255;

/// Images whose weight and bias gradients one task sums, one image after another. Fixed rather
/// than derived from the thread count so that the order of every floating-point addition, and
/// hence every bit of the result, depends on the batch size alone. 4 still gives a batch of 32
/// eight parallel tasks, with a quarter of the partial sums that one chunk per image would keep.
const CHUNK: usize = 4;

/// Shape of one block: input `[batch, cin, size, size]` (size even), weight `[cout, cin, 3, 3]`,
/// bias `[cout]`, output `[batch, cout, size/2, size/2]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels: one 3×3 kernel (over all input channels) and one bias each.
    pub cout: usize,
    /// Side of the square input; the output's is half of it.
    pub size: usize,
}

impl Block {
    /// Floats in the input (`batch × cin × size × size`).
    pub fn input_len(&self) -> usize {
        self.batch * self.image_len()
    }

    /// Floats (and argmax bytes) in the output (`batch × cout × size/2 × size/2`).
    pub fn output_len(&self) -> usize {
        self.batch * self.pooled_len()
    }

    /// Floats in the weight (`cout × cin × 3 × 3`).
    pub fn weight_len(&self) -> usize {
        self.cout * self.taps()
    }

    /// Floats in one image of the input.
    fn image_len(&self) -> usize {
        self.cin * self.plane()
    }

    /// Floats in one image of the output.
    fn pooled_len(&self) -> usize {
        self.cout * (self.size / 2) * (self.size / 2)
    }

    /// Pixels in one channel at full resolution: the convolution's columns.
    fn plane(&self) -> usize {
        self.size * self.size
    }

    /// Rows of the im2col matrix, one per (input channel, kernel tap): the GEMMs' depth.
    fn taps(&self) -> usize {
        self.cin * 9
    }

    fn check(&self, x: &[f32], weight: &[f32]) {
        assert!(
            self.cin > 0 && self.cout > 0,
            "{self:?}: channel counts must be positive"
        );
        assert!(
            self.size > 0 && self.size.is_multiple_of(2),
            "{self:?}: size must be even and positive"
        );
        assert_eq!(x.len(), self.input_len(), "x for {self:?}");
        assert_eq!(weight.len(), self.weight_len(), "weight for {self:?}");
    }
}

/// Forward: returns the pooled output and, per output element, which of the 4 window positions
/// won the max (0..=3, row-major in the 2×2 window: 0=(0,0), 1=(0,1), 2=(1,0), 3=(1,1)), or
/// [`DEAD`] when the output is 0 because ReLU cut it (max + bias <= 0): one byte per output.
/// Ties go to the first position, as in Burn (see the module docs).
///
/// # Panics
///
/// If a channel count is 0, `size` is odd or 0, or a slice's length does not fit `block`.
pub fn forward(block: Block, x: &[f32], weight: &[f32], bias: &[f32]) -> (Vec<f32>, Vec<u8>) {
    block.check(x, weight);
    assert_eq!(bias.len(), block.cout, "bias for {block:?}");
    let (taps, plane, pooled_len) = (block.taps(), block.plane(), block.pooled_len());
    let mut out = vec![0.0f32; block.output_len()];
    let mut argmax = vec![0u8; block.output_len()];
    out.par_chunks_mut(pooled_len)
        .zip(argmax.par_chunks_mut(pooled_len))
        .zip(x.par_chunks_exact(block.image_len()))
        .for_each(|((out, argmax), image)| {
            SCRATCH.with_borrow_mut(|s| {
                let cols = grow(&mut s.cols, taps * plane);
                let conv = grow(&mut s.conv, block.cout * plane);
                im2col_3x3(image, block.cin, block.size, 0..block.size, cols);
                matmul(
                    block.cout,
                    plane,
                    taps,
                    weight,
                    cols,
                    conv,
                    Parallelism::None,
                );
                bias_relu_pool_argmax(conv, block.cout, block.size, bias, out, argmax);
            });
        });
    (out, argmax)
}

/// Gradients. `dout` has the output's shape; `argmax` is [`forward`]'s. Returns (dx if
/// `need_dx`, dweight `[cout·cin·9]`, dbias `[cout]`).
///
/// Per image, each live winner (an output not [`DEAD`]) adds its gradient to its channel's
/// bias gradient, times its 3×3 input patch to its channel's weight gradient, and, if wanted,
/// times its kernel to the input gradient around it (`sparse.rs`): the chain rule through the
/// pool, ReLU and the convolution without the three quarters of zeros the pool leaves.
///
/// # Panics
///
/// As [`forward`], and on an argmax byte that is neither 0..=3 nor [`DEAD`].
pub fn backward(
    block: Block,
    x: &[f32],
    weight: &[f32],
    argmax: &[u8],
    dout: &[f32],
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    backward_on(Isa::detect(), block, x, weight, argmax, dout, need_dx)
}

/// [`backward`] on the instruction set `isa` (the tests run each one the CPU has).
///
/// # Panics
///
/// As [`backward`], and if this CPU cannot run `isa`.
pub fn backward_on(
    isa: Isa,
    block: Block,
    x: &[f32],
    weight: &[f32],
    argmax: &[u8],
    dout: &[f32],
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    assert!(
        Isa::available().contains(&isa),
        "this CPU cannot run {}",
        isa.name()
    );
    block.check(x, weight);
    assert_eq!(argmax.len(), block.output_len(), "argmax for {block:?}");
    assert_eq!(dout.len(), block.output_len(), "dout for {block:?}");
    let weight_len = block.weight_len();
    // One chunk's partial sums: its weight gradient, then its bias gradient.
    let part_len = weight_len + block.cout;
    let chunks = block.batch.div_ceil(CHUNK);
    let rows = Rows::new(block.cin, isa.lanes());
    // The weight as neighbourhood rows (`cout × 3 × 3·cin`, `(dx, c)` at `dx·cin + c`): the
    // input gradient's kernel rows.
    let wt = if need_dx {
        let mut wt = vec![0.0f32; weight_len];
        for (o, kernel) in weight.chunks_exact(block.taps()).enumerate() {
            for (i, &w) in kernel.iter().enumerate() {
                let (c, dy, dx) = (i / 9, i % 9 / 3, i % 3);
                wt[(o * 3 + dy) * rows.row + dx * block.cin + c] = w;
            }
        }
        wt
    } else {
        Vec::new()
    };
    let inputs = Inputs {
        isa,
        block,
        rows,
        x,
        wt: &wt,
        argmax,
        dout,
    };

    let mut dx = need_dx.then(|| vec![0.0f32; block.input_len()]);
    // Taken out of the thread-local for the call rather than borrowed: a nested call on this
    // thread (rayon may run another task here while it waits) then just allocates its own.
    let mut partials = PARTIALS.take();
    let parts = grow(&mut partials, chunks * part_len);
    match dx.as_mut() {
        Some(dx) => parts
            .par_chunks_mut(part_len)
            .zip(dx.par_chunks_mut(CHUNK * block.image_len()))
            .enumerate()
            .for_each(|(chunk, (part, dx))| inputs.chunk(chunk, part, Some(dx))),
        None => parts
            .par_chunks_mut(part_len)
            .enumerate()
            .for_each(|(chunk, part)| inputs.chunk(chunk, part, None)),
    }

    // The chunks' sums in chunk order: the same additions whichever thread computed each.
    let mut dweight = vec![0.0f32; weight_len];
    let mut dbias = vec![0.0f32; block.cout];
    for part in parts.chunks_exact(part_len) {
        let (dw, db) = part.split_at(weight_len);
        add_to(&mut dweight, dw);
        add_to(&mut dbias, db);
    }
    PARTIALS.set(partials);
    (dx, dweight, dbias)
}

/// The read-only arguments of [`backward`], shared by its chunk tasks.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    isa: Isa,
    block: Block,
    rows: Rows,
    x: &'a [f32],
    /// The weight as neighbourhood rows, when the input gradient is wanted.
    wt: &'a [f32],
    argmax: &'a [u8],
    dout: &'a [f32],
}

impl Inputs<'_> {
    /// The gradients of chunk `chunk`'s images, one image after another: `part` receives the
    /// chunk's weight gradient (`cout × cin·9`) followed by its bias gradient (`cout`), and `dx`,
    /// when wanted, the chunk's images' input gradients.
    fn chunk(&self, chunk: usize, part: &mut [f32], mut dx: Option<&mut [f32]>) {
        let (b, rows) = (self.block, self.rows);
        let (image_len, pooled_len) = (b.image_len(), b.pooled_len());
        let padded_len = rows.padded_len(b.size);
        let images = chunk * CHUNK..((chunk + 1) * CHUNK).min(b.batch);
        let (dweight, dbias) = part.split_at_mut(b.weight_len());
        dbias.fill(0.0);
        SCRATCH.with_borrow_mut(|s| {
            let Scratch {
                cols: xcl,
                conv: dwt,
                dcols: dxcl,
                live,
            } = s;
            let xcl = grow(xcl, padded_len);
            let dwt = grow(dwt, b.cout * 3 * rows.row_len);
            dwt.fill(0.0);
            for (i, n) in images.enumerate() {
                let pooled = n * pooled_len..(n + 1) * pooled_len;
                let (dout, argmax) = (&self.dout[pooled.clone()], &self.argmax[pooled]);
                // Zeroed whole: the buffer may have held another shape's image.
                xcl.fill(0.0);
                let image = &self.x[n * image_len..(n + 1) * image_len];
                to_padded_channel_last(image, b.cin, b.size, xcl);
                let mut out = dx.as_deref_mut().map(|_| {
                    let dxcl = grow(dxcl, padded_len);
                    dxcl.fill(0.0);
                    dxcl
                });
                let out_now = out.as_deref_mut();
                // As many registers of a row at once as divide the row's.
                let (isa, size, wt) = (self.isa, b.size, self.wt);
                match rows.block() {
                    3 => dispatch!(
                        isa,
                        sparse_backward[3][3][3](
                            rows, size, xcl, wt, argmax, dout, dwt, dbias, out_now, live
                        )
                    ),
                    2 => dispatch!(
                        isa,
                        sparse_backward[2][2][2](
                            rows, size, xcl, wt, argmax, dout, dwt, dbias, out_now, live
                        )
                    ),
                    _ => dispatch!(
                        isa,
                        sparse_backward[1][1][1](
                            rows, size, xcl, wt, argmax, dout, dwt, dbias, out_now, live
                        )
                    ),
                }
                if let (Some(dx), Some(dxcl)) = (dx.as_deref_mut(), out) {
                    let dx = &mut dx[i * image_len..(i + 1) * image_len];
                    from_padded_channel_last(dxcl, b.cin, b.size, dx);
                }
            }
            // Neighbourhood rows → the weight's own layout.
            for (i, d) in dweight.iter_mut().enumerate() {
                let (o, c, dy, dx) = (i / b.taps(), i % b.taps() / 9, i % 9 / 3, i % 3);
                *d = dwt[(o * 3 + dy) * rows.row_len + dx * b.cin + c];
            }
        });
    }
}

/// Per-thread buffers, grown to the largest block seen and then reused: im2col's columns, the
/// convolution's output (forward) or its gradient (backward), and the columns' gradient; on
/// the sparse path the padded image, the chunk's weight gradient, the padded input gradient
/// and the live winners.
struct Scratch {
    cols: Vec<f32>,
    conv: Vec<f32>,
    dcols: Vec<f32>,
    live: Vec<(usize, f32)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            cols: Vec::new(),
            conv: Vec::new(),
            dcols: Vec::new(),
            live: Vec::new(),
        })
    };
    /// The calling thread's buffer for [`backward`]'s per-chunk partial gradients.
    static PARTIALS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// The first `len` elements of `buf`, grown (zero-filled: once per thread and size) if shorter.
fn grow(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// `dst[i] += src[i]`.
fn add_to(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Adds the channel bias to each convolution value of one image (`c × size × size`), picks each
/// 2×2 window's winner as Burn's max-pool does on the ReLU output (first strict maximum in
/// row-major order, a NaN always winning: see the module docs for why scanning `conv + bias`
/// gives the same element), and writes `relu(max)` with the winner's position, or 0 with
/// [`DEAD`] where the maximum is `<= 0`.
fn bias_relu_pool_argmax(
    conv: &[f32],
    c: usize,
    size: usize,
    bias: &[f32],
    out: &mut [f32],
    argmax: &mut [u8],
) {
    let (w, half) = (size, size / 2);
    for ch in 0..c {
        let plane = &conv[ch * w * w..(ch + 1) * w * w];
        let out = &mut out[ch * half * half..(ch + 1) * half * half];
        let argmax = &mut argmax[ch * half * half..(ch + 1) * half * half];
        let b = bias[ch];
        for y in 0..half {
            let r0 = &plane[2 * y * w..(2 * y + 1) * w];
            let r1 = &plane[(2 * y + 1) * w..(2 * y + 2) * w];
            let row = y * half..(y + 1) * half;
            let cells = out[row.clone()].iter_mut().zip(&mut argmax[row]);
            for (x, (o, a)) in cells.enumerate() {
                let (i0, i1) = (2 * x, 2 * x + 1);
                // The bias goes on each value before comparing: `fl(c + b)` can merge two
                // distinct `c`, and Burn compares the merged values.
                let window = [r0[i0] + b, r0[i1] + b, r1[i0] + b, r1[i1] + b];
                // A branch-free tournament: the later of a pair wins only when strictly
                // greater, so exact ties go to the earliest position, as Burn's scan does.
                let (top, top_at) = pick(window[0], 0, window[1], 1);
                let (bottom, bottom_at) = pick(window[2], 2, window[3], 3);
                let (mut best, mut at) = pick(top, top_at, bottom, bottom_at);
                if window.iter().any(|v| v.is_nan()) {
                    // Burn's scan lets a NaN win wherever it is, the last one last.
                    let last = window.iter().rposition(|v| v.is_nan()).unwrap_or(0);
                    (best, at) = (f32::NAN, last as u8);
                }
                // ReLU's backward passes the gradient where its input is > 0 or NaN.
                let alive = best > 0.0 || best.is_nan();
                *o = if alive { best } else { 0.0 };
                *a = if alive { at } else { DEAD };
            }
        }
    }
}

/// The larger of two candidates, the first on a tie (and the first when either is NaN: the
/// caller handles NaN).
// Called four times per output in the innermost loop, which must stay branch-free.
#[allow(clippy::inline_always)]
#[inline(always)]
fn pick(a: f32, a_at: u8, b: f32, b_at: u8) -> (f32, u8) {
    let later = b > a;
    (if later { b } else { a }, if later { b_at } else { a_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::values;

    /// Multiples of `step` from `-q·step` to `q·step`. At the sizes tested, every product and
    /// partial sum of such values is exactly representable, so any summation order gives the
    /// same bits: the GEMMs must agree with the naive loops exactly, ties included.
    fn grid(n: usize, seed: u64, q: f32, step: f32) -> Vec<f32> {
        values(n, seed)
            .iter()
            .map(|v| (v * q).round() * step)
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    const SHAPES: [Block; 6] = [
        Block {
            batch: 1,
            cin: 3,
            cout: 16,
            size: 8,
        },
        Block {
            batch: 3,
            cin: 3,
            cout: 16,
            size: 8,
        },
        Block {
            batch: 7,
            cin: 3,
            cout: 16,
            size: 8,
        },
        Block {
            batch: 1,
            cin: 16,
            cout: 32,
            size: 16,
        },
        Block {
            batch: 3,
            cin: 16,
            cout: 32,
            size: 16,
        },
        Block {
            batch: 7,
            cin: 16,
            cout: 32,
            size: 16,
        },
    ];

    /// One block's inputs and an output gradient.
    struct Case {
        block: Block,
        x: Vec<f32>,
        weight: Vec<f32>,
        bias: Vec<f32>,
        dout: Vec<f32>,
    }

    impl Case {
        /// Exactly representable data with many exact ties and exact zeros: inputs integers in
        /// [-4, 4], weights and biases quarters in [-0.5, 0.5] and [-1, 1], output gradients
        /// 64ths in [-1, 1]. Every sum below stays under 2^24 of its finest step, so even the
        /// gradients are exact.
        fn grid(block: Block, seed: u64) -> Self {
            Self {
                block,
                x: grid(block.input_len(), seed, 4.0, 1.0),
                weight: grid(block.weight_len(), seed + 1, 2.0, 0.25),
                bias: grid(block.cout, seed + 2, 4.0, 0.25),
                dout: grid(block.output_len(), seed + 3, 64.0, 1.0 / 64.0),
            }
        }

        /// Real-valued data, where exact ties are unlikely.
        fn smooth(block: Block, seed: u64) -> Self {
            let scaled = |n: usize, seed: u64, s: f32| -> Vec<f32> {
                values(n, seed).iter().map(|v| v * s).collect()
            };
            Self {
                block,
                x: values(block.input_len(), seed),
                weight: scaled(block.weight_len(), seed + 1, 0.3),
                bias: scaled(block.cout, seed + 2, 0.2),
                dout: values(block.output_len(), seed + 3),
            }
        }
    }

    /// The reference forward, by textbook loops on the unfused composition.
    struct Naive {
        /// `conv2d(x) + bias`, `batch × cout × size × size`.
        t: Vec<f32>,
        /// `max_pool2d(relu(t))`.
        out: Vec<f32>,
        /// Per output, the index into `t` of the element the pool picked.
        winner: Vec<usize>,
    }

    fn relu(v: f32) -> f32 {
        if v > 0.0 || v.is_nan() { v } else { 0.0 }
    }

    /// Input pixel `(y + kh - 1, x + kw - 1)` of a `size × size` plane, if inside it.
    fn shifted(y: usize, x: usize, kh: usize, kw: usize, size: usize) -> Option<(usize, usize)> {
        let (sy, sx) = ((y + kh).wrapping_sub(1), (x + kw).wrapping_sub(1));
        (sy < size && sx < size).then_some((sy, sx))
    }

    fn naive_forward(c: &Case) -> Naive {
        let Block {
            batch,
            cin,
            cout,
            size: s,
        } = c.block;
        let mut t = vec![0.0f32; batch * cout * s * s];
        for n in 0..batch {
            for co in 0..cout {
                for y in 0..s {
                    for x in 0..s {
                        let mut acc = 0.0f64;
                        for ci in 0..cin {
                            for kh in 0..3 {
                                for kw in 0..3 {
                                    if let Some((sy, sx)) = shifted(y, x, kh, kw, s) {
                                        let w = c.weight[((co * cin + ci) * 3 + kh) * 3 + kw];
                                        let v = c.x[((n * cin + ci) * s + sy) * s + sx];
                                        acc += f64::from(w) * f64::from(v);
                                    }
                                }
                            }
                        }
                        t[((n * cout + co) * s + y) * s + x] = acc as f32 + c.bias[co];
                    }
                }
            }
        }
        let h = s / 2;
        let (mut out, mut winner) = (Vec::new(), Vec::new());
        for plane in 0..batch * cout {
            for y in 0..h {
                for x in 0..h {
                    let mut best: Option<(f32, usize)> = None;
                    for dy in 0..2 {
                        for dx in 0..2 {
                            let i = (plane * s + 2 * y + dy) * s + 2 * x + dx;
                            let v = relu(t[i]);
                            // burn-flex: `max_idx < 0 || val > max_val || val.is_nan()`.
                            if best.is_none_or(|(m, _)| v > m || v.is_nan()) {
                                best = Some((v, i));
                            }
                        }
                    }
                    let (v, i) = best.expect("a 2×2 window has elements");
                    out.push(v);
                    winner.push(i);
                }
            }
        }
        Naive { t, out, winner }
    }

    /// The chain rule through the unfused ops: the pool's backward adds each output's gradient
    /// to its winner, ReLU's keeps it where `t > 0`, then the convolution's adjoints.
    fn naive_backward(c: &Case, r: &Naive) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let Block {
            batch,
            cin,
            cout,
            size: s,
        } = c.block;
        let mut dr = vec![0.0f64; r.t.len()];
        for (&i, &g) in r.winner.iter().zip(&c.dout) {
            dr[i] += f64::from(g);
        }
        let dt: Vec<f64> = dr
            .iter()
            .zip(&r.t)
            .map(|(&g, &t)| if t > 0.0 || t.is_nan() { g } else { 0.0 })
            .collect();
        let mut dx = vec![0.0f64; c.x.len()];
        let mut dw = vec![0.0f64; c.weight.len()];
        let mut db = vec![0.0f64; cout];
        for n in 0..batch {
            for co in 0..cout {
                for y in 0..s {
                    for x in 0..s {
                        let g = dt[((n * cout + co) * s + y) * s + x];
                        db[co] += g;
                        for ci in 0..cin {
                            for kh in 0..3 {
                                for kw in 0..3 {
                                    if let Some((sy, sx)) = shifted(y, x, kh, kw, s) {
                                        let wi = ((co * cin + ci) * 3 + kh) * 3 + kw;
                                        let xi = ((n * cin + ci) * s + sy) * s + sx;
                                        dw[wi] += g * f64::from(c.x[xi]);
                                        dx[xi] += g * f64::from(c.weight[wi]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let single = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        (single(dx), single(dw), single(db))
    }

    /// Our argmax bytes from the reference's winners: the winner's place in its window, or DEAD
    /// where ReLU's backward stops the gradient at the winner (`t <= 0`).
    fn expected_argmax(c: &Case, r: &Naive) -> Vec<u8> {
        let s = c.block.size;
        r.winner
            .iter()
            .map(|&i| {
                let t = r.t[i];
                if t > 0.0 || t.is_nan() {
                    ((i / s % 2) * 2 + i % s % 2) as u8
                } else {
                    DEAD
                }
            })
            .collect()
    }

    /// The four `t` values of the window holding flat index `i`.
    fn window(t: &[f32], s: usize, i: usize) -> [f32; 4] {
        let top_left = (i / s - i / s % 2) * s + i % s - i % s % 2;
        [
            t[top_left],
            t[top_left + 1],
            t[top_left + s],
            t[top_left + s + 1],
        ]
    }

    /// Each element within `tol` of the wanted one, relative to its magnitude (absolute below 1).
    #[track_caller]
    fn assert_rel(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * w.abs().max(1.0),
                "{what}[{i}]: got {g}, want {w}"
            );
        }
    }

    #[track_caller]
    fn assert_same_argmax(what: &str, got: &[u8], want: &[u8]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!("{what}: argmax[{i}] is {}, want {}", got[i], want[i]);
        }
    }

    /// Our gradients against the naive chain rule, and `need_dx = false` changing nothing else.
    fn check_gradients(c: &Case) {
        let what = format!("{:?}", c.block);
        let r = naive_forward(c);
        let (_, argmax) = forward(c.block, &c.x, &c.weight, &c.bias);
        assert_same_argmax(&what, &argmax, &expected_argmax(c, &r));
        let (want_dx, want_dweight, want_dbias) = naive_backward(c, &r);
        // Every instruction set this CPU has: each reads the neighbourhood rows in registers of
        // its own width (the first block's rows overhanging them on AVX-512 and AVX2).
        for isa in Isa::available() {
            let what = format!("{what} on {}", isa.name());
            let (dx, dweight, dbias) =
                backward_on(isa, c.block, &c.x, &c.weight, &argmax, &c.dout, true);
            let dx = dx.expect("dx was asked for");
            assert_rel(&format!("{what} dx"), &dx, &want_dx, 1e-4);
            assert_rel(&format!("{what} dweight"), &dweight, &want_dweight, 1e-4);
            assert_rel(&format!("{what} dbias"), &dbias, &want_dbias, 1e-4);
            let (none, dweight2, dbias2) =
                backward_on(isa, c.block, &c.x, &c.weight, &argmax, &c.dout, false);
            assert!(none.is_none());
            assert!(bits(&dweight2) == bits(&dweight) && bits(&dbias2) == bits(&dbias));
        }
    }

    /// On exactly representable data the backward gives the naive loops' values (every sum is exact, whatever its order), on every instruction set.
    #[test]
    fn backward_is_exact_on_grid_data_on_every_instruction_set() {
        for (k, &block) in SHAPES.iter().enumerate() {
            let c = Case::grid(block, 130 + k as u64);
            let r = naive_forward(&c);
            let (_, argmax) = forward(block, &c.x, &c.weight, &c.bias);
            let (want_dx, want_dweight, want_dbias) = naive_backward(&c, &r);
            for isa in Isa::available() {
                let (dx, dweight, dbias) =
                    backward_on(isa, block, &c.x, &c.weight, &argmax, &c.dout, true);
                let what = format!("{block:?} on {}", isa.name());
                // Equal values (a zero's sign may differ with the order of the sums).
                assert!(dx.unwrap() == want_dx, "{what}: dx");
                assert!(dweight == want_dweight, "{what}: dweight");
                assert!(dbias == want_dbias, "{what}: dbias");
            }
        }
    }

    #[test]
    fn forward_matches_naive_loops_with_burns_tie_rule() {
        let (mut ties, mut dead) = (0, 0);
        for (k, &block) in SHAPES.iter().enumerate() {
            let c = Case::grid(block, 10 + k as u64);
            let r = naive_forward(&c);
            let (out, argmax) = forward(block, &c.x, &c.weight, &c.bias);
            let what = format!("{block:?}");
            assert_rel(&what, &out, &r.out, 1e-6);
            assert_same_argmax(&what, &argmax, &expected_argmax(&c, &r));
            dead += argmax.iter().filter(|&&a| a == DEAD).count();
            ties += r
                .winner
                .iter()
                .filter(|&&i| {
                    let w = window(&r.t, block.size, i);
                    let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    max > 0.0 && w.iter().filter(|&&v| v == max).count() > 1
                })
                .count();
        }
        // The grid data must have exercised both rules.
        assert!(ties > 0, "no live window with a tied maximum");
        assert!(dead > 0, "no window cut by ReLU");
    }

    #[test]
    fn forward_matches_naive_loops_on_real_valued_data() {
        for (k, &block) in SHAPES.iter().enumerate() {
            let c = Case::smooth(block, 20 + k as u64);
            let r = naive_forward(&c);
            let (out, argmax) = forward(block, &c.x, &c.weight, &c.bias);
            assert_rel(&format!("{block:?}"), &out, &r.out, 1e-4);
            // The GEMM rounds differently from the naive sums: compare the winners only where
            // no near-tie, and no maximum near ReLU's kink, could flip them.
            let want = expected_argmax(&c, &r);
            let mut compared = 0;
            for (o, (&got, &want)) in argmax.iter().zip(&want).enumerate() {
                let mut w = window(&r.t, block.size, r.winner[o]);
                w.sort_by(|a, b| b.total_cmp(a));
                if w[0] < -1e-3 || (w[0] > 1e-3 && w[0] - w[1] > 1e-3) {
                    assert_eq!(got, want, "{block:?}: argmax[{o}], window {w:?}");
                    compared += 1;
                }
            }
            assert!(
                compared * 10 >= argmax.len() * 9,
                "{block:?}: too many near-ties"
            );
        }
    }

    #[test]
    fn equal_inputs_tie_to_the_first_window_position() {
        let block = Block {
            batch: 2,
            cin: 3,
            cout: 4,
            size: 8,
        };
        let c = Case {
            block,
            x: vec![1.0; block.input_len()],
            weight: vec![0.25; block.weight_len()],
            bias: vec![0.5; block.cout],
            dout: values(block.output_len(), 30),
        };
        let r = naive_forward(&c);
        let (out, argmax) = forward(block, &c.x, &c.weight, &c.bias);
        assert_rel("out", &out, &r.out, 1e-6);
        assert_same_argmax("all equal", &argmax, &expected_argmax(&c, &r));
        // A pixel's value counts the taps that fall inside the image: 9 inside, 6 on an edge,
        // 4 in a corner. Where several share the window's maximum, the first must win.
        let h = block.size / 2;
        for plane in argmax.chunks_exact(h * h) {
            for wy in 0..h {
                for wx in 0..h {
                    let want = match (wy, wx) {
                        // Only (1, 1) sees all nine taps.
                        (0, 0) => 3,
                        // Top edge: the bottom two see nine taps each, (1, 0) comes first.
                        (0, _) if wx < h - 1 => 2,
                        // Left edge: the right two see nine, (0, 1) comes first.
                        (_, 0) if wy < h - 1 => 1,
                        // Inside: all four equal.
                        _ if wy < h - 1 && wx < h - 1 => 0,
                        _ => continue,
                    };
                    assert_eq!(plane[wy * h + wx], want, "window ({wy}, {wx})");
                }
            }
        }
        check_gradients(&c);
    }

    #[test]
    fn windows_cut_by_relu_are_dead_and_pass_no_gradient() {
        let block = Block {
            batch: 3,
            cin: 3,
            cout: 16,
            size: 8,
        };
        let mut c = Case::grid(block, 60);
        // |conv| <= 27 · 4 · 0.5 = 54: every window of channel 0 is negative.
        c.bias[0] = -100.0;
        let (out, argmax) = forward(block, &c.x, &c.weight, &c.bias);
        let (per_image, per_channel) = (block.output_len() / block.batch, (block.size / 2).pow(2));
        for image in 0..block.batch {
            let channel0 = image * per_image..image * per_image + per_channel;
            assert!(argmax[channel0.clone()].iter().all(|&a| a == DEAD));
            assert!(out[channel0].iter().all(|&o| o == 0.0));
        }
        let (_, dweight, dbias) = backward(block, &c.x, &c.weight, &argmax, &c.dout, false);
        assert!(dweight[..block.cin * 9].iter().all(|&g| g == 0.0));
        assert_eq!(dbias[0], 0.0);
        check_gradients(&c);

        // Exactly zero is dead too: ReLU's backward passes only where its input is > 0.
        let zero = Case {
            x: vec![0.0; block.input_len()],
            bias: vec![0.0; block.cout],
            ..c
        };
        let (out, argmax) = forward(block, &zero.x, &zero.weight, &zero.bias);
        assert!(argmax.iter().all(|&a| a == DEAD));
        assert!(out.iter().all(|&o| o == 0.0));
        let (dx, dweight, dbias) =
            backward(block, &zero.x, &zero.weight, &argmax, &zero.dout, true);
        let dx = dx.expect("dx was asked for");
        assert!(dx.iter().chain(&dweight).chain(&dbias).all(|&g| g == 0.0));
    }

    #[test]
    fn gradients_match_the_chain_rule_through_the_unfused_ops() {
        for (k, &block) in SHAPES.iter().enumerate() {
            check_gradients(&Case::grid(block, 30 + k as u64));
        }
    }

    #[test]
    fn gradients_match_with_real_valued_output_gradients() {
        // Exact forward (so the same winners as the naive loops), rounding in the backward.
        let shapes = [
            SHAPES[1],
            Block {
                batch: 2,
                cin: 16,
                cout: 32,
                size: 16,
            },
        ];
        for (k, block) in shapes.into_iter().enumerate() {
            let mut c = Case::grid(block, 70 + k as u64);
            c.dout = values(block.output_len(), 80 + k as u64);
            check_gradients(&c);
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Several chunks, the last one partial.
        let block = Block {
            batch: 13,
            cin: 16,
            cout: 32,
            size: 16,
        };
        let c = Case::smooth(block, 90);
        let run = || {
            let (out, argmax) = forward(block, &c.x, &c.weight, &c.bias);
            let (dx, dweight, dbias) = backward(block, &c.x, &c.weight, &argmax, &c.dout, true);
            let dx = dx.expect("dx was asked for");
            (bits(&out), argmax, bits(&dx), bits(&dweight), bits(&dbias))
        };
        let reference = run();
        assert!(run() == reference, "two calls differ");
        let run = &run;
        for threads in [1, 2, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            assert!(pool.install(run) == reference, "{threads} threads differ");
        }
    }

    #[test]
    fn weight_gradient_matches_finite_differences() {
        let block = Block {
            batch: 2,
            cin: 2,
            cout: 2,
            size: 4,
        };
        let c = Case::smooth(block, 40);
        // loss(weight) = Σ out · dout, whose weight gradient `backward` computes from `dout`.
        let loss = |weight: &[f32]| {
            let (out, argmax) = forward(block, &c.x, weight, &c.bias);
            let dot = out.iter().zip(&c.dout);
            let value: f64 = dot.map(|(&o, &g)| f64::from(o) * f64::from(g)).sum();
            (value, argmax)
        };
        let (_, argmax) = loss(&c.weight);
        let (_, dweight, _) = backward(block, &c.x, &c.weight, &argmax, &c.dout, false);
        let eps = 1e-3f32;
        let mut checked = 0;
        for j in 0..c.weight.len() {
            let mut weight = c.weight.clone();
            weight[j] = c.weight[j] + eps;
            let (up, argmax_up) = loss(&weight);
            weight[j] = c.weight[j] - eps;
            let (down, argmax_down) = loss(&weight);
            // With the same winners (and the same DEAD windows) at both ends, every output is
            // linear in this weight in between, so the central difference is exact up to
            // rounding. A window that changes winner or crosses ReLU's kink is skipped.
            if argmax_up != argmax || argmax_down != argmax {
                continue;
            }
            let step = f64::from(c.weight[j] + eps) - f64::from(c.weight[j] - eps);
            let numeric = (up - down) / step;
            let analytic = f64::from(dweight[j]);
            assert!(
                (numeric - analytic).abs() <= 1e-2 * analytic.abs().max(1.0),
                "dweight[{j}]: backward {analytic}, finite difference {numeric}"
            );
            checked += 1;
        }
        assert!(
            checked * 2 >= c.weight.len(),
            "only {checked} weights checked"
        );
    }

    #[test]
    fn pooling_picks_the_element_burn_picks() {
        // (2×2 conv values row-major, bias, output, argmax)
        let cases: [([f32; 4], f32, f32, u8); 8] = [
            // All tied: the first.
            ([1.0, 1.0, 1.0, 1.0], 0.0, 1.0, 0),
            // Two tied: the earlier.
            ([0.0, 2.0, 2.0, 1.0], 0.0, 2.0, 1),
            ([-1.0, 0.5, 0.2, 0.5], 1.0, 1.5, 1),
            // max + bias == 0: ReLU passes nothing back.
            ([1.0, 3.0, 3.0, 3.0], -3.0, 0.0, DEAD),
            ([-1.0, -2.0, -3.0, -1.0], 0.0, 0.0, DEAD),
            ([0.0; 4], 0.0, 0.0, DEAD),
            ([f32::NEG_INFINITY; 4], 0.0, 0.0, DEAD),
            // 1 and 1 + ε both round to 1e8 once the bias is added; Burn compares those, so
            // this is a tie, which the first element wins.
            ([1.0, 1.0 + f32::EPSILON, 0.5, 0.5], 1e8, 1e8, 0),
        ];
        for (conv, bias, want_out, want_argmax) in cases {
            let (mut out, mut argmax) = ([f32::NAN], [7u8]);
            bias_relu_pool_argmax(&conv, 1, 2, &[bias], &mut out, &mut argmax);
            assert_eq!(
                (out[0], argmax[0]),
                (want_out, want_argmax),
                "{conv:?} + {bias}"
            );
        }
        // A NaN always wins, the last one: the output stays NaN and passes its gradient.
        let (mut out, mut argmax) = ([0.0], [7u8]);
        let conv = [1.0, f32::NAN, 2.0, f32::NAN];
        bias_relu_pool_argmax(&conv, 1, 2, &[0.0], &mut out, &mut argmax);
        assert!(out[0].is_nan());
        assert_eq!(argmax[0], 3);
    }

    #[test]
    fn padded_channel_last_round_trips_with_a_zero_border() {
        for (c, size) in [(1, 2), (3, 8), (16, 6)] {
            let x = grid(c * size * size, 50, 4.0, 1.0);
            let rows = Rows::new(c, 16);
            let mut xcl = vec![0.0; rows.padded_len(size)];
            crate::sparse::to_padded_channel_last(&x, c, size, &mut xcl);
            let padded = size + 2;
            for (p, pixel) in xcl.chunks_exact(c).take(padded * padded).enumerate() {
                let (y, x) = (p / padded, p % padded);
                if y == 0 || x == 0 || y == padded - 1 || x == padded - 1 {
                    assert!(pixel.iter().all(|&v| v == 0.0), "border ({y}, {x})");
                }
            }
            let mut back = vec![f32::NAN; x.len()];
            crate::sparse::from_padded_channel_last(&xcl, c, size, &mut back);
            assert!(bits(&back) == bits(&x), "c {c}, size {size}");
        }
    }

    #[test]
    fn an_empty_batch_gives_empty_outputs_and_zero_gradients() {
        let block = Block {
            batch: 0,
            cin: 3,
            cout: 16,
            size: 8,
        };
        let c = Case::smooth(block, 1);
        let (out, argmax) = forward(block, &c.x, &c.weight, &c.bias);
        assert!(out.is_empty() && argmax.is_empty());
        let (dx, dweight, dbias) = backward(block, &c.x, &c.weight, &argmax, &c.dout, true);
        assert_eq!(dx, Some(Vec::new()));
        assert_eq!(dweight, vec![0.0; block.weight_len()]);
        assert_eq!(dbias, vec![0.0; block.cout]);
    }
}
