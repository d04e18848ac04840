//! The prefill product as a matrix multiply: `out[t, r] = sum_c w[r, c] x[t, c]` for a batch of
//! token rows, register-blocked and cache-blocked.
//!
//! The activations are packed once per product: for each block of [`NT`] tokens and each column,
//! the block's values side by side (zeros past the last token), so one column of a token block is
//! one 16-lane or two 8-lane loads. The weight matrix is cut into groups of [`GROUP`] rows, one task
//! each; for each slice of [`KC`] columns a task widens its rows' slice to f32 once, whatever the
//! stored type (row-major, as stored), and sweeps the token blocks over it, [`NB`] at a time, [`MR`]
//! rows at a time: per column, a broadcast of each weight times each block's vectors (on AVX-512
//! one 16-lane vector per block, 12 chains; on AVX2 a block at a time, two 8-lane vectors). A token
//! block's packed slice (8 KB) stays in L1 while the group's rows pass over it.
//!
//! Each output sums one column slice at a time from zero, in column order, then adds the slice's
//! sum to the slices before it: the order is fixed by the shapes alone, never by the thread count.

use crate::pool;

/// Tokens per block: two 8-lane vectors.
pub const NT: usize = 16;
/// Weight rows per tile: 6 x 2 accumulators, 2 token vectors and a broadcast in the 16 registers.
pub const MR: usize = 6;
/// Columns per slice: each slice's sum is one rounding chain (shorter is closer to f64, and free
/// now that tiles add into the sums in registers); a token block's packed slice is 8 KB.
pub const KC: usize = 128;
/// Weight rows per task: four tiles.
pub const GROUP: usize = 4 * MR;
/// Token blocks a tile sweeps at once: the AVX-512 tile's second block doubles its independent
/// chains; the AVX2 tile takes them one after the other.
pub const NB: usize = 2;

/// Writes columns `c0..c1` of weight row `r` as f32: `fill(r, c0, c1, dst)`.
pub type Fill<'a> = dyn Fn(usize, usize, usize, &mut [f32]) + Sync + 'a;

/// `out[t * rows + r] = sum_c w[r, c] * x[t * cols + c]` for `n` tokens, where `fill(r, c0, c1, dst)`
/// writes columns `c0..c1` of weight row `r` as f32 into `dst` (`c1 - c0` long; `c0` and `c1` are
/// multiples of [`KC`] or `cols`, so whole blocks of any quantized type whose block divides KC).
pub fn matmul(rows: usize, cols: usize, fill: &Fill<'_>, x: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), n * cols, "gemm: input is not [{n}, {cols}]");
    assert_eq!(out.len(), n * rows, "gemm: output is not [{n}, {rows}]");
    if cols == 0 {
        // An empty sum for every output (and no panel to pack).
        return out.fill(0.0);
    }
    let blocks = n.div_ceil(NT);
    // packed[(b * cols + c) * NT + j] = x[b * NT + j, c], zero past the last token.
    let mut packed = vec![0.0f32; blocks * cols * NT];
    pool::for_each_chunk_mut(&mut packed, cols * NT, &|b, panel| {
        for j in 0..NT.min(n - b * NT) {
            let row = &x[(b * NT + j) * cols..(b * NT + j + 1) * cols];
            for (c, v) in row.iter().enumerate() {
                panel[c * NT + j] = *v;
            }
        }
    });
    let packed = &packed;
    let dst = pool::Disjoint::new(out);
    pool::for_each_task(rows.div_ceil(GROUP), &|g| {
        let r0 = g * GROUP;
        let nr = GROUP.min(rows - r0);
        let mut w = vec![0.0f32; GROUP * KC];
        // sums[i * blocks * NT + t]: row r0 + i, token t.
        let mut sums = vec![0.0f32; nr * blocks * NT];
        let mut c0 = 0;
        while c0 < cols {
            let kc = KC.min(cols - c0);
            for i in 0..nr {
                fill(r0 + i, c0, c0 + kc, &mut w[i * kc..(i + 1) * kc]);
            }
            let mut b = 0;
            while b < blocks {
                let nb = NB.min(blocks - b);
                let mut xbs: [&[f32]; NB] = [&[]; NB];
                for (q, xb) in xbs.iter_mut().enumerate().take(nb) {
                    *xb = &packed[((b + q) * cols + c0) * NT..((b + q) * cols + c0 + kc) * NT];
                }
                let mut i0 = 0;
                while i0 < nr {
                    let mr = MR.min(nr - i0);
                    let at = i0 * blocks * NT + b * NT;
                    tile_product(&w[i0 * kc..(i0 + mr) * kc], &xbs[..nb], mr, kc, &mut sums[at..], blocks * NT, c0 == 0);
                    i0 += mr;
                }
                b += nb;
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

/// Adds a tile's sums into `sums`: weight row m times token j of token block q goes to
/// `sums[m * stride + q * NT + j]` for `m < mr` and each of the (one or [`NB`]) token blocks in
/// `xbs`. Each is `sum_{k < kc} w[m * kc + k] * xbs[q][k * NT + j]`, summed in column order from
/// zero with fused multiply-adds, then stored (`first`, the first column slice) or added to what
/// the slices before left there. Every path gives the same bits.
fn tile_product(w: &[f32], xbs: &[&[f32]], mr: usize, kc: usize, sums: &mut [f32], stride: usize, first: bool) {
    assert!(
        (1..=MR).contains(&mr)
            && w.len() == mr * kc
            && (1..=NB).contains(&xbs.len())
            && xbs.iter().all(|xb| xb.len() == kc * NT)
            && stride >= xbs.len() * NT
            && sums.len() >= (mr - 1) * stride + xbs.len() * NT,
        "gemm tile: shapes do not agree"
    );
    let out = sums.as_mut_ptr();
    /// `$run::<M>` for the tile's row count M (a const generic: the accumulators stay in registers).
    macro_rules! by_rows {
        ($($run:ident)::+, $($arg:expr),*) => {
            match mr {
                6 => $($run)::+::<6>($($arg),*),
                5 => $($run)::+::<5>($($arg),*),
                4 => $($run)::+::<4>($($arg),*),
                3 => $($run)::+::<3>($($arg),*),
                2 => $($run)::+::<2>($($arg),*),
                _ => $($run)::+::<1>($($arg),*),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    {
        if crate::kernels::has_avx512() {
            // SAFETY: the CPU has AVX-512F (checked just above); the lengths are asserted above.
            unsafe {
                match xbs {
                    [x0, x1] => by_rows!(avx512::tile, w, x0, x1, kc, out, stride, first),
                    _ => by_rows!(avx512::tile_one, w, xbs[0], kc, out, stride, first),
                }
            };
            return;
        }
        if crate::kernels::has_avx2() {
            for (q, xb) in xbs.iter().enumerate() {
                // SAFETY: the CPU has AVX2 and FMA (checked just above); lengths asserted above.
                unsafe { by_rows!(avx2::tile, w, xb, kc, out.add(q * NT), stride, first) };
            }
            return;
        }
    }
    for m in 0..mr {
        for (q, xb) in xbs.iter().enumerate() {
            let mut acc = [0.0f32; NT];
            for k in 0..kc {
                let wv = w[m * kc + k];
                for (a, x) in acc.iter_mut().zip(&xb[k * NT..(k + 1) * NT]) {
                    *a = wv.mul_add(*x, *a);
                }
            }
            let s = &mut sums[m * stride + q * NT..][..NT];
            if first {
                s.copy_from_slice(&acc);
            } else {
                s.iter_mut().zip(acc).for_each(|(s, a)| *s += a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::NT;
    use std::arch::x86_64::*;

    /// The `M x 16` tile of one token block: per column, the block's two vectors and one
    /// broadcast per row; row m's sums go to (or onto) `out + m * stride`.
    ///
    /// # Safety
    /// AVX2 and FMA available; `w` holds `M * kc` values and `xb` `kc * NT`; `out` is valid for
    /// NT values at each of the M row offsets.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const M: usize>(w: &[f32], xb: &[f32], kc: usize, out: *mut f32, stride: usize, first: bool) {
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
            for (h, v) in a.iter().enumerate() {
                let o = out.add(m * stride + 8 * h);
                _mm256_storeu_ps(o, if first { *v } else { _mm256_add_ps(_mm256_loadu_ps(o), *v) });
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{NB, NT};
    use std::arch::x86_64::*;

    /// The `M x (2 x 16)` tile of two token blocks: per column, one 16-lane vector per block and
    /// one broadcast per row, 2M independent chains (a 512-bit FMA unit needs 8 in flight); row
    /// m's sums go to (or onto) `out + m * stride`, the second block's NT values after the first's.
    ///
    /// # Safety
    /// AVX-512F available; `w` holds `M * kc` values, `x0` and `x1` `kc * NT` each; `out` is
    /// valid for 2 NT values at each of the M row offsets.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const M: usize>(w: &[f32], x0: &[f32], x1: &[f32], kc: usize, out: *mut f32, stride: usize, first: bool) {
        let mut acc = [[_mm512_setzero_ps(); NB]; M];
        let (wp, p0, p1) = (w.as_ptr(), x0.as_ptr(), x1.as_ptr());
        for k in 0..kc {
            let a = _mm512_loadu_ps(p0.add(k * NT));
            let b = _mm512_loadu_ps(p1.add(k * NT));
            for (m, acc) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(*wp.add(m * kc + k));
                acc[0] = _mm512_fmadd_ps(wv, a, acc[0]);
                acc[1] = _mm512_fmadd_ps(wv, b, acc[1]);
            }
        }
        for (m, acc) in acc.iter().enumerate() {
            for (q, v) in acc.iter().enumerate() {
                store(out.add(m * stride + q * NT), *v, first);
            }
        }
    }

    /// The `M x 16` tile of one token block (a batch's odd last one, or a batch of at most 16):
    /// M chains of 16 lanes, still more work per cycle than the AVX2 tile's 2M of 8.
    ///
    /// # Safety
    /// AVX-512F available; `w` holds `M * kc` values and `x0` `kc * NT`; `out` is valid for NT
    /// values at each of the M row offsets.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_one<const M: usize>(w: &[f32], x0: &[f32], kc: usize, out: *mut f32, stride: usize, first: bool) {
        let mut acc = [_mm512_setzero_ps(); M];
        let (wp, p0) = (w.as_ptr(), x0.as_ptr());
        for k in 0..kc {
            let a = _mm512_loadu_ps(p0.add(k * NT));
            for (m, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*wp.add(m * kc + k)), a, *acc);
            }
        }
        for (m, v) in acc.iter().enumerate() {
            store(out.add(m * stride), *v, first);
        }
    }

    /// A slice's sums stored at `o`, or added to the earlier slices' sums there.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(o: *mut f32, v: __m512, first: bool) {
        _mm512_storeu_ps(o, if first { v } else { _mm512_add_ps(_mm512_loadu_ps(o), v) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column-order fused multiply-add sum of row m of `w` times token j of `xb`, from zero.
    fn chain(w: &[f32], xb: &[f32], kc: usize, m: usize, j: usize) -> f32 {
        (0..kc).fold(0.0f32, |a, k| w[m * kc + k].mul_add(xb[k * NT + j], a))
    }

    #[test]
    fn tiles_store_then_add_the_portable_sum_bit_for_bit() {
        // Every path (AVX-512 on two blocks or one, AVX2 a block at a time, portable) sums in the
        // same order with the same fused multiply-adds: the same bits, for every row count of a
        // tile, for one block (a batch's odd last block) or two, stored by the first column
        // slice and added onto what is there by the next.
        let (kc, stride) = (37, 3 * NB * NT);
        let w: Vec<f32> = (0..MR * kc).map(|i| (i as f32 * 0.731).sin()).collect();
        let x: Vec<Vec<f32>> = (0..NB).map(|q| (0..kc * NT).map(|i| (i as f32 * 1.37 + q as f32).cos()).collect()).collect();
        for nb in 1..=NB {
            let xbs: Vec<&[f32]> = x[..nb].iter().map(|v| v.as_slice()).collect();
            for mr in 1..=MR {
                let mut sums = vec![f32::NAN; MR * stride];
                tile_product(&w[..mr * kc], &xbs, mr, kc, &mut sums, stride, true);
                tile_product(&w[..mr * kc], &xbs, mr, kc, &mut sums, stride, false);
                for (i, v) in sums.iter().enumerate() {
                    let (m, q, j) = (i / stride, i % stride / NT, i % NT);
                    if m < mr && q < nb {
                        let once = chain(&w, xbs[q], kc, m, j);
                        assert_eq!(*v, once + once, "{nb} blocks, {mr} rows: row {m} block {q} token {j}");
                    } else {
                        assert!(v.is_nan(), "{nb} blocks, {mr} rows: element {i} outside the tile was written");
                    }
                }
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_tile_gives_the_dispatched_tiles_bits() {
        // On a CPU with AVX-512 the dispatch above never runs the AVX2 tile.
        if !crate::kernels::has_avx2() {
            return;
        }
        let (kc, stride) = (300, NB * NT);
        let w: Vec<f32> = (0..MR * kc).map(|i| (i as f32 * 0.377).sin()).collect();
        let x: Vec<Vec<f32>> = (0..NB).map(|q| (0..kc * NT).map(|i| (i as f32 * 0.913 - q as f32).cos()).collect()).collect();
        let (mut by_avx2, mut by_dispatch) = (vec![0.0f32; MR * stride], vec![0.0f32; MR * stride]);
        for (q, xb) in x.iter().enumerate() {
            // SAFETY: AVX2 and FMA checked above; w holds MR * kc values, xb kc * NT, and the
            // output MR rows of `stride` with this block's NT values at q * NT.
            unsafe { avx2::tile::<MR>(&w, xb, kc, by_avx2.as_mut_ptr().add(q * NT), stride, true) };
        }
        let xbs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
        tile_product(&w, &xbs, MR, kc, &mut by_dispatch, stride, true);
        assert_eq!(by_avx2, by_dispatch);
    }

    #[test]
    fn a_tile_refuses_a_destination_too_short_for_its_rows() {
        let (kc, stride) = (4, NB * NT);
        let w = vec![1.0f32; 2 * kc];
        let xb = vec![1.0f32; kc * NT];
        let mut short = vec![0.0f32; stride + NT - 1];
        let refused = std::panic::catch_unwind(move || tile_product(&w, &[&xb], 2, kc, &mut short, stride, true)).is_err();
        assert!(refused, "row 1 would end one value past the buffer");
    }
}
