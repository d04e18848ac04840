//! Tolerances (`checkpoints/tolerances.toml`): per checkpoint and tolerance class, the metrics that
//! judge it, each with its operator, threshold and where the threshold came from; and the
//! calibration that proposes thresholds from the spread measured between references.

use crate::catalog::Catalog;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The tolerance classes a suite model can name, from tightest to loosest.
pub const CLASSES: [&str; 3] = ["f32", "f16", "quantized"];

/// Metrics a threshold may name (those [`crate::compare`] computes for f32 tensors).
pub const METRICS: [&str; 10] =
    ["max_abs", "max_rel", "max_abs_scaled", "mean_abs", "rmse", "nmse", "cosine", "sqnr_db", "kl_divergence", "topk_overlap"];

/// The factor between the spread measured between references and the proposed threshold, in the
/// metric's amplitude: a metric quadratic in the error (nmse, kl_divergence, 1 - cosine) gets its
/// square.
///
/// `f32`: 10. The spread is rounding noise, which depends on summation order and varies by orders
/// of magnitude from tensor to tensor; ten leaves room for an engine that sums in another order
/// while still catching an error an order of magnitude beyond what independent implementations
/// disagree by.
///
/// `f16` and `quantized`: 2. There the spread is dominated by one deterministic difference of
/// method (llama.cpp rounds activations to f16 or 8 bits inside its matrix products; the engine and
/// the other references do not), so the engine's distance from that reference is about the spread
/// itself; two covers prompt-to-prompt variation without accepting, say, a cosine of 0.6.
pub fn safety_factor(class: &str) -> f64 {
    if class == "f32" {
        10.0
    } else {
        2.0
    }
}

/// The looser of two classes: the class a comparison between two references is measured in.
pub fn looser<'a>(a: &'a str, b: &'a str) -> &'a str {
    let rank = |c: &str| CLASSES.iter().position(|x| *x == c).unwrap_or(CLASSES.len());
    if rank(a) >= rank(b) {
        a
    } else {
        b
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read tolerances {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("tolerances {origin} do not parse: {source}")]
    Parse { origin: String, source: toml::de::Error },
    #[error("tolerances: {0}")]
    Invalid(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Op {
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">=")]
    Ge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Le => "<=",
            Op::Ge => ">=",
        }
    }

    /// Whether `value` satisfies the bound. NaN never does.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Le => value <= threshold,
            Op::Ge => value >= threshold,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub op: Op,
    pub threshold: f64,
    /// The largest disagreement measured between references when this was calibrated.
    #[serde(default)]
    pub spread: Option<f64>,
    /// Where the number came from: `"calibrated 2026-11-22 on ..., spread ..."` or `"initial, uncalibrated"`.
    pub source: String,
}

/// The top-two logit gap under which a token flip counts as a near-tie, not a failure.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NearTie {
    pub gap: f64,
    /// The largest last-token logit difference (max abs) measured between references when this
    /// was calibrated.
    #[serde(default)]
    pub spread: Option<f64>,
    pub source: String,
}

/// Metric name -> threshold.
pub type Thresholds = BTreeMap<String, Threshold>;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointTolerance {
    /// Per class, for the token checkpoints (argmax, generated). Per class rather than one number
    /// because 4-bit weights move logits a hundred times more than f32 rounding does.
    #[serde(default)]
    pub near_tie_gap: BTreeMap<String, NearTie>,
    #[serde(default)]
    pub f32: Thresholds,
    #[serde(default)]
    pub f16: Thresholds,
    #[serde(default)]
    pub quantized: Thresholds,
}

impl CheckpointTolerance {
    pub fn class(&self, class: &str) -> Option<&Thresholds> {
        match class {
            "f32" => Some(&self.f32),
            "f16" => Some(&self.f16),
            "quantized" => Some(&self.quantized),
            _ => None,
        }
    }

    fn class_mut(&mut self, class: &str) -> Option<&mut Thresholds> {
        match class {
            "f32" => Some(&mut self.f32),
            "f16" => Some(&mut self.f16),
            "quantized" => Some(&mut self.quantized),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Checkpoint name -> its tolerances.
    #[serde(rename = "checkpoint")]
    pub checkpoints: BTreeMap<String, CheckpointTolerance>,
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io { path: path.to_path_buf(), source })?;
        Spec::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Spec, SpecError> {
        toml::from_str(text).map_err(|source| SpecError::Parse { origin: origin.to_string(), source })
    }

    /// The thresholds judging `checkpoint` in `class`; `None` if the spec has none (the comparison
    /// then fails the check rather than passing it unjudged).
    pub fn thresholds(&self, checkpoint: &str, class: &str) -> Option<&Thresholds> {
        self.checkpoints.get(checkpoint)?.class(class).filter(|t| !t.is_empty())
    }

    pub fn near_tie_gap(&self, checkpoint: &str, class: &str) -> Option<f64> {
        Some(self.checkpoints.get(checkpoint)?.near_tie_gap.get(class)?.gap)
    }

    /// Checks the spec against the catalog: known checkpoints, classes and metrics, finite
    /// thresholds, and every checkpoint with an f32 tensor judged in every class.
    pub fn validate(&self, catalog: &Catalog) -> Result<(), SpecError> {
        let bad = |s: String| Err(SpecError::Invalid(s));
        for (name, tol) in &self.checkpoints {
            if catalog.checkpoint(name).is_none() {
                return bad(format!("checkpoint {name:?} is not in the catalog"));
            }
            if let Some(class) = tol.near_tie_gap.keys().find(|c| !CLASSES.contains(&c.as_str())) {
                return bad(format!("checkpoint {name}: near_tie_gap for unknown class {class:?}"));
            }
            for class in CLASSES {
                for (metric, t) in tol.class(class).into_iter().flatten() {
                    if !METRICS.contains(&metric.as_str()) {
                        return bad(format!("checkpoint {name}.{class}: unknown metric {metric:?} (known: {})", METRICS.join(", ")));
                    }
                    if t.threshold.is_nan() {
                        return bad(format!("checkpoint {name}.{class}.{metric}: threshold is NaN"));
                    }
                }
            }
        }
        for c in &catalog.checkpoints {
            let has_f32 = c.tensors.iter().filter_map(|t| catalog.tensor(t)).any(|t| !t.is_ids());
            for class in CLASSES {
                if has_f32 && self.thresholds(&c.name, class).is_none() {
                    return bad(format!("checkpoint {} has f32 tensors but no {class} thresholds", c.name));
                }
            }
        }
        Ok(())
    }
}

/// Checkpoint name -> metric -> the worst value measured between references in one class
/// (the largest for a `<=` metric, the smallest for a `>=` one).
pub type Spreads = BTreeMap<String, BTreeMap<String, f64>>;

/// How a spread becomes a threshold, per metric.
enum Rule {
    /// An error (ideal 0): `spread x factor`, at least `floor`.
    Error { factor: f64, floor: f64 },
    /// A similarity (ideal 1): `1 - (1 - spread) x factor`, the distance at least `floor`.
    Similarity { factor: f64, floor: f64 },
    /// A ratio in dB (ideal +inf): `spread - 10 log10(factor)`, at most `cap` (used for an exact spread).
    Decibels { factor: f64, cap: f64 },
}

/// The floors keep a spread of 0 (references that agree bit for bit) from demanding bit-exactness
/// of an engine that merely sums in another order; they sit near f32 rounding of typical tensors.
fn rule(metric: &str, s: f64) -> Option<Rule> {
    Some(match metric {
        "max_abs" | "mean_abs" | "rmse" => Rule::Error { factor: s, floor: 1e-6 },
        "max_abs_scaled" => Rule::Error { factor: s, floor: 1e-6 },
        "max_rel" => Rule::Error { factor: s, floor: 1e-5 },
        "nmse" => Rule::Error { factor: s * s, floor: 1e-12 },
        "kl_divergence" => Rule::Error { factor: s * s, floor: 1e-9 },
        "cosine" => Rule::Similarity { factor: s * s, floor: 1e-9 },
        // One of the top ten may always swap with the eleventh on a near-tie.
        "topk_overlap" => Rule::Similarity { factor: s, floor: 0.1 },
        "sqnr_db" => Rule::Decibels { factor: s * s, cap: 120.0 },
        _ => return None,
    })
}

/// Room to spare, as the fraction of the allowed error still unused (negative when failed), so
/// every metric reads the same way: +100% is an exact match, +0% is right at the threshold.
/// - error metrics (`<=`): (threshold - value) / threshold;
/// - similarities bounded by 1 (cosine, top-k overlap): the same on their distance from 1, so
///   cosine 0.9999999 against 0.99999 has +99% left, not +0.0001%;
/// - decibels (`>=`): (value - threshold) / threshold;
/// - a threshold of 0 (exact equality of ids): +100% when the value is 0, otherwise -100%; no
///   fraction of zero exists, and the note says where the ids first differ.
pub fn margin(metric: &str, op: Op, value: f64, threshold: f64) -> f64 {
    if threshold == 0.0 {
        return if value == 0.0 {
            1.0
        } else if value.is_nan() {
            f64::NAN
        } else {
            -1.0
        };
    }
    if let (Some(Rule::Similarity { .. }), Op::Ge) = (rule(metric, 1.0), op) {
        if threshold < 1.0 {
            return (value - threshold) / (1.0 - threshold);
        }
    }
    let room = match op {
        Op::Le => threshold - value,
        Op::Ge => value - threshold,
    };
    room / threshold.abs()
}

/// The threshold proposed for `metric` of `class` given the spread between references.
pub fn propose(metric: &str, spread: f64, class: &str) -> Option<f64> {
    if spread.is_nan() {
        return None;
    }
    Some(match rule(metric, safety_factor(class))? {
        Rule::Error { factor, floor } => (spread * factor).max(floor),
        Rule::Similarity { factor, floor } => (1.0 - ((1.0 - spread) * factor).max(floor)).max(0.0),
        Rule::Decibels { factor, cap } => (spread - 10.0 * factor.log10()).min(cap),
    })
}

/// A copy of `current` whose `class` thresholds are replaced, wherever a spread was measured, by
/// the proposed threshold with the spread kept beside it and `provenance` (date, models, references)
/// in its source. Thresholds without a measured spread are kept as they were. With `accumulate`,
/// a spread already recorded in `current` that is worse than the new one wins, so calibrating on
/// several suites one after another keeps the evidence of all of them.
pub fn calibrate(current: &Spec, class: &str, spreads: &Spreads, accumulate: bool, provenance: &str) -> Result<Spec, SpecError> {
    if !CLASSES.contains(&class) {
        return Err(SpecError::Invalid(format!("unknown class {class:?}")));
    }
    let mut out = current.clone();
    for (checkpoint, metrics) in spreads {
        let Some(thresholds) = out.checkpoints.get_mut(checkpoint).and_then(|t| t.class_mut(class)) else {
            continue;
        };
        for (metric, &measured) in metrics {
            let Some(t) = thresholds.get_mut(metric) else {
                continue;
            };
            // Accumulating, an older spread at least as bad stays, with the source that measured it.
            if accumulate && t.spread.is_some_and(|old| worse(t.op, old, measured) == old) {
                continue;
            }
            let spread = measured;
            let Some(proposed) = propose(metric, spread, class) else {
                continue;
            };
            t.threshold = proposed;
            t.spread = Some(spread);
            t.source = format!("calibrated {provenance}, spread {spread:e}, safety factor {}", safety_factor(class));
        }
    }
    Ok(out)
}

/// Between the near-tie gap and the largest logit difference measured between references: noise
/// of `e` on every logit can close a top-two gap of `2e`, and the engine's own noise may be as
/// large again, so a flip inside `4e` is explained by the noise the references themselves show.
pub const NEAR_TIE_FACTOR: f64 = 4.0;

/// A copy of `current` whose `class` near-tie gaps (every checkpoint that has one) are
/// `NEAR_TIE_FACTOR x logit_spread`, the spread kept beside them. With `accumulate`, a spread
/// already recorded there that is larger wins.
pub fn calibrate_near_tie(current: &Spec, class: &str, logit_spread: f64, accumulate: bool, provenance: &str) -> Spec {
    let mut out = current.clone();
    for tol in out.checkpoints.values_mut() {
        let Some(nt) = tol.near_tie_gap.get_mut(class) else {
            continue;
        };
        if accumulate && nt.spread.is_some_and(|old| old >= logit_spread) {
            continue;
        }
        let spread = logit_spread;
        nt.gap = spread * NEAR_TIE_FACTOR;
        nt.spread = Some(spread);
        nt.source = format!("calibrated {provenance}: largest last_logits max_abs between references {spread:e} x {NEAR_TIE_FACTOR}");
    }
    out
}

/// The worse of two spreads: the larger error, or the smaller similarity.
fn worse(op: Op, a: f64, b: f64) -> f64 {
    match op {
        Op::Le => a.max(b),
        Op::Ge => a.min(b),
    }
}

/// The spec as TOML, checkpoints in catalog order, one line per threshold.
pub fn to_toml(spec: &Spec, catalog: &Catalog) -> String {
    let mut names: Vec<&String> = Vec::new();
    for c in &catalog.checkpoints {
        if let Some((name, _)) = spec.checkpoints.get_key_value(&c.name) {
            names.push(name);
        }
    }
    names.extend(spec.checkpoints.keys().filter(|n| catalog.checkpoint(n).is_none()));
    let mut out = String::from(
        "# Tolerances: per checkpoint and class, the metrics that judge it. Written by `parity calibrate`;\n\
         # `spread` is the worst disagreement measured between references, `source` where a number came from.\n",
    );
    for name in names {
        let tol = &spec.checkpoints[name];
        if !tol.near_tie_gap.is_empty() {
            out.push_str(&format!("\n[checkpoint.{}.near_tie_gap]\n", key(name)));
            for (class, nt) in &tol.near_tie_gap {
                let spread = nt.spread.map(|s| format!(", spread = {}", float(s))).unwrap_or_default();
                out.push_str(&format!("{} = {{ gap = {}{spread}, source = {} }}\n", key(class), float(nt.gap), string(&nt.source)));
            }
        }
        for class in CLASSES {
            let Some(thresholds) = tol.class(class).filter(|t| !t.is_empty()) else {
                continue;
            };
            out.push_str(&format!("\n[checkpoint.{}.{class}]\n", key(name)));
            for (metric, t) in thresholds {
                let spread = t.spread.map(|s| format!(", spread = {}", float(s))).unwrap_or_default();
                out.push_str(&format!(
                    "{} = {{ op = \"{}\", threshold = {}{spread}, source = {} }}\n",
                    key(metric),
                    t.op.as_str(),
                    float(t.threshold),
                    string(&t.source)
                ));
            }
        }
    }
    out
}

fn string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn float(x: f64) -> String {
    toml::Value::Float(x).to_string()
}

/// A bare key when it is one, quoted otherwise.
fn key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        string(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::parse(include_str!("../../checkpoints/catalog.toml"), "catalog").unwrap()
    }

    fn project_spec() -> Spec {
        Spec::parse(include_str!("../../checkpoints/tolerances.toml"), "tolerances").unwrap()
    }

    #[test]
    fn the_project_tolerances_cover_every_checkpoint_and_class() {
        let spec = project_spec();
        spec.validate(&catalog()).unwrap();
        assert!(spec.near_tie_gap("generated", "quantized").is_some());
        assert!(spec.near_tie_gap("argmax", "f32").is_some());
        let cos = &spec.thresholds("logits", "f32").unwrap()["cosine"];
        assert_eq!(cos.op, Op::Ge);
    }

    #[test]
    fn every_committed_threshold_cites_the_spread_it_was_calibrated_from() {
        let spec = project_spec();
        for (name, tol) in &spec.checkpoints {
            for class in CLASSES {
                for (metric, t) in tol.class(class).into_iter().flatten() {
                    let what = format!("{name}.{class}.{metric}: {}", t.source);
                    assert!(t.spread.is_some() && t.source.starts_with("calibrated"), "{what}");
                }
            }
            for (class, nt) in &tol.near_tie_gap {
                assert!(nt.spread.is_some() && nt.source.starts_with("calibrated"), "{name}.near_tie_gap.{class}: {}", nt.source);
            }
        }
    }

    #[test]
    fn ops_never_pass_nan() {
        assert!(!Op::Le.holds(f64::NAN, 1.0) && !Op::Ge.holds(f64::NAN, 1.0));
        assert!(Op::Ge.holds(f64::INFINITY, 40.0));
        assert!(margin("nmse", Op::Le, f64::NAN, 1.0).is_nan());
    }

    #[test]
    fn error_margins_are_the_unused_fraction_of_the_threshold() {
        assert_eq!(margin("max_abs", Op::Le, 0.5, 2.0), 0.75);
        assert_eq!(margin("max_abs", Op::Le, 3.0, 2.0), -0.5);
        assert_eq!(margin("sqnr_db", Op::Ge, 60.0, 40.0), 0.5);
    }

    #[test]
    fn similarity_margins_are_measured_on_the_distance_from_one() {
        // 1 - 0.9999999 = 1e-7 of an allowed 1e-5: 99% unused.
        assert!((margin("cosine", Op::Ge, 0.9999999, 0.99999) - 0.99).abs() < 1e-6);
        assert!((margin("cosine", Op::Ge, 0.99998, 0.99999) + 1.0).abs() < 1e-6);
        assert_eq!(margin("topk_overlap", Op::Ge, 1.0, 0.9), 1.0);
    }

    #[test]
    fn exact_match_margins_are_all_or_nothing() {
        assert_eq!(margin("mismatches", Op::Le, 0.0, 0.0), 1.0);
        assert_eq!(margin("mismatches", Op::Le, 2.0, 0.0), -1.0);
    }

    #[test]
    fn validation_refuses_unknown_metrics_and_unjudged_checkpoints() {
        let mut spec = project_spec();
        spec.checkpoints
            .get_mut("logits")
            .unwrap()
            .f32
            .insert("maxabs".into(), Threshold { op: Op::Le, threshold: 1.0, spread: None, source: "typo".into() });
        assert!(spec.validate(&catalog()).unwrap_err().to_string().contains("maxabs"));
        let mut spec = project_spec();
        spec.checkpoints.get_mut("attn_out").unwrap().f16.clear();
        assert!(spec.validate(&catalog()).unwrap_err().to_string().contains("attn_out"));
    }

    #[test]
    fn proposals_scale_the_spread_by_the_safety_factor() {
        assert_eq!(propose("max_abs_scaled", 2e-4, "f32"), Some(2e-3));
        assert_eq!(propose("nmse", 1e-8, "f32"), Some(1e-6));
        // 1 - cosine = 1e-7 -> 1e-5
        assert!((propose("cosine", 1.0 - 1e-7, "f32").unwrap() - (1.0 - 1e-5)).abs() < 1e-12);
        assert_eq!(propose("sqnr_db", 80.0, "f32"), Some(60.0));
        assert_eq!(propose("topk_overlap", 1.0, "f32"), Some(0.9));
        assert_eq!(propose("topk_overlap", 0.8, "f32"), Some(0.0));
    }

    #[test]
    fn a_spread_of_method_gets_a_factor_of_two_not_ten() {
        assert_eq!(propose("max_abs_scaled", 0.1, "quantized"), Some(0.2));
        assert!((propose("nmse", 7e-3, "quantized").unwrap() - 2.8e-2).abs() < 1e-12);
        // 1 - cosine 0.0036 x 4 = 0.0144, not the 0.36 a factor of 100 would allow
        assert!((propose("cosine", 0.9964, "f16").unwrap() - 0.9856).abs() < 1e-9);
    }

    #[test]
    fn the_looser_class_measures_a_pair_of_references() {
        assert_eq!(looser("f32", "quantized"), "quantized");
        assert_eq!(looser("f16", "f32"), "f16");
        assert_eq!(looser("f32", "f32"), "f32");
    }

    #[test]
    fn an_exact_spread_proposes_the_floor_not_zero() {
        assert_eq!(propose("max_abs", 0.0, "f32"), Some(1e-6));
        assert_eq!(propose("nmse", 0.0, "f32"), Some(1e-12));
        assert_eq!(propose("sqnr_db", f64::INFINITY, "f32"), Some(120.0));
        assert_eq!(propose("cosine", 1.0, "f32"), Some(1.0 - 1e-9));
        assert_eq!(propose("nmse", f64::NAN, "f32"), None);
    }

    #[test]
    fn calibration_keeps_the_spread_and_round_trips_through_toml() {
        let spec = project_spec();
        let mut spreads = Spreads::new();
        spreads.entry("logits".into()).or_default().insert("nmse".into(), 3e-9);
        let out = calibrate(&spec, "f32", &spreads, false, "2026-11-22 on tiny-llama-f32 x fox").unwrap();
        let t = &out.thresholds("logits", "f32").unwrap()["nmse"];
        assert!((t.threshold - 3e-7).abs() < 1e-20);
        assert_eq!(t.spread, Some(3e-9));
        assert!(t.source.starts_with("calibrated 2026-11-22 on tiny-llama-f32 x fox, spread 3e-9"), "{}", t.source);
        // Other classes and checkpoints untouched.
        assert_eq!(out.thresholds("logits", "f16"), spec.thresholds("logits", "f16"));
        assert_eq!(out.thresholds("attn_out", "f32"), spec.thresholds("attn_out", "f32"));
        let text = to_toml(&out, &catalog());
        assert_eq!(Spec::parse(&text, "written").unwrap(), out);
        assert!(text.find("[checkpoint.embeddings.f32]").unwrap() < text.find("[checkpoint.probs.f32]").unwrap());
        assert!(calibrate(&spec, "bf16", &spreads, false, "x").is_err());
    }

    #[test]
    fn accumulating_calibrations_keep_the_worse_spread() {
        let spec = project_spec();
        let spreads = |nmse: f64, cosine: f64| {
            let mut s = Spreads::new();
            let m = s.entry("logits".into()).or_default();
            m.insert("nmse".into(), nmse);
            m.insert("cosine".into(), cosine);
            s
        };
        let first = calibrate(&spec, "f32", &spreads(3e-9, 0.999999), false, "a").unwrap();
        let both = calibrate(&first, "f32", &spreads(1e-9, 0.99999), true, "b").unwrap();
        let t = both.thresholds("logits", "f32").unwrap();
        assert_eq!(t["nmse"].spread, Some(3e-9));
        assert!(t["nmse"].source.starts_with("calibrated a"), "{}", t["nmse"].source);
        assert_eq!(t["cosine"].spread, Some(0.99999));
        assert!(t["cosine"].source.starts_with("calibrated b"), "{}", t["cosine"].source);
        let replaced = calibrate(&first, "f32", &spreads(1e-9, 0.99999), false, "b").unwrap();
        assert_eq!(replaced.thresholds("logits", "f32").unwrap()["nmse"].spread, Some(1e-9));
    }

    #[test]
    fn near_tie_gaps_are_four_times_the_logit_spread_and_round_trip() {
        let spec = project_spec();
        let out = calibrate_near_tie(&spec, "quantized", 0.5, false, "2026-11-23 on smollm2");
        assert_eq!(out.near_tie_gap("generated", "quantized"), Some(2.0));
        assert_eq!(out.near_tie_gap("argmax", "quantized"), Some(2.0));
        assert_eq!(out.near_tie_gap("generated", "f32"), spec.near_tie_gap("generated", "f32"));
        let kept = calibrate_near_tie(&out, "quantized", 0.1, true, "later");
        assert_eq!(kept.near_tie_gap("generated", "quantized"), Some(2.0));
        assert_eq!(Spec::parse(&to_toml(&out, &catalog()), "written").unwrap(), out);
    }
}
