//! The first block, conv 3→16 → bias → ReLU → 2×2 max-pool, as a direct convolution.
//!
//! With three input channels an im2col matrix would be 27 rows deep and the GEMM would spend its
//! time packing; instead each output pixel keeps its 16 channels in registers (one AVX-512
//! register, two AVX2 ones), and each of the 27 taps is one broadcast input value times one
//! vector of 16 weights, prepacked tap-major at load. A block of 2 rows × `BW` columns of
//! accumulators is a whole number of pooling windows, so the pool, bias and ReLU happen in
//! registers and only the pooled map is stored: channel-last (`[y][x][16]`), inside a zero
//! border, which is the layout the Winograd stage reads.

use std::ops::Range;

use crate::simd::Simd;

/// Input channels, output channels, taps per channel.
const CIN: usize = crate::C0;
const COUT: usize = crate::C1;
const TAPS: usize = 9;

/// Side of the input, and of the input with its one-pixel zero border.
pub(crate) const SIDE: usize = crate::S1;
pub(crate) const PADDED: usize = SIDE + 2;
/// Floats in the zero-bordered input, `[3][66][66]`.
pub(crate) const PADDED_INPUT: usize = CIN * PADDED * PADDED;

/// Side of the pooled output, and of the pooled output with its zero border: `[34][34][16]`.
pub(crate) const OUT_SIDE: usize = SIDE / 2;
pub(crate) const OUT_PADDED: usize = OUT_SIDE + 2;
pub(crate) const PADDED_OUTPUT: usize = OUT_PADDED * OUT_PADDED * COUT;

/// Reorders Burn's `[16, 3, 3, 3]` weights to `[27 taps][16 channels]`: one vector per tap.
pub(crate) fn pack_weights(weight: &[f32]) -> Vec<f32> {
    let mut packed = vec![0.0; CIN * TAPS * COUT];
    for co in 0..COUT {
        for tap in 0..CIN * TAPS {
            packed[tap * COUT + co] = weight[co * CIN * TAPS + tap];
        }
    }
    packed
}

/// Copies the input rows that the pooled output rows `rows` read from a `[3][64][64]` image
/// into the interior of `padded` (`[3][66][66]`), whose border stays zero.
pub(crate) fn pad_input(image: &[f32], rows: Range<usize>, padded: &mut [f32]) {
    // Pooled row y reads conv rows 2y, 2y+1, which read input rows 2y-1 ..= 2y+2.
    let first = (2 * rows.start).saturating_sub(1);
    let end = (2 * rows.end + 1).min(SIDE);
    for c in 0..CIN {
        for y in first..end {
            let src = &image[(c * SIDE + y) * SIDE..][..SIDE];
            padded[(c * PADDED + y + 1) * PADDED + 1..][..SIDE].copy_from_slice(src);
        }
    }
}

/// Pooled output rows `rows` of the block, from the zero-bordered input `padded`, written into
/// the interior of `out` (`[34][34][16]`). `NV` registers hold one pixel's 16 channels
/// (`NV · S::LANES == 16`); each step computes `2 × BW` pixels.
// Inlined into each instruction set's `#[target_feature]` entry point (`dispatch!`), where it
// compiles with those instructions; the loops index several arrays in step.
#[allow(clippy::inline_always, clippy::needless_range_loop)]
#[inline(always)]
pub(crate) fn conv_pool<S: Simd, const NV: usize, const BW: usize>(
    padded: &[f32],
    weight: &[f32],
    bias: &[f32],
    rows: Range<usize>,
    out: &mut [f32],
) {
    const { assert!(BW.is_multiple_of(2) && SIDE.is_multiple_of(BW)) };
    assert!(NV * S::LANES == COUT);
    assert!(padded.len() >= PADDED_INPUT && out.len() >= PADDED_OUTPUT);
    assert!(weight.len() >= CIN * TAPS * COUT && bias.len() >= COUT);
    assert!(rows.end <= OUT_SIDE);
    let (x, w, o) = (padded.as_ptr(), weight.as_ptr(), out.as_mut_ptr());
    // SAFETY: the asserts bound every offset below: input rows 2y + r + dy ≤ 2·31 + 3 < 66 and
    // columns bx + j + dx ≤ 64 - BW + BW - 1 + 2 < 66 in a `[3][66][66]` array; taps < 27 in
    // a `[27][16]` one; output pixels (y + 1, bx/2 + jp + 1) ≤ (32, 32) in a `[34][34][16]` one.
    // The instruction set of `S` is the caller's (`dispatch!`) to guarantee.
    unsafe {
        let bias: [S::V; NV] = std::array::from_fn(|v| S::load(bias.as_ptr().add(v * S::LANES)));
        for y in rows {
            for bx in (0..SIDE).step_by(BW) {
                let mut acc = [[[S::zero(); NV]; BW]; 2];
                for c in 0..CIN {
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let tap = (c * 3 + dy) * 3 + dx;
                            let wv: [S::V; NV] =
                                std::array::from_fn(|v| S::load(w.add(tap * COUT + v * S::LANES)));
                            for (r, acc) in acc.iter_mut().enumerate() {
                                let row = x.add((c * PADDED + 2 * y + r + dy) * PADDED + bx + dx);
                                for (j, acc) in acc.iter_mut().enumerate() {
                                    let b = S::splat(*row.add(j));
                                    for v in 0..NV {
                                        acc[v] = S::fma(b, wv[v], acc[v]);
                                    }
                                }
                            }
                        }
                    }
                }
                for jp in 0..BW / 2 {
                    let dst = o.add(((y + 1) * OUT_PADDED + bx / 2 + jp + 1) * COUT);
                    for v in 0..NV {
                        let top = S::max(acc[0][2 * jp][v], acc[0][2 * jp + 1][v]);
                        let bottom = S::max(acc[1][2 * jp][v], acc[1][2 * jp + 1][v]);
                        // Pool first: adding one bias and ReLU are monotonic, so they commute
                        // with max, and run once per pooled value instead of four times.
                        let pooled = S::add(S::max(top, bottom), bias[v]);
                        S::store(dst.add(v * S::LANES), S::max(pooled, S::zero()));
                    }
                }
            }
        }
    }
}
