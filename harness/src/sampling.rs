//! The `sampling` checkpoint judged on its shared input: every implementation's samplers were
//! given the same logits (the truth's last logits), so their distributions differ only by f32
//! rounding, except at a cut. Whether a token near a top-k or top-p cut is kept can legitimately
//! go either way in f32 (top-p compares a running sum of up to V probabilities with p), so for
//! each catalog sampler the harness computes the cut exactly from the shared logits and names the
//! tokens an f32 implementation may place on either side of it. Those tokens are left out of every
//! side's row (each row renormalised over what remains) before the rows are judged by the noise
//! floor like any tensor, and a draw that differs only on such a token is a near-tie. A token kept
//! or dropped away from the cut, or a distribution that is wrong anywhere, fails.

use crate::catalog::{Entry, SamplerSpec};
use crate::compare;
use crate::dumps::Lookup;
use crate::spec::{Class, Spec};
use crate::tensor::{Tensor, Values};
use reports::results::{CheckResult, Role, Status};
use std::collections::{BTreeMap, BTreeSet};

/// One f32 rounding (2^-24), the unit of the bounds below.
const ULP: f64 = 5.960464477539063e-8;

/// The tokens of each catalog sampler (in catalog order) that sit too close to its cut for an f32
/// implementation to be sure which side they fall on.
#[derive(Clone, Debug, PartialEq)]
pub struct Cuts {
    pub rows: Vec<BTreeSet<usize>>,
}

impl Cuts {
    /// The cuts of `samplers` on `logits`, computed in f64 as the catalog defines them:
    /// temperature, then the top-k (ties to the lowest id), then top-p on the tempered softmax of
    /// what top-k kept.
    ///
    /// A token is near the top-k cut when its tempered logit is within 2^-20 of its own size of
    /// the k-th or (k+1)-th largest (dividing by the temperature in f32 rounds each by 2^-24, so
    /// two values that close can swap). It is near the top-p cut when the mass before it is within
    /// (n + rank + 16) x 2^-24 of p, n the number of candidates: a bound on the error of an f32
    /// softmax and a running f32 sum over n terms, in either direction of summation.
    pub fn new(logits: &[f32], samplers: &[SamplerSpec]) -> Cuts {
        Cuts { rows: samplers.iter().map(|s| near_cut(logits, s)).collect() }
    }
}

fn near_cut(logits: &[f32], s: &SamplerSpec) -> BTreeSet<usize> {
    let mut near = BTreeSet::new();
    if logits.is_empty() || s.temperature <= 0.0 {
        return near;
    }
    let z: Vec<f64> = logits.iter().map(|&l| f64::from(l) / f64::from(s.temperature)).collect();
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    let mut candidates = order.len();
    if s.top_k > 0 && s.top_k < order.len() {
        let (last_kept, first_dropped) = (z[order[s.top_k - 1]], z[order[s.top_k]]);
        for (rank, &i) in order.iter().enumerate() {
            // A kept token may fall below the first dropped one, a dropped token rise above the last kept.
            let edge = if rank < s.top_k { first_dropped } else { last_kept };
            if (z[i] - edge).abs() <= 16.0 * ULP * z[i].abs().max(edge.abs()) {
                near.insert(i);
            }
        }
        candidates = s.top_k;
    }
    if s.top_p < 1.0 {
        let kept = &order[..candidates];
        let top = z[kept[0]];
        let weights: Vec<f64> = kept.iter().map(|&i| (z[i] - top).exp()).collect();
        let total: f64 = weights.iter().sum();
        let p = f64::from(s.top_p);
        let mut before = 0.0;
        for (rank, (&i, w)) in kept.iter().zip(&weights).enumerate() {
            let bound = (candidates + rank + 16) as f64 * ULP;
            if (before - p).abs() <= bound {
                near.insert(i);
            }
            before += w / total;
        }
    }
    near
}

/// Every side's `sampler_probs` with the tokens near a cut left out, each row renormalised over
/// what remains; and a note saying how many were left out, or `None` if none were.
pub fn without_cut_tokens(tensor: &Tensor, cuts: &Cuts) -> Option<Tensor> {
    let (Values::F32(v), [rows, vocab]) = (&tensor.values, tensor.shape.as_slice()) else { return None };
    if *rows != cuts.rows.len() || v.len() != rows * vocab {
        return None;
    }
    let mut out = v.clone();
    for (row, near) in out.chunks_exact_mut(*vocab).zip(&cuts.rows) {
        for &i in near {
            row[i] = 0.0;
        }
        let total: f64 = row.iter().map(|&p| f64::from(p)).sum();
        if total > 0.0 {
            row.iter_mut().for_each(|p| *p = (f64::from(*p) / total) as f32);
        }
    }
    Some(Tensor::f32(tensor.shape.clone(), out))
}

/// `sampler_probs` against the truth and every reference by the noise floor, on rows without the
/// tokens near a cut ([`without_cut_tokens`]); a side of another shape is judged as it is (and
/// fails as a layout error).
pub fn judge_distributions(
    entry: &Entry,
    engine: Option<&Tensor>,
    references: &[Result<Lookup, String>],
    sides: &[(&str, Class)],
    truth: Result<Lookup, String>,
    cuts: &Cuts,
    spec: &Spec,
) -> (Vec<CheckResult>, CheckResult) {
    let trim = |lookup: Result<Lookup, String>| match lookup {
        Ok(Lookup::Tensor(t)) => Ok(Lookup::Tensor(without_cut_tokens(&t, cuts).unwrap_or(t))),
        other => other,
    };
    let engine = engine.map(|t| without_cut_tokens(t, cuts).unwrap_or_else(|| t.clone()));
    let references: Vec<Result<Lookup, String>> = references.iter().cloned().map(trim).collect();
    let (mut by_reference, mut against_truth) = compare::judge_with_truth(entry, engine.as_ref(), &references, sides, trim(truth), spec);
    let left_out: usize = cuts.rows.iter().map(BTreeSet::len).sum();
    if left_out > 0 {
        let note = format!("{left_out} token(s) within f32 rounding of a top-k/top-p cut left out of every side's rows");
        for check in by_reference.iter_mut().chain(std::iter::once(&mut against_truth)) {
            check.note = Some(check.note.take().map_or(note.clone(), |n| format!("{n}; {note}")));
        }
    }
    (by_reference, against_truth)
}

/// `sampled` against one other side (a reference or the truth): every draw must match, except a
/// draw where either side picked a token near that sampler's cut, which is a near-tie.
pub fn judge_draws(entry: &Entry, engine: Option<&Tensor>, other: &Lookup, cuts: &Cuts, samplers: &[SamplerSpec], spec: &Spec) -> CheckResult {
    let plain = compare::check(entry, engine, other, spec, Class::F32, compare::Tokens::unknown());
    let (Some(Tensor { values: Values::Ids(e), shape, .. }), Lookup::Tensor(Tensor { values: Values::Ids(r), .. })) = (engine, other) else {
        return plain;
    };
    if plain.status != Status::Fail || shape.len() != 2 || shape[0] != samplers.len() || shape[1] == 0 {
        return plain;
    }
    let draws = shape[1];
    let mut ties = Vec::new();
    for (k, (&a, &b)) in e.iter().zip(r).enumerate().filter(|(_, (a, b))| a != b) {
        let (row, draw) = (k / draws, k % draws);
        let near = |id: i64| usize::try_from(id).is_ok_and(|id| cuts.rows[row].contains(&id));
        let what = format!("sampler {} draw {draw}: subject {a} vs {b}", samplers[row].name);
        if !(near(a) || near(b)) {
            let note = format!("{what}, neither token near the sampler's cut");
            return CheckResult { note: Some(note), ..plain };
        }
        ties.push(format!("{what} (a token within f32 rounding of the cut)"));
    }
    CheckResult { status: Status::NearTie, note: Some(ties.join("; ")), ..plain }
}

/// The `sampled` checks of one case: against each reference, and against the truth.
pub fn judge_all_draws(
    entry: &Entry,
    engine: Option<&Tensor>,
    references: &[Result<Lookup, String>],
    truth: &Result<Lookup, String>,
    cuts: &Cuts,
    samplers: &[SamplerSpec],
    spec: &Spec,
) -> (Vec<CheckResult>, CheckResult) {
    let judge = |lookup: &Result<Lookup, String>, side: Role| match lookup {
        Ok(lookup) => judge_draws(entry, engine, lookup, cuts, samplers, spec),
        Err(e) => compare::result(entry, Status::Missing, Some(format!("{side} tensor unreadable: {e}")), BTreeMap::new(), vec![]),
    };
    (references.iter().map(|lookup| judge(lookup, Role::Reference)).collect(), judge(truth, Role::Truth))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_k: usize, top_p: f32) -> SamplerSpec {
        SamplerSpec { name: "s".into(), temperature, top_k, top_p }
    }

    #[test]
    fn no_cut_means_no_token_is_near_one() {
        let cuts = Cuts::new(&[1.0, 2.0, 3.0], &[sampler(0.7, 0, 1.0)]);
        assert!(cuts.rows[0].is_empty());
    }

    #[test]
    fn top_k_names_the_tokens_tied_with_the_edge_and_no_others() {
        // k = 2 keeps the logits 5 and 4; a 4 with another 4 beside it cannot be told apart.
        let cuts = Cuts::new(&[5.0, 4.0, 4.0, 1.0], &[sampler(1.0, 2, 1.0)]);
        assert_eq!(cuts.rows[0], BTreeSet::from([1, 2]));
        let cuts = Cuts::new(&[5.0, 4.0, 3.0, 1.0], &[sampler(1.0, 2, 1.0)]);
        assert!(cuts.rows[0].is_empty());
    }

    #[test]
    fn top_p_names_the_token_whose_mass_before_it_is_p_within_the_sum_bound() {
        // softmax(ln 5, ln 3, ln 2) = [0.5, 0.3, 0.2]: the mass before each is 0, 0.5, 0.8.
        let logits = [5f32.ln(), 3f32.ln(), 2f32.ln()];
        assert_eq!(Cuts::new(&logits, &[sampler(1.0, 0, 0.5)]).rows[0], BTreeSet::from([1]));
        assert_eq!(Cuts::new(&logits, &[sampler(1.0, 0, 0.8)]).rows[0], BTreeSet::from([2]));
        // p = 0.7 is 0.1 from every mass before: decided.
        assert!(Cuts::new(&logits, &[sampler(1.0, 0, 0.7)]).rows[0].is_empty());
    }

    #[test]
    fn rows_lose_the_near_tokens_and_are_renormalised() {
        let t = Tensor::f32(vec![2, 3], vec![0.5, 0.3, 0.2, 0.6, 0.4, 0.0]);
        let cuts = Cuts { rows: vec![BTreeSet::from([2]), BTreeSet::new()] };
        let out = without_cut_tokens(&t, &cuts).unwrap();
        let Values::F32(v) = out.values else { panic!("f32") };
        let want = [0.625, 0.375, 0.0, 0.6, 0.4, 0.0];
        assert!(v.iter().zip(want).all(|(a, b)| (f64::from(*a) - b).abs() < 1e-7), "{v:?}");
        // Another number of rows than the catalog's samplers is left for the layout check.
        assert!(without_cut_tokens(&Tensor::f32(vec![1, 3], vec![1.0, 0.0, 0.0]), &cuts).is_none());
    }

    #[test]
    fn a_differing_draw_is_a_near_tie_only_on_a_token_near_the_cut() {
        let entry = Entry {
            key: "sampled".into(),
            tensor: "sampled".into(),
            layer: None,
            checkpoint_id: 14,
            checkpoint: "sampling".into(),
            is_ids: true,
            arch: "llama".into(),
        };
        let spec = Spec::default();
        let samplers = [sampler(1.0, 0, 0.9), sampler(0.7, 0, 1.0)];
        let cuts = Cuts { rows: vec![BTreeSet::from([7]), BTreeSet::new()] };
        let engine = Tensor::ids(vec![2, 2], vec![1, 7, 3, 4]);
        let same = Lookup::Tensor(Tensor::ids(vec![2, 2], vec![1, 7, 3, 4]));
        assert_eq!(judge_draws(&entry, Some(&engine), &same, &cuts, &samplers, &spec).status, Status::Pass);
        let at_cut = Lookup::Tensor(Tensor::ids(vec![2, 2], vec![1, 2, 3, 4]));
        let r = judge_draws(&entry, Some(&engine), &at_cut, &cuts, &samplers, &spec);
        assert_eq!(r.status, Status::NearTie, "{:?}", r.note);
        let elsewhere = Lookup::Tensor(Tensor::ids(vec![2, 2], vec![1, 7, 3, 5]));
        let r = judge_draws(&entry, Some(&engine), &elsewhere, &cuts, &samplers, &spec);
        assert_eq!(r.status, Status::Fail, "{:?}", r.note);
        let transposed = Lookup::Tensor(Tensor::ids(vec![4], vec![1, 7, 3, 4]));
        assert_eq!(judge_draws(&entry, Some(&engine), &transposed, &cuts, &samplers, &spec).status, Status::Layout);
    }
}
