//! The noise floor: each f32 tensor judged against an f64 ground truth, in units of the distance
//! the references themselves land from it.
//!
//! Every implementation that computes in f32 lands some distance from the exact result: its
//! rounding noise, which depends on the tensor, the layer, the prompt and the summation order. For
//! one tensor of one case, the largest distance from the truth among the references judged in the
//! f32 class is that tensor's noise floor. The engine passes when its own distance is at most
//! [`K`] times the floor, plus [`FLOOR`] for tensors every reference computes exactly
//! (`docs/noise-floor.md` has the data behind both numbers).
//!
//! Distances are relative to the truth's own scale, so they read the same on logits (~10) and
//! probabilities (<= 1), and the triangle inequality holds between them: an engine within `a` of
//! the truth and a reference `b` from it are at most `a + b` apart. A direct engine-vs-reference
//! check therefore judges the engine's excess, its distance from the reference minus the
//! reference's own from the truth, against the same allowance `a`.

use crate::metrics::{ratio, Sums};

/// How many times the references' own distance from the truth the engine may be. The engine is
/// one more f32 implementation with its own summation order; on the calibration suites its distance
/// was at most 2.6x the largest reference's on any tensor, so 4 leaves room for orders no
/// reference uses while still failing an error four times the noise (docs/noise-floor.md).
pub const K: f64 = 4.0;

/// The least distance ever demanded: 16 f32 ulps of the truth's scale (2^-20). Where every
/// reference matches the truth exactly (an embedding lookup), the floor is 0 and an engine that
/// rounds one step differently must still pass.
pub const FLOOR: f64 = 9.5367431640625e-7;

/// A floor this large means the truth and the f32 references disagree by far more than rounding:
/// one of them is broken, and nothing judged against it can be trusted.
pub const IMPLAUSIBLE_FLOOR: f64 = 0.05;

/// How far one tensor is from another, in the truth's scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Distance {
    /// `||x - y|| / ||truth||`.
    pub rms: f64,
    /// `max |x - y| / max |truth|`.
    pub max: f64,
}

impl Distance {
    pub const ZERO: Distance = Distance { rms: 0.0, max: 0.0 };

    /// The distance whose sums are `sums` (over `x` against `y`), in the scale of `truth`.
    pub fn of(sums: &Sums, truth: &Scale) -> Distance {
        Distance { rms: ratio(sums.err_energy, truth.energy).sqrt(), max: ratio(sums.max_abs, truth.peak) }
    }

    /// The larger of two distances, metric by metric.
    pub fn max(self, other: Distance) -> Distance {
        Distance { rms: self.rms.max(other.rms), max: self.max.max(other.max) }
    }

    /// How many noise floors `self` is, by its worse metric (a floor of 0 counts as [`FLOOR`]).
    pub fn in_units_of(self, floor: Distance) -> f64 {
        (self.rms / floor.rms.max(FLOOR)).max(self.max / floor.max.max(FLOOR))
    }
}

/// The size of the truth tensor that distances are measured in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    /// Sum of squares.
    pub energy: f64,
    /// Largest magnitude.
    pub peak: f64,
}

impl Scale {
    /// The scale of the reference side of `sums` (the truth, when `sums` compares against it).
    pub fn of_reference(sums: &Sums) -> Scale {
        Scale { energy: sums.ref_energy, peak: sums.peak }
    }
}

/// One tensor's noise floor: the largest distance from the truth among the f32 references, and
/// which reference set it.
#[derive(Clone, Debug, PartialEq)]
pub struct Floor {
    pub noise: Distance,
    /// Each f32 reference's own distance from the truth, in the order given.
    pub by: Vec<(String, Distance)>,
}

impl Floor {
    /// The floor of the references' distances; `None` when no f32 reference measured one.
    pub fn of(by: Vec<(String, Distance)>) -> Option<Floor> {
        let noise = by.iter().map(|(_, d)| *d).reduce(Distance::max)?;
        Some(Floor { noise, by })
    }

    /// What the engine may be from the truth.
    pub fn engine_allowance(&self) -> Distance {
        Distance { rms: K * self.noise.rms + FLOOR, max: K * self.noise.max + FLOOR }
    }

    /// Why this floor cannot be trusted, if it cannot: the truth and every f32 reference far
    /// apart.
    pub fn implausible(&self) -> Option<String> {
        (self.noise.rms > IMPLAUSIBLE_FLOOR || self.noise.rms.is_nan()).then(|| {
            format!(
                "the f32 references are {:.1e} (relative RMS) from the f64 truth, beyond any rounding noise ({IMPLAUSIBLE_FLOOR:e}): the truth or the references are broken",
                self.noise.rms
            )
        })
    }

    /// A reference whose distance is 10x every other's: named, so a sloppy reference widening the
    /// floor for everyone shows instead of passing in silence.
    pub fn outlier(&self) -> Option<String> {
        if self.by.len() < 2 {
            return None;
        }
        let (worst, d) = self.by.iter().max_by(|a, b| a.1.rms.total_cmp(&b.1.rms))?;
        let next = self.by.iter().filter(|(n, _)| n != worst).map(|(_, d)| d.rms).fold(0.0, f64::max);
        (d.rms > 10.0 * next.max(FLOOR)).then(|| format!("{worst} sets the floor at {:.1}x the next reference", d.rms / next.max(FLOOR)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(rms: f64, max: f64) -> Distance {
        Distance { rms, max }
    }

    #[test]
    fn distances_are_in_the_truths_scale() {
        // truth [3, 4] (energy 25, peak 4), x [3, 5]: error energy 1, max error 1.
        let truth = [3.0f32, 4.0];
        let sums = Sums::of(&truth, &[3.0, 5.0]);
        let got = Distance::of(&sums, &Scale::of_reference(&sums));
        assert_eq!(got, d(0.2, 0.25));
        // The same error measured in another tensor's scale (energy 100, peak 8).
        assert_eq!(Distance::of(&sums, &Scale { energy: 100.0, peak: 8.0 }), d(0.1, 0.125));
    }

    #[test]
    fn the_floor_is_the_worst_reference_and_the_engine_gets_k_of_it() {
        let floor = Floor::of(vec![("a".into(), d(1e-6, 4e-6)), ("b".into(), d(3e-6, 2e-6))]).unwrap();
        assert_eq!(floor.noise, d(3e-6, 4e-6));
        let e = floor.engine_allowance();
        assert!((e.rms - (K * 3e-6 + FLOOR)).abs() < 1e-18 && (e.max - (K * 4e-6 + FLOOR)).abs() < 1e-18);
        assert_eq!(Floor::of(vec![]), None);
    }

    #[test]
    fn an_exact_floor_still_allows_a_rounding_step() {
        let floor = Floor::of(vec![("a".into(), Distance::ZERO)]).unwrap();
        assert_eq!(floor.engine_allowance(), d(FLOOR, FLOOR));
        assert_eq!(d(FLOOR, 0.0).in_units_of(floor.noise), 1.0);
    }

    #[test]
    fn noise_units_take_the_worse_metric() {
        assert_eq!(d(2e-5, 1e-5).in_units_of(d(1e-5, 1e-5)), 2.0);
        assert_eq!(d(1e-5, 3e-5).in_units_of(d(1e-5, 1e-5)), 3.0);
    }

    #[test]
    fn a_reference_ten_times_the_others_is_named_and_a_broken_truth_is_refused() {
        let floor = Floor::of(vec![("llamacpp".into(), d(1e-3, 1e-3)), ("pytorch".into(), d(1e-5, 1e-5))]).unwrap();
        assert!(floor.outlier().unwrap().starts_with("llamacpp sets the floor at 100.0x"));
        assert_eq!(floor.implausible(), None);
        let close = Floor::of(vec![("a".into(), d(2e-5, 1e-5)), ("b".into(), d(1e-5, 1e-5))]).unwrap();
        assert_eq!(close.outlier(), None);
        let broken = Floor::of(vec![("a".into(), d(0.3, 0.5))]).unwrap();
        assert!(broken.implausible().unwrap().contains("broken"));
        let nan = Floor::of(vec![("a".into(), d(f64::NAN, 0.0))]).unwrap();
        assert!(nan.implausible().is_some());
    }
}
