//! Weight tensors kept in their native type (usually straight out of a memory map) and the kernels
//! that dequantize them on the fly.
//!
//! Shapes are row-major like numpy: a matrix is `[rows, cols]` = `[out_features, in_features]`,
//! so each row is one output feature and quantization blocks run along a row.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gemm;
use crate::kernels;
use crate::pool;
use half::f16;
use std::sync::Arc;

/// Where a tensor's bytes live.
#[derive(Clone)]
pub enum Bytes {
    Mapped { map: Arc<memmap2::Mmap>, start: usize, len: usize },
    Owned(Arc<Vec<u8>>),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
            Bytes::Owned(v) => v,
        }
    }
}

/// A weight tensor in its native type.
#[derive(Clone)]
pub struct QTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Bytes,
}

impl std::fmt::Debug for QTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QTensor({} {} {:?})", self.name, self.dtype.name(), self.shape)
    }
}

impl Bytes {
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows of a decode task are a multiple of this: 16 outputs fill a 64-byte cache line, so two
/// threads never write the same line (but at a span's unaligned ends).
const ROW_QUANTUM: usize = 16;

impl QTensor {
    /// Checks that `bytes` holds exactly `shape` in `dtype` (rows a whole number of blocks).
    pub fn new(name: &str, dtype: DType, shape: Vec<usize>, bytes: Bytes) -> Result<QTensor> {
        let t = QTensor { name: name.to_string(), dtype, shape, bytes };
        let expected = t.expected_bytes().ok_or_else(|| {
            Error::Config(format!(
                "tensor {name}: shape {:?} cannot be stored as {} (rows must be whole {}-value blocks, size must fit in memory)",
                t.shape,
                dtype.name(),
                dtype.block().0
            ))
        })?;
        if expected != t.bytes.len() {
            return Err(Error::Config(format!(
                "tensor {name}: {} {:?} needs {expected} bytes but {} are stored",
                dtype.name(),
                t.shape,
                t.bytes.len()
            )));
        }
        Ok(t)
    }

    /// An F32 tensor owning `data` (tests, small derived weights).
    pub fn from_f32(name: &str, shape: Vec<usize>, data: &[f32]) -> Result<QTensor> {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        QTensor::new(name, DType::F32, shape, Bytes::Owned(Arc::new(bytes)))
    }

    /// Bytes `shape` takes in this type, or `None` when the shape cannot be stored (overflow, a row
    /// that is not a whole number of blocks).
    fn expected_bytes(&self) -> Option<usize> {
        let (block, block_bytes) = self.dtype.block();
        let cols = *self.shape.last()?;
        if cols % block != 0 {
            return None;
        }
        let rows = self.shape[..self.shape.len() - 1].iter().try_fold(1usize, |a, &b| a.checked_mul(b))?;
        rows.checked_mul(cols / block)?.checked_mul(block_bytes)
    }

    /// Plants a dequantization bug (fault::Fault) in this weight, if it touches its type: the
    /// bytes are copied as the buggy dequantizer would read them.
    #[cfg(feature = "fault-injection")]
    pub fn plant(&mut self, fault: crate::fault::Fault) {
        if let Some(bytes) = kernels::planted_bytes(self.dtype, self.bytes.as_slice(), fault) {
            self.bytes = Bytes::Owned(Arc::new(bytes));
        }
    }

    /// The product of all but the last dimension.
    pub fn rows(&self) -> usize {
        self.shape[..self.shape.len().saturating_sub(1)].iter().product()
    }

    /// The last dimension: the one quantization blocks run along.
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    fn row_bytes(&self) -> usize {
        let (block, block_bytes) = self.dtype.block();
        self.cols() / block * block_bytes
    }

    #[inline]
    fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.bytes.as_slice()[r * n..(r + 1) * n]
    }

    /// Row `r` as f32 into `out` (`cols()` long).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize(self.dtype, self.row(r), out);
    }

    /// The whole tensor as f32. Only for small tensors (norms, biases, position tables).
    pub fn to_f32(&self) -> Vec<f32> {
        let cols = self.cols();
        let mut out = vec![0.0f32; self.rows() * cols];
        for (r, row) in out.chunks_exact_mut(cols.max(1)).enumerate() {
            self.dequantize_row(r, row);
        }
        out
    }

    /// `out[t, r] = sum_c self[r, c] * x[t, c]` for `n` token rows of `x` (`[n, cols]`), written to
    /// `out` (`[n, rows]`). Weights are dequantized a row at a time, inside the kernel; rows are
    /// spread over the engine's pool (pool.rs).
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) {
        let (rows, cols) = (self.rows(), self.cols());
        assert_eq!(x.len(), n * cols, "matmul {}: input is not [{n}, {cols}]", self.name);
        assert_eq!(out.len(), n * rows, "matmul {}: output is not [{n}, {rows}]", self.name);
        if n == 1 {
            return matvec_each([self], x, [out]);
        }
        let (block, block_bytes) = self.dtype.block();
        let fill = |r: usize, c0: usize, c1: usize, dst: &mut [f32]| {
            let row = self.row(r);
            let (from, to) = (c0 / block * block_bytes, c1 / block * block_bytes);
            dequantize(self.dtype, &row[from..to], dst);
            // The GEMM reads a slice of each of a group's rows, one after another: a stream the
            // hardware does not follow. The slice after next of this row is fetched while the
            // tiles work (the next one comes too late: docs/performance.md).
            let width = to - from;
            kernels::prefetch(&row[(to + width).min(row.len())..(to + 2 * width).min(row.len())]);
        };
        gemm::matmul(rows, cols, &fill, x, n, out);
    }

    /// Rows `first..first + count` of a 2-D tensor, as a tensor of their own over the same bytes
    /// (a fused projection's parts: Phi-3's Q/K/V and gate/up).
    pub fn row_range(&self, first: usize, count: usize) -> Result<QTensor> {
        let end = first.checked_add(count).filter(|&e| self.shape.len() == 2 && e <= self.rows());
        let Some(end) = end else {
            return Err(Error::Config(format!("tensor {}: rows {first}..{first}+{count} are not within {:?}", self.name, self.shape)));
        };
        let n = self.row_bytes();
        let bytes = match &self.bytes {
            Bytes::Mapped { map, start, .. } => Bytes::Mapped { map: map.clone(), start: start + first * n, len: count * n },
            Bytes::Owned(v) => Bytes::Owned(Arc::new(v[first * n..end * n].to_vec())),
        };
        QTensor::new(&format!("{}[{first}..{end}]", self.name), self.dtype, vec![count, self.cols()], bytes)
    }

    /// The `[cols, rows]` transpose of a 2-D unquantized tensor (HF Conv1D weights are stored
    /// `[in, out]`). Copies: only for the formats that ship such weights unquantized.
    pub fn transposed(&self) -> Result<QTensor> {
        if self.shape.len() != 2 || self.dtype.block().0 != 1 {
            return Err(Error::Config(format!(
                "tensor {}: cannot transpose a {} {:?} tensor (only 2-D F32/F16/BF16)",
                self.name,
                self.dtype.name(),
                self.shape
            )));
        }
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let size = self.dtype.block().1;
        let src = self.bytes.as_slice();
        let mut dst = vec![0u8; src.len()];
        for r in 0..rows {
            for c in 0..cols {
                let (from, to) = ((r * cols + c) * size, (c * rows + r) * size);
                dst[to..to + size].copy_from_slice(&src[from..from + size]);
            }
        }
        QTensor::new(&self.name, self.dtype, vec![cols, rows], Bytes::Owned(Arc::new(dst)))
    }
}

/// `W_j x` for each of several matrices, with `n` token rows of `x`: what a layer's products that
/// read the same activation (Q/K/V, gate/up) compute. For one token (decode) they run as one
/// parallel job, so the threads meet once rather than once per matrix; for a batch, one after
/// another.
pub fn matmul_each<const N: usize>(ws: [&QTensor; N], x: &[f32], n: usize) -> [Vec<f32>; N] {
    let mut outs = ws.map(|w| vec![0.0f32; n * w.rows()]);
    if n == 1 {
        matvec_each(ws, x, outs.each_mut().map(|o| o.as_mut_slice()));
    } else {
        for (w, o) in ws.iter().zip(&mut outs) {
            w.matmul(x, n, o);
        }
    }
    outs
}

/// `outs[j] = ws[j] x` for one token row `x`. Each matrix's rows are cut into one contiguous span
/// per thread (pool::threads), claimed by the pool's threads (pool::for_each_task). A thread streams
/// its span start to end: spans of a few rows, handed out in turn, cut every thread's stream into
/// pieces the hardware prefetchers lose, and two threads then read a large matrix slower than one
/// (docs/performance.md). A row's dot product does not depend on which thread runs it.
fn matvec_each<const N: usize>(ws: [&QTensor; N], x: &[f32], outs: [&mut [f32]; N]) {
    for (w, o) in ws.iter().zip(&outs) {
        let (rows, cols) = (w.rows(), w.cols());
        assert_eq!(x.len(), cols, "matmul {}: input is not [1, {cols}]", w.name);
        assert_eq!(o.len(), rows, "matmul {}: output is not [1, {rows}]", w.name);
        // The row kernel's length check, made once here rather than on every row: rows are whole
        // blocks (also checked by `new`, but the fields are public).
        assert!(cols.is_multiple_of(w.dtype.block().0), "matmul {}: {cols} columns are not whole blocks", w.name);
    }
    let threads = pool::threads();
    // At least one quantum, so a matrix of no rows is no tasks rather than a division by zero.
    let span = ws.map(|w| w.rows().div_ceil(threads).next_multiple_of(ROW_QUANTUM).max(ROW_QUANTUM));
    let tasks: [usize; N] = std::array::from_fn(|j| ws[j].rows().div_ceil(span[j]));
    let outs = outs.map(pool::Disjoint::new);
    let run = |mut task: usize| {
        let mut j = 0;
        while task >= tasks[j] {
            task -= tasks[j];
            j += 1;
        }
        let w = ws[j];
        let first = task * span[j];
        for r in first..(first + span[j]).min(w.rows()) {
            // SAFETY: `row` slices exactly `cols` values' bytes (checked indexing), `cols` is whole
            // blocks and `x` is `cols` long (asserted above).
            let y = unsafe { kernels::dot_unchecked(w.dtype, w.row(r), x) };
            // SAFETY: `r < rows`, the length of output j (asserted above); each row belongs to
            // exactly one task, so no other thread writes this element.
            unsafe { *outs[j].at(r) = y };
        }
    };
    pool::for_each_task(tasks.iter().sum(), &run);
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// One row of `dtype` bytes as f32.
fn dequantize(dtype: DType, row: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => kernels::f16_to_f32(row, out),
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        DType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(row.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for (v, q) in o.iter_mut().zip(&b[2..]) {
                    *v = d * (*q as i8) as f32;
                }
            }
        }
        DType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(row.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for (j, q) in b[2..].iter().enumerate() {
                    o[j] = d * ((q & 0x0f) as i32 - 8) as f32;
                    o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
        }
        DType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(row.chunks_exact(20)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for (j, q) in b[4..].iter().enumerate() {
                    o[j] = d * (q & 0x0f) as f32 + m;
                    o[j + 16] = d * (q >> 4) as f32 + m;
                }
            }
        }
    }
}

/// Weights of every stored type with their values worked out independently of the kernels, for
/// the tests of every product.
#[cfg(test)]
pub(crate) mod test_weights {
    use super::*;

    /// A SplitMix64 stream, so every test draws the same weights.
    pub struct Draw(u64);

    impl Draw {
        pub fn new(seed: u64) -> Draw {
            Draw(seed)
        }

        pub fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in [-1, 1).
        pub fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// A `[rows, cols]` matrix of `dtype` with random contents, and its values in f64 as the
    /// format's definition gives them (scale times quant, plus the minimum for Q4_1).
    pub fn random(dtype: DType, rows: usize, cols: usize, seed: u64) -> (QTensor, Vec<f64>) {
        let mut d = Draw::new(seed);
        let (mut bytes, mut values) = (Vec::new(), Vec::new());
        let half = |v: f32| f16::from_f32(v);
        for _ in 0..rows {
            match dtype {
                DType::F32 => (0..cols).for_each(|_| {
                    let v = d.unit();
                    bytes.extend(v.to_le_bytes());
                    values.push(v as f64);
                }),
                DType::F16 => (0..cols).for_each(|_| {
                    let v = half(d.unit());
                    bytes.extend(v.to_le_bytes());
                    values.push(v.to_f64());
                }),
                DType::BF16 => (0..cols).for_each(|_| {
                    let bits = (d.unit().to_bits() >> 16) as u16;
                    bytes.extend(bits.to_le_bytes());
                    values.push(f32::from_bits((bits as u32) << 16) as f64);
                }),
                DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => {
                    for _ in 0..cols / 32 {
                        let scale = half(0.01 + 0.1 * d.unit().abs());
                        let min = half(-0.5 * d.unit().abs());
                        bytes.extend(scale.to_le_bytes());
                        if dtype == DType::Q4_1 {
                            bytes.extend(min.to_le_bytes());
                        }
                        let (s, m) = (scale.to_f64(), min.to_f64());
                        if dtype == DType::Q8_0 {
                            for _ in 0..32 {
                                let q = d.next() as u8;
                                bytes.push(q);
                                values.push(s * (q as i8) as f64);
                            }
                        } else {
                            let q: Vec<u8> = (0..32).map(|_| (d.next() % 16) as u8).collect();
                            bytes.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
                            values.extend(q.iter().map(|&q| match dtype {
                                DType::Q4_0 => s * (q as f64 - 8.0),
                                _ => s * q as f64 + m,
                            }));
                        }
                    }
                }
            }
        }
        (QTensor::new("w", dtype, vec![rows, cols], Bytes::Owned(Arc::new(bytes))).expect("a valid random tensor"), values)
    }

    /// `[n, rows]`: every token row of `x` times every row of `values`, summed in f64.
    pub fn reference(values: &[f64], rows: usize, x: &[f32], n: usize) -> Vec<f64> {
        let cols = x.len() / n.max(1);
        let mut out = vec![0.0; n * rows];
        for t in 0..n {
            for r in 0..rows {
                out[t * rows + r] = (0..cols).map(|c| values[r * cols + c] * x[t * cols + c] as f64).sum();
            }
        }
        out
    }

    /// Every stored type.
    pub const TYPES: [DType; 6] = [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1];

    /// Widths to try for `dtype`: odd ones for the plain types, whole blocks (1, 5, 9) for the others.
    pub fn widths(dtype: DType) -> Vec<usize> {
        match dtype.block().0 {
            // 301: two column slices of the prefill product (gemm::KC) and a short third.
            1 => vec![1, 7, 45, 133, 301],
            _ => vec![32, 160, 288],
        }
    }

    /// On a rayon pool of `threads` threads.
    pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a rayon pool").install(f)
    }

    /// Asserts `got` is `want` to within `tol` of the sum of |w x| (the rounding an f32 sum can make).
    pub fn assert_close(got: &[f32], want: &[f64], scale: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
            assert!((*g as f64 - w).abs() <= 1e-5 * s.max(1e-30), "{what}: element {i}: {g} vs {w}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_weights::*;
    use super::*;

    #[test]
    fn decode_products_of_every_type_match_the_f64_reference_on_one_and_two_threads() {
        for dtype in TYPES {
            for cols in widths(dtype) {
                // Row counts around the task size (16): fewer, one short task, several.
                for rows in [1, 15, 17, 50] {
                    let (w, values) = random(dtype, rows, cols, (rows * 1000 + cols) as u64);
                    let mut d = Draw::new(7);
                    let x: Vec<f32> = (0..cols).map(|_| d.unit()).collect();
                    let want = reference(&values, rows, &x, 1);
                    let abs: Vec<f64> = values.iter().map(|v| v.abs()).collect();
                    let scale = reference(&abs, rows, &x.iter().map(|v| v.abs()).collect::<Vec<_>>(), 1);
                    let mut first = None;
                    for threads in [1, 2] {
                        let mut out = vec![0.0f32; rows];
                        on_threads(threads, || w.matmul(&x, 1, &mut out));
                        assert_close(&out, &want, &scale, &format!("{dtype:?} [{rows}, {cols}] on {threads} threads"));
                        // The same bits whatever the thread count.
                        assert_eq!(first.get_or_insert_with(|| out.clone()), &out);
                    }
                }
            }
        }
    }

    #[test]
    fn prefill_products_of_every_type_match_the_f64_reference_on_one_and_two_threads() {
        for dtype in TYPES {
            for cols in widths(dtype) {
                // Rows around the tile (6) and the task (24); tokens around the block (16).
                for (rows, n) in [(1, 2), (7, 5), (25, 17), (50, 33)] {
                    let (w, values) = random(dtype, rows, cols, (rows * 1000 + cols) as u64);
                    let mut d = Draw::new(11);
                    let x: Vec<f32> = (0..n * cols).map(|_| d.unit()).collect();
                    let want = reference(&values, rows, &x, n);
                    let abs: Vec<f64> = values.iter().map(|v| v.abs()).collect();
                    let scale = reference(&abs, rows, &x.iter().map(|v| v.abs()).collect::<Vec<_>>(), n);
                    let mut first = None;
                    for threads in [1, 2] {
                        let mut out = vec![0.0f32; n * rows];
                        on_threads(threads, || w.matmul(&x, n, &mut out));
                        assert_close(&out, &want, &scale, &format!("{dtype:?} [{rows}, {cols}] x {n} tokens on {threads} threads"));
                        assert_eq!(first.get_or_insert_with(|| out.clone()), &out);
                    }
                }
            }
        }
    }

    #[test]
    fn fused_decode_products_equal_the_products_one_at_a_time() {
        for dtype in TYPES {
            let cols = widths(dtype)[1];
            let (a, _) = random(dtype, 37, cols, 1);
            let (b, _) = random(dtype, 16, cols, 2);
            let (c, _) = random(dtype, 5, cols, 3);
            let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
            for threads in [1, 2] {
                let [ya, yb, yc] = on_threads(threads, || matmul_each([&a, &b, &c], &x, 1));
                for (w, y) in [(&a, ya), (&b, yb), (&c, yc)] {
                    let mut alone = vec![0.0f32; w.rows()];
                    on_threads(1, || w.matmul(&x, 1, &mut alone));
                    assert_eq!(y, alone, "{dtype:?} on {threads} threads");
                }
            }
        }
    }

    fn owned(dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> QTensor {
        QTensor::new("t", dtype, shape, Bytes::Owned(Arc::new(bytes))).expect("valid test tensor")
    }

    fn f16_bytes(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q8_0_dequantizes_as_scale_times_signed_byte() {
        let mut b = f16_bytes(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let t = owned(DType::Q8_0, vec![1, 32], b);
        let v = t.to_f32();
        assert_eq!(v[0], -8.0); // 0.5 * -16
        assert_eq!(v[31], 7.5); // 0.5 * 15
    }

    #[test]
    fn q4_0_puts_low_nibbles_first_and_centres_on_eight() {
        let mut b = f16_bytes(2.0).to_vec();
        b.extend(std::iter::repeat_n(0x3a, 16)); // low nibble 10, high nibble 3
        let v = owned(DType::Q4_0, vec![32], b).to_f32();
        assert_eq!(v[0], 4.0); // 2 * (10 - 8)
        assert_eq!(v[16], -10.0); // 2 * (3 - 8)
    }

    #[test]
    fn q4_1_adds_the_block_minimum() {
        let mut b = f16_bytes(0.25).to_vec();
        b.extend(f16_bytes(-1.0));
        b.extend(std::iter::repeat_n(0xf1, 16)); // low 1, high 15
        let v = owned(DType::Q4_1, vec![32], b).to_f32();
        assert_eq!(v[5], -0.75); // 0.25 * 1 - 1
        assert_eq!(v[20], 2.75); // 0.25 * 15 - 1
    }

    #[test]
    fn bf16_is_the_top_half_of_an_f32() {
        let bits = (1.5f32.to_bits() >> 16) as u16;
        let v = owned(DType::BF16, vec![1], bits.to_le_bytes().to_vec()).to_f32();
        assert_eq!(v, [1.5]);
    }

    #[test]
    fn matmul_matches_hand_computed_products_for_one_and_many_tokens() {
        // W = [[1, 2, 3], [4, 5, 6]]; x0 = [1, 0, -1], x1 = [2, 1, 0].
        let w = QTensor::from_f32("w", vec![2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
        let mut one = [0.0; 2];
        w.matmul(&[1., 0., -1.], 1, &mut one);
        assert_eq!(one, [-2.0, -2.0]);
        let mut two = [0.0; 4];
        w.matmul(&[1., 0., -1., 2., 1., 0.], 2, &mut two);
        assert_eq!(two, [-2.0, -2.0, 4.0, 13.0]);
    }

    #[test]
    fn fused_quantized_dot_equals_dequantize_then_dot() {
        let mut b = Vec::new();
        for blk in 0..2u8 {
            b.extend(f16_bytes(0.125 * (blk + 1) as f32));
            b.extend(f16_bytes(-0.5));
            b.extend((0..16).map(|i| i * 16 + (15 - i)));
        }
        let t = owned(DType::Q4_1, vec![1, 64], b);
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut fused = [0.0];
        t.matmul(&x, 1, &mut fused);
        let expected = kernels::dot_f32(&t.to_f32(), &x);
        assert!((fused[0] - expected).abs() < 1e-5, "{} vs {expected}", fused[0]);
    }

    #[test]
    fn a_matrix_of_no_rows_gives_empty_products_on_one_and_two_threads() {
        let w = owned(DType::F32, vec![0, 32], vec![]);
        let x = vec![1.0f32; 2 * 32];
        for threads in [1, 2] {
            on_threads(threads, || {
                let (mut one, mut two) = (vec![], vec![]);
                w.matmul(&x[..32], 1, &mut one);
                w.matmul(&x, 2, &mut two);
                assert!(one.is_empty() && two.is_empty());
            });
        }
    }

    #[test]
    fn a_row_range_is_those_rows_and_refuses_rows_past_the_end() {
        // Q8_0, 3 rows of one block: scale 1 and every quant = the row number.
        let bytes: Vec<u8> = (0..3u8).flat_map(|r| f16_bytes(1.0).into_iter().chain(std::iter::repeat_n(r, 32))).collect();
        let t = owned(DType::Q8_0, vec![3, 32], bytes);
        let part = t.row_range(1, 2).unwrap();
        assert_eq!(part.shape, vec![2, 32]);
        assert_eq!(part.to_f32(), [vec![1.0; 32], vec![2.0; 32]].concat());
        assert!(t.row_range(2, 2).is_err());
        assert!(t.row_range(usize::MAX, 2).is_err());
    }

    #[test]
    fn transposed_swaps_rows_and_columns() {
        let t = QTensor::from_f32("w", vec![2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap().transposed().unwrap();
        assert_eq!(t.shape, [3, 2]);
        assert_eq!(t.to_f32(), [1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn new_refuses_a_byte_count_that_does_not_match_the_shape() {
        let err = QTensor::new("w", DType::Q8_0, vec![1, 32], Bytes::Owned(Arc::new(vec![0; 33])));
        assert!(err.is_err());
        let not_whole_blocks = QTensor::new("w", DType::Q8_0, vec![1, 16], Bytes::Owned(Arc::new(vec![0; 17])));
        assert!(not_whole_blocks.is_err());
    }

    #[test]
    fn a_decode_matmul_refuses_a_shape_edited_to_part_blocks_after_new() {
        // One Q8_0 block of scale 1 and quants 1: the row dots a vector of ones to 32.
        let mut bytes = half::f16::from_f32(1.0).to_le_bytes().to_vec();
        bytes.extend([1u8; 32]);
        let mut t = QTensor::new("w", DType::Q8_0, vec![1, 32], Bytes::Owned(Arc::new(bytes))).unwrap();
        let mut out = [0.0f32];
        t.matmul(&[1.0; 32], 1, &mut out);
        assert_eq!(out, [32.0]);
        // The fields are public: a shape that no longer holds whole blocks panics, never reads past.
        t.shape = vec![2, 16];
        let refused = std::panic::catch_unwind(move || t.matmul(&[1.0; 16], 1, &mut [0.0f32; 2])).is_err();
        assert!(refused);
    }
}
