//! The prefill product as a matrix multiply: `out[t, r] = sum_c w[r, c] x[t, c]` for a batch of
//! token rows, register-blocked and cache-blocked.
//!
//! The activations are packed once per product: for each block of [`NT`] tokens and each column,
//! the block's values side by side (zeros past the last token), so one column of a token block is
//! two 8-lane loads. The weight matrix is cut into groups of [`GROUP`] rows, one task each; for each
//! slice of [`KC`] columns a task widens its rows' slice to f32 once, whatever the stored type
//! (row-major, as stored), and sweeps every token block over it [`MR`] rows at a time: a tile of
//! `MR x NT` outputs in 12 registers, each column a broadcast of each weight times the token
//! block's two vectors. A token block's packed slice (16 KB) stays in L1 while the group's rows
//! pass over it.
//!
//! Each output sums one column slice at a time from zero, in column order, then adds the slice's
//! sum to the slices before it: the order is fixed by the shapes alone, never by the thread count.

use crate::pool;

/// Tokens per block: two 8-lane vectors.
pub const NT: usize = 16;
/// Weight rows per tile: 6 x 2 accumulators, 2 token vectors and a broadcast in the 16 registers.
pub const MR: usize = 6;
/// Columns per slice: a token block's packed slice is 16 KB.
pub const KC: usize = 256;
/// Weight rows per task: four tiles.
pub const GROUP: usize = 4 * MR;

/// Writes columns `c0..c1` of weight row `r` as f32: `fill(r, c0, c1, dst)`.
pub type Fill<'a> = dyn Fn(usize, usize, usize, &mut [f32]) + Sync + 'a;

/// `out[t * rows + r] = sum_c w[r, c] * x[t * cols + c]` for `n` tokens, where `fill(r, c0, c1, dst)`
/// writes columns `c0..c1` of weight row `r` as f32 into `dst` (`c1 - c0` long; `c0` and `c1` are
/// multiples of [`KC`] or `cols`, so whole blocks of any quantized type whose block divides KC).
pub fn matmul(rows: usize, cols: usize, fill: &Fill<'_>, x: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), n * cols, "gemm: input is not [{n}, {cols}]");
    assert_eq!(out.len(), n * rows, "gemm: output is not [{n}, {rows}]");
    let blocks = n.div_ceil(NT);
    // packed[(b * cols + c) * NT + j] = x[b * NT + j, c], zero past the last token.
    let mut packed = vec![0.0f32; blocks * cols * NT];
    if cols == 0 {
        // An empty sum for every output (and no panel to pack).
        return out.fill(0.0);
    }
    pool::for_each_chunk_mut(&mut packed, cols * NT, &|b, panel| {
        for j in 0..NT.min(n - b * NT) {
            let row = &x[(b * NT + j) * cols..(b * NT + j + 1) * cols];
            for (c, v) in row.iter().enumerate() {
                panel[c * NT + j] = *v;
            }
        }
    });
    let packed = &packed;
    let dst = Out(out.as_mut_ptr());
    pool::for_each_task(rows.div_ceil(GROUP), &|g| {
        let r0 = g * GROUP;
        let nr = GROUP.min(rows - r0);
        let mut w = vec![0.0f32; GROUP * KC];
        // sums[i * blocks * NT + t]: row r0 + i, token t.
        let mut sums = vec![0.0f32; nr * blocks * NT];
        let mut tile = [0.0f32; MR * NT];
        let mut c0 = 0;
        while c0 < cols {
            let kc = KC.min(cols - c0);
            for i in 0..nr {
                fill(r0 + i, c0, c0 + kc, &mut w[i * kc..(i + 1) * kc]);
            }
            for b in 0..blocks {
                let xb = &packed[(b * cols + c0) * NT..(b * cols + c0 + kc) * NT];
                let mut i0 = 0;
                while i0 < nr {
                    let mr = MR.min(nr - i0);
                    tile_product(&w[i0 * kc..(i0 + mr) * kc], xb, mr, kc, &mut tile);
                    for m in 0..mr {
                        let s = &mut sums[(i0 + m) * blocks * NT + b * NT..][..NT];
                        let t = &tile[m * NT..(m + 1) * NT];
                        if c0 == 0 {
                            s.copy_from_slice(t);
                        } else {
                            s.iter_mut().zip(t).for_each(|(s, t)| *s += t);
                        }
                    }
                    i0 += mr;
                }
            }
            c0 += kc;
        }
        for t in 0..n {
            for i in 0..nr {
                // SAFETY: row r0 + i of token t is inside `out` ([n, rows]) and belongs to this
                // group's task alone.
                unsafe { *dst.at(t * rows + r0 + i) = sums[i * blocks * NT + t] };
            }
        }
    });
}

/// A buffer written by several tasks at once, each at its own elements.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint elements while the buffer is borrowed for the job.
unsafe impl Sync for Out {}
unsafe impl Send for Out {}

impl Out {
    /// The element `i` places on (a method, so closures capture the whole `Out`, which is Sync).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// `tile[m * NT + j] = sum_{k < kc} w[m * kc + k] * xb[k * NT + j]` for `m < mr`, summed in column
/// order from zero.
fn tile_product(w: &[f32], xb: &[f32], mr: usize, kc: usize, tile: &mut [f32; MR * NT]) {
    assert!(mr <= MR && w.len() == mr * kc && xb.len() == kc * NT, "gemm tile: shapes do not agree");
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above); the lengths are asserted above.
        unsafe {
            match mr {
                6 => avx2::tile::<6>(w, xb, kc, tile),
                5 => avx2::tile::<5>(w, xb, kc, tile),
                4 => avx2::tile::<4>(w, xb, kc, tile),
                3 => avx2::tile::<3>(w, xb, kc, tile),
                2 => avx2::tile::<2>(w, xb, kc, tile),
                _ => avx2::tile::<1>(w, xb, kc, tile),
            }
        }
        return;
    }
    for m in 0..mr {
        let mut acc = [0.0f32; NT];
        for k in 0..kc {
            let wv = w[m * kc + k];
            for (a, x) in acc.iter_mut().zip(&xb[k * NT..(k + 1) * NT]) {
                *a = wv.mul_add(*x, *a);
            }
        }
        tile[m * NT..(m + 1) * NT].copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NT};
    use std::arch::x86_64::*;

    /// The `M x 16` tile: per column, the token block's two vectors and one broadcast per row.
    ///
    /// # Safety
    /// AVX2 and FMA available; `w` holds `M * kc` values and `xb` `kc * NT`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const M: usize>(w: &[f32], xb: &[f32], kc: usize, tile: &mut [f32; MR * NT]) {
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        let (wp, xp) = (w.as_ptr(), xb.as_ptr());
        for k in 0..kc {
            let x0 = _mm256_loadu_ps(xp.add(k * NT));
            let x1 = _mm256_loadu_ps(xp.add(k * NT + 8));
            for (m, a) in acc.iter_mut().enumerate() {
                let wv = _mm256_broadcast_ss(&*wp.add(m * kc + k));
                a[0] = _mm256_fmadd_ps(wv, x0, a[0]);
                a[1] = _mm256_fmadd_ps(wv, x1, a[1]);
            }
        }
        for (m, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(tile.as_mut_ptr().add(m * NT), a[0]);
            _mm256_storeu_ps(tile.as_mut_ptr().add(m * NT + 8), a[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_match_the_portable_sum_bit_for_bit() {
        // The vector tile and the portable loop sum in the same order with the same fused
        // multiply-adds: the same bits, for every row count of a tile.
        let kc = 37;
        let w: Vec<f32> = (0..MR * kc).map(|i| (i as f32 * 0.731).sin()).collect();
        let xb: Vec<f32> = (0..kc * NT).map(|i| (i as f32 * 1.37).cos()).collect();
        for mr in 1..=MR {
            let mut fast = [0.0f32; MR * NT];
            tile_product(&w[..mr * kc], &xb, mr, kc, &mut fast);
            for m in 0..mr {
                for j in 0..NT {
                    let want = (0..kc).fold(0.0f32, |a, k| w[m * kc + k].mul_add(xb[k * NT + j], a));
                    assert_eq!(fast[m * NT + j], want, "{mr} rows: row {m} token {j}");
                }
            }
        }
    }
}
