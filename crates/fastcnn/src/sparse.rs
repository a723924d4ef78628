//! The convolution's backward through the max-pool, as a sum over the pool's winners.
//!
//! After a 2×2 max-pool, each pooled output's gradient reaches exactly one convolution output
//! (its window's winner), or none when ReLU cut it ([`DEAD`]): the convolution's output
//! gradient is at least three quarters zeros. The dense backward (`dconv · im2col(x)ᵀ` for the
//! weights, `col2im(weightᵀ · dconv)` for the input) multiplies all of them; here each live
//! winner adds `g · patch` to its channel's weight gradient and `g · kernel` to the input
//! gradient around it, a quarter of the work or less, with no im2col.
//!
//! Both run on channel-last images padded by one pixel (`(size+2)² × cin`), where a tap's input
//! channels are contiguous: `cin` must be a multiple of the register width (the second block's
//! 16 is; the first block's 3 input channels take the dense path).

use crate::simd::Simd;
use crate::train::DEAD;

/// One image's gradients from its pooled output gradient.
///
/// - `xcl`: the image, padded channel-last (`(size+2)² × cin`, zero border);
/// - `wt`: the weight with channels last (`cout × 9 × cin`, taps row-major);
/// - `argmax`, `dout`: the block's forward bytes and the output gradient, `cout × (size/2)²`;
/// - `dwt` (`cout × 9 × cin`, channels last) and `dbias` (`cout`) are added to;
/// - `dxcl`, when given, is added to (padded channel-last; the border collects what fell on the
///   padding, which the caller drops).
///
/// Per channel, the winners are taken in pooled order and their contributions summed in that
/// order: the result depends on the data alone.
///
/// # Panics
///
/// On an argmax byte that is neither 0..=3 nor [`DEAD`].
// Inlined into each instruction set's `#[target_feature]` entry point (`dispatch!`).
#[allow(clippy::inline_always, clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn backward<S: Simd>(
    xcl: &[f32],
    wt: &[f32],
    argmax: &[u8],
    dout: &[f32],
    (cin, cout, size): (usize, usize, usize),
    dwt: &mut [f32],
    dbias: &mut [f32],
    mut dxcl: Option<&mut [f32]>,
    live: &mut Vec<(usize, f32)>,
) {
    let (half, padded) = (size / 2, size + 2);
    let l = S::LANES;
    assert!(cin.is_multiple_of(l), "cin {cin} is not a multiple of {l}");
    let pooled = half * half;
    assert!(argmax.len() == cout * pooled && dout.len() == cout * pooled);
    assert!(xcl.len() == padded * padded * cin && dwt.len() == cout * 9 * cin);
    assert!(wt.len() == cout * 9 * cin && dbias.len() == cout);
    if let Some(dx) = dxcl.as_deref() {
        assert_eq!(dx.len(), xcl.len());
    }
    // Where each tap reads, from the top-left of its 3×3 neighbourhood in the padded image.
    let taps: [usize; 9] = std::array::from_fn(|t| (t / 3 * padded + t % 3) * cin);
    for o in 0..cout {
        let grads = &dout[o * pooled..(o + 1) * pooled];
        let wins = &argmax[o * pooled..(o + 1) * pooled];
        // The live winners: where each one's neighbourhood starts (the winner at padded
        // coordinates (y+1, x+1), so its neighbourhood at (y, x)) and its gradient.
        live.clear();
        let mut sum = 0.0f32;
        for (q, (&g, &k)) in grads.iter().zip(wins).enumerate() {
            if k == DEAD {
                continue;
            }
            assert!(
                k <= 3,
                "argmax byte {k} is neither a window position nor DEAD"
            );
            let (y, x) = (
                2 * (q / half) + usize::from(k / 2),
                2 * (q % half) + usize::from(k % 2),
            );
            live.push(((y * padded + x) * cin, g));
            sum += g;
        }
        dbias[o] += sum;
        let dw = &mut dwt[o * 9 * cin..(o + 1) * 9 * cin];
        let w = &wt[o * 9 * cin..(o + 1) * 9 * cin];
        for v in (0..cin).step_by(l) {
            // SAFETY: `at + taps[t]` is the first channel of padded pixel (y + t/3, x + t%3)
            // with y, x < size: inside the `(size+2)²` image, and `v + l <= cin` more floats
            // stay inside that pixel, so every load and store is inside `xcl` and `dxcl`
            // (asserted the same length); `dw` and `w` hold `9 × cin` floats. The instruction
            // set is the caller's (`dispatch!`).
            unsafe {
                let mut acc: [S::V; 9] =
                    std::array::from_fn(|t| S::load(dw.as_ptr().add(t * cin + v)));
                let kernel: [S::V; 9] =
                    std::array::from_fn(|t| S::load(w.as_ptr().add(t * cin + v)));
                let x = xcl.as_ptr().add(v);
                match dxcl.as_deref_mut() {
                    Some(dx) => {
                        let dx = dx.as_mut_ptr().add(v);
                        for &(at, g) in live.iter() {
                            let g = S::splat(g);
                            for t in 0..9 {
                                let i = at + taps[t];
                                acc[t] = S::fma(g, S::load(x.add(i)), acc[t]);
                                S::store(dx.add(i), S::fma(g, kernel[t], S::load(dx.add(i))));
                            }
                        }
                    }
                    None => {
                        for &(at, g) in live.iter() {
                            let g = S::splat(g);
                            for t in 0..9 {
                                acc[t] = S::fma(g, S::load(x.add(at + taps[t])), acc[t]);
                            }
                        }
                    }
                }
                for (t, a) in acc.into_iter().enumerate() {
                    S::store(dw.as_mut_ptr().add(t * cin + v), a);
                }
            }
        }
    }
}

/// `x` (`c × size × size`) into `xcl`, padded channel-last (`(size+2)² × c`); the border of
/// `xcl` is left as it is (zero, written once).
pub(crate) fn to_padded_channel_last(x: &[f32], c: usize, size: usize, xcl: &mut [f32]) {
    let padded = size + 2;
    for (ci, plane) in x.chunks_exact(size * size).enumerate().take(c) {
        for (y, row) in plane.chunks_exact(size).enumerate() {
            let start = ((y + 1) * padded + 1) * c + ci;
            for (xi, &v) in row.iter().enumerate() {
                xcl[start + xi * c] = v;
            }
        }
    }
}

/// The inside of `xcl` (padded channel-last, `(size+2)² × c`) into `x` (`c × size × size`).
pub(crate) fn from_padded_channel_last(xcl: &[f32], c: usize, size: usize, x: &mut [f32]) {
    let padded = size + 2;
    for (ci, plane) in x.chunks_exact_mut(size * size).enumerate().take(c) {
        for (y, row) in plane.chunks_exact_mut(size).enumerate() {
            let start = ((y + 1) * padded + 1) * c + ci;
            for (xi, v) in row.iter_mut().enumerate() {
                *v = xcl[start + xi * c];
            }
        }
    }
}
