//! `--plant SPEC` on `parity run` and `parity bisect`, in a binary built with `--features plant`
//! only: the engine runs with a known bug planted (engine::fault::Fault), so the oracle's
//! sharpness can be measured from the outside (scripts/sharpness.sh).

use anyhow::{anyhow, Result};
use engine::fault::Fault;
use engine::Model;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct PlantArgs {
    /// Plant a known bug in the engine (repeatable): norm-eps, rope-pairing, missing-attn-scale,
    /// dropped-ffn-residual, norm-eps-x100, gelu-erf, softmax-off, rope-theta-one-layer,
    /// f16-subnormals-flushed, q8-scale-bf16, q4_1-scale-bf16, decode-rope-off-by-one,
    /// decode-attends-one-fewer, perturb:LAYER:REL (noise of relative RMS REL on a block output),
    /// perturb-ffn:LAYER:REL (the same on one layer's FFN output),
    /// norm-eps-at:LAYER:TIMES (one layer's norms with TIMES the model's epsilon),
    /// or rope-wrap:POSITIONS (RoPE angles from a table of POSITIONS rows, wrapping past it).
    #[cfg_attr(feature = "plant", arg(long = "plant", value_name = "SPEC"))]
    #[cfg_attr(not(feature = "plant"), arg(skip))]
    plant: Vec<String>,
}

impl PlantArgs {
    /// The bugs asked for (always none in a build without the `plant` feature), or the one-line
    /// reason a spec is not one.
    pub fn faults(&self) -> Result<Vec<Fault>> {
        self.plant.iter().map(|s| s.parse::<Fault>().map_err(|e| anyhow!("--plant: {e}"))).collect()
    }
}

/// `planted: gelu-erf, perturb:3:1e-4`, or `None` when nothing is planted.
pub fn label(faults: &[Fault]) -> Option<String> {
    (!faults.is_empty()).then(|| format!("planted: {}", faults.iter().map(Fault::to_string).collect::<Vec<_>>().join(", ")))
}

/// Plants `faults` in a freshly loaded model (the pipeline's `prepare` hook).
pub fn plant_in(faults: &[Fault], model: &mut Model) {
    for &fault in faults {
        if let Fault::Perturb { layer, .. } | Fault::PerturbFfn { layer, .. } | Fault::NormEpsilonAt { layer, .. } = fault {
            let n = model.config().n_layers;
            if layer >= n {
                eprintln!("parity: warning: {fault} does nothing to {} (layers 0..{n})", model.path.display());
            }
        }
        #[cfg(feature = "plant")]
        model.inject_fault(fault);
    }
}
