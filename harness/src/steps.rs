//! Token flips in decode judged from the reference's side.
//!
//! When every implementation is fed the truth's greedy tokens, each dumps the logits of every
//! generated step (`step_logits`) on that same history, so a flip at step `t` can be judged with
//! the reference's own numbers: its logit for its token minus its logit for the engine's. Noise
//! explains the flip only if that gap is within twice the per-logit noise of the pair: the
//! reference's own largest logit error against the truth at that step, plus the largest of any
//! reference computing in f32 (what an f32 engine may carry). The engine's own gap never excuses
//! a flip.

use crate::catalog::STEP_LOGITS;
use crate::compare::{Flip, Tie};
use crate::dumps::{Dump, Lookup};
use crate::spec::Class;
use crate::tensor::{Tensor, Values};

/// The per-step logits of the truth and of every reference that dumped them.
pub struct StepEvidence {
    vocab: usize,
    /// Per step: the largest max-abs logit error against the truth among the f32 references.
    f32_noise: Vec<f64>,
    /// Per reference: its rows, and per step its max-abs logit error against the truth.
    references: Vec<(String, Vec<f32>, Vec<f64>)>,
}

impl StepEvidence {
    /// From the truth's dump and each reference's (name, dump, class); `None` when the truth has
    /// no usable `step_logits` (then flips are judged the old way).
    pub fn new(truth: &Dump, references: &[(&str, &Dump, Class)]) -> Option<StepEvidence> {
        let (shape, truth_rows) = rows(truth)?;
        let (steps, vocab) = (*shape.first()?, *shape.get(1)?);
        let mut f32_noise = vec![0.0f64; steps];
        let mut out = Vec::new();
        for &(name, dump, class) in references {
            let Some((s, r)) = rows(dump) else { continue };
            if s != shape {
                continue;
            }
            let errors: Vec<f64> = (0..steps)
                .map(|t| {
                    let (a, b) = (&r[t * vocab..(t + 1) * vocab], &truth_rows[t * vocab..(t + 1) * vocab]);
                    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max)
                })
                .collect();
            if class == Class::F32 {
                f32_noise.iter_mut().zip(&errors).for_each(|(n, e)| *n = n.max(*e));
            }
            out.push((name.to_string(), r, errors));
        }
        Some(StepEvidence { vocab, f32_noise, references: out })
    }

    /// The flip against `reference`, judged from its own logits at that step; `None` when this
    /// reference dumped no usable step logits or the step or ids are out of range.
    pub fn tie(&self, reference: &str, flip: &Flip) -> Option<Tie> {
        let (_, rows, errors) = self.references.iter().find(|(n, _, _)| n == reference)?;
        let row = rows.get(flip.step * self.vocab..(flip.step + 1) * self.vocab)?;
        let logit = |id: i64| usize::try_from(id).ok().and_then(|i| row.get(i)).map(|&v| v as f64);
        let gap = logit(flip.reference)? - logit(flip.engine)?;
        let limit = 2.0 * (errors.get(flip.step)? + self.f32_noise.get(flip.step)?);
        Some(Tie::ReferenceGap { gap, limit })
    }
}

fn rows(dump: &Dump) -> Option<(Vec<usize>, Vec<f32>)> {
    match dump.get(STEP_LOGITS).ok()? {
        Lookup::Tensor(Tensor { shape, values: Values::F32(v) }) if shape.len() == 2 && v.len() == shape[0] * shape[1] => Some((shape, v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy;
    use std::path::Path;

    fn dump(dir: &Path, name: &str, rows: &[[f32; 3]]) -> Dump {
        let at = dir.join(name);
        std::fs::create_dir_all(&at).unwrap();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        npy::write(&at.join("step_logits.npy"), &Tensor::f32(vec![rows.len(), 3], flat)).unwrap();
        let manifest = format!(
            "reference = {name:?}\nversion = \"1\"\narch = \"llama\"\nn_layers = 1\nmodel = \"m\"\nmodel_sha256 = \"00\"\nprompt = \"p\"\ntoken_ids = [1]\ndtype = \"float32\"\nthreads = 1\nn_generate = 2\ntemperature = 1.0\nwall_time_s = 0.1\ncommand = \"test\"\n[tensors.step_logits]\nfile = \"step_logits.npy\"\n"
        );
        std::fs::write(at.join("manifest.toml"), manifest).unwrap();
        Dump::open(&at).unwrap()
    }

    #[test]
    fn a_flip_is_close_only_within_twice_the_pairs_noise_on_the_references_own_logits() {
        let dir = std::env::temp_dir().join(format!("parity-steps-{}", std::process::id()));
        // Step 1: the truth prefers token 0 by 0.5. The f32 reference is 0.01 off the truth, the
        // quantized one 0.2 off (it sees a gap of 0.1 between its token 0 and token 2).
        let truth = dump(&dir, "truth", &[[1.0, 0.0, 0.0], [2.0, 0.0, 1.5]]);
        let f32_ref = dump(&dir, "f32ref", &[[1.0, 0.0, 0.0], [2.01, 0.0, 1.5]]);
        let quant = dump(&dir, "quant", &[[1.0, 0.0, 0.0], [1.8, 0.0, 1.7]]);
        let evidence = StepEvidence::new(&truth, &[("f32ref", &f32_ref, Class::F32), ("quant", &quant, Class::Quantized)]).unwrap();
        let flip = Flip { step: 1, engine: 2, reference: 0 };
        // quant: gap 0.1, limit 2 x (0.2 + 0.01) = 0.42: close.
        let Some(Tie::ReferenceGap { gap, limit }) = evidence.tie("quant", &flip) else { panic!() };
        assert!((gap - 0.1).abs() < 1e-6 && (limit - 0.42).abs() < 1e-6 && gap <= limit);
        // f32ref: gap 0.51, limit 2 x (0.01 + 0.01) = 0.04: not close, whatever the engine's gap.
        let Some(Tie::ReferenceGap { gap, limit }) = evidence.tie("f32ref", &flip) else { panic!() };
        assert!((gap - 0.51).abs() < 1e-6 && (limit - 0.04).abs() < 1e-6 && gap > limit);
        assert_eq!(evidence.tie("absent", &flip), None);
        assert_eq!(evidence.tie("quant", &Flip { step: 2, engine: 2, reference: 0 }), None);
        assert_eq!(evidence.tie("quant", &Flip { step: 1, engine: 7, reference: 0 }), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
