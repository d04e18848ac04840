//! Judging one engine run against one reference dump, checkpoint by checkpoint, and the drill-down
//! helpers `parity diff` and `parity bisect` use.
//!
//! No check passes by default: a tensor missing on either side, unreadable, of another shape or
//! dtype, non-finite, or with no tolerance to judge it, fails with a note saying which.
//! Comparing a dump with itself (the same file on both sides) would pass trivially; making sure the
//! two sides come from different runs is the caller's concern.

use crate::catalog::Entry;
use crate::dumps::{Dump, Lookup};
use crate::metrics;
use crate::noise::{Distance, Floor, Scale};
use crate::spec::{Class, Metric, Op, Spec};
use crate::tensor::{unravel, Tensor, Values};
use reports::results::{CheckResult, Judgement, Status, STEP_METRIC};
use reports::vocab::{CheckpointName, TensorName};
use std::collections::BTreeMap;

/// `topk_overlap` compares the ten most likely next tokens.
pub const TOPK: usize = 10;

/// A token flip: at generated step `step` (step 0 is `argmax`, the token after the prompt) the
/// engine chose `engine` and the reference `reference`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flip {
    pub step: usize,
    pub engine: i64,
    pub reference: i64,
}

/// What is known about a flip's closeness.
#[derive(Clone, Debug, PartialEq)]
pub enum Tie {
    /// From the reference's own logits at that step: its logit for its token minus its logit for
    /// the engine's, and the limit under which noise explains the flip (2x the per-logit noise:
    /// the reference's own distance from the truth plus an f32 implementation's).
    ReferenceGap { gap: f64, limit: f64 },
    /// The engine's top-two gap after the reference's tokens (no truth or step logits to judge
    /// from), to be held against the spec's near-tie gap of the class; `None` if unknown.
    EngineGap(Option<f64>),
}

/// How token checkpoints judge a flip.
#[derive(Clone, Copy)]
pub struct Tokens<'a> {
    /// Every implementation was fed the same decode history, so every step is compared; otherwise
    /// steps after the first flip follow different histories and are not.
    pub aligned: bool,
    pub tie: &'a (dyn Fn(&Flip) -> Tie + Sync),
}

impl Tokens<'static> {
    /// For comparisons that hold no token checkpoints (or none that can flip).
    pub fn unknown() -> Tokens<'static> {
        Tokens { aligned: false, tie: &|_| Tie::EngineGap(None) }
    }
}

/// Every entry of `entries`, the engine's tensor (by key) against the dump's. `tokens` says how a
/// token flip is judged ([`Tie`]). `class` picks the tolerance class in `spec`.
pub fn compare_case(
    engine: &BTreeMap<String, Tensor>,
    dump: &Dump,
    entries: &[Entry],
    spec: &Spec,
    class: Class,
    tokens: Tokens,
) -> Vec<CheckResult> {
    use rayon::prelude::*;
    // Entries are independent (each reads its own tensor file); the order of `entries` is kept.
    entries.par_iter().map(|entry| compare_entry(engine, dump, entry, spec, class, tokens)).collect()
}

/// One entry of [`compare_case`]: the dump's tensor read, then [`check`]ed.
fn compare_entry(engine: &BTreeMap<String, Tensor>, dump: &Dump, entry: &Entry, spec: &Spec, class: Class, tokens: Tokens) -> CheckResult {
    match dump.get(&entry.key) {
        Ok(reference) => check(entry, engine.get(&entry.key), &reference, spec, class, tokens),
        Err(e) => result(entry, Status::Missing, Some(format!("reference tensor unreadable: {e}")), BTreeMap::new(), vec![]),
    }
}

/// [`compare_case`] against several references at once (each with its tolerance class), without
/// near-tie gaps: every (reference, entry) pair on the pool, the largest engine tensors first, so
/// what is left when a core runs out of work is small and no core waits on one large tensor at
/// the end. Results per reference, in the order of `entries`.
pub fn compare_all(engine: &BTreeMap<String, Tensor>, dumps: &[(&Dump, Class)], entries: &[Entry], spec: &Spec) -> Vec<Vec<CheckResult>> {
    use rayon::prelude::*;
    let sizes: Vec<usize> = entries.iter().map(|e| engine.get(&e.key).map_or(0, Tensor::len)).collect();
    let mut jobs: Vec<(usize, usize)> = (0..dumps.len()).flat_map(|d| (0..entries.len()).map(move |i| (d, i))).collect();
    jobs.sort_by_key(|&(_, i)| std::cmp::Reverse(sizes[i]));
    let mut checks: Vec<((usize, usize), CheckResult)> = jobs
        .par_iter()
        .with_max_len(1)
        .map(|&(d, i)| {
            let (dump, class) = dumps[d];
            ((d, i), compare_entry(engine, dump, &entries[i], spec, class, Tokens::unknown()))
        })
        .collect();
    checks.sort_by_key(|(at, _)| *at);
    let mut per_dump: Vec<Vec<CheckResult>> = (0..dumps.len()).map(|_| Vec::with_capacity(entries.len())).collect();
    for ((d, _), check) in checks {
        per_dump[d].push(check);
    }
    per_dump
}

/// [`compare_all`] with a ground truth: every f32 entry judged by its noise floor
/// ([`crate::noise`]). The floor is the largest distance from the truth among the references
/// judged in the f32 class; the engine's check against the truth allows [`crate::noise::K`] times
/// it, and its check against each reference that allowance plus the reference's own distance.
/// Returns the checks per reference (in the order of `entries`) and the checks against the truth.
/// An entry whose truth tensor is unusable fails against the truth (missing, layout, non-finite)
/// and is judged against the references by the pooled tolerances.
pub fn compare_with_truth(
    engine: &BTreeMap<String, Tensor>,
    dumps: &[(&Dump, Class)],
    truth: &Dump,
    entries: &[Entry],
    spec: &Spec,
) -> (Vec<Vec<CheckResult>>, Vec<CheckResult>) {
    use rayon::prelude::*;
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(engine.get(&entries[i].key).map_or(0, Tensor::len)));
    let mut checks: Vec<(usize, (Vec<CheckResult>, CheckResult))> =
        order.par_iter().with_max_len(1).map(|&i| (i, entry_with_truth(engine, dumps, truth, &entries[i], spec))).collect();
    checks.sort_by_key(|(i, _)| *i);
    let mut per_dump: Vec<Vec<CheckResult>> = (0..dumps.len()).map(|_| Vec::with_capacity(entries.len())).collect();
    let mut against_truth = Vec::with_capacity(entries.len());
    for (_, (by_reference, truth_check)) in checks {
        for (d, check) in by_reference.into_iter().enumerate() {
            per_dump[d].push(check);
        }
        against_truth.push(truth_check);
    }
    (per_dump, against_truth)
}

/// One entry of [`compare_with_truth`]: (the check against each reference, the check against the truth).
fn entry_with_truth(
    engine: &BTreeMap<String, Tensor>,
    dumps: &[(&Dump, Class)],
    truth: &Dump,
    entry: &Entry,
    spec: &Spec,
) -> (Vec<CheckResult>, CheckResult) {
    let references: Vec<Result<Lookup, String>> = dumps.iter().map(|(d, _)| d.get(&entry.key).map_err(|e| e.to_string())).collect();
    let sides: Vec<(&str, Class)> = dumps.iter().map(|(d, class)| (d.manifest.reference.as_str(), *class)).collect();
    judge_with_truth(entry, engine.get(&entry.key), &references, &sides, truth.get(&entry.key).map_err(|e| e.to_string()), spec)
}

/// [`compare_with_truth`]'s judgement of one entry on tensors already read: the engine's, each
/// reference's with its (name, class), and the truth's.
pub fn judge_with_truth(
    entry: &Entry,
    mine: Option<&Tensor>,
    references: &[Result<Lookup, String>],
    sides: &[(&str, Class)],
    truth: Result<Lookup, String>,
    spec: &Spec,
) -> (Vec<CheckResult>, CheckResult) {
    let unreadable = |e: String| result(entry, Status::Missing, Some(format!("reference tensor unreadable: {e}")), BTreeMap::new(), vec![]);
    let pooled = |why: Option<&str>| -> Vec<CheckResult> {
        references
            .iter()
            .zip(sides)
            .map(|(lookup, (_, class))| match lookup {
                Ok(lookup) => check(entry, mine, lookup, spec, *class, Tokens::unknown()),
                Err(e) => unreadable(e.clone()),
            })
            .map(|mut c| {
                if let Some(why) = why.filter(|_| c.status == Status::Pass) {
                    c.note = Some(format!("judged by the pooled tolerances: {why}"));
                }
                c
            })
            .collect()
    };
    let truth_lookup = match truth {
        Ok(lookup) => lookup,
        Err(e) => {
            return (
                pooled(Some("the truth tensor is unreadable")),
                result(entry, Status::Missing, Some(format!("truth tensor unreadable: {e}")), BTreeMap::new(), vec![]),
            )
        }
    };
    // The truth is usable where it has the engine's shape and is finite; otherwise its own check
    // says why, and the references are judged as they would be without it.
    let truth_tensor = match (&truth_lookup, mine) {
        (Lookup::Tensor(t @ Tensor { values: Values::F32(tv), .. }), Some(Tensor { values: Values::F32(_), shape, .. }))
            if &t.shape == shape && !tv.is_empty() && metrics::all_finite(tv) =>
        {
            tv
        }
        _ => return (pooled(Some("the truth cannot judge this tensor")), check(entry, mine, &truth_lookup, spec, Class::F32, Tokens::unknown())),
    };
    // Each reference's distance from the truth, and the truth's scale its sums measured on the way.
    let distance_of = |lookup: &Result<Lookup, String>| -> Option<(Distance, Scale)> {
        let Ok(Lookup::Tensor(Tensor { values: Values::F32(v), shape, .. })) = lookup else {
            return None;
        };
        if shape != &mine?.shape || v.len() != truth_tensor.len() {
            return None;
        }
        let sums = metrics::Sums::of(truth_tensor, v);
        let scale = Scale::of_reference(&sums);
        sums.engine_finite().then(|| (Distance::of(&sums, &scale), scale))
    };
    let measured: Vec<Option<(Distance, Scale)>> = references.iter().map(distance_of).collect();
    let distances: Vec<Option<Distance>> = measured.iter().map(|m| m.map(|(d, _)| d)).collect();
    let by: Vec<(String, Distance)> = sides
        .iter()
        .zip(&distances)
        .filter(|((_, class), _)| *class == Class::F32)
        .filter_map(|((name, _), dist)| Some((name.to_string(), (*dist)?)))
        .collect();
    let Some(floor) = Floor::of(by) else {
        let note = "no reference judged in the f32 class produced this tensor, so its noise floor is unknown: not judged, so not passed";
        return (pooled(Some("no f32 reference measured the noise floor")), result(entry, Status::Fail, Some(note.into()), BTreeMap::new(), vec![]));
    };
    // A floor was measured, so some reference's sums carry the truth's scale; no pass of its own.
    let scale =
        measured.iter().flatten().map(|(_, s)| *s).next().unwrap_or_else(|| Scale::of_reference(&metrics::Sums::of(truth_tensor, truth_tensor)));
    let against_truth =
        check_with(entry, mine, &truth_lookup, spec, Class::F32, Some(NoiseBound { floor: &floor, scale, offset: None }), Tokens::unknown());
    let by_reference = references
        .iter()
        .zip(&distances)
        .zip(sides)
        .map(|((lookup, distance), (_, class))| match (lookup, distance) {
            (Err(e), _) => unreadable(e.clone()),
            (Ok(lookup), Some(d)) => {
                check_with(entry, mine, lookup, spec, *class, Some(NoiseBound { floor: &floor, scale, offset: Some(*d) }), Tokens::unknown())
            }
            (Ok(lookup), None) => check(entry, mine, lookup, spec, *class, Tokens::unknown()),
        })
        .collect();
    (by_reference, against_truth)
}

/// One entry: the engine's tensor (if it produced one) against what the reference dump holds.
pub fn check(entry: &Entry, engine: Option<&Tensor>, reference: &Lookup, spec: &Spec, class: Class, tokens: Tokens) -> CheckResult {
    check_with(entry, engine, reference, spec, class, None, tokens)
}

/// A noise-floor bound for one f32 comparison, distances in the truth's scale: against the truth,
/// the engine's distance may be the floor's allowance; against a reference `offset` from the truth,
/// the engine's distance beyond that offset (its excess) may be the same allowance.
#[derive(Clone, Copy, Debug)]
pub struct NoiseBound<'a> {
    pub floor: &'a Floor,
    pub scale: Scale,
    /// The other side's own distance from the truth (zero when the other side is the truth).
    pub offset: Option<Distance>,
}

/// [`check`], with f32 tensors judged by `noise` instead of the pooled tolerances when given.
pub fn check_with(
    entry: &Entry,
    engine: Option<&Tensor>,
    reference: &Lookup,
    spec: &Spec,
    class: Class,
    noise: Option<NoiseBound>,
    tokens: Tokens,
) -> CheckResult {
    let missing = |note: String| result(entry, Status::Missing, Some(note), BTreeMap::new(), vec![]);
    let reference = match (engine, reference) {
        (None, Lookup::Tensor(_)) => return missing("the subject did not produce it".into()),
        (None, Lookup::Unavailable(why)) => return missing(format!("on neither side: the subject did not produce it; reference unavailable: {why}")),
        (None, Lookup::NotListed) => {
            return missing("on neither side: the subject did not produce it and the reference manifest does not list it".into())
        }
        (Some(_), Lookup::Unavailable(why)) => return missing(format!("reference unavailable: {why}")),
        (Some(_), Lookup::NotListed) => return missing("not in the reference's manifest".into()),
        (Some(_), Lookup::Tensor(r)) => r,
    };
    let engine = engine.expect("matched Some above");
    let layout = |note: String| result(entry, Status::Layout, Some(note), BTreeMap::new(), vec![]);
    if engine.dtype_name() != reference.dtype_name() {
        return layout(format!("dtype {} (subject) vs {} (reference)", engine.dtype_name(), reference.dtype_name()));
    }
    for (side, t) in [("subject", engine), ("reference", reference)] {
        let expected: usize = t.shape.iter().product();
        if expected != t.len() {
            return layout(format!("{side} holds {} values for shape {:?}", t.len(), t.shape));
        }
    }
    match (&engine.values, &reference.values) {
        (Values::Ids(e), Values::Ids(r)) => check_ids(entry, engine, reference, e, r, spec, class, tokens),
        (Values::F32(e), Values::F32(r)) => check_f32(entry, engine, reference, e, r, spec, class, noise),
        _ => unreachable!("dtype names compared equal above"),
    }
}

#[allow(clippy::too_many_arguments)]
fn check_ids(entry: &Entry, engine: &Tensor, reference: &Tensor, e: &[i64], r: &[i64], spec: &Spec, class: Class, tokens: Tokens) -> CheckResult {
    // A generated sequence of another length diverged (one side stopped early): a token mismatch,
    // not a layout error. Every other id tensor must match its shape exactly.
    let sequence = CheckpointName::Generated.is(&entry.checkpoint);
    if !(sequence && engine.shape.len() == 1 && reference.shape.len() == 1) && engine.shape != reference.shape {
        return result(entry, Status::Layout, Some(shape_note(engine, reference)), BTreeMap::new(), vec![]);
    }
    let mismatches = metrics::id_mismatches(r, e);
    let mut values = BTreeMap::from([(Metric::Mismatches.to_string(), mismatches as f64)]);
    let first = metrics::first_mismatch(r, e);
    if let Some(k) = first {
        values.insert(Metric::FirstMismatch.to_string(), k as f64);
    }
    let judgement = judge(Metric::Mismatches, mismatches as f64, Op::Le, 0.0);
    let Some(first) = first else {
        return result(entry, Status::Pass, None, values, vec![judgement]);
    };
    // argmax is the token before generated step 0; a flip there or in `generated` may be a near-tie.
    let step_of = |k: usize| match CheckpointName::of(&entry.checkpoint) {
        Some(CheckpointName::Argmax) => Some(0),
        Some(CheckpointName::Generated) => Some(k),
        _ => None,
    };
    // On one shared history every flip is judged; on diverging ones only the first means anything.
    let positions: Vec<usize> =
        if tokens.aligned && sequence { (0..r.len().max(e.len())).filter(|&k| r.get(k) != e.get(k)).collect() } else { vec![first] };
    let mut ties = Vec::new();
    for k in positions {
        let shown = |s: &[i64]| s.get(k).map_or("(end)".to_string(), |id| id.to_string());
        let divergence = format!("differs at position {k}: subject {} vs reference {}", shown(e), shown(r));
        let (Some(step), Some(&engine_id), Some(&reference_id)) = (step_of(k), e.get(k), r.get(k)) else {
            return result(entry, Status::Fail, Some(divergence), values, vec![judgement]);
        };
        let flip = Flip { step, engine: engine_id, reference: reference_id };
        match (tokens.tie)(&flip) {
            Tie::ReferenceGap { gap, limit } => {
                values.insert(Metric::ReferenceGap.of_member(k), gap);
                let how = format!("the reference's own logit gap between the two tokens is {gap:.3e}");
                if gap <= limit {
                    ties.push(format!("{divergence} ({how}, within 2x the per-logit noise {limit:.3e})"));
                } else {
                    let note = format!("{divergence}; {how}, beyond 2x the per-logit noise {limit:.3e}: the reference did not consider it close");
                    return result(entry, Status::Fail, Some(note), values, vec![judgement]);
                }
            }
            Tie::EngineGap(gap) => {
                let tie = spec.near_tie_gap(&entry.checkpoint, class);
                if let Some(g) = gap {
                    values.insert(Metric::ReferenceTop2Gap.to_string(), g);
                }
                let how = |g: f64| format!("after the reference's tokens up to there, the engine's top-two logit gap is {g:.3e}");
                let fail = |note: String| result(entry, Status::Fail, Some(note), values.clone(), vec![judgement.clone()]);
                match (gap, tie) {
                    (Some(g), Some(t)) if g < t => {
                        ties.push(format!("{divergence}; {}, under the near-tie gap {t:.3e}: a near-tie (later steps not compared)", how(g)))
                    }
                    (Some(g), Some(t)) => return fail(format!("{divergence}; {} >= near-tie gap {t:.3e}", how(g))),
                    (None, _) => return fail(format!("{divergence}; top-two logit gap there unknown, so not excused as a near-tie")),
                    (Some(_), None) => return fail(format!("{divergence}; no near_tie_gap for {} in class {class}", entry.checkpoint)),
                }
            }
        }
    }
    result(entry, Status::NearTie, Some(ties.join("; ")), values, vec![judgement])
}

#[allow(clippy::too_many_arguments)]
fn check_f32(
    entry: &Entry,
    engine: &Tensor,
    reference: &Tensor,
    e: &[f32],
    r: &[f32],
    spec: &Spec,
    class: Class,
    noise: Option<NoiseBound>,
) -> CheckResult {
    if engine.shape != reference.shape {
        return result(entry, Status::Layout, Some(shape_note(engine, reference)), BTreeMap::new(), vec![]);
    }
    // Equal shapes with no elements are equal tensors: nothing can differ, nothing is measured.
    if r.is_empty() {
        return result(entry, Status::Pass, Some(format!("empty on both sides (shape {:?}): nothing to measure", r.len())), BTreeMap::new(), vec![]);
    }
    // One pass gathers the sums and tells whether either side holds NaN or Inf; only then is a
    // non-finite tensor searched for its counts.
    let sums = metrics::Sums::of(r, e);
    let bad: Vec<String> = [("subject", engine, e, sums.engine_finite()), ("reference", reference, r, sums.reference_finite())]
        .iter()
        .filter(|(_, _, _, finite)| !finite)
        .filter_map(|(side, t, v, _)| non_finite_note(side, &t.shape, v))
        .collect();
    if !bad.is_empty() {
        return result(entry, Status::NonFinite, Some(bad.join("; ")), BTreeMap::new(), vec![]);
    }
    let typed = metrics_of(&sums, r, e, TensorName::is_probability(&entry.tensor));
    let mut all: BTreeMap<String, f64> = typed.iter().map(|(m, v)| (m.to_string(), *v)).collect();
    // The decode path's error along the generation, one value per step, for the per-step chart.
    if TensorName::StepLogits.is(&entry.tensor) {
        if let [steps, vocab] = reference.shape[..] {
            for t in 0..steps {
                let row = t * vocab..(t + 1) * vocab;
                all.insert(format!("{STEP_METRIC}{t}"), metrics::Sums::of(&r[row.clone()], &e[row]).nmse().sqrt());
            }
        }
    }
    if let Some(bound) = noise {
        let d = Distance::of(&sums, &bound.scale);
        all.extend([
            (Metric::RelRms.to_string(), d.rms),
            (Metric::RelMax.to_string(), d.max),
            (Metric::NoiseRms.to_string(), bound.floor.noise.rms),
            (Metric::NoiseMax.to_string(), bound.floor.noise.max),
        ]);
        let allowed = bound.floor.engine_allowance();
        let judgements = match bound.offset {
            None => {
                all.insert(Metric::NoiseUnits.to_string(), d.in_units_of(bound.floor.noise));
                all.extend(
                    bound.floor.by.iter().flat_map(|(name, d)| [(Metric::RelRms.of_member(name), d.rms), (Metric::RelMax.of_member(name), d.max)]),
                );
                vec![judge(Metric::RelRms, d.rms, Op::Le, allowed.rms), judge(Metric::RelMax, d.max, Op::Le, allowed.max)]
            }
            Some(offset) => vec![
                judge(Metric::ExcessRms, (d.rms - offset.rms).max(0.0), Op::Le, allowed.rms),
                judge(Metric::ExcessMax, (d.max - offset.max).max(0.0), Op::Le, allowed.max),
            ],
        };
        let status = if judgements.iter().all(|j| j.pass) { Status::Pass } else { Status::Fail };
        let note = bound.floor.implausible().or_else(|| bound.floor.outlier());
        let status = if bound.floor.implausible().is_some() { Status::Fail } else { status };
        return result(entry, status, note, finite_only(&all), judgements);
    }
    let Some(thresholds) = spec.thresholds(&entry.checkpoint, class, &entry.arch) else {
        let note = format!("no {class} tolerances for checkpoint {} in the spec: not judged, so not passed", entry.checkpoint);
        return result(entry, Status::Fail, Some(note), finite_only(&all), vec![]);
    };
    let judgements: Vec<Judgement> =
        thresholds.iter().map(|(&m, t)| judge(m, typed.get(&m).copied().unwrap_or(f64::NAN), t.op, t.threshold)).collect();
    let status = if judgements.iter().all(|j| j.pass) { Status::Pass } else { Status::Fail };
    let note = judgements
        .iter()
        .filter(|j| !typed.contains_key(&j.metric))
        .map(|j| format!("metric {} is not computed for this tensor", j.metric))
        .collect::<Vec<_>>();
    result(entry, status, (!note.is_empty()).then(|| note.join("; ")), finite_only(&all), judgements)
}

/// Every metric of an f32 comparison (both finite, same length). KL and top-k only for probabilities.
pub fn f32_metrics(reference: &[f32], engine: &[f32], probabilities: bool) -> BTreeMap<Metric, f64> {
    metrics_of(&metrics::Sums::of(reference, engine), reference, engine, probabilities)
}

/// [`f32_metrics`] from the sums already gathered over the same two tensors.
fn metrics_of(sums: &metrics::Sums, reference: &[f32], engine: &[f32], probabilities: bool) -> BTreeMap<Metric, f64> {
    let mut m = BTreeMap::from([
        (Metric::MaxAbs, sums.max_abs),
        (Metric::MaxRel, sums.max_rel),
        (Metric::MaxAbsScaled, sums.max_abs_scaled()),
        (Metric::MeanAbs, sums.mean_abs()),
        (Metric::Rmse, sums.rmse()),
        (Metric::Nmse, sums.nmse()),
        (Metric::Cosine, sums.cosine()),
        (Metric::SqnrDb, sums.sqnr_db()),
    ]);
    if probabilities {
        m.insert(Metric::KlDivergence, metrics::kl_divergence(reference, engine));
        m.insert(Metric::TopkOverlap, metrics::topk_overlap(reference, engine, TOPK));
    }
    m
}

/// The results JSON cannot hold inf (serde_json writes null): an exact match's `sqnr_db = inf` is
/// left out of the stored metrics rather than stored as something it is not.
fn finite_only(m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    m.iter().filter(|(_, v)| v.is_finite()).map(|(k, v)| (k.clone(), *v)).collect()
}

fn judge(metric: Metric, value: f64, op: Op, threshold: f64) -> Judgement {
    Judgement { metric, value, op, threshold, margin: crate::spec::margin(metric, op, value, threshold), pass: op.holds(value, threshold) }
}

fn shape_note(engine: &Tensor, reference: &Tensor) -> String {
    format!("shape {:?} (subject) vs {:?} (reference); never broadcast or reshaped", engine.shape, reference.shape)
}

/// What is not finite in `v` and where, or `None` if every value is finite.
fn non_finite_note(side: &str, shape: &[usize], v: &[f32]) -> Option<String> {
    let first = v.iter().position(|x| !x.is_finite())?;
    let nan = v.iter().filter(|x| x.is_nan()).count();
    let inf = v.iter().filter(|x| x.is_infinite()).count();
    Some(format!("{side} has {nan} NaN and {inf} Inf, first at {:?}", unravel(first, shape)))
}

pub(crate) fn result(entry: &Entry, status: Status, note: Option<String>, metrics: BTreeMap<String, f64>, judgements: Vec<Judgement>) -> CheckResult {
    CheckResult {
        checkpoint_id: entry.checkpoint_id,
        checkpoint: entry.checkpoint.clone(),
        tensor: entry.tensor.clone(),
        layer: entry.layer,
        key: entry.key.clone(),
        status,
        metrics,
        judgements,
        note,
    }
}

/// One element of a drill-down: where, both values, and the absolute error.
#[derive(Clone, Debug, PartialEq)]
pub struct WorstElement {
    pub index: Vec<usize>,
    pub reference: f32,
    pub engine: f32,
    pub abs_error: f64,
}

/// The `n` elements with the largest absolute error, largest first (NaN errors count as largest;
/// ties go to the earlier element).
pub fn worst_elements(reference: &[f32], engine: &[f32], shape: &[usize], n: usize) -> Vec<WorstElement> {
    assert_eq!(reference.len(), engine.len(), "worst_elements needs equal lengths");
    let err = |i: usize| (engine[i] as f64 - reference[i] as f64).abs();
    // NaN sorts above every number under total_cmp of the absolute value.
    let mut order: Vec<usize> = (0..reference.len()).collect();
    order.sort_by(|&a, &b| err(b).total_cmp(&err(a)).then(a.cmp(&b)));
    order.truncate(n);
    order.into_iter().map(|i| WorstElement { index: unravel(i, shape), reference: reference[i], engine: engine[i], abs_error: err(i) }).collect()
}

/// How many absolute errors fall in each decade, for `parity diff`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Errors of exactly 0.
    pub exact: usize,
    /// Decade `e` counts errors in `[10^e, 10^(e+1))`.
    pub decades: BTreeMap<i32, usize>,
    pub non_finite: usize,
}

pub fn histogram(errors: &[f64]) -> Histogram {
    let mut h = Histogram::default();
    for &x in errors {
        let x = x.abs();
        if !x.is_finite() {
            h.non_finite += 1;
        } else if x == 0.0 {
            h.exact += 1;
        } else {
            *h.decades.entry(x.log10().floor() as i32).or_default() += 1;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn spec() -> Spec {
        Spec::parse(include_str!("../../checkpoints/tolerances.toml"), "tolerances").unwrap()
    }

    fn entry(key: &str) -> Entry {
        let catalog = Catalog::parse(include_str!("../../checkpoints/catalog.toml"), "catalog").unwrap();
        catalog.entries("llama", 1).into_iter().find(|e| e.key == key).unwrap()
    }

    fn run(key: &str, engine: Option<Tensor>, reference: Lookup) -> CheckResult {
        check(&entry(key), engine.as_ref(), &reference, &spec(), Class::F32, Tokens::unknown())
    }

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::f32(shape.to_vec(), v.to_vec())
    }

    #[test]
    fn all_references_at_once_give_each_reference_its_own_checks_in_entry_order() {
        // Two dumps whose tensors differ in size (so the largest-first schedule reorders the
        // work), one with a tensor missing and one judged in another class.
        let dir = std::env::temp_dir().join(format!("parity-compare-all-{}", std::process::id()));
        let keys = ["blk.0.attn_norm", "blk.0.attn_out", "blk.0.ffn_out", "logits"];
        let sizes = [3, 40, 7, 100];
        let engine: BTreeMap<String, Tensor> =
            keys.iter().zip(sizes).map(|(k, n)| (k.to_string(), t(&[n], &(0..n).map(|i| i as f32).collect::<Vec<_>>()))).collect();
        let mut dumps = Vec::new();
        for (name, skew, skip) in [("a", 1e-6f32, None), ("b", 1e-2, Some("blk.0.ffn_out"))] {
            let at = dir.join(name);
            std::fs::create_dir_all(&at).unwrap();
            let mut manifest = format!("reference = {name:?}\nversion = \"1\"\narch = \"llama\"\nn_layers = 1\nmodel = \"m\"\nmodel_sha256 = \"00\"\nprompt = \"p\"\ntoken_ids = [1]\ndtype = \"float32\"\nthreads = 1\nn_generate = 1\ntemperature = 1.0\nwall_time_s = 0.1\ncommand = \"test\"\n");
            for (key, tensor) in engine.iter().filter(|(k, _)| Some(k.as_str()) != skip) {
                let Values::F32(v) = &tensor.values else { unreachable!() };
                crate::npy::write(&at.join(format!("{key}.npy")), &t(&tensor.shape, &v.iter().map(|x| x * (1.0 + skew)).collect::<Vec<_>>()))
                    .unwrap();
                manifest.push_str(&format!("[tensors.{key:?}]\nfile = \"{key}.npy\"\n"));
            }
            std::fs::write(at.join("manifest.toml"), manifest).unwrap();
            dumps.push(Dump::open(&at).unwrap());
        }
        let entries: Vec<Entry> = keys.iter().map(|k| entry(k)).collect();
        let classes = [Class::F32, Class::Quantized];
        let all = compare_all(&engine, &[(&dumps[0], classes[0]), (&dumps[1], classes[1])], &entries, &spec());
        for (d, dump) in dumps.iter().enumerate() {
            assert_eq!(all[d], compare_case(&engine, dump, &entries, &spec(), classes[d], Tokens::unknown()), "reference {d}");
        }
        assert_eq!(all[1][2].status, Status::Missing);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn identical_tensors_pass_with_every_judgement_recorded() {
        let x = t(&[2, 2], &[1.0, -2.0, 3.0, 0.5]);
        let r = run("blk.0.attn_out", Some(x.clone()), Lookup::Tensor(x));
        assert_eq!(r.status, Status::Pass, "{r:?}");
        assert_eq!(r.judgements.len(), 3);
        assert!(r.judgements.iter().all(|j| j.pass));
        assert_eq!(r.metrics["max_abs"], 0.0);
        assert!(!r.metrics.contains_key("sqnr_db"), "inf is not stored");
        assert_eq!((r.key.as_str(), r.layer, r.checkpoint_id), ("blk.0.attn_out", Some(0), 5));
    }

    #[test]
    fn an_error_beyond_tolerance_fails_with_a_negative_margin() {
        let r = run("blk.0.attn_out", Some(t(&[4], &[1.0, 2.0, 3.0, 4.1])), Lookup::Tensor(t(&[4], &[1.0, 2.0, 3.0, 4.0])));
        assert_eq!(r.status, Status::Fail);
        let j = r.judgements.iter().find(|j| j.metric == Metric::MaxAbsScaled).unwrap();
        // |0.1| / 4 = 0.025, far beyond any calibrated f32 threshold
        assert!((j.value - 0.025).abs() < 1e-6 && !j.pass && j.threshold < 0.025);
        assert!((j.margin - (j.threshold - j.value) / j.threshold).abs() < 1e-9 && j.margin < 0.0);
    }

    #[test]
    fn nan_never_passes_even_against_a_ge_threshold() {
        let r = run("blk.0.attn_out", Some(t(&[2], &[f32::NAN, 1.0])), Lookup::Tensor(t(&[2], &[1.0, 1.0])));
        assert_eq!(r.status, Status::NonFinite);
        assert!(r.note.unwrap().contains("subject has 1 NaN"));
        let r = run("blk.0.attn_out", Some(t(&[2], &[1.0, 1.0])), Lookup::Tensor(t(&[2], &[1.0, f32::INFINITY])));
        assert_eq!(r.status, Status::NonFinite);
        // The judging step itself, had a NaN got through: `>=` is false for NaN.
        assert!(!judge(Metric::Cosine, f64::NAN, crate::spec::Op::Ge, 0.9).pass);
    }

    #[test]
    fn transposed_and_flattened_shapes_are_layout_errors_never_broadcast() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let r = run("blk.0.attn_out", Some(t(&[2, 3], &v)), Lookup::Tensor(t(&[3, 2], &v)));
        assert_eq!(r.status, Status::Layout);
        let r = run("blk.0.attn_out", Some(t(&[6], &v)), Lookup::Tensor(t(&[1, 6], &v)));
        assert_eq!(r.status, Status::Layout);
        assert!(r.note.unwrap().contains("[6] (subject) vs [1, 6] (reference)"));
        let r = run("tokens", Some(Tensor::ids(vec![2], vec![1, 2])), Lookup::Tensor(t(&[2], &[1.0, 2.0])));
        assert_eq!(r.status, Status::Layout);
        // A tensor whose values do not fill its shape is refused before any metric runs.
        let r = run("blk.0.attn_out", Some(t(&[2, 2], &[1.0])), Lookup::Tensor(t(&[2, 2], &[1.0, 1.0, 1.0, 1.0])));
        assert_eq!(r.status, Status::Layout);
    }

    #[test]
    fn missing_or_unavailable_on_either_side_is_missing_never_pass() {
        let x = t(&[1], &[1.0]);
        let r = run("blk.0.attn_out", None, Lookup::Tensor(x.clone()));
        assert_eq!(r.status, Status::Missing);
        let r = run("blk.0.q_rope", Some(x.clone()), Lookup::Unavailable("not part of gpt2".into()));
        assert_eq!(r.status, Status::Missing);
        assert!(r.note.unwrap().contains("not part of gpt2"));
        let r = run("blk.0.attn_out", Some(x), Lookup::NotListed);
        assert_eq!(r.status, Status::Missing);
        let r = run("blk.0.attn_out", None, Lookup::NotListed);
        assert!(r.status.is_failure());
    }

    #[test]
    fn empty_tensors_of_equal_shape_pass_unmeasured_and_otherwise_are_layout() {
        let r = run("blk.0.attn_out", Some(t(&[0, 4], &[])), Lookup::Tensor(t(&[0, 4], &[])));
        assert_eq!(r.status, Status::Pass);
        assert!(r.metrics.is_empty() && r.note.unwrap().contains("empty"));
        let r = run("blk.0.attn_out", Some(t(&[0, 4], &[])), Lookup::Tensor(t(&[4, 0], &[])));
        assert_eq!(r.status, Status::Layout);
        let r = run("blk.0.attn_out", Some(t(&[0], &[])), Lookup::Tensor(t(&[1], &[1.0])));
        assert_eq!(r.status, Status::Layout);
    }

    #[test]
    fn ids_must_match_exactly() {
        let r = run("tokens", Some(Tensor::ids(vec![3], vec![1, 2, 3])), Lookup::Tensor(Tensor::ids(vec![3], vec![1, 9, 3])));
        assert_eq!(r.status, Status::Fail);
        assert!(r.note.unwrap().contains("position 1: subject 2 vs reference 9"));
        let r = run("tokens", Some(Tensor::ids(vec![3], vec![1, 2, 3])), Lookup::Tensor(Tensor::ids(vec![3], vec![1, 2, 3])));
        assert_eq!(r.status, Status::Pass);
    }

    #[test]
    fn a_generated_flip_is_a_near_tie_only_under_the_gap() {
        let e = Some(Tensor::ids(vec![3], vec![5, 6, 7]));
        let reference = Lookup::Tensor(Tensor::ids(vec![3], vec![5, 6, 8]));
        let tight = |f: &Flip| Tie::EngineGap(if f.step == 2 { Some(1e-4) } else { Some(5.0) });
        let r = check(&entry("generated"), e.as_ref(), &reference, &spec(), Class::F32, Tokens { aligned: false, tie: &tight });
        assert_eq!(r.status, Status::NearTie, "{r:?}");
        assert_eq!(r.metrics["first_mismatch"], 2.0);
        let wide = |_: &Flip| Tie::EngineGap(Some(0.5));
        let r = check(&entry("generated"), e.as_ref(), &reference, &spec(), Class::F32, Tokens { aligned: false, tie: &wide });
        assert_eq!(r.status, Status::Fail);
        let r = check(&entry("generated"), e.as_ref(), &reference, &spec(), Class::F32, Tokens::unknown());
        assert_eq!(r.status, Status::Fail);
        // A shorter sequence diverges where it ends; not a layout error.
        let r = run("generated", Some(Tensor::ids(vec![2], vec![5, 6])), Lookup::Tensor(Tensor::ids(vec![3], vec![5, 6, 8])));
        assert_eq!((r.status, r.metrics["first_mismatch"]), (Status::Fail, 2.0));
    }

    #[test]
    fn an_argmax_flip_asks_for_the_gap_at_step_0() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let asked = AtomicUsize::new(usize::MAX);
        let gap = |f: &Flip| {
            asked.store(f.step, Ordering::Relaxed);
            Tie::EngineGap(Some(1e-5))
        };
        let tokens = Tokens { aligned: false, tie: &gap };
        let r =
            check(&entry("argmax"), Some(&Tensor::ids(vec![], vec![3])), &Lookup::Tensor(Tensor::ids(vec![], vec![4])), &spec(), Class::F32, tokens);
        assert_eq!((r.status, asked.load(Ordering::Relaxed)), (Status::NearTie, 0));
    }

    #[test]
    fn on_a_shared_history_every_flip_is_judged_by_the_references_own_gap() {
        let e = Some(Tensor::ids(vec![4], vec![5, 9, 7, 9]));
        let reference = Lookup::Tensor(Tensor::ids(vec![4], vec![5, 6, 7, 8]));
        // Step 1 is close on the reference's logits, step 3 is not: the run fails at step 3,
        // which a first-flip-only comparison would never have looked at.
        let gaps = |f: &Flip| Tie::ReferenceGap { gap: if f.step == 1 { 0.01 } else { 0.3 }, limit: 0.05 };
        let r = check(&entry("generated"), e.as_ref(), &reference, &spec(), Class::F32, Tokens { aligned: true, tie: &gaps });
        assert_eq!(r.status, Status::Fail, "{r:?}");
        assert!(r.note.as_deref().unwrap().contains("position 3") && r.note.as_deref().unwrap().contains("did not consider it close"));
        assert_eq!((r.metrics["mismatches"], r.metrics["reference_gap.1"]), (2.0, 0.01));
        let close = |_: &Flip| Tie::ReferenceGap { gap: 0.01, limit: 0.05 };
        let r = check(&entry("generated"), e.as_ref(), &reference, &spec(), Class::F32, Tokens { aligned: true, tie: &close });
        assert_eq!(r.status, Status::NearTie);
        assert!(r.note.as_deref().unwrap().contains("position 1") && r.note.as_deref().unwrap().contains("position 3"));
        // The engine's own gap is never asked for on a shared history.
        let engine_gap = |_: &Flip| Tie::EngineGap(Some(1e-9));
        let r = check(&entry("generated"), e.as_ref(), &reference, &spec(), Class::F32, Tokens { aligned: true, tie: &engine_gap });
        assert_eq!(r.status, Status::NearTie, "the legacy evidence still works when it is all there is");
    }

    #[test]
    fn probabilities_are_judged_by_kl_and_topk() {
        let p = t(&[4], &[0.1, 0.2, 0.3, 0.4]);
        let r = run("probs", Some(p.clone()), Lookup::Tensor(p));
        assert_eq!(r.status, Status::Pass);
        let judged: Vec<&str> = r.judgements.iter().map(|j| j.metric.as_str()).collect();
        assert_eq!(judged, vec!["kl_divergence", "topk_overlap"]);
    }

    #[test]
    fn a_checkpoint_without_tolerances_fails_rather_than_passing_unjudged() {
        let x = t(&[1], &[1.0]);
        let r = check(&entry("blk.0.attn_out"), Some(&x), &Lookup::Tensor(x.clone()), &Spec::default(), Class::F32, Tokens::unknown());
        assert_eq!(r.status, Status::Fail);
        // A spec judging the checkpoint in other classes, but not in this one.
        let mut only_f32 = spec();
        only_f32.checkpoints.values_mut().for_each(|tol| tol.quantized.clear());
        let r = check(&entry("blk.0.attn_out"), Some(&x), &Lookup::Tensor(x.clone()), &only_f32, Class::Quantized, Tokens::unknown());
        assert_eq!(r.status, Status::Fail);
    }

    #[test]
    fn worst_elements_are_ranked_with_nan_first_and_indexed_by_shape() {
        let r = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let e = [0.1, 0.0, -3.0, f32::NAN, 0.5, 0.0];
        let w = worst_elements(&r, &e, &[2, 3], 3);
        let idx: Vec<Vec<usize>> = w.iter().map(|x| x.index.clone()).collect();
        assert_eq!(idx, vec![vec![1, 0], vec![0, 2], vec![1, 1]]);
        assert_eq!(w[1].abs_error, 3.0);
    }

    #[test]
    fn histogram_buckets_by_decade() {
        let h = histogram(&[0.0, 0.05, 0.01, -0.5, 2.0, f64::NAN, f64::INFINITY]);
        assert_eq!((h.exact, h.non_finite), (1, 2));
        assert_eq!(h.decades, BTreeMap::from([(-2, 2), (-1, 1), (0, 1)]));
    }
}
