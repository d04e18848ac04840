//! Dot products of one weight row, in its stored type, with an f32 vector: the inner loop of every
//! matrix product. Weights are dequantized in registers, never into memory.
//!
//! On x86-64 with AVX2, FMA and F16C (checked once at run time) the 8-lane versions run; anywhere
//! else the portable ones do. Both accumulate in f32 in a fixed order, so a result depends only on
//! the machine, never on the thread count or the run.

use crate::dtype::DType;
use crate::fault::Fault;
use half::{bf16, f16};

/// `sum_i w[i] * x[i]` where `w` is one row of `dtype` bytes covering `x.len()` values.
///
/// Panics unless `w` holds exactly `x.len()` values (for a block type, whole blocks): the vector
/// path reads `w` as far as `x` reaches, so a short row would be read past its end.
#[inline]
pub fn dot(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
    let (block, block_bytes) = dtype.block();
    assert!(
        x.len().is_multiple_of(block) && w.len() == x.len() / block * block_bytes,
        "dot: a {} row of {} bytes does not hold {} values",
        dtype.name(),
        w.len(),
        x.len()
    );
    // SAFETY: the lengths agree (asserted just above).
    unsafe { dot_unchecked(dtype, w, x) }
}

/// [`dot`] without its length check, for a caller that checked once for a whole matrix: per row,
/// the check is a measurable share of a short in-cache row (docs/reliability.md).
///
/// # Safety
/// `w` must hold exactly `x.len()` values of `dtype`, in whole blocks for a block type.
#[inline]
pub(crate) unsafe fn dot_unchecked(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if dtype != DType::BF16 && has_avx512() {
            // SAFETY: the CPU has the features the functions are compiled for (checked just
            // above); the lengths agree (the caller's contract).
            return unsafe { avx512::dot(dtype, w, x) };
        }
        if avx2::available() {
            // SAFETY: as above.
            return unsafe { avx2::dot(dtype, w, x) };
        }
    }
    portable::dot(dtype, w, x)
}

/// Which kernels the engine runs on this CPU: "avx512", "avx2" or "portable". Decode outputs
/// differ in their last bits between them (each is deterministic); benchmarks should say which ran.
pub fn isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            return "avx512";
        }
        if has_avx2() {
            return "avx2";
        }
    }
    "portable"
}

/// Whether the AVX2/FMA/F16C kernels run on this CPU (checked once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    avx2::available()
}

/// Whether the AVX-512 kernels run on this CPU (checked once): F, BW and VL, on top of
/// [`has_avx2`]'s features.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        avx2::available() && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl")
    })
}

/// `sum_i a[i] * b[i]`. Panics if the lengths differ: a silently shortened sum would be a wrong
/// checkpoint rather than a crash.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: vectors of different lengths");
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: as in `dot`.
        return unsafe { avx2::dot_f32(a, b) };
    }
    portable::dot_f32(a, b)
}

/// Little-endian f16 values in `src` widened to f32 in `out` (`src.len() == 2 * out.len()`): the
/// F16 prefill path converts each weight row once and reuses it for every token.
#[inline]
pub fn f16_to_f32(src: &[u8], out: &mut [f32]) {
    assert_eq!(src.len(), 2 * out.len(), "f16_to_f32: {} bytes for {} values", src.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: as in `dot`; the lengths match (asserted above).
            return unsafe { avx512::f16_to_f32(src, out) };
        }
        if avx2::available() {
            // SAFETY: as above.
            return unsafe { avx2::f16_to_f32(src, out) };
        }
    }
    for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// Asks the cache to fetch `bytes` (every 64-byte line of them) ahead of their use; never waits.
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: SSE is part of x86-64; a prefetch reads nothing into the program and never faults.
        unsafe { std::arch::x86_64::_mm_prefetch(line.as_ptr() as *const i8, std::arch::x86_64::_MM_HINT_T0) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// A weight's bytes as a planted dequantization bug (fault::Fault) would read them, or `None`
/// when the fault does not touch `dtype`. Applied once to the stored bytes, so every kernel here
/// (AVX2 and portable, prefill and decode) sees the bug without a branch in its inner loop.
pub fn planted_bytes(dtype: DType, bytes: &[u8], fault: Fault) -> Option<Vec<u8>> {
    let through_bf16 = |b: &mut [u8]| {
        let v = bf16::from_f32(f16::from_le_bytes([b[0], b[1]]).to_f32()).to_f32();
        b.copy_from_slice(&f16::from_f32(v).to_le_bytes());
    };
    let mut out = bytes.to_vec();
    match (fault, dtype) {
        // Exponent bits 0 and a nonzero mantissa: read as a zero of the same sign.
        (Fault::F16SubnormalsFlushed, DType::F16) => {
            out.chunks_exact_mut(2).filter(|b| b[1] & 0x7c == 0 && (b[0] != 0 || b[1] & 0x03 != 0)).for_each(|b| {
                b[0] = 0;
                b[1] &= 0x80;
            })
        }
        (Fault::Q8ScaleBf16, DType::Q8_0) => out.chunks_exact_mut(34).for_each(|b| through_bf16(&mut b[0..2])),
        (Fault::Q41ScaleBf16, DType::Q4_1) => out.chunks_exact_mut(20).for_each(|b| through_bf16(&mut b[0..2])),
        _ => return None,
    }
    Some(out)
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

mod portable {
    use super::*;

    pub fn dot(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
        match dtype {
            DType::F32 => w.chunks_exact(4).zip(x).map(|(b, v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v).sum(),
            DType::F16 => w.chunks_exact(2).zip(x).map(|(b, v)| f16::from_le_bytes([b[0], b[1]]).to_f32() * v).sum(),
            DType::BF16 => w.chunks_exact(2).zip(x).map(|(b, v)| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) * v).sum(),
            DType::Q8_0 => blocks(w, 34, x, |b, xs| f16_at(b, 0) * b[2..].iter().zip(xs).map(|(q, v)| (*q as i8) as f32 * v).sum::<f32>()),
            DType::Q4_0 => blocks(w, 18, x, |b, xs| {
                let acc: f32 =
                    b[2..].iter().enumerate().map(|(j, q)| ((q & 0x0f) as i32 - 8) as f32 * xs[j] + ((q >> 4) as i32 - 8) as f32 * xs[j + 16]).sum();
                f16_at(b, 0) * acc
            }),
            DType::Q4_1 => blocks(w, 20, x, |b, xs| {
                let acc: f32 = b[4..].iter().enumerate().map(|(j, q)| (q & 0x0f) as f32 * xs[j] + (q >> 4) as f32 * xs[j + 16]).sum();
                f16_at(b, 0) * acc + f16_at(b, 2) * xs.iter().sum::<f32>()
            }),
        }
    }

    fn blocks(row: &[u8], block_bytes: usize, x: &[f32], f: impl Fn(&[u8], &[f32]) -> f32) -> f32 {
        row.chunks_exact(block_bytes).zip(x.chunks_exact(32)).map(|(b, xs)| f(b, xs)).sum()
    }

    /// Eight independent accumulators, so the compiler can keep them in vector registers.
    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"))
    }

    /// The two f16 values at `p` (a Q4_1 block's scale and minimum) as f32 in all lanes, from one
    /// broadcast load and one conversion. For a type with a scale only, the second is garbage.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale_pair(p: *const u8) -> (__m256, __m256) {
        let both = _mm_set1_epi32(std::ptr::read_unaligned(p as *const i32));
        let lanes = _mm256_cvtph_ps(both);
        (_mm256_moveldup_ps(lanes), _mm256_movehdup_ps(lanes))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn i8x8(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i + 8)), _mm256_loadu_ps(b.as_ptr().add(i + 8)), acc1);
            i += 16;
        }
        let mut tail = 0.0;
        while i < n {
            tail += a[i] * b[i];
            i += 1;
        }
        hsum(_mm256_add_ps(acc0, acc1)) + tail
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_to_f32(src: &[u8], out: &mut [f32]) {
        let n = out.len();
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        while i < n {
            out[i] = f16_at(src, 2 * i);
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
        let n = x.len();
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        match dtype {
            DType::F32 => dot_f32_unaligned(wp, xp, n),
            DType::F16 => {
                // Four independent chains, one cache line of weights per step.
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut i = 0;
                while i + 32 <= n {
                    _mm_prefetch(wp.wrapping_add(2 * i + PREFETCH_BYTES) as *const i8, _MM_HINT_T0);
                    for (k, a) in acc.iter_mut().enumerate() {
                        let h = _mm_loadu_si128(wp.add(2 * (i + 8 * k)) as *const __m128i);
                        *a = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(i + 8 * k)), *a);
                    }
                    i += 32;
                }
                while i + 8 <= n {
                    let h = _mm_loadu_si128(wp.add(2 * i) as *const __m128i);
                    acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(i)), acc[0]);
                    i += 8;
                }
                hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) + portable::dot(dtype, &w[2 * i..], &x[i..])
            }
            DType::BF16 => {
                let mut acc = _mm256_setzero_ps();
                let mut i = 0;
                while i + 8 <= n {
                    let h = _mm_loadu_si128(wp.add(2 * i) as *const __m128i);
                    let f = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
                    acc = _mm256_fmadd_ps(f, _mm256_loadu_ps(xp.add(i)), acc);
                    i += 8;
                }
                hsum(acc) + portable::dot(dtype, &w[2 * i..], &x[i..])
            }
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => {
                // Two chains over alternate blocks, so a block's multiply-adds need not wait for
                // the previous block's.
                let block_bytes = dtype.block().1;
                let at = |blk: usize| (wp.add(blk * block_bytes), xp.add(blk * 32));
                let mut acc = [_mm256_setzero_ps(); 2];
                let blocks = n / 32;
                let mut blk = 0;
                while blk + 2 <= blocks {
                    let ((b0, x0), (b1, x1)) = (at(blk), at(blk + 1));
                    acc[0] = quant_block(dtype, b0, x0, acc[0]);
                    acc[1] = quant_block(dtype, b1, x1, acc[1]);
                    blk += 2;
                }
                if blk < blocks {
                    let (b0, x0) = at(blk);
                    acc[0] = quant_block(dtype, b0, x0, acc[0]);
                }
                hsum(_mm256_add_ps(acc[0], acc[1]))
            }
        }
    }

    /// `acc` plus one block of a quantized type (at `b`) times 32 values of x (at `xs`), lane-wise.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quant_block(dtype: DType, b: *const u8, xs: *const f32, acc: __m256) -> __m256 {
        _mm_prefetch(b.wrapping_add(PREFETCH_BYTES) as *const i8, _MM_HINT_T0);
        if dtype == DType::Q8_0 {
            q8_0_block(b, xs, acc)
        } else {
            q4_block(dtype, b, xs, acc)
        }
    }

    /// `acc` plus one Q8_0 block (at `b`) times 32 values of x (at `xs`), lane-wise.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_block(b: *const u8, xs: *const f32, acc: __m256) -> __m256 {
        let q = b.add(2);
        let mut s = _mm256_mul_ps(i8x8(q), _mm256_loadu_ps(xs));
        s = _mm256_fmadd_ps(i8x8(q.add(8)), _mm256_loadu_ps(xs.add(8)), s);
        s = _mm256_fmadd_ps(i8x8(q.add(16)), _mm256_loadu_ps(xs.add(16)), s);
        s = _mm256_fmadd_ps(i8x8(q.add(24)), _mm256_loadu_ps(xs.add(24)), s);
        _mm256_fmadd_ps(scale_pair(b).0, s, acc)
    }

    /// `acc` plus one Q4_0 or Q4_1 block times 32 values of x. A 4-bit value is d * q + m (Q4_0:
    /// m = -8 d), so the block's dot is d * sum(q x) + m * sum(x). Each half of the 16 quant bytes
    /// is widened to eight 32-bit lanes once; a mask gives values 0..8 (then 8..16) of the block,
    /// a shift values 16..24 (then 24..32).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_block(dtype: DType, b: *const u8, xs: *const f32, acc: __m256) -> __m256 {
        let q = b.add(if dtype == DType::Q4_0 { 2 } else { 4 });
        let nibble = _mm256_set1_epi32(0x0f);
        let (x0, x1, x2, x3) = (_mm256_loadu_ps(xs), _mm256_loadu_ps(xs.add(8)), _mm256_loadu_ps(xs.add(16)), _mm256_loadu_ps(xs.add(24)));
        let b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(q as *const __m128i));
        let b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.add(8) as *const __m128i));
        let mut s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b0, nibble)), x0);
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b1, nibble)), x1, s);
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4)), x2, s);
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4)), x3, s);
        let sx = _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3));
        let (d, m) = scale_pair(b);
        let m = if dtype == DType::Q4_0 { _mm256_mul_ps(d, _mm256_set1_ps(-8.0)) } else { m };
        _mm256_fmadd_ps(d, s, _mm256_fmadd_ps(m, sx, acc))
    }

    /// How far ahead of its reads a decode product prefetches a weight row.
    const PREFETCH_BYTES: usize = 512;

    /// F32 weights straight from a (possibly unaligned) byte row.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f32_unaligned(wp: *const u8, xp: *const f32, n: usize) -> f32 {
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(4 * i) as *const f32), _mm256_loadu_ps(xp.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(4 * i + 32) as *const f32), _mm256_loadu_ps(xp.add(i + 8)), acc1);
            i += 16;
        }
        let mut tail = 0.0;
        while i < n {
            tail += std::ptr::read_unaligned(wp.add(4 * i) as *const f32) * *xp.add(i);
            i += 1;
        }
        hsum(_mm256_add_ps(acc0, acc1)) + tail
    }
}

/// The 16-lane versions of the decode products, for CPUs whose vectors are 512 bits (on this
/// host's Zen 5 they also do twice the work per cycle): the same arithmetic as the AVX2 ones,
/// each weight widened to f32 in a register, half the instructions per weight.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// How far ahead of its reads a decode product prefetches a weight row: the distances one core
    /// read fastest at, F32/F16 and quantized (docs/performance.md has the ladder).
    const PREFETCH_BYTES: usize = 4096;
    const PREFETCH_QUANT_BYTES: usize = 2048;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn dot(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
        let n = x.len();
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        match dtype {
            DType::F32 | DType::F16 => {
                // Four chains of 16 lanes; one 64-byte line of F32 weights per vector, two of F16
                // per step of four.
                let size = if dtype == DType::F32 { 4 } else { 2 };
                let load = |i: usize| {
                    if dtype == DType::F32 {
                        _mm512_loadu_ps(wp.add(4 * i) as *const f32)
                    } else {
                        _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(2 * i) as *const __m256i))
                    }
                };
                let mut acc = [_mm512_setzero_ps(); 4];
                let mut i = 0;
                while i + 64 <= n {
                    for (k, a) in acc.iter_mut().enumerate() {
                        if k * 16 * size % 64 == 0 {
                            _mm_prefetch(wp.wrapping_add(size * (i + 16 * k) + PREFETCH_BYTES) as *const i8, _MM_HINT_T0);
                        }
                        *a = _mm512_fmadd_ps(load(i + 16 * k), _mm512_loadu_ps(xp.add(i + 16 * k)), *a);
                    }
                    i += 64;
                }
                while i + 16 <= n {
                    acc[0] = _mm512_fmadd_ps(load(i), _mm512_loadu_ps(xp.add(i)), acc[0]);
                    i += 16;
                }
                let sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
                // Most rows have no tail; a call for an empty one was a measurable share of decode.
                if i < n {
                    sum + portable::dot(dtype, &w[size * i..], &x[i..])
                } else {
                    sum
                }
            }
            // One loop per type, so no block asks which type it is.
            DType::Q8_0 => quant_dot(wp, xp, n, dtype.block().1, |b, xs, acc| q8_0_block(b, xs, acc)),
            DType::Q4_0 => quant_dot(wp, xp, n, dtype.block().1, |b, xs, acc| q4_block::<false>(b, xs, acc)),
            DType::Q4_1 => quant_dot(wp, xp, n, dtype.block().1, |b, xs, acc| q4_block::<true>(b, xs, acc)),
            DType::BF16 => unreachable!("BF16 rows take the AVX2 path"),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn f16_to_f32(src: &[u8], out: &mut [f32]) {
        let n = out.len();
        let mut i = 0;
        while i + 16 <= n {
            let h = _mm256_loadu_si256(src.as_ptr().add(2 * i) as *const __m256i);
            _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
            i += 16;
        }
        super::avx2::f16_to_f32(&src[2 * i..], &mut out[i..]);
    }

    /// `sum_i w[i] x[i]` over the `n / 32` blocks of `block_bytes` at `wp`, each added by `block`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn quant_dot(wp: *const u8, xp: *const f32, n: usize, block_bytes: usize, block: impl Fn(*const u8, *const f32, __m512) -> __m512) -> f32 {
        let at = |blk: usize, acc: __m512| {
            let b = wp.add(blk * block_bytes);
            _mm_prefetch(b.wrapping_add(PREFETCH_QUANT_BYTES) as *const i8, _MM_HINT_T0);
            block(b, xp.add(blk * 32), acc)
        };
        // Two chains over alternate blocks, so a block's adds need not wait for the last's.
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let blocks = n / 32;
        let mut blk = 0;
        while blk + 2 <= blocks {
            acc0 = at(blk, acc0);
            acc1 = at(blk + 1, acc1);
            blk += 2;
        }
        if blk < blocks {
            acc0 = at(blk, acc0);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    /// A block's f16 scale (and, for Q4_1, minimum after it) at `p`, each in all 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn scale_pair(p: *const u8) -> (__m512, __m512) {
        let both = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)));
        (_mm512_broadcastss_ps(both), _mm512_broadcastss_ps(_mm_movehdup_ps(both)))
    }

    /// `acc` plus one Q8_0 block times 32 values of x, lane-wise.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn q8_0_block(b: *const u8, xs: *const f32, acc: __m512) -> __m512 {
        let q = b.add(2);
        let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q as *const __m128i)));
        let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16) as *const __m128i)));
        let s = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xs.add(16)), _mm512_mul_ps(lo, _mm512_loadu_ps(xs)));
        _mm512_fmadd_ps(scale_pair(b).0, s, acc)
    }

    /// `acc` plus one Q4_0 or Q4_1 block times 32 values of x: d * sum(q x) + m * sum(x) (Q4_0:
    /// m = -8 d), lane-wise. The 16 quant bytes are widened to 16 lanes once; a mask gives values
    /// 0..16 of the block, a shift values 16..32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn q4_block<const WITH_MIN: bool>(b: *const u8, xs: *const f32, acc: __m512) -> __m512 {
        let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(b.add(if WITH_MIN { 4 } else { 2 }) as *const __m128i));
        let (x0, x1) = (_mm512_loadu_ps(xs), _mm512_loadu_ps(xs.add(16)));
        // A permute reads only an index's low four bits: it masks the low nibble and turns
        // either nibble into its f32 value in one instruction.
        let values = _mm512_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0);
        let lo = _mm512_permutexvar_ps(q, values);
        let hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), values);
        let s = _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
        let (d, m) = scale_pair(b);
        let m = if WITH_MIN { m } else { _mm512_mul_ps(d, _mm512_set1_ps(-8.0)) };
        _mm512_fmadd_ps(d, s, _mm512_fmadd_ps(m, _mm512_add_ps(x0, x1), acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of each type and its values, built by hand: scale 0.5, min -1 where the type has one.
    fn rows(n_blocks: usize) -> Vec<(DType, Vec<u8>, Vec<f32>)> {
        let q = |i: usize| (i * 7 % 16) as u8;
        let mut out = Vec::new();
        let (mut q8, mut q8v, mut q40, mut q40v, mut q41, mut q41v) = (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..n_blocks {
            q8.extend(f16::from_f32(0.5).to_le_bytes());
            q40.extend(f16::from_f32(0.5).to_le_bytes());
            q41.extend(f16::from_f32(0.5).to_le_bytes());
            q41.extend(f16::from_f32(-1.0).to_le_bytes());
            for i in 0..32 {
                let s = i as i8 - 16;
                q8.push(s as u8);
                q8v.push(0.5 * s as f32);
            }
            let (mut lo, mut hi) = (vec![0f32; 16], vec![0f32; 16]);
            let (mut lo1, mut hi1) = (vec![0f32; 16], vec![0f32; 16]);
            for j in 0..16 {
                let (a, b) = (q(j), q(j + 16));
                q40.push(a | (b << 4));
                q41.push(a | (b << 4));
                lo[j] = 0.5 * (a as f32 - 8.0);
                hi[j] = 0.5 * (b as f32 - 8.0);
                lo1[j] = 0.5 * a as f32 - 1.0;
                hi1[j] = 0.5 * b as f32 - 1.0;
            }
            q40v.extend(lo.iter().chain(&hi));
            q41v.extend(lo1.iter().chain(&hi1));
        }
        let plain: Vec<f32> = (0..32 * n_blocks).map(|i| (i as f32 - 20.0) * 0.25).collect();
        out.push((DType::F32, plain.iter().flat_map(|v| v.to_le_bytes()).collect(), plain.clone()));
        out.push((DType::F16, plain.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(), plain.clone()));
        out.push((DType::BF16, plain.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(), plain));
        out.push((DType::Q8_0, q8, q8v));
        out.push((DType::Q4_0, q40, q40v));
        out.push((DType::Q4_1, q41, q41v));
        out
    }

    #[test]
    fn every_type_dots_like_its_hand_dequantized_values_on_both_paths() {
        for n_blocks in [1, 3] {
            let x: Vec<f32> = (0..32 * n_blocks).map(|i| ((i % 11) as f32 - 5.0) * 0.125).collect();
            for (dtype, bytes, values) in rows(n_blocks) {
                let want: f64 = values.iter().zip(&x).map(|(w, v)| *w as f64 * *v as f64).sum();
                let fast = dot(dtype, &bytes, &x) as f64;
                let slow = portable::dot(dtype, &bytes, &x) as f64;
                assert!((fast - want).abs() < 1e-3, "{dtype:?} dispatched: {fast} vs {want}");
                assert!((slow - want).abs() < 1e-3, "{dtype:?} portable: {slow} vs {want}");
                // The dispatch runs the widest path the CPU has; the AVX2 one is checked too.
                #[cfg(target_arch = "x86_64")]
                if avx2::available() {
                    // SAFETY: the CPU has AVX2, FMA and F16C; `bytes` holds x.len() values.
                    let narrow = unsafe { avx2::dot(dtype, &bytes, &x) } as f64;
                    assert!((narrow - want).abs() < 1e-3, "{dtype:?} AVX2: {narrow} vs {want}");
                }
            }
        }
    }

    #[test]
    fn f16_rows_of_any_length_dot_exactly() {
        // Multiples of 1/4 below 4 in size: every product and partial sum is exact in f32, so
        // the unrolled, vector-tail and scalar-tail parts must all give the exact value.
        for n in [1, 7, 8, 31, 32, 33, 40, 65, 77] {
            let w: Vec<f32> = (0..n).map(|i| ((i * 5) % 13) as f32 * 0.25 - 1.5).collect();
            let x: Vec<f32> = (0..n).map(|i| ((i * 3) % 7) as f32 * 0.5 - 1.0).collect();
            let bytes: Vec<u8> = w.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
            let exact: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
            assert_eq!(dot(DType::F16, &bytes, &x), exact, "n = {n}");
        }
    }

    #[test]
    fn dot_panics_instead_of_reading_past_a_row_that_does_not_match_x() {
        let x = vec![1.0f32; 64];
        // (type, bytes holding exactly 64 values): 4 or 2 bytes a value, 2 blocks of 34/18/20 bytes.
        let exact = [(DType::F32, 256), (DType::F16, 128), (DType::BF16, 128), (DType::Q8_0, 68), (DType::Q4_0, 36), (DType::Q4_1, 40)];
        for (dtype, bytes) in exact {
            let row = vec![0u8; bytes + 64];
            assert_eq!(dot(dtype, &row[..bytes], &x), 0.0, "{dtype:?}: the exact row is accepted");
            for len in [0, bytes - 1, bytes / 2, bytes + 1] {
                let refused = std::panic::catch_unwind(|| dot(dtype, &row[..len], &x)).is_err();
                assert!(refused, "{dtype:?}: a row of {len} bytes for 64 values must panic");
            }
        }
        // Quantized rows come in whole blocks of 32 values: 33 values are refused, whatever the row.
        for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            let row = vec![0u8; 2 * dtype.block().1];
            assert!(std::panic::catch_unwind(|| dot(dtype, &row, &x[..33])).is_err(), "{dtype:?}: 33 values");
        }
    }

    #[test]
    fn dot_f32_panics_on_vectors_of_different_lengths() {
        let (a, b) = (vec![1.0f32; 17], vec![1.0f32; 16]);
        assert!(std::panic::catch_unwind(|| dot_f32(&a, &b)).is_err());
        assert!(std::panic::catch_unwind(|| dot_f32(&b, &a)).is_err());
        assert_eq!(dot_f32(&a[..16], &b), 16.0);
    }

    #[test]
    fn f32_dot_handles_lengths_that_are_not_a_multiple_of_the_vector_width() {
        for n in [0, 1, 7, 16, 17, 33] {
            let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let want: f32 = (0..n).map(|i| (i * i) as f32).sum();
            assert_eq!(dot_f32(&a, &a), want, "n = {n}");
            assert_eq!(portable::dot_f32(&a, &a), want, "n = {n}");
        }
    }

    #[test]
    fn f16_widening_gives_the_ieee_values_of_every_bit_pattern_including_tails() {
        // Bit patterns chosen by hand: 1.0, -2.0, 0.5, the smallest subnormal (2^-24), the
        // largest finite (65504), +inf, -0.0, a quiet NaN, then 1.5 and -0.25 in the scalar tail.
        let bits: [u16; 10] = [0x3c00, 0xc000, 0x3800, 0x0001, 0x7bff, 0x7c00, 0x8000, 0x7e00, 0x3e00, 0xb400];
        let want = [1.0, -2.0, 0.5, 2f32.powi(-24), 65504.0, f32::INFINITY, -0.0, f32::NAN, 1.5, -0.25];
        // Ten values (8-lane body and scalar tail), then 37 (16-lane body, 8-lane and scalar tails).
        for copies in [1, 4] {
            let n = (10 * copies).min(37);
            let src: Vec<u8> = bits.iter().cycle().take(n).flat_map(|b| b.to_le_bytes()).collect();
            let mut out = vec![0.0f32; n];
            f16_to_f32(&src, &mut out);
            for (i, (got, want)) in out.iter().zip(want.iter().cycle()).enumerate() {
                assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "value {i} of {n}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn planted_dequantization_bugs_change_exactly_what_they_name() {
        // F16: 1.0, the smallest and largest subnormals (2^-24, 2^-14 - 2^-24, negative), the
        // smallest normal 2^-14: only the subnormals become (signed) zeros.
        let bits: [u16; 5] = [0x3c00, 0x0001, 0x83ff, 0x0400, 0x0000];
        let src: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let out = planted_bytes(DType::F16, &src, Fault::F16SubnormalsFlushed).unwrap();
        let got: Vec<u16> = out.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(got, [0x3c00, 0x0000, 0x8000, 0x0400, 0x0000]);
        assert_eq!(planted_bytes(DType::F32, &src[..8], Fault::F16SubnormalsFlushed), None);

        // Q8_0 scale 0.1 (f16 0.0999755859375) through bf16 (8 significant bits): 0.10009765625 = 205/2048.
        let mut q8 = f16::from_f32(0.1).to_le_bytes().to_vec();
        q8.extend((0..32u8).map(|i| i.wrapping_mul(7)));
        let out = planted_bytes(DType::Q8_0, &q8, Fault::Q8ScaleBf16).unwrap();
        assert_eq!(f16::from_le_bytes([out[0], out[1]]).to_f32(), 205.0 / 2048.0);
        assert_eq!(out[2..], q8[2..], "the quants are untouched");
        assert_eq!(planted_bytes(DType::Q8_0, &q8, Fault::Q41ScaleBf16), None);

        // Q4_1: scale 0.1 becomes 205/2048 as above, the minimum and the quants are kept.
        let mut q41 = f16::from_f32(0.1).to_le_bytes().to_vec();
        q41.extend(f16::from_f32(-0.3).to_le_bytes());
        q41.extend([0x5a; 16]);
        let out = planted_bytes(DType::Q4_1, &q41, Fault::Q41ScaleBf16).unwrap();
        assert_eq!(f16::from_le_bytes([out[0], out[1]]).to_f32(), 205.0 / 2048.0);
        assert_eq!(out[2..], q41[2..]);
    }
}
