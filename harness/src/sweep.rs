//! `parity sweep`'s judging: a case's checks regrouped into the points of an axis, by the rules
//! every run uses (compare.rs, the noise floor), with nothing asked of the references beyond the
//! case's own dumps.
//!
//! The position axis reads one case that decodes N steps on the truth's history: `step_logits`
//! row r holds the logits at position T-1+r, and the KV cache at the last decode step
//! (`blk.L.dec_k_cache` / `dec_v_cache`, row S-1: every position 0..T+N-1, keys after RoPE) holds
//! every layer's keys and values at every position. Each window of positions is judged on those
//! rows alone, its noise floor measured on the same rows of the references, so a bug that waits
//! past position 4,096 shows in the windows past 4,096 and nowhere before. The thread and prefill
//! axes rerun the whole case with the engine under the condition (reports::sweep::Point::of).

use crate::catalog::Entry;
use crate::compare;
use crate::dumps::{Dump, DumpError, Lookup};
use crate::pipeline::{self, CaseRun, Setup};
use crate::spec::{Class, Spec};
use crate::suite::Case;
use crate::tensor::{Tensor, Values};
use reports::results::CheckResult;
use reports::sweep::{Axis, Point, Sweep};
use reports::vocab::TensorName;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("the case decodes {0} steps: positions need at least 2 (a suite's n_generate, or --n-generate)")]
    TooFewSteps(usize),
    #[error("the engine's run of the case has no {0} tensor to sweep positions on")]
    NoEngineTensor(String),
    #[error("the case has no usable truth dump: positions are judged by the noise floor, which needs one ({0})")]
    NoTruth(String),
    #[error("--window must be at least 1 position")]
    NoWindow,
    #[error(transparent)]
    Dump(#[from] DumpError),
}

/// The keys the position axis judges, among the case's catalog entries: `step_logits` and every
/// layer's decode-time K and V cache.
pub fn position_entries(entries: &[Entry]) -> Vec<Entry> {
    let wanted = [TensorName::StepLogits, TensorName::DecKCache, TensorName::DecVCache];
    entries.iter().filter(|e| wanted.iter().any(|t| t.is(&e.tensor))).cloned().collect()
}

/// One side's tensors for the position axis, read once.
struct Side {
    name: String,
    class: Class,
    dump: Dump,
    tensors: BTreeMap<String, Tensor>,
}

impl Side {
    fn read(name: &str, class: Class, dump: &Dump, entries: &[Entry]) -> Result<Side, DumpError> {
        let mut tensors = BTreeMap::new();
        for e in entries {
            if let Lookup::Tensor(t) = dump.get(&e.key)? {
                tensors.insert(e.key.clone(), t);
            }
        }
        Ok(Side { name: name.to_string(), class, dump: dump.clone(), tensors })
    }

    /// Its tensors cut to positions `a..b` as an in-memory dump under its own manifest.
    fn window(&self, cut: &Cut, a: usize, b: usize) -> Dump {
        let tensors = cut.all(&self.tensors, a, b);
        Dump::in_memory(&format!("{} at positions {a}..{b}", self.dump.dir.display()), self.dump.manifest.clone(), tensors)
    }
}

/// Where positions live in the swept tensors: `step_logits` row r is position `prompt - 1 + r`;
/// the cache tensors' last step holds positions `0..context`.
struct Cut {
    prompt: usize,
    steps: usize,
}

impl Cut {
    fn all(&self, tensors: &BTreeMap<String, Tensor>, a: usize, b: usize) -> BTreeMap<String, Tensor> {
        tensors.iter().filter_map(|(key, t)| Some((key.clone(), self.one(key, t, a, b)?))).collect()
    }

    /// `t` at positions `a..b`, or `None` when it holds none of them (or is not laid out as swept).
    fn one(&self, key: &str, t: &Tensor, a: usize, b: usize) -> Option<Tensor> {
        let Values::F32(v) = &t.values else { return None };
        if key == TensorName::StepLogits.as_str() {
            let [rows, vocab] = t.shape[..] else { return None };
            let first = self.prompt - 1;
            let (r0, r1) = (a.max(first) - first, b.min(first + rows).saturating_sub(first));
            return (r0 < r1).then(|| Tensor::f32(vec![r1 - r0, vocab], v[r0 * vocab..r1 * vocab].to_vec()));
        }
        // [S, KV, P, hd]: the last step's rows a..b of every head.
        let [s, kv, p, hd] = t.shape[..] else { return None };
        let b = b.min(p);
        if s == 0 || a >= b {
            return None;
        }
        let last = &v[(s - 1) * kv * p * hd..s * kv * p * hd];
        let data = (0..kv).flat_map(|h| last[(h * p + a) * hd..(h * p + b) * hd].iter().copied()).collect();
        Some(Tensor::f32(vec![kv, b - a, hd], data))
    }

    /// The positions the tensors cover: the prompt and every decode step.
    fn context(&self) -> usize {
        self.prompt + self.steps - 1
    }
}

/// The position axis of `run`: windows of `window` positions from 0 to the last decoded one, each
/// judged against every reference and the truth ([`compare::compare_with_truth`]) on its rows of
/// `step_logits` and of every layer's K and V cache. The case must decode at least 2 steps and
/// have a truth.
pub fn positions(run: &CaseRun, entries: &[Entry], spec: &Spec, window: usize) -> Result<Sweep, SweepError> {
    if window == 0 {
        return Err(SweepError::NoWindow);
    }
    let engine_tensor = |name: TensorName| run.subject.get(name.as_str()).ok_or_else(|| SweepError::NoEngineTensor(name.as_str().into()));
    let prompt = engine_tensor(TensorName::Tokens)?.len();
    let steps = engine_tensor(TensorName::StepLogits)?.shape.first().copied().unwrap_or(0);
    if steps < 2 || prompt == 0 {
        return Err(SweepError::TooFewSteps(steps));
    }
    let entries = position_entries(entries);
    let truth = match &run.truth {
        Some((name, Ok(dump))) => Side::read(name, Class::F32, dump, &entries)?,
        Some((_, Err(e))) => return Err(SweepError::NoTruth(e.clone())),
        None => return Err(SweepError::NoTruth("the suite names none".into())),
    };
    let mut sides = Vec::new();
    for (name, dump) in &run.dumps {
        if let Ok(dump) = dump {
            sides.push(Side::read(name, run.case.model.class_for(name), dump, &entries)?);
        }
    }
    let cut = Cut { prompt, steps };
    let mut points = Vec::new();
    for a in (0..cut.context()).step_by(window) {
        let b = (a + window).min(cut.context());
        let engine = cut.all(&run.subject, a, b);
        let here: Vec<Entry> = entries.iter().filter(|e| engine.contains_key(&e.key)).cloned().collect();
        let dumps: Vec<Dump> = sides.iter().map(|s| s.window(&cut, a, b)).collect();
        let with_class: Vec<(&Dump, Class)> = dumps.iter().zip(&sides).map(|(d, s)| (d, s.class)).collect();
        let (by_reference, against_truth) = compare::compare_with_truth(&engine, &with_class, &truth.window(&cut, a, b), &here, spec);
        let mut judged: Vec<(&str, &[CheckResult])> = sides.iter().zip(&by_reference).map(|(s, c)| (s.name.as_str(), c.as_slice())).collect();
        judged.push((truth.name.as_str(), &against_truth));
        points.push(Point::of(format!("{a}..{b}"), &judged));
    }
    let compared = format!(
        "windows of {window} positions: step_logits rows (position T-1+r, T = {prompt}) and every layer's K and V cache rows at the last decode step (step {}), against {} and the truth {}, each window's noise floor measured on its own rows",
        steps - 1,
        sides.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
        truth.name
    );
    Ok(Sweep { axis: Axis::Position, compared, points })
}

/// `case` of `base` rerun as one point: the engine on a pool of `threads` threads, prepared by
/// `prepare` (a planted bug) and its prompt prefilled as `prefill`; the references' dumps are
/// fetched as `base` fetches them (the same files, or the dump cache's). `base.prepare` is not used.
pub fn rerun(
    base: &Setup,
    case: &Case,
    at: impl Into<String>,
    threads: usize,
    prefill: engine::Prefill,
    prepare: &(dyn Fn(&mut engine::Model) + Sync),
) -> anyhow::Result<Point> {
    use anyhow::Context;
    let Setup { root, suite, catalog, spec, provenance, source, subject, .. } = *base;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().context("making the engine's thread pool")?;
    let (results, runs) = pool.install(|| {
        let prepare = |m: &mut engine::Model| {
            prepare(m);
            m.prefill = prefill;
        };
        let setup = Setup { root, suite, catalog, spec, provenance, source, subject, prepare: Some(&prepare) };
        pipeline::run(&setup, vec![case.clone()], "sweep")
    })?;
    let run = runs.first().context("the case did not run")?;
    Ok(whole_case(at, run, &results))
}

/// A whole case's results regrouped as one point of an axis: every check against every side.
pub fn whole_case(at: impl Into<String>, run: &CaseRun, results: &reports::results::RunResults) -> Point {
    let cases = &results.cases[run.results.clone()];
    let sides: Vec<(&str, &[CheckResult])> = cases.iter().map(|c| (c.reference.as_str(), c.checks.as_slice())).collect();
    Point::of(at, &sides)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_cuts_logit_rows_and_cache_positions_at_the_same_positions() {
        // Prompt of 3 tokens, 4 steps: step_logits rows are positions 2..6; the cache [S=2, KV=1,
        // P=6, hd=1] holds positions 0..6 at each step, the last step's row being 10 + position.
        let cut = Cut { prompt: 3, steps: 4 };
        assert_eq!(cut.context(), 6);
        let logits = Tensor::f32(vec![4, 2], (0..8).map(|i| i as f32).collect());
        let cache = Tensor::f32(vec![2, 1, 6, 1], (0..6).map(|p| p as f32).chain((0..6).map(|p| 10.0 + p as f32)).collect());
        assert_eq!(cut.one("step_logits", &logits, 0, 2), None, "no decode row before position 2");
        assert_eq!(cut.one("step_logits", &logits, 0, 3), Some(Tensor::f32(vec![1, 2], vec![0., 1.])));
        assert_eq!(cut.one("step_logits", &logits, 4, 6), Some(Tensor::f32(vec![2, 2], vec![4., 5., 6., 7.])));
        assert_eq!(cut.one("blk.0.dec_k_cache", &cache, 4, 8), Some(Tensor::f32(vec![1, 2, 1], vec![14., 15.])));
        assert_eq!(cut.one("blk.0.dec_k_cache", &cache, 6, 8), None);
    }
}
