//! Error metrics between a reference tensor and the engine's, accumulated in f64.
//!
//! Every function takes `(reference, engine)` in that order; the error is `engine - reference`.
//! NaN never hides: any NaN in the inputs makes the metric NaN (Rust's `f64::max` would drop it),
//! and a NaN metric fails any threshold. The comparison screens non-finite tensors before measuring;
//! these rules are the second line of defence. Empty inputs: error metrics are 0 (no element differs),
//! similarity metrics are their ideal value (two empty vectors are equal). Slices of unequal length
//! are a caller bug and panic, because zipping them would silently measure a prefix.

/// `p_engine` is floored at this before `ln`, so a probability the engine rounds to 0 where the
/// reference has mass costs `p_ref * ln(p_ref / 1e-12)` instead of +inf.
pub const KL_FLOOR: f64 = 1e-12;

fn check_lengths(reference: &[f32], engine: &[f32]) {
    assert_eq!(reference.len(), engine.len(), "metrics need equal lengths (the caller checks shapes first)");
}

/// Independent accumulators per sum in the one-pass loops.
const LANES: usize = 8;

pub fn all_finite(values: &[f32]) -> bool {
    // Branch-free within a chunk, so the check runs at vector speed on the common all-finite case.
    values.chunks(256).all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite()))
}

/// `max_rel`'s floor, as a fraction of the reference's RMS: below it a reference value counts as
/// "about zero" and the error is measured against the floor instead.
pub const MAX_REL_FLOOR_OF_RMS: f64 = 1e-3;

/// Every sum the error metrics need, and the largest relative error, gathered in one pass over
/// both tensors after one over the reference alone for its RMS (the comparison measures
/// gigabytes per run; two passes instead of one per metric are most of its speed).
#[derive(Clone, Copy, Debug)]
pub struct Sums {
    pub n: usize,
    /// [`max_rel`] with its floor at [`MAX_REL_FLOOR_OF_RMS`] times the reference's RMS (at least
    /// the smallest normal f32).
    pub max_rel: f64,
    /// Largest `|e - r|`, NaN if any input is NaN.
    pub max_abs: f64,
    /// Largest `|r|`, NaN if any reference value is NaN.
    pub peak: f64,
    pub abs_err: f64,
    pub err_energy: f64,
    pub ref_energy: f64,
    pub engine_energy: f64,
    pub dot: f64,
}

impl Sums {
    pub fn of(reference: &[f32], engine: &[f32]) -> Sums {
        check_lengths(reference, engine);
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { simd::sums(reference, engine, None) };
        }
        sums(reference, engine, None)
    }

    /// Whether every reference value is finite. A finite f32 squared in f64 is at most 1.2e77, so
    /// no count of them sums to infinity: the energy is finite exactly when every value is, and the
    /// comparison learns it from the pass it makes anyway.
    pub fn reference_finite(&self) -> bool {
        self.ref_energy.is_finite()
    }

    /// Whether every engine value is finite (as [`Sums::reference_finite`]).
    pub fn engine_finite(&self) -> bool {
        self.engine_energy.is_finite()
    }

    /// Largest absolute error as a fraction of the reference's largest magnitude: a scale-free
    /// max error, so one threshold serves logits (~10) and attention probabilities (<= 1) alike.
    /// 0 when both are all zeros, +inf when only the reference is.
    pub fn max_abs_scaled(&self) -> f64 {
        ratio(self.max_abs, self.peak)
    }

    pub fn mean_abs(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.abs_err / self.n as f64
        }
    }

    pub fn rmse(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.err_energy / self.n as f64).sqrt()
        }
    }

    /// Normalised mean squared error: `sum (e - r)^2 / sum r^2`. 0 when both are zero, +inf when
    /// only the reference is.
    pub fn nmse(&self) -> f64 {
        ratio(self.err_energy, self.ref_energy)
    }

    /// Cosine similarity. Two all-zero (or empty) vectors are identical: 1. One all-zero vector
    /// against a non-zero one has no direction to agree with: 0.
    pub fn cosine(&self) -> f64 {
        let (nr, ne) = (self.ref_energy, self.engine_energy);
        if nr.is_nan() || ne.is_nan() || self.dot.is_nan() {
            return f64::NAN;
        }
        match (nr == 0.0, ne == 0.0) {
            (true, true) => 1.0,
            (true, false) | (false, true) => 0.0,
            _ => self.dot / (nr.sqrt() * ne.sqrt()),
        }
    }

    /// Signal to quantisation-noise ratio in dB: `10 log10(sum r^2 / sum (e - r)^2)`; +inf when exact.
    pub fn sqnr_db(&self) -> f64 {
        let (signal, noise) = (self.ref_energy, self.err_energy);
        if signal.is_nan() || noise.is_nan() {
            return f64::NAN;
        }
        if noise == 0.0 {
            return f64::INFINITY;
        }
        10.0 * (signal / noise).log10()
    }
}

/// [`Sums::of`]'s passes, inlined into each instruction set's version; `floor` for `max_rel`
/// if given, else [`MAX_REL_FLOOR_OF_RMS`] of the reference's RMS.
#[inline(always)]
fn sums(reference: &[f32], engine: &[f32], floor: Option<f64>) -> Sums {
    let n = reference.len();
    let (ref_energy, peak) = energy_and_peak(reference);
    let floor = floor.unwrap_or_else(|| ((ref_energy / n.max(1) as f64).sqrt() * MAX_REL_FLOOR_OF_RMS).max(f32::MIN_POSITIVE as f64));
    // Eight independent lanes per sum, so the f64 adds are not one serial chain and the compiler
    // can use vector registers; lanes are combined at the end.
    let mut lanes = [[0.0f64; LANES]; 5];
    // max_rel without a division per element: a block is divided out only when some error in it
    // exceeds the maximum so far times its denominator. `bar` is that maximum lowered by 2^-45 of
    // itself, more than the product's rounding can move, so no element whose quotient would raise
    // the maximum is skipped and the result has the bits of dividing everywhere. On real tensors
    // the maximum settles within a few blocks and divisions become rare.
    let (mut max_rel, mut bar) = (0.0f64, 0.0f64);
    for (r, e) in reference.chunks(BLOCK).zip(engine.chunks(BLOCK)) {
        if accumulate_block(&mut lanes, r, e, floor, bar) {
            max_rel = r.iter().zip(e).fold(max_rel, |m, (&r, &e)| m.max(relative_error(r, e, floor)));
            bar = max_rel * (1.0 - f64::EPSILON * 128.0);
        }
    }
    let max = |l: &[f64; LANES]| l.iter().fold(0.0f64, |a, &b| a.max(b));
    let sum = |l: &[f64; LANES]| l.iter().sum::<f64>();
    let [max_abs, abs_err, err_energy, engine_energy, dot] = &lanes;
    let (err_energy, engine_energy) = (sum(err_energy), sum(engine_energy));
    // A comparison with NaN is false, so the maxima skip NaN; the energies cannot (NaN
    // propagates through +, and squares are never -inf): any NaN error or reference value
    // makes its maximum NaN here. A non-finite input can also hide from the bar (NaN compares
    // false), so max_rel is then measured again, dividing every element.
    let finite = ref_energy.is_finite() && engine_energy.is_finite();
    Sums {
        n,
        max_rel: if finite { max_rel } else { max_rel_dividing(reference, engine, floor) },
        max_abs: if err_energy.is_nan() { f64::NAN } else { max(max_abs) },
        peak: if ref_energy.is_nan() { f64::NAN } else { peak as f64 },
        abs_err: sum(abs_err),
        err_energy,
        ref_energy,
        engine_energy,
        dot: sum(dot),
    }
}

/// `sum x^2` (in the lanes and order [`sums`] always used) and the largest `|x|` (skipping NaN),
/// the reference's pre-pass.
#[inline(always)]
fn energy_and_peak(values: &[f32]) -> (f64, f32) {
    let mut lanes = [0.0f64; LANES];
    let mut peak = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            lanes[i] += c[i] as f64 * c[i] as f64;
            peak[i] = if c[i].abs() > peak[i] { c[i].abs() } else { peak[i] };
        }
    }
    for &x in tail {
        lanes[0] += x as f64 * x as f64;
        peak[0] = if x.abs() > peak[0] { x.abs() } else { peak[0] };
    }
    (lanes.iter().sum(), peak.iter().fold(0.0f32, |a, &b| a.max(b)))
}

/// Elements per check of max_rel's bar in [`sums`] (a multiple of [`LANES`], so every element
/// lands in the same lane as without blocks).
const BLOCK: usize = 8 * LANES;

/// A block into the accumulators (max |err|, sum |err|, sum err^2, sum e^2, sum r e), element
/// `j` of a chunk into lane `j`, a tail shorter than a chunk into lane 0. Returns whether some
/// `|err|` exceeds `bar` times its max_rel denominator. A comparison with NaN is false, so the
/// maximum (and the bar) skip NaN here and [`sums`] restores it from the energies.
#[inline(always)]
fn accumulate_block(lanes: &mut [[f64; LANES]; 5], reference: &[f32], engine: &[f32], floor: f64, bar: f64) -> bool {
    // err - bar * den is positive exactly when err > bar * den (with gradual underflow a
    // difference is zero only between equals), so a running maximum of it is the test.
    let mut excess = [0.0f64; LANES];
    let mut one = |i: usize, r: f32, e: f32| {
        let (r, e) = (r as f64, e as f64);
        let err = (e - r).abs();
        let [max_abs, abs_err, err_energy, engine_energy, dot] = &mut *lanes;
        max_abs[i] = if err > max_abs[i] { err } else { max_abs[i] };
        abs_err[i] += err;
        err_energy[i] += err * err;
        engine_energy[i] += e * e;
        dot[i] += r * e;
        let over = err - bar * denominator(r, floor);
        excess[i] = if over > excess[i] { over } else { excess[i] };
    };
    let (rc, ec) = (reference.chunks_exact(LANES), engine.chunks_exact(LANES));
    let tail = rc.remainder().iter().zip(ec.remainder());
    for (r, e) in rc.zip(ec) {
        for i in 0..LANES {
            one(i, r[i], e[i]);
        }
    }
    for (&r, &e) in tail {
        one(0, r, e);
    }
    excess.iter().any(|&x| x > 0.0)
}

#[inline(always)]
fn relative_error(r: f32, e: f32, floor: f64) -> f64 {
    let (r, e) = (r as f64, e as f64);
    (e - r).abs() / denominator(r, floor)
}

/// max_rel's denominator, `max(|r|, floor)`: one definition for the bar's test and the division,
/// whose agreement the bar's exactness rests on.
#[inline(always)]
fn denominator(r: f64, floor: f64) -> f64 {
    if r.abs() > floor {
        r.abs()
    } else {
        floor
    }
}

/// max_rel by dividing every element; NaN if any quotient is (a NaN input, or an infinite
/// reference value: inf/inf).
fn max_rel_dividing(reference: &[f32], engine: &[f32], floor: f64) -> f64 {
    let mut max = 0.0f64;
    for (&r, &e) in reference.iter().zip(engine) {
        let rel = relative_error(r, e, floor);
        if rel.is_nan() {
            return f64::NAN;
        }
        max = max.max(rel);
    }
    max
}

/// Largest `|error| / max(|reference|, floor)`: the floor keeps near-zero reference values from
/// turning rounding noise into huge ratios. ([`Sums::of`] measures it with the floor the
/// comparison uses.)
pub fn max_rel(reference: &[f32], engine: &[f32], floor: f64) -> f64 {
    check_lengths(reference, engine);
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { simd::sums(reference, engine, Some(floor)) }.max_rel;
    }
    sums(reference, engine, Some(floor)).max_rel
}

/// The passes compiled for AVX2 (four f64 per register instead of two), chosen at run
/// time. No FMA: Rust never fuses a multiply and an add it was not asked to, so these return the
/// same bits as the portable build.
#[cfg(target_arch = "x86_64")]
mod simd {
    pub fn available() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2"))
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn sums(reference: &[f32], engine: &[f32], floor: Option<f64>) -> super::Sums {
        super::sums(reference, engine, floor)
    }
}

/// KL(p_ref || p_engine) in nats, for two probability vectors. Terms where the reference has no
/// mass contribute 0; the engine's probabilities are floored at [`KL_FLOOR`].
pub fn kl_divergence(p_ref: &[f32], p_engine: &[f32]) -> f64 {
    check_lengths(p_ref, p_engine);
    let mut kl = 0.0;
    for (&p, &q) in p_ref.iter().zip(p_engine) {
        let (p, q) = (p as f64, q as f64);
        if p.is_nan() || q.is_nan() {
            return f64::NAN;
        }
        if p > 0.0 {
            kl += p * (p / q.max(KL_FLOOR)).ln();
        }
    }
    // Rounding can make the sum of two near-identical distributions a hair negative.
    kl.max(0.0)
}

/// The ids of the `k` largest values, largest first; ties go to the lower id.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let by_rank = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    let mut ids: Vec<usize> = (0..values.len()).collect();
    // Select the k best in linear time, then order only those: a vocabulary of 50,000 is not
    // sorted to find ten.
    if k < ids.len() {
        ids.select_nth_unstable_by(k, by_rank);
        ids.truncate(k);
    }
    ids.sort_by(by_rank);
    ids
}

/// Fraction of the reference's top-k ids that are also in the engine's top-k (k capped at the
/// length). 1 for empty inputs or k = 0; NaN if either side holds a NaN.
pub fn topk_overlap(reference: &[f32], engine: &[f32], k: usize) -> f64 {
    check_lengths(reference, engine);
    if reference.iter().chain(engine).any(|x| x.is_nan()) {
        return f64::NAN;
    }
    let k = k.min(reference.len());
    if k == 0 {
        return 1.0;
    }
    let (r, e) = (top_k(reference, k), top_k(engine, k));
    r.iter().filter(|id| e.contains(id)).count() as f64 / k as f64
}

/// Number of positions where two id sequences differ; each position one of them lacks counts too.
pub fn id_mismatches(reference: &[i64], engine: &[i64]) -> usize {
    reference.iter().zip(engine).filter(|(r, e)| r != e).count() + reference.len().abs_diff(engine.len())
}

/// The first step at which two token sequences differ; a length difference counts as a mismatch
/// at the shorter length. `None` when identical.
pub fn first_mismatch(reference: &[i64], engine: &[i64]) -> Option<usize> {
    match reference.iter().zip(engine).position(|(r, e)| r != e) {
        Some(i) => Some(i),
        None if reference.len() != engine.len() => Some(reference.len().min(engine.len())),
        None => None,
    }
}

/// `num / den` with 0/0 = 0 (nothing to measure, nothing wrong) and x/0 = +inf.
pub(crate) fn ratio(num: f64, den: f64) -> f64 {
    if num.is_nan() || den.is_nan() {
        f64::NAN
    } else if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        num / den
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each metric alone, as the comparison reads it from one `Sums`.
    fn max_abs(r: &[f32], e: &[f32]) -> f64 {
        Sums::of(r, e).max_abs
    }
    fn max_abs_scaled(r: &[f32], e: &[f32]) -> f64 {
        Sums::of(r, e).max_abs_scaled()
    }
    fn mean_abs(r: &[f32], e: &[f32]) -> f64 {
        Sums::of(r, e).mean_abs()
    }
    fn rmse(r: &[f32], e: &[f32]) -> f64 {
        Sums::of(r, e).rmse()
    }
    fn nmse(r: &[f32], e: &[f32]) -> f64 {
        Sums::of(r, e).nmse()
    }
    fn cosine(r: &[f32], e: &[f32]) -> f64 {
        Sums::of(r, e).cosine()
    }
    fn sqnr_db(r: &[f32], e: &[f32]) -> f64 {
        Sums::of(r, e).sqnr_db()
    }

    const R: [f32; 4] = [1.0, -2.0, 0.0, 4.0];
    const E: [f32; 4] = [1.5, -2.0, 0.25, 3.0];
    // errors: 0.5, 0, 0.25, -1 ; |e| sum 1.75 ; e^2 sum 0.25+0+0.0625+1 = 1.3125 ; r^2 sum 21

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
    }

    #[test]
    fn absolute_and_mean_errors_match_hand_arithmetic() {
        close(max_abs(&R, &E), 1.0);
        close(mean_abs(&R, &E), 1.75 / 4.0);
        close(rmse(&R, &E), (1.3125f64 / 4.0).sqrt());
        close(nmse(&R, &E), 1.3125 / 21.0);
        close(max_abs_scaled(&R, &E), 1.0 / 4.0);
    }

    #[test]
    fn the_energies_tell_whether_every_value_is_finite() {
        // The largest finite f32, squared and summed many times, stays finite in f64.
        let big = vec![f32::MAX; 10_000];
        let s = Sums::of(&big, &big);
        assert!(s.reference_finite() && s.engine_finite());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![1.0f32; 17];
            x[16] = bad; // in the tail after two lanes' chunks
            assert!(!Sums::of(&x, &R.repeat(5)[..17]).reference_finite(), "{bad} in the reference");
            assert!(!Sums::of(&R.repeat(5)[..17], &x).engine_finite(), "{bad} in the engine");
            assert!(Sums::of(&R.repeat(5)[..17], &x).reference_finite());
        }
    }

    #[test]
    fn the_vector_build_returns_the_portable_bits() {
        // Seeded values of mixed magnitude; lengths that leave every tail length behind the lanes.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 10f32.powi((state % 7) as i32 - 3)
        };
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 100, 1001] {
            let r: Vec<f32> = (0..n).map(|_| next()).collect();
            // Mostly near the reference; every third value far from it, so some errors need
            // more than 26 bits and their squares are rounded (a fused multiply-add would show).
            let e: Vec<f32> = r.iter().enumerate().map(|(i, x)| if i % 3 == 0 { next() * 1e4 } else { x + next() * 1e-3 }).collect();
            let (fast, portable) = (Sums::of(&r, &e), sums(&r, &e, None));
            let bits = |s: &Sums| [s.max_rel, s.max_abs, s.peak, s.abs_err, s.err_energy, s.ref_energy, s.engine_energy, s.dot].map(f64::to_bits);
            assert_eq!(bits(&fast), bits(&portable), "sums of {n}");
        }
    }

    #[test]
    fn max_rel_without_divisions_has_the_bits_of_dividing_every_element() {
        // Ratios that rise through the tensor (the bar is passed block after block), fall, beat
        // an early maximum by two f32 ulps many blocks later, or hide among near-zero references.
        let n = 1000;
        let rising: Vec<(f32, f32)> = (0..n).map(|i| (1.0, 1.0 + i as f32 * 1e-4)).collect();
        let falling: Vec<(f32, f32)> = (0..n).map(|i| (1.0, 1.0 + (n - i) as f32 * 1e-4)).collect();
        let hair_above = |e: f32| f32::from_bits(e.to_bits() + 2);
        let late: Vec<(f32, f32)> = (0..n)
            .map(|i| {
                (
                    3.0,
                    [4.5, hair_above(4.5), 3.001][match i {
                        3 => 0,
                        700 => 1,
                        _ => 2,
                    }],
                )
            })
            .collect();
        let tiny: Vec<(f32, f32)> = (0..n).map(|i| if i % 97 == 0 { (1e-30, 2e-7) } else { (100.0 + i as f32, 100.0 + i as f32 + 0.01) }).collect();
        for (name, pairs) in [("rising", rising), ("falling", falling), ("late", late), ("tiny", tiny)] {
            let (r, e): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let floor = ((energy_and_peak(&r).0 / n as f64).sqrt() * MAX_REL_FLOOR_OF_RMS).max(f32::MIN_POSITIVE as f64);
            assert_eq!(Sums::of(&r, &e).max_rel.to_bits(), max_rel_dividing(&r, &e, floor).to_bits(), "{name}");
            assert_eq!(sums(&r, &e, None).max_rel.to_bits(), max_rel_dividing(&r, &e, floor).to_bits(), "{name}, portable");
        }
    }

    #[test]
    fn max_rel_uses_the_floor_for_small_references() {
        // |e|/max(|r|, 0.5): 0.5/1, 0, 0.25/0.5, 1/4 -> 0.5
        close(max_rel(&R, &E, 0.5), 0.5);
        // floor 0.01: the zero reference gives 0.25 / 0.01 = 25
        close(max_rel(&R, &E, 0.01), 25.0);
        // An infinite engine value is an infinite error; an infinite reference value has no
        // ratio (inf/inf), so NaN.
        assert_eq!(max_rel(&[1.0, 2.0], &[1.0, f32::INFINITY], 0.5), f64::INFINITY);
        assert!(max_rel(&[1.0, f32::INFINITY], &[1.0, 2.0], 0.5).is_nan());
        assert!(max_rel(&[1.0, f32::INFINITY], &[1.0, f32::INFINITY], 0.5).is_nan());
    }

    #[test]
    fn cosine_and_sqnr_match_hand_arithmetic() {
        // dot = 1.5 + 4 + 0 + 12 = 17.5 ; |r|^2 = 21 ; |e|^2 = 2.25 + 4 + 0.0625 + 9 = 15.3125
        close(cosine(&R, &E), 17.5 / (21f64.sqrt() * 15.3125f64.sqrt()));
        close(sqnr_db(&R, &E), 10.0 * (21.0f64 / 1.3125).log10());
        assert_eq!(sqnr_db(&R, &R), f64::INFINITY);
        close(cosine(&R, &R), 1.0);
        close(cosine(&[1.0, 0.0], &[-1.0, 0.0]), -1.0);
    }

    #[test]
    fn nan_in_either_input_makes_every_metric_nan() {
        let n = [1.0, f32::NAN, 0.0, 4.0];
        for (r, e) in [(&R, &n), (&n, &R)] {
            assert!(max_abs(r, e).is_nan());
            assert!(max_rel(r, e, 1e-3).is_nan());
            assert!(max_abs_scaled(r, e).is_nan());
            assert!(mean_abs(r, e).is_nan());
            assert!(rmse(r, e).is_nan());
            assert!(nmse(r, e).is_nan());
            assert!(cosine(r, e).is_nan());
            assert!(sqnr_db(r, e).is_nan());
            assert!(kl_divergence(r, e).is_nan());
            assert!(topk_overlap(r, e, 2).is_nan());
        }
        // A NaN after a large error must not be dropped by max().
        assert!(max_abs(&[0.0, 0.0], &[100.0, f32::NAN]).is_nan());
    }

    #[test]
    fn infinities_give_infinite_errors_not_passes() {
        let inf = [1.0, f32::INFINITY, 0.0, 4.0];
        assert_eq!(max_abs(&R, &inf), f64::INFINITY);
        assert_eq!(nmse(&R, &inf), f64::INFINITY);
        assert!(!all_finite(&inf));
        assert!(!all_finite(&[f32::NAN]));
        assert!(all_finite(&R) && all_finite(&[]));
        // inf - inf is NaN: the same infinity on both sides is not "exact".
        assert!(max_abs(&inf, &inf).is_nan());
    }

    #[test]
    fn zero_vectors_have_defined_values() {
        let z = [0.0f32; 3];
        let x = [0.0, 1.0, 0.0];
        assert_eq!((nmse(&z, &z), cosine(&z, &z), sqnr_db(&z, &z), max_abs_scaled(&z, &z)), (0.0, 1.0, f64::INFINITY, 0.0));
        assert_eq!((nmse(&z, &x), cosine(&z, &x), sqnr_db(&z, &x), max_abs_scaled(&z, &x)), (f64::INFINITY, 0.0, f64::NEG_INFINITY, f64::INFINITY));
        assert_eq!(cosine(&x, &z), 0.0);
    }

    #[test]
    fn empty_inputs_have_defined_values() {
        let e: [f32; 0] = [];
        assert_eq!((max_abs(&e, &e), mean_abs(&e, &e), rmse(&e, &e), nmse(&e, &e)), (0.0, 0.0, 0.0, 0.0));
        assert_eq!((cosine(&e, &e), sqnr_db(&e, &e), kl_divergence(&e, &e), topk_overlap(&e, &e, 5)), (1.0, f64::INFINITY, 0.0, 1.0));
        assert_eq!(first_mismatch(&[], &[]), None);
    }

    #[test]
    #[should_panic(expected = "equal lengths")]
    fn unequal_lengths_are_refused_not_truncated() {
        max_abs(&[1.0, 2.0], &[1.0]);
    }

    #[test]
    fn kl_divergence_matches_hand_arithmetic_and_floors_zeros() {
        let p = [0.5, 0.5, 0.0];
        let q = [0.25, 0.75, 0.0];
        close(kl_divergence(&p, &q), 0.5 * (2.0f64).ln() + 0.5 * (0.5f64 / 0.75).ln());
        close(kl_divergence(&p, &p), 0.0);
        // The engine puts no mass where the reference has 0.5: floored, finite, large.
        close(kl_divergence(&p, &[1.0, 0.0, 0.0]), 0.5 * (0.5f64).ln() + 0.5 * (0.5f64 / KL_FLOOR).ln());
        // Mass where the reference has none costs nothing directly (KL is asymmetric).
        close(kl_divergence(&[1.0, 0.0], &[0.5, 0.5]), (2.0f64).ln());
    }

    #[test]
    fn topk_overlap_counts_shared_ids_and_breaks_ties_by_lower_id() {
        let r = [0.1, 0.4, 0.3, 0.2];
        let e = [0.4, 0.1, 0.3, 0.2];
        assert_eq!(top_k(&r, 2), vec![1, 2]);
        close(topk_overlap(&r, &e, 2), 0.5);
        close(topk_overlap(&r, &e, 3), 2.0 / 3.0);
        close(topk_overlap(&r, &e, 10), 1.0);
        assert_eq!(top_k(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
        // Against ranking everything, on values with many ties.
        let v: Vec<f32> = (0..1000u32).map(|i| ((i * 7919) % 97) as f32).collect();
        let mut all: Vec<usize> = (0..v.len()).collect();
        all.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
        for k in [0, 1, 10, 999, 1000, 2000] {
            assert_eq!(top_k(&v, k), all[..k.min(1000)], "k = {k}");
        }
    }

    #[test]
    fn token_sequences_report_their_first_divergence() {
        assert_eq!(first_mismatch(&[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(first_mismatch(&[1, 2, 3], &[1, 5, 3]), Some(1));
        assert_eq!(first_mismatch(&[1, 2, 3], &[1, 2]), Some(2));
        assert_eq!(first_mismatch(&[], &[4]), Some(0));
        assert_eq!(id_mismatches(&[1, 2, 3], &[1, 5, 4]), 2);
        assert_eq!(id_mismatches(&[1, 2, 3], &[1, 5]), 2);
        assert_eq!(id_mismatches(&[], &[4, 4]), 2);
    }
}
