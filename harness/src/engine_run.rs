//! The engine's side of a comparison: a traced run turned into the harness's tensors, and the
//! top-two logit gap used to classify a token flip as a near-tie.

use anyhow::{Context, Result};
use engine::tap::{Recorder, TapValue};
use engine::{Model, Taps};
use crate::tensor::{Tensor, Values};
use std::collections::BTreeMap;

/// Every tap of one traced run, by dump key (`blk.3.attn_probs`).
pub fn trace(model: &Model, prompt: &str, n_generate: usize, temperature: f32) -> Result<BTreeMap<String, Tensor>> {
    let mut rec = Recorder::default();
    model.trace(prompt, n_generate, temperature, &mut rec).context("running the engine")?;
    Ok(rec.tensors.into_iter().map(|(key, value)| (key, to_tensor(value))).collect())
}

fn to_tensor(value: TapValue) -> Tensor {
    match value {
        TapValue::F32 { shape, data } => Tensor::f32(shape, data),
        TapValue::Ids(ids) => Tensor { shape: vec![ids.len()], values: Values::Ids(ids.into_iter().map(i64::from).collect()) },
        TapValue::Id(id) => Tensor { shape: vec![], values: Values::Ids(vec![id.into()]) },
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
    let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in &logits {
        if v > first {
            second = first;
            first = v;
        } else if v > second {
            second = v;
        }
    }
    Some((first - second) as f64)
}
