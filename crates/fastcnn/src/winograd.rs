//! The second block, conv 16→32 → bias → ReLU → 2×2 max-pool, by Winograd's F(2×2, 3×3).
//!
//! F(2×2, 3×3) computes a 2×2 patch of a 3×3 convolution from a 4×4 input patch with 16
//! multiplications per input/output channel pair instead of 36 (Lavin & Gray 2015): the input
//! patch `d` and the kernel `g` are transformed (`V = Bᵀ d B`, `U = G g Gᵀ`, `U` once at load),
//! multiplied elementwise and summed over input channels (`M = Σ_c U ⊙ V`: 16 small GEMMs), and
//! transformed back (`Y = Aᵀ M A`). This block is where most of the network's arithmetic is
//! (9.4 of 14.6 MFLOP per image), so 2.25× fewer multiplications here is the largest single
//! saving. And the 2×2 output patch is exactly one pooling window of this network, so the pool,
//! bias and ReLU are applied as each patch leaves the inverse transform: the 32×32 conv output is
//! never stored.
//!
//! Layouts: the input is the first block's pooled map, channel-last with a zero border
//! (`[34][34][16]`); `U` is `[16 positions][16 in][32 out]`; the output is the flattened feature
//! map channel-last, `[16·16 positions][32 channels]` (the hidden layer's weights are permuted
//! to match at load). Each step takes `T` neighbouring patches of one patch row, so that every
//! weight vector loaded in the GEMM serves `T` patches.

use std::ops::Range;

use crate::simd::Simd;

const CIN: usize = crate::C1;
const COUT: usize = crate::C2;
/// The transform's 16 positions (4×4).
const XI: usize = 16;
/// Side of the conv output in 2×2 patches (= the pooled output's side).
pub(crate) const PATCHES: usize = crate::S2 / 2;
/// Side of the zero-bordered input.
const IN_PADDED: usize = crate::direct::OUT_PADDED;
/// Floats in `U`.
pub(crate) const U_LEN: usize = XI * CIN * COUT;

/// `U = G g Gᵀ` for each kernel of Burn's `[32, 16, 3, 3]` weights, laid out
/// `[16 positions][16 in][32 out]`.
pub(crate) fn transform_weights(weight: &[f32]) -> Vec<f32> {
    const G: [[f32; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let mut u = vec![0.0; U_LEN];
    for co in 0..COUT {
        for ci in 0..CIN {
            let g = &weight[(co * CIN + ci) * 9..][..9];
            for i in 0..4 {
                for j in 0..4 {
                    let mut sum = 0.0f32;
                    for a in 0..3 {
                        for b in 0..3 {
                            sum += G[i][a] * g[a * 3 + b] * G[j][b];
                        }
                    }
                    u[((i * 4 + j) * CIN + ci) * COUT + co] = sum;
                }
            }
        }
    }
    u
}

/// Pooled output for the patch rows `rows`, from the first block's bordered map `input`,
/// written to `out` from its start: `[rows.len() · 16 positions][32 channels]`. `NC` registers
/// hold 16 input channels, `NK` hold 32 output channels (`NC · S::LANES == 16`,
/// `NK · S::LANES == 32`); each step transforms `T` patches.
// Inlined into each instruction set's `#[target_feature]` entry point (`dispatch!`), where it
// compiles with those instructions; the loops index several arrays in step.
#[allow(clippy::inline_always, clippy::needless_range_loop)]
#[inline(always)]
pub(crate) fn conv_pool<S: Simd, const NC: usize, const NK: usize, const T: usize>(
    input: &[f32],
    u: &[f32],
    bias: &[f32],
    rows: Range<usize>,
    out: &mut [f32],
) {
    const { assert!(PATCHES.is_multiple_of(T)) };
    assert!(NC * S::LANES == CIN && NK * S::LANES == COUT);
    assert!(input.len() >= IN_PADDED * IN_PADDED * CIN && u.len() >= U_LEN && bias.len() >= COUT);
    assert!(rows.end <= PATCHES && out.len() >= rows.len() * PATCHES * COUT);
    // Transformed inputs `[ξ][T][16 in]` and products `[T][ξ][32 out]`, on the stack.
    let mut v = [[[0.0f32; CIN]; T]; XI];
    let mut m = [[[0.0f32; COUT]; XI]; T];
    let (x, u, o) = (input.as_ptr(), u.as_ptr(), out.as_mut_ptr());
    // SAFETY: the asserts bound every offset: a patch (py, px) reads bordered rows and columns
    // 2p ..= 2p + 3 ≤ 33 of a `[34][34][16]` array; `U` is indexed below `16·16·32`; outputs go
    // to position (py - rows.start)·16 + px < rows.len()·16 of `out`. The stack arrays are
    // indexed within their types. The instruction set is the caller's (`dispatch!`) to
    // guarantee.
    unsafe {
        let bias: [S::V; NK] = std::array::from_fn(|k| S::load(bias.as_ptr().add(k * S::LANES)));
        for py in rows.clone() {
            for px0 in (0..PATCHES).step_by(T) {
                // V = Bᵀ d B, 16 input channels at a time per register.
                for t in 0..T {
                    let base = x.add((2 * py * IN_PADDED + 2 * (px0 + t)) * CIN);
                    for c in 0..NC {
                        let d = |i: usize, j: usize| {
                            S::load(base.add((i * IN_PADDED + j) * CIN + c * S::LANES))
                        };
                        let mut cols = [[S::zero(); 4]; 4];
                        for j in 0..4 {
                            let (d0, d1, d2, d3) = (d(0, j), d(1, j), d(2, j), d(3, j));
                            cols[0][j] = S::sub(d0, d2);
                            cols[1][j] = S::add(d1, d2);
                            cols[2][j] = S::sub(d2, d1);
                            cols[3][j] = S::sub(d1, d3);
                        }
                        for (i, [r0, r1, r2, r3]) in cols.into_iter().enumerate() {
                            let row = [
                                S::sub(r0, r2),
                                S::add(r1, r2),
                                S::sub(r2, r1),
                                S::sub(r1, r3),
                            ];
                            for (j, value) in row.into_iter().enumerate() {
                                S::store(v[i * 4 + j][t].as_mut_ptr().add(c * S::LANES), value);
                            }
                        }
                    }
                }
                // M[ξ] = V[ξ] · U[ξ]: per position a (T × 16) · (16 × 32) product in registers.
                for xi in 0..XI {
                    let mut acc = [[S::zero(); NK]; T];
                    for ci in 0..CIN {
                        let uv: [S::V; NK] = std::array::from_fn(|k| {
                            S::load(u.add((xi * CIN + ci) * COUT + k * S::LANES))
                        });
                        for (t, acc) in acc.iter_mut().enumerate() {
                            let b = S::splat(v[xi][t][ci]);
                            for k in 0..NK {
                                acc[k] = S::fma(b, uv[k], acc[k]);
                            }
                        }
                    }
                    for (t, acc) in acc.iter().enumerate() {
                        for (k, &value) in acc.iter().enumerate() {
                            S::store(m[t][xi].as_mut_ptr().add(k * S::LANES), value);
                        }
                    }
                }
                // Y = Aᵀ M A, then the pool over Y's four values, bias and ReLU.
                for (t, m) in m.iter().enumerate() {
                    let dst = o.add(((py - rows.start) * PATCHES + px0 + t) * COUT);
                    for k in 0..NK {
                        let at = |xi: usize| S::load(m[xi].as_ptr().add(k * S::LANES));
                        let mut top = [S::zero(); 4];
                        let mut bottom = [S::zero(); 4];
                        for j in 0..4 {
                            let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                            top[j] = S::add(S::add(m0, m1), m2);
                            bottom[j] = S::sub(S::sub(m1, m2), m3);
                        }
                        let pair = |s: [S::V; 4]| {
                            let left = S::add(S::add(s[0], s[1]), s[2]);
                            let right = S::sub(S::sub(s[1], s[2]), s[3]);
                            S::max(left, right)
                        };
                        let pooled = S::add(S::max(pair(top), pair(bottom)), bias[k]);
                        S::store(dst.add(k * S::LANES), S::max(pooled, S::zero()));
                    }
                }
            }
        }
    }
}
