//! Tolerances (`checkpoints/tolerances.toml`): per checkpoint and tolerance class, the metrics that
//! judge it, each with its operator, threshold and where the threshold came from; and the
//! calibration that proposes thresholds from the spread measured between references.
//!
//! `[checkpoint.<name>.<class>]` is the class default. `[family.<arch>.checkpoint.<name>.<class>]`
//! overrides it, whole, for the models of one family (`llama`, `gpt2`): the same metrics and
//! operators with the family's own numbers, so one family's loose references do not become
//! another's allowance. [`Spec::thresholds`] takes the family's table where there is one and the
//! class default otherwise (a family never calibrated, an arch the spec does not know).

use crate::catalog::Catalog;
pub use reports::vocab::{Class, Metric, Op};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The model families (the engine's and the dumps' `arch`) a `[family.<arch>]` table may name.
pub const FAMILIES: [&str; 6] = ["llama", "gpt2", "qwen2", "qwen3", "gemma2", "phi3"];

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
pub fn safety_factor(class: Class) -> f64 {
    match class {
        Class::F32 => 10.0,
        Class::F16 | Class::Quantized => 2.0,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read tolerances {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("tolerances {origin} do not parse (line {line}): {message}")]
    Parse { origin: String, line: usize, message: String },
    /// A table or entry of a parsed spec that cannot be used, where (`[checkpoint.nmse.f32] nmse`) and why.
    #[error("tolerances {origin}: {at}: {problem}")]
    Refused { origin: String, at: String, problem: String },
    #[error("tolerances: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub op: Op,
    pub threshold: f64,
    /// The largest disagreement measured between references when this was calibrated.
    #[serde(default)]
    pub spread: Option<f64>,
    /// What the spread was measured on (`"<suite>, <n> cases #<digest>"`): `--accumulate` keeps an
    /// older, worse spread only when it was measured on the same cases.
    #[serde(default)]
    pub on: Option<String>,
    /// Where the number came from: `"calibrated 2026-11-22, spread ..."` or `"initial, uncalibrated"`.
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
    /// What the spread was measured on, as in [`Threshold::on`].
    #[serde(default)]
    pub on: Option<String>,
    pub source: String,
}

/// Metric -> threshold.
pub type Thresholds = BTreeMap<Metric, Threshold>;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointTolerance {
    /// Per class, for the token checkpoints (argmax, generated). Per class rather than one number
    /// because 4-bit weights move logits a hundred times more than f32 rounding does.
    #[serde(default)]
    pub near_tie_gap: BTreeMap<Class, NearTie>,
    #[serde(default)]
    pub f32: Thresholds,
    #[serde(default)]
    pub f16: Thresholds,
    #[serde(default)]
    pub quantized: Thresholds,
}

impl CheckpointTolerance {
    pub fn class(&self, class: Class) -> &Thresholds {
        match class {
            Class::F32 => &self.f32,
            Class::F16 => &self.f16,
            Class::Quantized => &self.quantized,
        }
    }

    fn class_mut(&mut self, class: Class) -> &mut Thresholds {
        match class {
            Class::F32 => &mut self.f32,
            Class::F16 => &mut self.f16,
            Class::Quantized => &mut self.quantized,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Checkpoint name -> its tolerances: the class defaults.
    #[serde(rename = "checkpoint")]
    pub checkpoints: BTreeMap<String, CheckpointTolerance>,
    /// Model family (arch) -> its overrides of the class defaults.
    #[serde(rename = "family", default)]
    pub families: BTreeMap<String, Family>,
}

/// One model family's thresholds (`[family.<arch>.checkpoint.<name>.<class>]`), each table
/// replacing the class default for that family. Near-tie gaps stay per class.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    #[serde(rename = "checkpoint", default)]
    pub checkpoints: BTreeMap<String, CheckpointTolerance>,
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io { path: path.to_path_buf(), source })?;
        Spec::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Spec, SpecError> {
        // One line, as every error of the binary: the message and where, not toml's snippet.
        toml::from_str(text).map_err(|e: toml::de::Error| SpecError::Parse {
            origin: origin.to_string(),
            // Counted on bytes: a span is never trusted to fall on a char boundary.
            line: e.span().map_or(0, |span| text.as_bytes().iter().take(span.start).filter(|&&b| b == b'\n').count() + 1),
            message: e.message().trim().to_string(),
        })
    }

    /// The thresholds judging `checkpoint` in `class` for a model of family `arch`: the family's
    /// own table when the spec has one, the class default otherwise; `None` if the spec has
    /// neither (the comparison then fails the check rather than passing it unjudged).
    pub fn thresholds(&self, checkpoint: &str, class: Class, arch: &str) -> Option<&Thresholds> {
        self.family_thresholds(checkpoint, class, arch).or_else(|| self.class_default(checkpoint, class))
    }

    /// The class default of `checkpoint` (`[checkpoint.<name>.<class>]`), ignoring family overrides.
    pub fn class_default(&self, checkpoint: &str, class: Class) -> Option<&Thresholds> {
        Some(self.checkpoints.get(checkpoint)?.class(class)).filter(|t| !t.is_empty())
    }

    /// The override of `arch` alone (`[family.<arch>.checkpoint.<name>.<class>]`), if it has one.
    pub fn family_thresholds(&self, checkpoint: &str, class: Class, arch: &str) -> Option<&Thresholds> {
        Some(self.families.get(arch)?.checkpoints.get(checkpoint)?.class(class)).filter(|t| !t.is_empty())
    }

    pub fn near_tie_gap(&self, checkpoint: &str, class: Class) -> Option<f64> {
        Some(self.checkpoints.get(checkpoint)?.near_tie_gap.get(&class)?.gap)
    }

    /// Checks the spec against the catalog: known checkpoints and metrics, every checkpoint with an
    /// f32 tensor judged in every class, and every threshold sound ([`check_threshold`]: the
    /// metric's own operator, a finite bound, and the number the calibration rule gives from the
    /// spread recorded beside it). A family override must name a known family, carry no near-tie
    /// gap (those are per class), and judge with exactly the metrics and operators of the class
    /// default it replaces: it moves the numbers for one family, never what is judged. `origin`
    /// names the file in the errors.
    pub fn validate(&self, catalog: &Catalog, origin: &str) -> Result<(), SpecError> {
        let refuse = |at: String, problem: String| Err(SpecError::Refused { origin: origin.to_string(), at, problem });
        let tables = self.checkpoints.iter().map(|(name, tol)| (format!("checkpoint.{name}"), name, tol)).chain(
            self.families
                .iter()
                .flat_map(|(arch, f)| f.checkpoints.iter().map(move |(name, tol)| (format!("family.{arch}.checkpoint.{name}"), name, tol))),
        );
        for (table, name, tol) in tables {
            if catalog.checkpoint(name).is_none() {
                return refuse(format!("[{table}]"), format!("{name:?} is not in the catalog"));
            }
            for (&class, nt) in &tol.near_tie_gap {
                if let Err(problem) = check_near_tie(nt) {
                    return refuse(format!("[{table}.near_tie_gap] {class}"), problem);
                }
            }
            for &class in Class::ALL {
                for (&metric, t) in tol.class(class) {
                    if let Err(problem) = check_threshold(metric, class, t) {
                        return refuse(format!("[{table}.{class}] {metric}"), problem);
                    }
                }
            }
        }
        for (arch, family) in &self.families {
            if !FAMILIES.contains(&arch.as_str()) {
                return refuse(format!("[family.{arch}]"), format!("{arch:?} is not a model family (known: {})", FAMILIES.join(", ")));
            }
            for (name, tol) in &family.checkpoints {
                let table = format!("[family.{arch}.checkpoint.{name}]");
                if !tol.near_tie_gap.is_empty() {
                    return refuse(table, "near_tie_gap is per class only, not per family".into());
                }
                for &class in Class::ALL {
                    let Some(own) = self.family_thresholds(name, class, arch) else {
                        continue;
                    };
                    let shape = |t: &Thresholds| t.iter().map(|(m, t)| format!("{m} {}", t.op)).collect::<Vec<_>>().join(", ");
                    let default = self.class_default(name, class).map(shape).unwrap_or_default();
                    if shape(own) != default {
                        return refuse(
                            format!("[family.{arch}.checkpoint.{name}.{class}]"),
                            format!("judges [{}] but the class default judges [{default}]: an override moves numbers, not metrics", shape(own)),
                        );
                    }
                }
            }
        }
        for c in &catalog.checkpoints {
            let has_f32 = c.tensors.iter().filter_map(|t| catalog.tensor(t)).any(|t| !t.is_ids());
            for &class in Class::ALL {
                if has_f32 && self.class_default(&c.name, class).is_none() {
                    return refuse(
                        format!("[checkpoint.{}.{class}]", c.name),
                        "missing: the checkpoint has f32 tensors, so every class needs thresholds".into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// How far a recorded threshold may sit from the one the rule gives for its spread, relative: the
/// file holds what `parity calibrate` computed (written shortest-round-trip), so only a hand edit
/// moves it further than float formatting could.
pub const RULE_TOLERANCE: f64 = 1e-9;

/// Whether `recorded` is what the rule gives (`expected`), within [`RULE_TOLERANCE`].
fn follows_rule(recorded: f64, expected: f64) -> bool {
    recorded == expected || (recorded - expected).abs() <= RULE_TOLERANCE * expected.abs()
}

/// One threshold of `class`, on its own: the metric may carry a spec threshold, with the one
/// operator that points the way it gets worse ([`Metric::op`]: a reversed bound would pass every
/// broken tensor); the threshold is finite and, but for decibels (a log ratio, negative when the
/// error exceeds the signal), not negative; and when the spread it was calibrated from is recorded,
/// the threshold is what [`propose`] gives for it. Equality, not "at least": docs/tolerances.md
/// says the file is written by `parity calibrate`, never by hand, so a number that does not follow
/// from its evidence is an edit the evidence does not back, looser or tighter. `Err` says why, in
/// one line.
pub fn check_threshold(metric: Metric, class: Class, t: &Threshold) -> Result<(), String> {
    if !Metric::THRESHOLDED.contains(&metric) {
        let known = Metric::THRESHOLDED.map(Metric::as_str).join(", ");
        return Err(format!("{metric} is not judged by a spec threshold (those are: {known})"));
    }
    if t.op != metric.op() {
        return Err(format!("operator {} is reversed: {metric} is only judged with {} (write op = \"{}\")", t.op, metric.op(), metric.op()));
    }
    if !t.threshold.is_finite() {
        return Err(format!("threshold {} is not finite: a bound that is not a number judges nothing", t.threshold));
    }
    if t.threshold < 0.0 && metric != Metric::SqnrDb {
        return Err(format!("threshold {:e} is negative: {metric} is never below 0, so nothing could pass", t.threshold));
    }
    let Some(spread) = t.spread else {
        return Ok(());
    };
    let Some(expected) = propose(metric, spread, class) else {
        return Err(format!("spread {spread} gives no threshold: recalibrate (`parity calibrate --write`)"));
    };
    if !follows_rule(t.threshold, expected) {
        return Err(format!(
            "threshold {:e} does not follow from its spread {spread:e}: the rule of docs/tolerances.md (safety factor {} in class {class}) gives {expected:e}; recalibrate (`parity calibrate --write`) instead of editing by hand",
            t.threshold,
            safety_factor(class)
        ));
    }
    Ok(())
}

/// A near-tie gap: finite and not negative, and [`NEAR_TIE_FACTOR`] times its spread when that is recorded.
fn check_near_tie(nt: &NearTie) -> Result<(), String> {
    if !nt.gap.is_finite() || nt.gap < 0.0 {
        return Err(format!("gap {} must be a finite number, at least 0", nt.gap));
    }
    match nt.spread {
        Some(spread) if !follows_rule(nt.gap, spread * NEAR_TIE_FACTOR) => Err(format!(
            "gap {:e} does not follow from its spread {spread:e}: the rule is {NEAR_TIE_FACTOR} x the spread, {:e}; recalibrate (`parity calibrate --write`)",
            nt.gap,
            spread * NEAR_TIE_FACTOR
        )),
        _ => Ok(()),
    }
}

/// Checkpoint name -> metric -> the spread measured between references in one class (and family):
/// the worst value over the reference pairs kept by [`robust_spread`] (the largest for a `<=`
/// metric, the smallest for a `>=` one).
pub type Spreads = BTreeMap<String, BTreeMap<Metric, f64>>;

/// A pair's spread this many times the median of the other pairs' at the same checkpoint (class,
/// family) is an outlier: printed, and left out of the threshold. Ten, as for the noise floor's
/// outlier reference ([`crate::noise::Floor::outlier`]): rounding noise varies by a few times
/// between summation orders, not by an order of magnitude.
pub const OUTLIER_RATIO: f64 = 10.0;

/// One pair of reference dumps (one case, two references) at one checkpoint: its worst value of
/// every metric over the checkpoint's tensors (every layer).
#[derive(Clone, Debug, PartialEq)]
pub struct PairSpread {
    /// Which two dumps: `"<model>/<prompt> <reference>~<reference>"`.
    pub pair: String,
    /// The two references.
    pub refs: [String; 2],
    /// The pair's relative RMS distance, sqrt(nmse), the worst over the tensors: the one number
    /// outliers are judged by, in amplitude as the noise floor is (a metric quadratic in the error
    /// would turn a 10x outlier into 100x).
    pub rms: f64,
    /// Metric -> the worst value over the tensors.
    pub metrics: BTreeMap<Metric, f64>,
}

impl PairSpread {
    pub fn new(pair: impl Into<String>, a: &str, b: &str) -> PairSpread {
        PairSpread { pair: pair.into(), refs: [a.to_string(), b.to_string()], rms: 0.0, metrics: BTreeMap::new() }
    }

    /// Folds in one tensor's metrics (as [`crate::compare::f32_metrics`] gives them).
    pub fn add(&mut self, values: &BTreeMap<Metric, f64>) {
        if let Some(&nmse) = values.get(&Metric::Nmse) {
            self.rms = self.rms.max(nmse.sqrt());
        }
        for (&metric, &v) in values {
            let e = self.metrics.entry(metric).or_insert(v);
            *e = worse(metric.op(), *e, v);
        }
    }

    fn has(&self, reference: &str) -> bool {
        self.refs.iter().any(|r| r == reference)
    }
}

/// A pair left out of a spread.
#[derive(Clone, Debug, PartialEq)]
pub struct Outlier {
    pub pair: String,
    /// Its relative RMS distance ([`PairSpread::rms`]).
    pub rms: f64,
    /// That distance over the median of `against`.
    pub ratio: f64,
    /// The pairs it was measured against: `"the other 8 pairs"`, `"the 3 pairs without llamacpp"`.
    pub against: String,
}

/// The spread of one checkpoint, class and family, and what it left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RobustSpread {
    /// Metric -> the worst value over the pairs kept.
    pub metrics: BTreeMap<Metric, f64>,
    /// How many pairs it is the worst of.
    pub kept: usize,
    pub outliers: Vec<Outlier>,
}

/// The spread over `pairs` (of one checkpoint, class and family): the worst value of each metric
/// over every pair except the outliers. A pair is an outlier when its relative RMS distance is at
/// least [`OUTLIER_RATIO`] times the median of the other pairs' (that median taken as at least
/// [`crate::noise::FLOOR`], so pairs that agree bit for bit do not make rounding an outlier); and
/// so is every pair of one reference when each of them is at least that many times the median of
/// the pairs without it. The second rule is what catches a reference that is off on its own, as
/// llama.cpp's f16 GELU table is on GPT-2 (its pairs 240x pytorch~tinygrad at ffn_out): with three
/// references it is in two pairs of every three, so the median of the other pairs is one of its
/// own and the first rule alone never fires. Only the reference whose pairs stand out most is
/// dropped, so the references left always keep a pair.
///
/// The maximum after dropping outliers, not a high quantile: a threshold judges every tensor of
/// every case, so a 95th percentile would by construction leave one in twenty of the references'
/// own comparisons beyond the spread, and with a safety factor of 2 (f16, quantized) an engine as
/// close to llama.cpp as the other references are could fail. What dragged the old pooled maximum
/// was not the tail of the tensors but one reference, or one pair of dumps, disagreeing by orders
/// of magnitude more than the rest; dropping those whole, and saying so, removes the cause while
/// everything kept is still covered. Medians keep the test itself robust: an outlier cannot raise
/// the bar it is measured against. Fewer than two pairs: nothing to compare with, nothing dropped.
pub fn robust_spread(pairs: &[PairSpread]) -> RobustSpread {
    let floor = crate::noise::FLOOR;
    let rms_median = |keep: &dyn Fn(&PairSpread) -> bool| {
        let mut v: Vec<f64> = pairs.iter().filter(|p| keep(p)).map(|p| p.rms).filter(|r| !r.is_nan()).collect();
        median(&mut v).map(|m| (m.max(floor), v.len()))
    };
    // The reference whose pairs all stand out from the pairs without it, the most.
    let mut refs: Vec<&String> = pairs.iter().flat_map(|p| &p.refs).collect();
    refs.sort();
    refs.dedup();
    let lone = refs
        .into_iter()
        .filter_map(|r| {
            let (m, n) = rms_median(&|p| !p.has(r))?;
            let least = pairs.iter().filter(|p| p.has(r)).map(|p| p.rms).reduce(f64::min)?;
            (least / m >= OUTLIER_RATIO).then_some((r, m, n, least / m))
        })
        .max_by(|a, b| a.3.total_cmp(&b.3));
    let mut out = RobustSpread::default();
    for (i, p) in pairs.iter().enumerate() {
        let outlier = match lone {
            Some((r, m, n, _)) if p.has(r) => Some((p.rms / m, format!("the {n} pairs without {r}"))),
            _ => rms_median(&|q| !std::ptr::eq(q, &pairs[i]))
                .map(|(m, n)| (p.rms / m, format!("the other {n} pairs")))
                .filter(|(ratio, _)| *ratio >= OUTLIER_RATIO),
        };
        if let Some((ratio, against)) = outlier {
            out.outliers.push(Outlier { pair: p.pair.clone(), rms: p.rms, ratio, against });
            continue;
        }
        out.kept += 1;
        for (&metric, &v) in &p.metrics {
            let e = out.metrics.entry(metric).or_insert(v);
            *e = worse(metric.op(), *e, v);
        }
    }
    out
}

/// The median (the mean of the middle two for an even count); `None` for no values.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// What a calibration measured on and when.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// The suite and its cases (`"checkpoints/suite.toml, 12 cases #1a2b3c4d"`): kept as
    /// [`Threshold::on`], compared by `--accumulate`.
    pub on: String,
}

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
fn rule(metric: Metric, s: f64) -> Option<Rule> {
    Some(match metric {
        Metric::MaxAbs | Metric::MeanAbs | Metric::Rmse => Rule::Error { factor: s, floor: 1e-6 },
        Metric::MaxAbsScaled => Rule::Error { factor: s, floor: 1e-6 },
        Metric::MaxRel => Rule::Error { factor: s, floor: 1e-5 },
        Metric::Nmse => Rule::Error { factor: s * s, floor: 1e-12 },
        Metric::KlDivergence => Rule::Error { factor: s * s, floor: 1e-9 },
        Metric::Cosine => Rule::Similarity { factor: s * s, floor: 1e-9 },
        // One of the top ten may always swap with the eleventh on a near-tie.
        Metric::TopkOverlap => Rule::Similarity { factor: s, floor: 0.1 },
        Metric::SqnrDb => Rule::Decibels { factor: s * s, cap: 120.0 },
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
pub fn margin(metric: Metric, op: Op, value: f64, threshold: f64) -> f64 {
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
pub fn propose(metric: Metric, spread: f64, class: Class) -> Option<f64> {
    if spread.is_nan() {
        return None;
    }
    Some(match rule(metric, safety_factor(class))? {
        Rule::Error { factor, floor } => (spread * factor).max(floor),
        Rule::Similarity { factor, floor } => (1.0 - ((1.0 - spread) * factor).max(floor)).max(0.0),
        Rule::Decibels { factor, cap } => (spread - 10.0 * factor.log10()).min(cap),
    })
}

/// A copy of `current` whose `class` thresholds (the class default when `family` is `None`, that
/// family's override otherwise, created from the default's metrics if it has none) are replaced,
/// wherever a spread was measured, by the proposed threshold with the spread and `evidence.on`
/// kept beside it. Thresholds without a measured spread are kept as they were.
///
/// With `accumulate`, an older spread that is worse than the new one stays only when it was
/// measured on the same suite and cases (`on` equal): repeated measurements of the same evidence
/// (live references rerun) keep the worst seen. An older spread measured on anything else, or on
/// nothing recorded, is replaced, so a stale loose number does not outlive the evidence for it and
/// calibrating can tighten.
pub fn calibrate(
    current: &Spec,
    class: Class,
    family: Option<&str>,
    spreads: &Spreads,
    accumulate: bool,
    evidence: &Evidence,
) -> Result<Spec, SpecError> {
    if let Some(arch) = family.filter(|a| !FAMILIES.contains(a)) {
        return Err(SpecError::Invalid(format!("unknown family {arch:?} (known: {})", FAMILIES.join(", "))));
    }
    let mut out = current.clone();
    for (checkpoint, metrics) in spreads {
        let Some(default) = current.class_default(checkpoint, class) else {
            continue;
        };
        let tol = match family {
            None => out.checkpoints.get_mut(checkpoint),
            Some(arch) => Some(out.families.entry(arch.to_string()).or_default().checkpoints.entry(checkpoint.clone()).or_default()),
        };
        let Some(thresholds) = tol.map(|t| t.class_mut(class)) else {
            continue;
        };
        if thresholds.is_empty() {
            thresholds.clone_from(default);
        }
        for (&metric, &measured) in metrics {
            let Some(t) = thresholds.get_mut(&metric) else {
                continue;
            };
            if accumulate && t.on.as_deref() == Some(evidence.on.as_str()) && t.spread.is_some_and(|old| worse(t.op, old, measured) == old) {
                continue;
            }
            let Some(proposed) = propose(metric, measured, class) else {
                continue;
            };
            t.threshold = proposed;
            t.spread = Some(measured);
            t.on = Some(evidence.on.clone());
            t.source = format!("calibrated {}, spread {measured:e}, safety factor {}", evidence.date, safety_factor(class));
        }
    }
    Ok(out)
}

/// Between the near-tie gap and the largest logit difference measured between references: noise
/// of `e` on every logit can close a top-two gap of `2e`, and the engine's own noise may be as
/// large again, so a flip inside `4e` is explained by the noise the references themselves show.
pub const NEAR_TIE_FACTOR: f64 = 4.0;

/// A copy of `current` whose `class` near-tie gaps (every checkpoint that has one) are
/// `NEAR_TIE_FACTOR x logit_spread`, the spread kept beside them. With `accumulate`, a larger
/// spread already recorded there stays only when measured on the same cases, as in [`calibrate`].
pub fn calibrate_near_tie(current: &Spec, class: Class, logit_spread: f64, accumulate: bool, evidence: &Evidence) -> Spec {
    let mut out = current.clone();
    for tol in out.checkpoints.values_mut() {
        let Some(nt) = tol.near_tie_gap.get_mut(&class) else {
            continue;
        };
        if accumulate && nt.on.as_deref() == Some(evidence.on.as_str()) && nt.spread.is_some_and(|old| old >= logit_spread) {
            continue;
        }
        let spread = logit_spread;
        nt.gap = spread * NEAR_TIE_FACTOR;
        nt.spread = Some(spread);
        nt.on = Some(evidence.on.clone());
        nt.source = format!(
            "calibrated {}: largest last_logits max_abs between references (outlier pairs left out) {spread:e} x {NEAR_TIE_FACTOR}",
            evidence.date
        );
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

/// The spec as TOML, checkpoints in catalog order, one line per threshold; each checkpoint's
/// family overrides right after its class defaults.
pub fn to_toml(spec: &Spec, catalog: &Catalog) -> String {
    let mut names: Vec<&String> = Vec::new();
    let known = spec.checkpoints.keys().chain(spec.families.values().flat_map(|f| f.checkpoints.keys()));
    for c in &catalog.checkpoints {
        if let Some(name) = known.clone().find(|n| **n == c.name) {
            names.push(name);
        }
    }
    let mut unknown: Vec<&String> = known.filter(|n| catalog.checkpoint(n).is_none()).collect();
    unknown.sort();
    unknown.dedup();
    names.extend(unknown);
    let mut out = String::from(
        "# Tolerances: per checkpoint and class, the metrics that judge it. Written by `parity calibrate`;\n\
         # `spread` is the worst disagreement measured between references (outlier pairs left out), `on`\n\
         # what it was measured on, `source` where a number came from. `[family.<arch>.checkpoint...]`\n\
         # replaces the class default for that model family.\n",
    );
    for name in names {
        if let Some(tol) = spec.checkpoints.get(name) {
            write_checkpoint(&mut out, &format!("checkpoint.{}", key(name)), tol);
        }
        for (arch, family) in &spec.families {
            if let Some(tol) = family.checkpoints.get(name) {
                write_checkpoint(&mut out, &format!("family.{}.checkpoint.{}", key(arch), key(name)), tol);
            }
        }
    }
    out
}

fn write_checkpoint(out: &mut String, table: &str, tol: &CheckpointTolerance) {
    let extra = |spread: Option<f64>, on: &Option<String>| {
        let spread = spread.map(|s| format!(", spread = {}", float(s))).unwrap_or_default();
        let on = on.as_deref().map(|o| format!(", on = {}", string(o))).unwrap_or_default();
        format!("{spread}{on}")
    };
    if !tol.near_tie_gap.is_empty() {
        out.push_str(&format!("\n[{table}.near_tie_gap]\n"));
        // By name, as the file always listed them (f16, f32, quantized).
        let mut gaps: Vec<_> = tol.near_tie_gap.iter().collect();
        gaps.sort_by_key(|(class, _)| class.as_str());
        for (class, nt) in gaps {
            out.push_str(&format!(
                "{} = {{ gap = {}{}, source = {} }}\n",
                key(class.as_str()),
                float(nt.gap),
                extra(nt.spread, &nt.on),
                string(&nt.source)
            ));
        }
    }
    for &class in Class::ALL {
        let thresholds = tol.class(class);
        if thresholds.is_empty() {
            continue;
        }
        out.push_str(&format!("\n[{table}.{class}]\n"));
        for (metric, t) in thresholds {
            out.push_str(&format!(
                "{} = {{ op = \"{}\", threshold = {}{}, source = {} }}\n",
                key(metric.as_str()),
                t.op.as_str(),
                float(t.threshold),
                extra(t.spread, &t.on),
                string(&t.source)
            ));
        }
    }
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
        spec.validate(&catalog(), "tolerances").unwrap();
        assert!(spec.near_tie_gap("generated", Class::Quantized).is_some());
        assert!(spec.near_tie_gap("argmax", Class::F32).is_some());
        let cos = &spec.thresholds("logits", Class::F32, "llama").unwrap()[&Metric::Cosine];
        assert_eq!(cos.op, Op::Ge);
    }

    #[test]
    fn every_committed_threshold_cites_the_spread_it_was_calibrated_from() {
        let spec = project_spec();
        for (name, tol) in &spec.checkpoints {
            for &class in Class::ALL {
                for (metric, t) in tol.class(class) {
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
        assert!(margin(Metric::Nmse, Op::Le, f64::NAN, 1.0).is_nan());
    }

    #[test]
    fn error_margins_are_the_unused_fraction_of_the_threshold() {
        assert_eq!(margin(Metric::MaxAbs, Op::Le, 0.5, 2.0), 0.75);
        assert_eq!(margin(Metric::MaxAbs, Op::Le, 3.0, 2.0), -0.5);
        assert_eq!(margin(Metric::SqnrDb, Op::Ge, 60.0, 40.0), 0.5);
    }

    #[test]
    fn similarity_margins_are_measured_on_the_distance_from_one() {
        // 1 - 0.9999999 = 1e-7 of an allowed 1e-5: 99% unused.
        assert!((margin(Metric::Cosine, Op::Ge, 0.9999999, 0.99999) - 0.99).abs() < 1e-6);
        assert!((margin(Metric::Cosine, Op::Ge, 0.99998, 0.99999) + 1.0).abs() < 1e-6);
        assert_eq!(margin(Metric::TopkOverlap, Op::Ge, 1.0, 0.9), 1.0);
    }

    #[test]
    fn exact_match_margins_are_all_or_nothing() {
        assert_eq!(margin(Metric::Mismatches, Op::Le, 0.0, 0.0), 1.0);
        assert_eq!(margin(Metric::Mismatches, Op::Le, 2.0, 0.0), -1.0);
    }

    #[test]
    fn validation_refuses_unknown_metrics_and_unjudged_checkpoints() {
        // An unknown name does not parse: one line, with the file, the line and the known names.
        let text = include_str!("../../checkpoints/tolerances.toml").replacen("nmse = {", "maxabs = {", 1);
        let e = Spec::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("tolerances t.toml do not parse (line ") && e.contains("metric \"maxabs\" is unknown (known: cosine, "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // A known metric the spec cannot judge by (the noise floor's own) is refused.
        let mut spec = project_spec();
        spec.checkpoints.get_mut("logits").unwrap().f32.insert(Metric::RelRms, threshold(Op::Le, 1.0, None));
        let e = spec.validate(&catalog(), "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("tolerances t.toml: [checkpoint.logits.f32] rel_rms: rel_rms is not judged by a spec threshold"), "{e}");
        let mut spec = project_spec();
        spec.checkpoints.get_mut("attn_out").unwrap().f16.clear();
        let e = spec.validate(&catalog(), "t.toml").unwrap_err().to_string();
        assert!(e.contains("[checkpoint.attn_out.f16]: missing"), "{e}");
    }

    fn threshold(op: Op, threshold: f64, spread: Option<f64>) -> Threshold {
        Threshold { op, threshold, spread, on: None, source: "test".into() }
    }

    /// The project spec with one threshold replaced, validated: the error's text.
    fn refusal(checkpoint: &str, class: Class, metric: Metric, t: Threshold) -> String {
        let mut spec = project_spec();
        let tol = spec.checkpoints.get_mut(checkpoint).unwrap();
        tol.class_mut(class).insert(metric, t);
        let e = spec.validate(&catalog(), "checkpoints/tolerances.toml").unwrap_err();
        assert!(matches!(e, SpecError::Refused { .. }), "{e:?}");
        let text = e.to_string();
        assert!(!text.contains('\n'), "one line: {text}");
        text
    }

    #[test]
    fn a_reversed_operator_is_refused_naming_file_class_and_metric() {
        let e = refusal("logits", Class::F16, Metric::Nmse, threshold(Op::Ge, 1e-6, None));
        assert_eq!(
            e,
            "tolerances checkpoints/tolerances.toml: [checkpoint.logits.f16] nmse: operator >= is reversed: nmse is only judged with <= (write op = \"<=\")"
        );
        let e = refusal("logits", Class::F32, Metric::Cosine, threshold(Op::Le, 0.99, None));
        assert!(e.contains("[checkpoint.logits.f32] cosine: operator <= is reversed: cosine is only judged with >="), "{e}");
        let e = refusal("norm", Class::Quantized, Metric::MaxAbsScaled, threshold(Op::Ge, 0.1, None));
        assert!(e.contains("[checkpoint.norm.quantized] max_abs_scaled: operator >= is reversed"), "{e}");
    }

    #[test]
    fn a_non_finite_or_negative_threshold_is_refused() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = refusal("logits", Class::F32, Metric::Nmse, threshold(Op::Le, bad, None));
            assert!(e.contains("[checkpoint.logits.f32] nmse: threshold") && e.contains("is not finite"), "{e}");
        }
        let e = refusal("logits", Class::F32, Metric::MaxAbsScaled, threshold(Op::Le, -1e-3, None));
        assert!(e.contains("[checkpoint.logits.f32] max_abs_scaled: threshold -1e-3 is negative"), "{e}");
        // Decibels are a log ratio: below 0 is a loose bound, not a nonsensical one.
        let mut spec = project_spec();
        spec.checkpoints.get_mut("logits").unwrap().f32.insert(Metric::SqnrDb, threshold(Op::Ge, -3.0, None));
        spec.validate(&catalog(), "t").unwrap();
    }

    #[test]
    fn a_threshold_that_does_not_follow_from_its_spread_is_refused() {
        // nmse spread 1e-8 in f32: the rule gives 1e-8 x 10^2 = 1e-6, and only that.
        let mut spec = project_spec();
        spec.checkpoints.get_mut("logits").unwrap().f32.insert(Metric::Nmse, threshold(Op::Le, 1e-6 * (1.0 + 1e-12), Some(1e-8)));
        spec.validate(&catalog(), "t").unwrap();
        let e = refusal("logits", Class::F32, Metric::Nmse, threshold(Op::Le, 2e-6, Some(1e-8)));
        assert!(e.contains("[checkpoint.logits.f32] nmse: threshold 2e-6 does not follow from its spread 1e-8"), "{e}");
        assert!(e.contains("safety factor 10 in class f32) gives 1e-6; recalibrate (`parity calibrate --write`)"), "{e}");
        // Tighter than the evidence is refused too: the rule is an equality.
        let e = refusal("logits", Class::Quantized, Metric::Cosine, threshold(Op::Ge, 0.9999, Some(0.999)));
        assert!(e.contains("[checkpoint.logits.quantized] cosine: threshold") && e.contains("safety factor 2 in class quantized"), "{e}");
        // A family override is held to the same rule, and named as such.
        let text = format!(
            "{}\n[family.gpt2.checkpoint.ffn_out.f32]\ncosine = {{ op = \">=\", threshold = 0.99, source = \"s\" }}\nmax_abs_scaled = {{ op = \"<=\", threshold = 0.5, spread = 0.01, source = \"s\" }}\nnmse = {{ op = \"<=\", threshold = 0.01, source = \"s\" }}\n",
            include_str!("../../checkpoints/tolerances.toml")
        );
        let e = Spec::parse(&text, "t").unwrap().validate(&catalog(), "t").unwrap_err().to_string();
        assert!(e.starts_with("tolerances t: [family.gpt2.checkpoint.ffn_out.f32] max_abs_scaled: threshold 5e-1 does not follow"), "{e}");
    }

    #[test]
    fn a_near_tie_gap_must_be_four_times_its_spread() {
        let mut spec = project_spec();
        let nt = spec.checkpoints.get_mut("generated").unwrap().near_tie_gap.get_mut(&Class::F32).unwrap();
        nt.gap = nt.spread.unwrap() * 5.0;
        let e = spec.validate(&catalog(), "t").unwrap_err().to_string();
        assert!(e.starts_with("tolerances t: [checkpoint.generated.near_tie_gap] f32: gap"), "{e}");
        assert!(e.contains("the rule is 4 x the spread"), "{e}");
    }

    #[test]
    fn proposals_scale_the_spread_by_the_safety_factor() {
        assert_eq!(propose(Metric::MaxAbsScaled, 2e-4, Class::F32), Some(2e-3));
        assert_eq!(propose(Metric::Nmse, 1e-8, Class::F32), Some(1e-6));
        // 1 - cosine = 1e-7 -> 1e-5
        assert!((propose(Metric::Cosine, 1.0 - 1e-7, Class::F32).unwrap() - (1.0 - 1e-5)).abs() < 1e-12);
        assert_eq!(propose(Metric::SqnrDb, 80.0, Class::F32), Some(60.0));
        assert_eq!(propose(Metric::TopkOverlap, 1.0, Class::F32), Some(0.9));
        assert_eq!(propose(Metric::TopkOverlap, 0.8, Class::F32), Some(0.0));
    }

    #[test]
    fn a_spread_of_method_gets_a_factor_of_two_not_ten() {
        assert_eq!(propose(Metric::MaxAbsScaled, 0.1, Class::Quantized), Some(0.2));
        assert!((propose(Metric::Nmse, 7e-3, Class::Quantized).unwrap() - 2.8e-2).abs() < 1e-12);
        // 1 - cosine 0.0036 x 4 = 0.0144, not the 0.36 a factor of 100 would allow
        assert!((propose(Metric::Cosine, 0.9964, Class::F16).unwrap() - 0.9856).abs() < 1e-9);
    }

    #[test]
    fn the_looser_class_measures_a_pair_of_references() {
        assert_eq!(Class::F32.looser(Class::Quantized), Class::Quantized);
        assert_eq!(Class::F16.looser(Class::F32), Class::F16);
        assert_eq!(Class::F32.looser(Class::F32), Class::F32);
    }

    #[test]
    fn an_exact_spread_proposes_the_floor_not_zero() {
        assert_eq!(propose(Metric::MaxAbs, 0.0, Class::F32), Some(1e-6));
        assert_eq!(propose(Metric::Nmse, 0.0, Class::F32), Some(1e-12));
        assert_eq!(propose(Metric::SqnrDb, f64::INFINITY, Class::F32), Some(120.0));
        assert_eq!(propose(Metric::Cosine, 1.0, Class::F32), Some(1.0 - 1e-9));
        assert_eq!(propose(Metric::Nmse, f64::NAN, Class::F32), None);
    }

    fn evidence(on: &str) -> Evidence {
        Evidence { date: "2026-11-22".into(), on: on.into() }
    }

    fn one(checkpoint: &str, metrics: &[(Metric, f64)]) -> Spreads {
        Spreads::from([(checkpoint.to_string(), metrics.iter().copied().collect())])
    }

    #[test]
    fn calibration_keeps_the_spread_and_round_trips_through_toml() {
        let spec = project_spec();
        let spreads = one("logits", &[(Metric::Nmse, 3e-9)]);
        let out = calibrate(&spec, Class::F32, None, &spreads, false, &evidence("suite.toml, 1 cases #00000001")).unwrap();
        let t = &out.thresholds("logits", Class::F32, "llama").unwrap()[&Metric::Nmse];
        assert!((t.threshold - 3e-7).abs() < 1e-20);
        assert_eq!(t.spread, Some(3e-9));
        assert_eq!(t.on.as_deref(), Some("suite.toml, 1 cases #00000001"));
        assert_eq!(t.source, "calibrated 2026-11-22, spread 3e-9, safety factor 10");
        // Other classes and checkpoints untouched, and no family table appears.
        assert_eq!(out.class_default("logits", Class::F16), spec.class_default("logits", Class::F16));
        assert_eq!(out.class_default("attn_out", Class::F32), spec.class_default("attn_out", Class::F32));
        assert!(out.families.is_empty());
        let text = to_toml(&out, &catalog());
        assert_eq!(Spec::parse(&text, "written").unwrap(), out);
        assert!(text.find("[checkpoint.embeddings.f32]").unwrap() < text.find("[checkpoint.probs.f32]").unwrap());
        assert!(calibrate(&spec, Class::F32, Some("gtp2"), &spreads, false, &evidence("x")).is_err());
    }

    #[test]
    fn a_family_override_is_created_from_the_default_and_looked_up_only_for_its_family() {
        let spec = project_spec();
        let default_nmse = spec.class_default("ffn_out", Class::F32).unwrap()[&Metric::Nmse].threshold;
        let out = calibrate(&spec, Class::F32, Some("gpt2"), &one("ffn_out", &[(Metric::Nmse, 2e-10)]), false, &evidence("e")).unwrap();
        out.validate(&catalog(), "out").unwrap();
        let gpt2 = out.thresholds("ffn_out", Class::F32, "gpt2").unwrap();
        assert!((gpt2[&Metric::Nmse].threshold - 2e-8).abs() < 1e-22);
        // The metrics not measured are the default's, copied: the override judges the same metrics.
        assert_eq!(gpt2.keys().collect::<Vec<_>>(), spec.class_default("ffn_out", Class::F32).unwrap().keys().collect::<Vec<_>>());
        assert_eq!(gpt2[&Metric::Cosine], spec.class_default("ffn_out", Class::F32).unwrap()[&Metric::Cosine]);
        // Llama, an unknown arch and the class default are unchanged; other classes fall back.
        assert_eq!(out.thresholds("ffn_out", Class::F32, "llama").unwrap()[&Metric::Nmse].threshold, default_nmse);
        assert_eq!(out.thresholds("ffn_out", Class::F32, "qwen2").unwrap()[&Metric::Nmse].threshold, default_nmse);
        assert_eq!(out.class_default("ffn_out", Class::F32).unwrap()[&Metric::Nmse].threshold, default_nmse);
        assert_eq!(out.thresholds("ffn_out", Class::F16, "gpt2"), spec.class_default("ffn_out", Class::F16));
        let text = to_toml(&out, &catalog());
        assert!(text.contains("\n[family.gpt2.checkpoint.ffn_out.f32]\n"), "{text}");
        // Right after ffn_out's own tables, before block_out's.
        let at = text.find("[family.gpt2.checkpoint.ffn_out.f32]").unwrap();
        assert!(text.find("[checkpoint.ffn_out.quantized]").unwrap() < at && at < text.find("[checkpoint.block_out.f32]").unwrap());
        assert_eq!(Spec::parse(&text, "written").unwrap(), out);
    }

    #[test]
    fn validation_refuses_unknown_families_and_overrides_that_change_what_is_judged() {
        let override_of = |arch: &str, table: &str| {
            let text = format!("{}\n[family.{arch}.checkpoint.ffn_out.f32]\n{table}\n", include_str!("../../checkpoints/tolerances.toml"));
            Spec::parse(&text, "t").unwrap().validate(&catalog(), "t")
        };
        let full = r#"cosine = { op = ">=", threshold = 0.99, source = "s" }
max_abs_scaled = { op = "<=", threshold = 0.1, source = "s" }
nmse = { op = "<=", threshold = 0.01, source = "s" }"#;
        override_of("gpt2", full).unwrap();
        assert!(override_of("gtp2", full).unwrap_err().to_string().contains("\"gtp2\" is not a model family"));
        let missing = override_of("llama", "nmse = { op = \"<=\", threshold = 0.01, source = \"s\" }").unwrap_err().to_string();
        assert!(missing.contains("judges [nmse <=] but the class default judges [cosine >=, max_abs_scaled <=, nmse <=]"), "{missing}");
        let flipped = full.replace("\"<=\", threshold = 0.01", "\">=\", threshold = 0.01");
        assert!(override_of("gpt2", &flipped).is_err());
        let nan = full.replace("threshold = 0.01", "threshold = nan");
        let e = override_of("gpt2", &nan).unwrap_err().to_string();
        assert!(e.contains("[family.gpt2.checkpoint.ffn_out.f32] nmse: threshold NaN is not finite"), "{e}");
        let text = format!(
            "{}\n[family.gpt2.checkpoint.argmax.near_tie_gap]\nf32 = {{ gap = 1.0, source = \"s\" }}\n",
            include_str!("../../checkpoints/tolerances.toml")
        );
        assert!(Spec::parse(&text, "t").unwrap().validate(&catalog(), "t").unwrap_err().to_string().contains("per class only"));
        let text = format!("{}\n[family.gpt2.checkpoint.no_such]\n", include_str!("../../checkpoints/tolerances.toml"));
        assert!(Spec::parse(&text, "t").unwrap().validate(&catalog(), "t").unwrap_err().to_string().contains("\"no_such\" is not in the catalog"));
    }

    fn pair(name: &str, nmse: f64, cosine: f64) -> PairSpread {
        let mut p = PairSpread::new(name, &format!("{name}.a"), &format!("{name}.b"));
        p.add(&BTreeMap::from([(Metric::Nmse, nmse), (Metric::Cosine, cosine)]));
        p
    }

    #[test]
    fn a_pair_spread_is_the_worst_over_its_tensors_and_its_rms_is_sqrt_nmse() {
        let mut p = pair("a", 4e-10, 0.9999);
        p.add(&BTreeMap::from([(Metric::Nmse, 1e-10), (Metric::Cosine, 0.99)]));
        assert_eq!(p.metrics[&Metric::Nmse], 4e-10);
        assert_eq!(p.metrics[&Metric::Cosine], 0.99);
        assert!((p.rms - 2e-5).abs() < 1e-18);
        // Each metric's one operator points the way its calibration rule worsens.
        for m in Metric::THRESHOLDED {
            let ge = matches!(rule(m, 1.0), Some(Rule::Similarity { .. } | Rule::Decibels { .. }));
            assert_eq!(m.op() == Op::Ge, ge, "{m}");
        }
    }

    #[test]
    fn a_pair_ten_times_the_median_of_the_others_is_left_out_and_reported() {
        // rms 1e-5, 2e-5, 3e-5 and 4e-4: the last is 4e-4 / median(1e-5, 2e-5, 3e-5) = 20x.
        let pairs = [pair("p1", 1e-10, 0.999), pair("p2", 4e-10, 0.998), pair("p3", 9e-10, 0.997), pair("gelu", 1.6e-7, 0.9)];
        let r = robust_spread(&pairs);
        assert_eq!(r.kept, 3);
        assert_eq!(r.metrics[&Metric::Nmse], 9e-10);
        assert_eq!(r.metrics[&Metric::Cosine], 0.997);
        assert_eq!(r.outliers.len(), 1);
        assert_eq!(r.outliers[0].pair, "gelu");
        assert!((r.outliers[0].rms - 4e-4).abs() < 1e-15 && (r.outliers[0].ratio - 20.0).abs() < 1e-9, "{:?}", r.outliers);
        // 9x the median is kept: the threshold then covers it.
        let pairs = [pair("p1", 1e-10, 1.0), pair("p2", 1e-10, 1.0), pair("p3", 8.1e-9, 1.0)];
        let r = robust_spread(&pairs);
        assert_eq!((r.kept, r.outliers.len(), r.metrics[&Metric::Nmse]), (3, 0, 8.1e-9));
        // With an even count of others the median is the mean of the middle two: 1e-5 and 3e-5 -> 2e-5,
        // and 2e-4 is exactly 10x it (an outlier: at least ten).
        let pairs = [pair("p1", 1e-10, 1.0), pair("p2", 9e-10, 1.0), pair("p3", 4e-8, 1.0)];
        assert_eq!(robust_spread(&pairs).outliers.iter().map(|o| o.pair.as_str()).collect::<Vec<_>>(), ["p3"]);
    }

    #[test]
    fn exact_agreement_does_not_make_rounding_an_outlier_and_one_pair_is_never_one() {
        // Others agree bit for bit: the median counts as the noise floor (~9.5e-7), and a pair at
        // rms 3e-6 (3.1x) stays; one at 1e-4 (105x) does not.
        let pairs = [pair("a", 0.0, 1.0), pair("b", 0.0, 1.0), pair("c", 9e-12, 1.0)];
        assert_eq!(robust_spread(&pairs).outliers, vec![]);
        let pairs = [pair("a", 0.0, 1.0), pair("b", 0.0, 1.0), pair("c", 1e-8, 1.0)];
        let r = robust_spread(&pairs);
        assert_eq!(r.outliers.len(), 1);
        assert!((r.outliers[0].ratio - 1e-4 / crate::noise::FLOOR).abs() < 1e-6);
        assert_eq!(r.metrics[&Metric::Nmse], 0.0);
        let r = robust_spread(&[pair("alone", 1.0, 0.5)]);
        assert_eq!((r.kept, r.outliers.len(), r.metrics[&Metric::Nmse]), (1, 0, 1.0));
        assert_eq!(robust_spread(&[]), RobustSpread::default());
    }

    #[test]
    fn a_reference_whose_every_pair_stands_out_is_left_out_whole() {
        // Two cases of GPT-2, llama.cpp off on its own: its four pairs near rms 5e-4, pytorch~tinygrad
        // near 2e-6. The pair rule alone cannot see it (the median of the others is a llama.cpp pair).
        let p = |case: &str, a: &str, b: &str, rms: f64| {
            let mut p = PairSpread::new(format!("{case} {a}~{b}"), a, b);
            p.add(&BTreeMap::from([(Metric::Nmse, rms * rms)]));
            p
        };
        let pairs = [
            p("fox", "llamacpp", "pytorch", 5e-4),
            p("fox", "llamacpp", "tinygrad", 4e-4),
            p("fox", "pytorch", "tinygrad", 2e-6),
            p("dog", "llamacpp", "pytorch", 5e-4),
            p("dog", "llamacpp", "tinygrad", 5e-4),
            p("dog", "pytorch", "tinygrad", 3e-6),
        ];
        let r = robust_spread(&pairs);
        assert_eq!(r.kept, 2);
        assert!((r.metrics[&Metric::Nmse] - 9e-12).abs() < 1e-24);
        let dropped: Vec<&str> = r.outliers.iter().map(|o| o.pair.as_str()).collect();
        assert_eq!(dropped, ["fox llamacpp~pytorch", "fox llamacpp~tinygrad", "dog llamacpp~pytorch", "dog llamacpp~tinygrad"]);
        // Measured against the median of pytorch~tinygrad, 2.5e-6: 4e-4 is 160x.
        assert_eq!(r.outliers[1].against, "the 2 pairs without llamacpp");
        assert!((r.outliers[1].ratio - 160.0).abs() < 1e-9, "{:?}", r.outliers[1]);
        // One llama.cpp pair within 10x of the others: llama.cpp is not off on its own.
        let mut close = pairs.clone();
        close[1] = p("fox", "llamacpp", "tinygrad", 2e-5);
        let r = robust_spread(&close);
        assert!(r.outliers.iter().all(|o| o.against.starts_with("the other")), "{:?}", r.outliers);
    }

    #[test]
    fn accumulating_on_the_same_cases_keeps_the_worse_spread() {
        let spec = project_spec();
        let same = evidence("suite.toml, 12 cases #aaaa");
        let first = calibrate(&spec, Class::F32, None, &one("logits", &[(Metric::Nmse, 3e-9), (Metric::Cosine, 0.999999)]), false, &same).unwrap();
        let both = calibrate(&first, Class::F32, None, &one("logits", &[(Metric::Nmse, 1e-9), (Metric::Cosine, 0.99999)]), true, &same).unwrap();
        let t = both.class_default("logits", Class::F32).unwrap();
        assert_eq!(t[&Metric::Nmse].spread, Some(3e-9));
        assert_eq!(t[&Metric::Cosine].spread, Some(0.99999));
        // Without --accumulate the new measurement replaces the old, same cases or not.
        let replaced = calibrate(&first, Class::F32, None, &one("logits", &[(Metric::Nmse, 1e-9)]), false, &same).unwrap();
        assert_eq!(replaced.class_default("logits", Class::F32).unwrap()[&Metric::Nmse].spread, Some(1e-9));
    }

    #[test]
    fn accumulating_on_other_cases_replaces_and_so_can_tighten() {
        let spec = project_spec();
        let first =
            calibrate(&spec, Class::F32, Some("gpt2"), &one("logits", &[(Metric::Nmse, 3e-9)]), false, &evidence("suite.toml, 12 cases #aaaa"))
                .unwrap();
        let other = evidence("suite-real.toml, 11 cases #bbbb");
        let next = calibrate(&first, Class::F32, Some("gpt2"), &one("logits", &[(Metric::Nmse, 1e-9)]), true, &other).unwrap();
        let t = &next.thresholds("logits", Class::F32, "gpt2").unwrap()[&Metric::Nmse];
        assert_eq!((t.spread, t.on.as_deref()), (Some(1e-9), Some("suite-real.toml, 11 cases #bbbb")));
        assert!((t.threshold - 1e-7).abs() < 1e-21);
        // The committed entries record no `on`: nothing to match, so they are replaced too.
        assert_eq!(spec.class_default("logits", Class::F32).unwrap()[&Metric::Nmse].on, None);
        let from_old = calibrate(&spec, Class::F32, None, &one("logits", &[(Metric::Nmse, 1e-12)]), true, &other).unwrap();
        assert_eq!(from_old.class_default("logits", Class::F32).unwrap()[&Metric::Nmse].spread, Some(1e-12));
    }

    #[test]
    fn near_tie_gaps_are_four_times_the_logit_spread_and_accumulate_like_thresholds() {
        let spec = project_spec();
        let on = evidence("smollm2");
        let out = calibrate_near_tie(&spec, Class::Quantized, 0.5, false, &on);
        assert_eq!(out.near_tie_gap("generated", Class::Quantized), Some(2.0));
        assert_eq!(out.near_tie_gap("argmax", Class::Quantized), Some(2.0));
        assert_eq!(out.near_tie_gap("generated", Class::F32), spec.near_tie_gap("generated", Class::F32));
        let kept = calibrate_near_tie(&out, Class::Quantized, 0.1, true, &on);
        assert_eq!(kept.near_tie_gap("generated", Class::Quantized), Some(2.0));
        let tightened = calibrate_near_tie(&out, Class::Quantized, 0.1, true, &evidence("other"));
        assert_eq!(tightened.near_tie_gap("generated", Class::Quantized), Some(0.4));
        assert_eq!(Spec::parse(&to_toml(&out, &catalog()), "written").unwrap(), out);
    }
}
