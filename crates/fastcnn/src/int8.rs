//! The int8 kernels: the second convolution block and the hidden layer on 8-bit values.
//!
//! Post-training static quantisation: weights per output channel, symmetric (`i8`, scale
//! `max |w| / 127`); activations per tensor with zero point 0 (`u8`, scale `max / 255` over
//! calibration images), which suits this network because every activation that feeds a
//! quantised layer comes out of a ReLU. One `vpdpbusd` (AVX-512 VNNI) does 64 of these
//! multiply-adds, four times what one FP32 FMA does, and the hidden layer's weights shrink from
//! 3.3 MB to 0.8 MB. The first block stays FP32 (three input channels: little arithmetic, and
//! its input is signed); its pooled output is quantised as it is stored. Pooling on the `i32`
//! sums before requantising is exact: requantisation is monotonic.
//!
//! The arithmetic is integer up to each requantisation and every instruction set rounds the
//! same way there, so the three builds of each kernel agree bit for bit (the tests hold them to
//! that, and to textbook loops).

use std::ops::Range;

use crate::simd::Simd;

const C1: usize = crate::C1;
const C2: usize = crate::C2;
/// Side of the first block's pooled map inside its zero border.
const IN_PADDED: usize = crate::direct::OUT_PADDED;
/// Side of the second block's conv output (its pooled output is half of it).
const SIDE: usize = crate::S2;
/// Hidden units per weight block: one AVX-512 register of `i32` sums.
pub(crate) const BLOCK: usize = 16;

/// `[9 taps][4 groups of input channels][32 out][4 in]`: one register of weights per tap,
/// group and 16 output channels, each lane holding the four input channels of its group.
pub(crate) fn pack_conv(q: &[i8]) -> Vec<i8> {
    let mut packed = vec![0; C2 * C1 * 9];
    for co in 0..C2 {
        for ci in 0..C1 {
            for tap in 0..9 {
                let at = ((tap * (C1 / 4) + ci / 4) * C2 + co) * 4 + ci % 4;
                packed[at] = q[(co * C1 + ci) * 9 + tap];
            }
        }
    }
    packed
}

/// A `[features][hidden]` weight matrix as `[hidden / 16 blocks][features / 4][16][4]`, the
/// hidden width padded with zeros to a whole block: per block, each group of four features is
/// one register of weights.
pub(crate) fn pack_linear(q: &[i8], features: usize, hidden: usize) -> Vec<i8> {
    let blocks = hidden.div_ceil(BLOCK);
    let groups = features / 4;
    let mut packed = vec![0; blocks * groups * BLOCK * 4];
    for f in 0..features {
        for h in 0..hidden {
            let at = (((h / BLOCK) * groups + f / 4) * BLOCK + h % BLOCK) * 4 + f % 4;
            packed[at] = q[f * hidden + h];
        }
    }
    packed
}

/// Symmetric per-channel quantisation of `rows` rows of `len` weights, weight `i` of row `r`
/// at `w[at(r, i)]`: the `i8` values, each where its float was, and each row's scale.
pub(crate) fn quantize_rows(
    w: &[f32],
    rows: usize,
    len: usize,
    at: impl Fn(usize, usize) -> usize,
) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; w.len()];
    let mut scales = Vec::with_capacity(rows);
    for r in 0..rows {
        let largest = (0..len).map(|i| w[at(r, i)].abs()).fold(0.0f32, f32::max);
        let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
        for i in 0..len {
            q[at(r, i)] = (w[at(r, i)] / scale).round().clamp(-127.0, 127.0) as i8;
        }
        scales.push(scale);
    }
    (q, scales)
}

/// Quantises the first block's pooled rows `rows` (FP32, bordered, channel-last) to `u8`
/// at `1 / inverse_scale` per step, into the same places of `out`.
#[allow(clippy::inline_always)]
#[inline(always)]
pub(crate) fn quantize_map<S: Simd>(
    input: &[f32],
    inverse_scale: f32,
    rows: Range<usize>,
    out: &mut [u8],
) {
    let len = IN_PADDED * IN_PADDED * C1;
    assert!(input.len() >= len && out.len() >= len && rows.end <= SIDE);
    // SAFETY: rows y + 1 ≤ 32 and columns x + 1 ≤ 32 of a `[34][34][16]` map, in both arrays;
    // the instruction set is the caller's (`dispatch!`) to guarantee.
    unsafe {
        let inverse = S::splat(inverse_scale);
        for y in rows {
            let start = ((y + 1) * IN_PADDED + 1) * C1;
            for i in (start..start + SIDE * C1).step_by(S::LANES) {
                let x = S::load(input.as_ptr().add(i));
                S::store_u8(out.as_mut_ptr().add(i), S::fma(x, inverse, S::zero()));
            }
        }
    }
}

/// The second block on `u8` input (`[34][34][16]`, bordered): pooled rows `rows` of the
/// `[16 · 16 positions][32]` feature map, requantised per channel (`q = m · Σ + c`, ReLU) and
/// written to `out` from its start. `NK` registers hold 32 channels; each step computes a
/// block of 2 × `BW` conv outputs.
// `iload` is an unaligned load, so casting byte pointers to `i32` ones is sound.
#[allow(
    clippy::inline_always,
    clippy::needless_range_loop,
    clippy::cast_ptr_alignment
)]
#[inline(always)]
pub(crate) fn conv_pool<S: Simd, const NK: usize, const BW: usize>(
    input: &[u8],
    weight: &[i8],
    m: &[f32],
    c: &[f32],
    rows: Range<usize>,
    out: &mut [u8],
) {
    const { assert!(BW.is_multiple_of(2) && SIDE.is_multiple_of(BW)) };
    assert!(NK * S::LANES == C2);
    assert!(input.len() >= IN_PADDED * IN_PADDED * C1 && weight.len() >= 9 * C1 * C2);
    assert!(m.len() >= C2 && c.len() >= C2);
    assert!(rows.end <= SIDE / 2 && out.len() >= rows.len() * SIDE / 2 * C2);
    let (x, w, o) = (input.as_ptr(), weight.as_ptr(), out.as_mut_ptr());
    // SAFETY: a conv output (2y + r, bx + j) reads bordered rows and columns up to
    // 2·15 + 1 + 2 = 33 and 32 - BW + BW - 1 + 2 = 33 of a `[34][34][16]` map, four bytes
    // at a time from a multiple of four channels; weights up to (9·4·32)·4 bytes; outputs to
    // position (y - rows.start)·16 + 15 < rows.len()·16. The instruction set is the
    // caller's (`dispatch!`) to guarantee.
    unsafe {
        let scale: [S::V; NK] = std::array::from_fn(|k| S::load(m.as_ptr().add(k * S::LANES)));
        let shift: [S::V; NK] = std::array::from_fn(|k| S::load(c.as_ptr().add(k * S::LANES)));
        for y in rows.clone() {
            for bx in (0..SIDE).step_by(BW) {
                let mut acc = [[[S::izero(); NK]; BW]; 2];
                for dy in 0..3 {
                    for dx in 0..3 {
                        for g in 0..C1 / 4 {
                            let wv: [S::I; NK] = std::array::from_fn(|k| {
                                let at = (((dy * 3 + dx) * (C1 / 4) + g) * C2 + k * S::LANES) * 4;
                                S::iload(w.add(at).cast::<i32>())
                            });
                            for (r, acc) in acc.iter_mut().enumerate() {
                                let row =
                                    x.add(((2 * y + r + dy) * IN_PADDED + bx + dx) * C1 + g * 4);
                                for (j, acc) in acc.iter_mut().enumerate() {
                                    let a = row.add(j * C1).cast::<u32>().read_unaligned();
                                    for k in 0..NK {
                                        acc[k] = S::dot4(acc[k], a, wv[k]);
                                    }
                                }
                            }
                        }
                    }
                }
                for jp in 0..BW / 2 {
                    let dst = o.add(((y - rows.start) * (SIDE / 2) + bx / 2 + jp) * C2);
                    for k in 0..NK {
                        let top = S::imax(acc[0][2 * jp][k], acc[0][2 * jp + 1][k]);
                        let bottom = S::imax(acc[1][2 * jp][k], acc[1][2 * jp + 1][k]);
                        let sum = S::to_float(S::imax(top, bottom));
                        S::store_u8(dst.add(k * S::LANES), S::fma(sum, scale[k], shift[k]));
                    }
                }
            }
        }
    }
}

/// `out[i][h] = Σ_f x[i][f] · w[f][h]` in `i32` for `images` rows of `u8` features (`stride`
/// bytes apart, the groups of four `groups` of them) and weights packed by [`pack_linear`]
/// with `all_groups` groups per block; `out` has `blocks · 16` sums per image. `R` images share
/// each weight load; `NJ` registers hold a block's 16 sums.
#[allow(
    clippy::inline_always,
    clippy::needless_range_loop,
    clippy::too_many_arguments
)]
#[inline(always)]
pub(crate) fn linear<S: Simd, const NJ: usize, const R: usize>(
    x: &[u8],
    stride: usize,
    images: usize,
    groups: Range<usize>,
    weight: &[i8],
    all_groups: usize,
    out: &mut [i32],
) {
    assert!(NJ * S::LANES == BLOCK && groups.end <= all_groups);
    let blocks = weight.len() / (all_groups * BLOCK * 4);
    let width = blocks * BLOCK;
    assert!(images == 0 || (images - 1) * stride + groups.len() * 4 <= x.len());
    assert!(out.len() >= images * width);
    let full = images / R * R;
    for first in (0..full).step_by(R) {
        linear_rows::<S, NJ, R>(x, stride, first, groups.clone(), weight, all_groups, out);
    }
    for first in full..images {
        linear_rows::<S, NJ, 1>(x, stride, first, groups.clone(), weight, all_groups, out);
    }
}

/// [`linear`] for the `R` images from `first`, whose bounds it has checked. (`iload` is an
/// unaligned load, so casting byte pointers to `i32` ones is sound.)
#[allow(
    clippy::inline_always,
    clippy::needless_range_loop,
    clippy::too_many_arguments,
    clippy::cast_ptr_alignment
)]
#[inline(always)]
fn linear_rows<S: Simd, const NJ: usize, const R: usize>(
    x: &[u8],
    stride: usize,
    first: usize,
    groups: Range<usize>,
    weight: &[i8],
    all_groups: usize,
    out: &mut [i32],
) {
    let blocks = weight.len() / (all_groups * BLOCK * 4);
    let width = blocks * BLOCK;
    let (xp, wp, op) = (x.as_ptr(), weight.as_ptr(), out.as_mut_ptr());
    // SAFETY: `linear`'s asserts bound every read of `x` (image first + r < images, group
    // offset < groups.len()·4), of `weight` (block < blocks, group < all_groups) and every
    // write of `out`. The instruction set is the caller's (`dispatch!`) to guarantee.
    unsafe {
        for b in 0..blocks {
            let mut acc = [[S::izero(); NJ]; R];
            for g in groups.clone() {
                let at = (b * all_groups + g) * BLOCK * 4;
                let wv: [S::I; NJ] =
                    std::array::from_fn(|j| S::iload(wp.add(at + j * S::LANES * 4).cast::<i32>()));
                for r in 0..R {
                    let from = (first + r) * stride + (g - groups.start) * 4;
                    let a = xp.add(from).cast::<u32>().read_unaligned();
                    for j in 0..NJ {
                        acc[r][j] = S::dot4(acc[r][j], a, wv[j]);
                    }
                }
            }
            for r in 0..R {
                for j in 0..NJ {
                    let to = (first + r) * width + b * BLOCK + j * S::LANES;
                    S::istore(op.add(to), acc[r][j]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{Isa, dispatch};
    use crate::tests::values;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        values(n, seed)
            .iter()
            .map(|v| ((v + 1.0) * 127.9) as u8)
            .collect()
    }

    fn signed(n: usize, seed: u64) -> Vec<i8> {
        values(n, seed).iter().map(|v| (v * 127.0) as i8).collect()
    }

    /// What every build's `store_u8` does, written out.
    fn requantize(sum: i32, m: f32, c: f32) -> u8 {
        (sum as f32)
            .mul_add(m, c)
            .min(255.0)
            .round_ties_even()
            .max(0.0) as u8
    }

    #[test]
    fn the_second_block_matches_textbook_integer_loops_bit_for_bit() {
        let side = IN_PADDED;
        // A bordered map: random bytes inside, zeros on the border.
        let mut input = bytes(side * side * C1, 1);
        for y in 0..side {
            for x in 0..side {
                if y == 0 || x == 0 || y == side - 1 || x == side - 1 {
                    input[(y * side + x) * C1..][..C1].fill(0);
                }
            }
        }
        let q = signed(C2 * C1 * 9, 2);
        let m: Vec<f32> = values(C2, 3)
            .iter()
            .map(|v| (v.abs() + 0.1) * 1.5e-3)
            .collect();
        let c: Vec<f32> = values(C2, 4).iter().map(|v| v * 40.0).collect();
        let packed = pack_conv(&q);
        let half = SIDE / 2;
        let mut want = vec![0u8; half * half * C2];
        for y in 0..half {
            for x in 0..half {
                for co in 0..C2 {
                    let sum = |cy: usize, cx: usize| {
                        let mut s = 0i32;
                        for ci in 0..C1 {
                            for dy in 0..3 {
                                for dx in 0..3 {
                                    let a = input[((cy + dy) * side + cx + dx) * C1 + ci];
                                    let w = q[(co * C1 + ci) * 9 + dy * 3 + dx];
                                    s += i32::from(a) * i32::from(w);
                                }
                            }
                        }
                        s
                    };
                    let (cy, cx) = (2 * y, 2 * x);
                    let pooled = sum(cy, cx)
                        .max(sum(cy, cx + 1))
                        .max(sum(cy + 1, cx))
                        .max(sum(cy + 1, cx + 1));
                    want[(y * half + x) * C2 + co] = requantize(pooled, m[co], c[co]);
                }
            }
        }
        assert!(want.contains(&0) && want.contains(&255));
        assert!(want.iter().filter(|&&v| v > 0 && v < 255).count() > want.len() / 4);
        for isa in Isa::available() {
            for rows in [0..half, 0..1, 5..11, 15..half] {
                let mut out = vec![7u8; rows.len() * half * C2];
                dispatch!(isa, conv_pool [2, 4] [4, 2] [32, 2]
                    (&input, &packed, &m, &c, rows.clone(), &mut out));
                let expected = &want[rows.start * half * C2..rows.end * half * C2];
                assert!(out == expected, "{isa:?} rows {rows:?}");
            }
        }
    }

    #[test]
    fn the_hidden_layer_matches_textbook_integer_sums_exactly() {
        let (features, hidden) = (256, 37);
        let q = signed(features * hidden, 5);
        let packed = pack_linear(&q, features, hidden);
        let width = hidden.div_ceil(BLOCK) * BLOCK;
        for images in [1usize, 5, 8] {
            let x = bytes(images * features, 6 + images as u64);
            for groups in [0..features / 4, 16..40] {
                let want: Vec<i32> = (0..images)
                    .flat_map(|i| {
                        let (x, q, groups) = (&x, &q, groups.clone());
                        (0..width).map(move |h| {
                            if h >= hidden {
                                return 0;
                            }
                            (groups.start * 4..groups.end * 4)
                                .map(|f| {
                                    i32::from(x[i * features + f]) * i32::from(q[f * hidden + h])
                                })
                                .sum()
                        })
                    })
                    .collect();
                for isa in Isa::available() {
                    let mut out = vec![-1i32; images * width];
                    let input = &x[groups.start * 4..];
                    dispatch!(isa, linear [1, 4] [2, 2] [16, 1]
                        (input, features, images, groups.clone(), &packed, features / 4, &mut out));
                    assert!(out == want, "{isa:?}, {images} images, groups {groups:?}");
                }
            }
        }
    }

    #[test]
    fn quantized_weights_round_to_the_nearest_step_of_each_rows_scale() {
        let w = [0.5, -1.0, 0.25, 0.0, 0.0, 0.0, 2.0, 1.0, -0.01];
        let (q, scales) = quantize_rows(&w, 3, 3, |r, i| r * 3 + i);
        assert_eq!(scales, [1.0 / 127.0, 1.0, 2.0 / 127.0]);
        assert_eq!(q, [64, -127, 32, 0, 0, 0, 127, 64, -1]);
    }
}
