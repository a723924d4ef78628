//! The convolution's backward through the max-pool, as a sum over the pool's winners.
//!
//! After a 2×2 max-pool, each pooled output's gradient reaches exactly one convolution output
//! (its window's winner), or none when ReLU cut it ([`DEAD`]): the convolution's output
//! gradient is at least three quarters zeros. A dense backward (`dconv · im2col(x)ᵀ` for the
//! weights, `col2im(weightᵀ · dconv)` for the input) multiplies all of them; here each live
//! winner adds `g · patch` to its channel's weight gradient and `g · kernel` to the input
//! gradient around it: a quarter of the work or less, and no im2col.
//!
//! Both run on channel-last images padded by one pixel (`(size+2)² × cin`), where one row of a
//! 3×3 neighbourhood is `3·cin` contiguous floats: the weight gradient is kept as those rows
//! (`cout × 3 × row_len`, see [`Rows`]), each row in whole registers. Where `3·cin` does not
//! fill whole registers (the first block's 9), the last register of a row reads a few floats
//! past it, whose products land in lanes that are never read back; the input gradient, which
//! must not be written past a row, is then added element by element.

use crate::simd::Simd;
use crate::train::DEAD;

/// How one block's neighbourhood rows sit in registers of `lanes` floats.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rows {
    /// Input channels.
    pub cin: usize,
    /// Floats in one row of a neighbourhood: 3 pixels × `cin`.
    pub row: usize,
    /// Registers per row, and the row's length rounded up to them.
    pub vecs: usize,
    pub row_len: usize,
}

impl Rows {
    pub(crate) fn new(cin: usize, lanes: usize) -> Self {
        let row = 3 * cin;
        let vecs = row.div_ceil(lanes);
        Self {
            cin,
            row,
            vecs,
            row_len: vecs * lanes,
        }
    }

    /// Registers per block of a row that the kernel keeps in registers at once: 3 or fewer,
    /// dividing [`Rows::vecs`].
    pub(crate) fn block(&self) -> usize {
        match self.vecs {
            v if v.is_multiple_of(3) => 3,
            v if v.is_multiple_of(2) => 2,
            _ => 1,
        }
    }

    /// Floats of a padded channel-last image of side `size`, with room for the last row's
    /// read past its end.
    pub(crate) fn padded_len(&self, size: usize) -> usize {
        (size + 2) * (size + 2) * self.cin + self.row_len
    }
}

/// One image's gradients from its pooled output gradient, `NV` registers of each row at a time
/// ([`Rows::block`]).
///
/// - `xcl`: the image, padded channel-last (`(size+2)² × cin`, zero border, [`Rows::padded_len`]);
/// - `wt`: the weight as rows (`cout × 3 × row`, `(dx, c)` at `dx·cin + c`), read only for `dxcl`;
/// - `argmax`, `dout`: the block's forward bytes and the output gradient, `cout × (size/2)²`;
/// - `dwt` (`cout × 3 × row_len`, as `wt`, the lanes past `row` left meaningless) and `dbias`
///   (`cout`) are added to;
/// - `dxcl`, when given, is added to (padded channel-last; the border collects what fell on the
///   padding, which the caller drops).
///
/// Per channel, the winners are taken in pooled order and their contributions summed in that
/// order: the result depends on the data alone.
///
/// # Panics
///
/// On an argmax byte that is neither 0..=3 nor [`DEAD`], or buffers of the wrong length.
// Inlined into each instruction set's `#[target_feature]` entry point (`dispatch!`).
#[allow(clippy::inline_always, clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn backward<S: Simd, const NV: usize>(
    rows: Rows,
    size: usize,
    xcl: &[f32],
    wt: &[f32],
    argmax: &[u8],
    dout: &[f32],
    dwt: &mut [f32],
    dbias: &mut [f32],
    mut dxcl: Option<&mut [f32]>,
    live: &mut Vec<(usize, f32)>,
) {
    let (half, padded, cin) = (size / 2, size + 2, rows.cin);
    let (l, row, row_len) = (S::LANES, rows.row, rows.row_len);
    assert!(rows.vecs.is_multiple_of(NV) && row_len == rows.vecs * l);
    let (pooled, cout) = (half * half, dbias.len());
    assert!(argmax.len() == cout * pooled && dout.len() == cout * pooled);
    assert!(xcl.len() == rows.padded_len(size) && dwt.len() == cout * 3 * row_len);
    // Where each row of a neighbourhood starts, from the neighbourhood's start.
    let lines = [0, padded * cin, 2 * padded * cin];
    for o in 0..cout {
        let grads = &dout[o * pooled..(o + 1) * pooled];
        let wins = &argmax[o * pooled..(o + 1) * pooled];
        // The live winners: where each one's neighbourhood starts (the winner sits at padded
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
            let y = 2 * (q / half) + usize::from(k / 2);
            let x = 2 * (q % half) + usize::from(k % 2);
            live.push(((y * padded + x) * cin, g));
            sum += g;
        }
        dbias[o] += sum;
        let dw = &mut dwt[o * 3 * row_len..(o + 1) * 3 * row_len];
        for v in (0..row_len).step_by(NV * l) {
            // SAFETY: a neighbourhood's start `at` is pixel (y, x) with y, x < size, so its rows
            // start inside the `(size+2)²` image and `v + NV·l <= row_len` floats from a row's
            // start stay inside `xcl`, which has `row_len` floats of slack after the image.
            // `dw` holds `3 × row_len` floats. The instruction set is the caller's
            // (`dispatch!`).
            unsafe {
                let mut acc: [[S::V; NV]; 3] = std::array::from_fn(|r| {
                    std::array::from_fn(|j| S::load(dw.as_ptr().add(r * row_len + v + j * l)))
                });
                let x = xcl.as_ptr().add(v);
                for &(at, g) in live.iter() {
                    let g = S::splat(g);
                    for (r, line) in lines.iter().enumerate() {
                        for (j, a) in acc[r].iter_mut().enumerate() {
                            *a = S::fma(g, S::load(x.add(at + line + j * l)), *a);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    for (j, &a) in acc.iter().enumerate() {
                        S::store(dw.as_mut_ptr().add(r * row_len + v + j * l), a);
                    }
                }
            }
        }
        let Some(dx) = dxcl.as_deref_mut() else {
            continue;
        };
        assert_eq!(dx.len(), xcl.len());
        let w = &wt[o * 3 * row..(o + 1) * 3 * row];
        if row == row_len {
            // SAFETY: as above: every row of a live neighbourhood is inside `dx` (the same
            // length as `xcl`) and `w` holds `3 × row` floats, `row` a multiple of `l`.
            unsafe {
                let dx = dx.as_mut_ptr();
                for &(at, g) in live.iter() {
                    let g = S::splat(g);
                    for (r, line) in lines.iter().enumerate() {
                        for j in (0..row).step_by(l) {
                            let p = dx.add(at + line + j);
                            let kernel = S::load(w.as_ptr().add(r * row + j));
                            S::store(p, S::fma(g, kernel, S::load(p)));
                        }
                    }
                }
            }
        } else {
            for &(at, g) in live.iter() {
                for (r, line) in lines.iter().enumerate() {
                    let dst = &mut dx[at + line..at + line + row];
                    for (d, &k) in dst.iter_mut().zip(&w[r * row..(r + 1) * row]) {
                        *d = g.mul_add(k, *d);
                    }
                }
            }
        }
    }
}

/// `x` (`c × size × size`) into `xcl`, padded channel-last (`(size+2)² × c` and slack); the
/// border and the slack of `xcl` are left as they are (zero).
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
