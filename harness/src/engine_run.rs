//! The engine's side of a comparison: a traced run turned into the harness's tensors, and the
//! top-two logit gap used to classify a token flip as a near-tie (recorded during the trace when
//! the flip comes after the engine's own tokens, else measured with one more forward pass).

use crate::tensor::{Tensor, Values};
use anyhow::{Context, Result};
use engine::tap::{Observer, Recorder, Tap, TapValue};
use engine::{Model, Taps};
use std::collections::BTreeMap;

/// The engine's traced run.
pub struct Trace {
    /// Every tap, by dump key (`blk.3.attn_probs`).
    pub tensors: BTreeMap<String, Tensor>,
    /// The top-two logit gap of each generated token's choice (step 0: after the prompt).
    pub step_gaps: Vec<f64>,
}

impl Trace {
    /// The gap recorded during the trace after exactly `ids` (the prompt's tokens, then the first
    /// generated ones), if those are the tokens the engine itself ran.
    pub fn gap_after(&self, ids: &[u32]) -> Option<f64> {
        let ids_of = |tap: Tap| match self.tensors.get(&tap.key(None)).map(|t| &t.values) {
            Some(Values::Ids(v)) => Some(v.as_slice()),
            _ => None,
        };
        let (prompt, generated) = (ids_of(Tap::Tokens)?, ids_of(Tap::Generated)?);
        let step = ids.len().checked_sub(prompt.len())?;
        // As long as `ids` by construction: the prompt, then `step` generated tokens.
        let ran = prompt.iter().chain(generated.get(..step)?);
        let same = ran.zip(ids).all(|(&a, &b)| a == i64::from(b));
        if same {
            self.step_gaps.get(step).copied()
        } else {
            None
        }
    }
}

/// The taps, and the gap of each step's logits, of one traced run.
#[derive(Default)]
struct Observed {
    taps: Recorder,
    step_gaps: Vec<f64>,
}

impl Observer for Observed {
    fn observe(&mut self, tap: Tap, layer: Option<usize>, value: TapValue) {
        self.taps.observe(tap, layer, value);
    }

    fn step_logits(&mut self, _step: usize, logits: &[f32]) {
        self.step_gaps.push(top2(logits));
    }
}

/// Runs the engine over `prompt` with every tap recorded (`step_logits` among them), on what every
/// reference of the case was fed ([`engine::Model::trace_forced`]).
pub fn trace(model: &Model, prompt: &str, n_generate: usize, temperature: f32, shared: engine::Shared) -> Result<Trace> {
    let mut observed = Observed::default();
    model.trace_forced(prompt, n_generate, temperature, shared, &mut observed).context("running the engine")?;
    let tensors = observed.taps.tensors.into_iter().map(|(key, value)| (key, to_tensor(value))).collect();
    Ok(Trace { tensors, step_gaps: observed.step_gaps })
}

/// The logits of every generated step, `[N, V]`, by one prefill of the prompt and the history
/// (step t: the position after the prompt and `history[..t]`), not through the decode path.
pub fn prefill_steps(model: &Model, prompt: &[u32], history: &[u32]) -> Result<Tensor> {
    anyhow::ensure!(!prompt.is_empty() && !history.is_empty(), "a prefill of the steps needs a prompt and a history");
    let vocab = model.config().vocab_size;
    let ids: Vec<u32> = prompt.iter().chain(history.iter().take(history.len().saturating_sub(1))).copied().collect();
    let mut cache = model.new_cache(ids.len());
    let all = model.forward(&ids, &mut cache, &mut engine::Taps::none(), true)?;
    let first = (prompt.len() - 1) * vocab;
    Ok(Tensor::f32(vec![history.len(), vocab], all[first..first + history.len() * vocab].to_vec()))
}

/// A tap's value as the harness's tensor.
pub(crate) fn to_tensor(value: TapValue) -> Tensor {
    match value {
        TapValue::F32 { shape, data } => Tensor::f32(shape, data),
        TapValue::Ids(ids) => Tensor { shape: vec![ids.len()], values: Values::Ids(ids.into_iter().map(i64::from).collect()) },
        TapValue::Id(id) => Tensor { shape: vec![], values: Values::Ids(vec![id.into()]) },
        value @ TapValue::IdRows { .. } => {
            let shape = value.shape();
            let TapValue::IdRows { ids, .. } = value else { unreachable!("matched above") };
            Tensor { shape, values: Values::Ids(ids.into_iter().map(i64::from).collect()) }
        }
    }
}

/// The gap between the two largest next-token logits after `tokens`, or `None` if the ids are
/// outside the vocabulary or the sequence does not fit the context.
pub fn top2_gap(model: &Model, tokens: &[u32]) -> Option<f64> {
    let vocab = model.config().vocab_size;
    if tokens.is_empty() || tokens.len() > model.config().context || tokens.iter().any(|&t| t as usize >= vocab) {
        return None;
    }
    let mut cache = model.new_cache(tokens.len());
    let logits = model.forward(tokens, &mut cache, &mut Taps::none(), false).ok()?;
    Some(top2(&logits))
}

/// The gap between the two largest values.
fn top2(logits: &[f32]) -> f64 {
    let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in logits {
        if v > first {
            second = first;
            first = v;
        } else if v > second {
            second = v;
        }
    }
    (first - second) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_gap_answers_only_for_the_tokens_the_engine_ran() {
        let trace = Trace {
            tensors: BTreeMap::from([
                ("tokens".to_string(), Tensor::ids(vec![2], vec![1, 2])),
                ("generated".to_string(), Tensor::ids(vec![3], vec![3, 4, 5])),
            ]),
            step_gaps: vec![0.1, 0.2, 0.3],
        };
        assert_eq!(trace.gap_after(&[1, 2]), Some(0.1));
        assert_eq!(trace.gap_after(&[1, 2, 3]), Some(0.2));
        assert_eq!(trace.gap_after(&[1, 2, 3, 4]), Some(0.3));
        for other in [&[1, 2, 9][..], &[1, 9], &[1], &[1, 2, 3, 4, 5], &[]] {
            assert_eq!(trace.gap_after(other), None, "{other:?}");
        }
    }

    #[test]
    fn the_steps_by_one_prefill_match_the_decode_paths_on_a_forced_history() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models/tiny-llama/model-f32.gguf");
        let model = Model::load(&path).unwrap();
        let history = [7u32, 11, 13];
        let shared = engine::Shared { history: Some(&history), ..Default::default() };
        let trace = trace(&model, "The quick brown fox", 3, 1.0, shared).unwrap();
        let Some(Values::Ids(prompt)) = trace.tensors.get("tokens").map(|t| &t.values) else { panic!("tokens") };
        let prompt: Vec<u32> = prompt.iter().map(|&i| i as u32).collect();
        let prefilled = prefill_steps(&model, &prompt, &history).unwrap();
        let decoded = &trace.tensors["step_logits"];
        assert_eq!(prefilled.shape, decoded.shape);
        let (Values::F32(a), Values::F32(b)) = (&prefilled.values, &decoded.values) else { panic!("f32") };
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "decode and prefill differ by {worst}");
        assert!(prefill_steps(&model, &[], &history).is_err());
    }

    #[test]
    fn top2_is_the_gap_between_the_two_largest_values() {
        assert_eq!(top2(&[1.0, 5.0, 3.5, -2.0]), 1.5);
        assert_eq!(top2(&[4.0, 4.0]), 0.0);
    }
}
