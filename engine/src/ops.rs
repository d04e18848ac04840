//! The layer math shared by both architectures, on row-major f32 activations.
//!
//! Each function works on whole rows (`[T, d]` stored as `T*d` values) so a forward pass reads as a
//! sequence of named steps. Accumulations that set the precision of a result (norm statistics,
//! attention dot products) are done in f32, softmax sums in f64, with the same order for every
//! row, so a run is bit-identical whatever the thread count.

/// RMSNorm: `x / sqrt(mean(x^2) + eps) * weight`, per row of `weight.len()` values.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    let mut out = vec![0.0; x.len()];
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (mean_sq + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
    out
}

/// LayerNorm: `(x - mean) / sqrt(var + eps) * weight + bias`, per row, biased variance.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    let mut out = vec![0.0; x.len()];
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let scale = 1.0 / (var + eps).sqrt();
        for (((o, v), w), b) in o.iter_mut().zip(row).zip(weight).zip(bias) {
            *o = (v - mean) * scale * w + b;
        }
    }
    out
}

/// Adds `bias` to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `x += y`, the residual connection.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `x *= y` elementwise (SwiGLU's gate times up).
pub fn mul_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a *= b;
    }
}

/// GELU in GPT-2's tanh form: `0.5 x (1 + tanh(u))` with `u = sqrt(2/pi) (x + 0.044715 x^3)`,
/// computed as `x / (1 + exp(-2u))` (the same function: `(1 + tanh u) / 2 = 1 / (1 + e^-2u)`).
/// libm's `tanhf` is several times slower than `expf` (docs/performance.md), and where `tanh u`
/// is near -1 this form also avoids cancelling `1 + tanh u`.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    x / (1.0 + (-2.0 * SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).exp())
}

/// The exact GELU, `x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`, evaluated in f64. GPT-2 was trained
/// with the tanh form: this is only here as the planted GeluErf fault.
pub fn gelu_erf(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2))) as f32
}

/// erf to about 1e-15, from the series `erf x = 2/sqrt(pi) e^(-x^2) sum_n 2^n x^(2n+1) / (2n+1)!!`,
/// whose terms are all positive (nothing cancels) and which converges for every x. Past |x| = 6
/// erf is +-1 in f64 (erfc(6) = 2e-17), which also bounds the loop to about 150 terms.
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    if a.is_nan() || a >= 6.0 {
        return if a.is_nan() { x } else { x.signum() };
    }
    let (mut term, mut sum, mut n) = (a, a, 0.0);
    while term > sum * 1e-17 {
        n += 1.0;
        term *= 2.0 * a * a / (2.0 * n + 1.0);
        sum += term;
    }
    x.signum() * std::f64::consts::FRAC_2_SQRT_PI * (-a * a).exp() * sum
}

/// SiLU (swish): `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Softmax over the whole slice, max-subtracted for stability.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // The sum in f64: over a 49,152-token vocabulary an f32 running sum drifts by 1e-4, thirteen
    // times the references' distance from the f64 truth at `probs`.
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    for v in x.iter_mut() {
        *v = (*v as f64 / sum) as f32;
    }
}

/// Index of the largest value; ties go to the lowest index. NaN never wins.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || (x[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}

/// Which pairs of a head's dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF llama files, whose Q/K rows were permuted for this.
    Interleaved,
    /// Halves `(i, i + hd/2)`: HF transformers' `rotate_half`.
    HalfSplit,
}

/// Rotary position embedding for one head size and base.
#[derive(Clone, Debug)]
pub struct Rope {
    pub layout: RopeLayout,
    head_dim: usize,
    /// `theta^(-2i/hd)` for pair i, rounded to f32 as HF and llama.cpp do, then divided by the
    /// pair's scaling divisor, if any, in f32.
    inv_freq: Vec<f32>,
    /// The planted RopeTableWrap fault: positions taken modulo this (none without the fault).
    wrap: Option<usize>,
}

impl Rope {
    pub fn new(layout: RopeLayout, head_dim: usize, theta: f32, divisors: Option<&[f32]>) -> Rope {
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                let f = (1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64)) as f32;
                divisors.and_then(|d| d.get(i)).map_or(f, |d| f / d)
            })
            .collect();
        Rope { layout, head_dim, inv_freq, wrap: None }
    }

    /// This rotation with positions read modulo `wrap` (the planted RopeTableWrap fault).
    pub fn wrapping_at(self, wrap: Option<usize>) -> Rope {
        Rope { wrap, ..self }
    }

    /// Rotates `x` ([n_tokens, n_heads*hd], token t at position `pos0 + t`) in place.
    pub fn apply(&self, x: &mut [f32], n_tokens: usize, pos0: usize) {
        if n_tokens == 0 {
            return;
        }
        let hd = self.head_dim;
        let half = hd / 2;
        // A token's angles are the same for every head: their sines and cosines once per token.
        let mut turns = vec![(0.0f32, 0.0f32); self.inv_freq.len()];
        for (t, row) in x.chunks_exact_mut(x.len() / n_tokens).enumerate() {
            let pos = self.wrap.map_or(pos0 + t, |n| (pos0 + t) % n) as f32;
            for (turn, &f) in turns.iter_mut().zip(&self.inv_freq) {
                let angle = (pos * f) as f64;
                *turn = (angle.sin() as f32, angle.cos() as f32);
            }
            for head in row.chunks_exact_mut(hd) {
                for (i, &(sin, cos)) in turns.iter().enumerate() {
                    let (a, b) = match self.layout {
                        RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                        RopeLayout::HalfSplit => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos - x1 * sin;
                    head[b] = x0 * sin + x1 * cos;
                }
            }
        }
    }
}

/// Reorders each head of `x` ([.., n_heads*hd]) from the interleaved RoPE layout of GGUF llama
/// files to HF's half-split layout: HF dimension `s*hd/2 + i` is GGUF dimension `2i + s`.
/// Used only to show Q/K taps in the canonical (HF) order.
pub fn interleaved_to_half_split(x: &[f32], head_dim: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0; x.len()];
    for (src, dst) in x.chunks_exact(head_dim).zip(out.chunks_exact_mut(head_dim)) {
        for i in 0..half {
            dst[i] = src[2 * i];
            dst[half + i] = src[2 * i + 1];
        }
    }
    out
}

/// Applies `f` to every element in parallel (activation functions over `[T, ffn]`), on the
/// engine's pool: the products' workers, not a second set of threads spinning beside them.
pub fn map_in_place(x: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    crate::pool::for_each_chunk_mut(x, 4096, &|_, c| c.iter_mut().for_each(|v| *v = f(*v)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "element {i}: got {g}, want {w}");
        }
    }

    #[test]
    fn rms_norm_divides_by_root_mean_square() {
        // mean(x^2) = (1+4+9+16)/4 = 7.5; 1/sqrt(7.5) = 0.365148; weight doubles channel 1.
        let out = rms_norm(&[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 1.0, 1.0], 0.0);
        assert_close(&out, &[0.365148, 1.460593, 1.095445, 1.460593], 1e-6);
    }

    #[test]
    fn rms_norm_epsilon_matters_for_small_inputs() {
        // mean(x^2) = 1e-6; with eps 1e-6 the scale is 1/sqrt(2e-6) = 707.107.
        let out = rms_norm(&[1e-3, -1e-3], &[1.0, 1.0], 1e-6);
        assert_close(&out, &[std::f32::consts::FRAC_1_SQRT_2, -std::f32::consts::FRAC_1_SQRT_2], 1e-5);
    }

    #[test]
    fn layer_norm_centres_scales_and_shifts() {
        // mean 2.5, biased variance 1.25, 1/sqrt(1.25) = 0.894427; weight 2, bias 1.
        let out = layer_norm(&[1.0, 2.0, 3.0, 4.0], &[2.0; 4], &[1.0; 4], 0.0);
        assert_close(&out, &[-1.683282, 0.105573, 1.894427, 3.683282], 1e-5);
    }

    #[test]
    fn gelu_uses_the_tanh_approximation() {
        // 0.5*x*(1+tanh(0.7978845608*(x+0.044715x^3))) computed with Python's math module.
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-6);
        assert!((gelu_tanh(-2.0) - (-0.045_402_3)).abs() < 1e-6);
        assert_eq!(gelu_tanh(0.0), 0.0);
        // The tanh formula itself in f64, across GPT-2's range of pre-activations and past it.
        for i in -2000..=2000 {
            let x = i as f32 / 100.0;
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x as f64 + 0.044715 * (x as f64).powi(3));
            let exact = 0.5 * x as f64 * (1.0 + u.tanh());
            let got = gelu_tanh(x) as f64;
            assert!((got - exact).abs() <= 2e-6 * exact.abs().max(1e-3), "gelu({x}) = {got}, tanh formula in f64 {exact}");
        }
        assert_eq!(gelu_tanh(-1e30), 0.0);
        assert_eq!(gelu_tanh(1e30), 1e30);
    }

    #[test]
    fn erf_matches_known_values() {
        // Python's math.erf (libm), to 15 digits.
        let known = [
            (0.0, 0.0),
            (1e-3, 0.001128378790969),
            (0.1, 0.112462916018285),
            (0.5, 0.520499877813047),
            (1.0, 0.842700792949715),
            (-1.5, -0.966105146475311),
            (2.0, 0.995322265018953),
            (3.0, 0.999977909503001),
            (4.5, 0.999999999803384),
            (5.9, 1.0),
            (7.0, 1.0),
        ];
        for (x, want) in known {
            assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {}, want {want}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-14, "erf is odd at {x}");
        }
        assert!(erf(f64::NAN).is_nan());
    }

    #[test]
    fn gelu_erf_is_x_times_the_normal_cdf_and_differs_from_the_tanh_form() {
        // x * Phi(x) from Python's math.erf: Phi(1) = 0.841344746068543, Phi(-2) = 0.022750131948179.
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu_erf(-2.0) - (-0.045_500_264)).abs() < 1e-7);
        assert!((gelu_erf(3.0) - 2.995_950_3).abs() < 1e-6);
        assert_eq!(gelu_erf(0.0), 0.0);
        // The two forms differ by up to a few 1e-4 (Python: 1.5e-4 at 1, 9.8e-5 at -2).
        assert!((gelu_erf(1.0) - gelu_tanh(1.0) - 1.53e-4).abs() < 2e-6);
        assert!((gelu_erf(-2.0) - gelu_tanh(-2.0) - (-9.8e-5)).abs() < 2e-6);
    }

    #[test]
    fn silu_is_x_times_sigmoid() {
        // 1/(1+e^-1) = 0.7310586; -2/(1+e^2) = -0.2384058.
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((silu(-2.0) - (-0.238_405_8)).abs() < 1e-6);
    }

    #[test]
    fn softmax_matches_exponentials_over_their_sum() {
        // e^0, e^1, e^2 over 1 + e + e^2 = 11.107338.
        let mut x = [1.0, 2.0, 3.0];
        softmax_in_place(&mut x);
        assert_close(&x, &[0.090031, 0.244728, 0.665241], 1e-6);
        let mut big = [1000.0, 1000.0];
        softmax_in_place(&mut big);
        assert_close(&big, &[0.5, 0.5], 0.0);
    }

    #[test]
    fn softmax_over_a_vocabulary_is_within_an_ulp_of_the_f64_result() {
        // One logit of 10 among 49,151 spread over [0, 1), against the same softmax in f64.
        let mut x: Vec<f32> = (0..49_152).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
        x[3] = 10.0;
        let max = 10.0f64;
        let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
        let want: Vec<f64> = x.iter().map(|&v| (v as f64 - max).exp() / sum).collect();
        softmax_in_place(&mut x);
        let worst = x.iter().zip(&want).map(|(&g, &w)| ((g as f64 - w) / w).abs()).fold(0.0, f64::max);
        // Rounding `v - max` and expf cost a few ulps (5.4e-7 here); the f32 running sum this
        // replaced drifted to 8.0e-6 on the same input (numpy, summing in order).
        assert!(worst < 1e-6, "worst relative error {worst:e}");
    }

    #[test]
    fn argmax_breaks_ties_by_lowest_index_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.7]), 2);
    }

    #[test]
    fn rope_half_split_rotates_pairs_of_halves() {
        // hd = 4, theta = 10000: frequencies 1 and 0.01. At position 1, the pair (x0, x2) turns by
        // 1 rad and (x1, x3) by 0.01 rad: x0' = cos1 - 3 sin1, x2' = sin1 + 3 cos1,
        // x1' = 2 cos.01 - 4 sin.01, x3' = 2 sin.01 + 4 cos.01.
        let rope = Rope::new(RopeLayout::HalfSplit, 4, 10000.0, None);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope.apply(&mut x, 1, 1);
        assert_close(&x, &[-1.984111, 1.959901, 2.462378, 4.019799], 1e-5);
    }

    #[test]
    fn rope_interleaved_equals_half_split_after_reordering() {
        // The same vector in GGUF's permuted order [x0, x2, x1, x3] rotated on adjacent pairs
        // must give the half-split result once put back in HF order.
        let rope = Rope::new(RopeLayout::Interleaved, 4, 10000.0, None);
        let mut x = [1.0, 3.0, 2.0, 4.0];
        rope.apply(&mut x, 1, 1);
        assert_close(&interleaved_to_half_split(&x, 4), &[-1.984111, 1.959901, 2.462378, 4.019799], 1e-5);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_positions_advance_per_token() {
        let rope = Rope::new(RopeLayout::HalfSplit, 4, 10000.0, None);
        let mut x = [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0];
        rope.apply(&mut x, 2, 0);
        assert_close(&x[..4], &[1.0, 2.0, 3.0, 4.0], 0.0);
        assert_close(&x[4..], &[-1.984111, 1.959901, 2.462378, 4.019799], 1e-5);
    }

    #[test]
    fn a_wrapping_rope_table_is_exact_before_its_length_and_repeats_after() {
        // hd = 4, a table of 8 positions: positions 0..8 rotate as the exact RoPE does, position
        // 8 + k as position k (position 9: the identity's neighbour, angle 1 rad on pair 0).
        let exact = Rope::new(RopeLayout::HalfSplit, 4, 10000.0, None);
        let wrapped = Rope::new(RopeLayout::HalfSplit, 4, 10000.0, None).wrapping_at(Some(8));
        let x = [1.0, 2.0, 3.0, 4.0];
        let at = |rope: &Rope, pos: usize| {
            let mut y = x;
            rope.apply(&mut y, 1, pos);
            y
        };
        for pos in 0..8 {
            assert_eq!(at(&wrapped, pos), at(&exact, pos), "position {pos}");
        }
        assert_eq!(at(&wrapped, 8), x);
        assert_eq!(at(&wrapped, 9), at(&exact, 1));
        assert_ne!(at(&wrapped, 9), at(&exact, 9));
        // A prefill crossing the table's end: row t at position 6 + t.
        let mut rows = [x, x, x, x].concat();
        wrapped.apply(&mut rows, 4, 6);
        assert_eq!(rows, [at(&exact, 6), at(&exact, 7), x, at(&exact, 1)].concat());
    }
}
