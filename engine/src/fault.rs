//! Bugs the engine can be told to make on purpose (the `fault-injection` feature), so the harness's
//! own tests can check that each is caught at the checkpoint where it lives.

/// A deliberate, realistic bug the forward pass can be told to make. The first four are large;
/// the rest are small, so the oracle's sharpness can be measured (`Perturb` by how small).
/// Spelled on the command line as in [`Fault::SPECS`] (`parity run --plant gelu-erf`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// RMSNorm/LayerNorm epsilon 1e-2 instead of the model's.
    NormEpsilon,
    /// RoPE rotates the wrong pairs of dimensions (half-split instead of interleaved or back).
    RopePairing,
    /// Attention scores not divided by sqrt(head_dim).
    MissingAttnScale,
    /// The FFN's residual add is dropped.
    DroppedFfnResidual,
    /// The norm epsilon 100 times the model's (SmolLM2: 1e-3 for 1e-5).
    NormEpsilonTimes100,
    /// GPT-2's FFN uses the exact (erf) GELU; the model was trained with the tanh approximation.
    GeluErf,
    /// Attention probabilities normalised by their sum times 1.001 (they add up to 0.999).
    SoftmaxOff,
    /// Layer 1 alone rotates with RoPE base 10000 (half the model's base if that is 10000).
    RopeThetaOneLayer,
    /// F16 weights whose value is subnormal dequantize to 0.
    F16SubnormalsFlushed,
    /// Q8_0 block scales rounded through bf16 before use.
    Q8ScaleBf16,
    /// Q4_1 block scales rounded through bf16 before use. (Not the minimums: a Q4_1 file made
    /// from bf16 weights stores each block minimum exactly in bf16, so rounding it changes nothing.)
    Q41ScaleBf16,
    /// A token decoded through the KV cache is rotated for the position after its own.
    DecodeRopeOffByOne,
    /// A token decoded through the KV cache does not attend to the oldest cached position.
    DecodeAttendsOneFewer,
    /// The sampler divides by the temperature after the softmax (which renormalising undoes).
    TemperatureAfterSoftmax,
    /// The sampler's top-p keeps one token fewer than the smallest set reaching p.
    TopPOneTooFew,
    /// Llama 3.1 RoPE scaling divides the wrong frequencies: pair i gets pair (hd/2 - 1 - i)'s
    /// divisor, as when the wavelength is computed from the index counted from the other end.
    RopeScalingReversed,
    /// Qwen2's Q and K biases are added after RoPE instead of before it.
    BiasAfterRope,
    /// Qwen3's per-head q/k RMSNorm is applied after RoPE instead of before it.
    QkNormAfterRope,
    /// Gemma's RMSNorms scale by the weight alone instead of 1 + weight.
    NormWithoutPlusOne,
    /// The sliding window lets a query see one position more than the model's window.
    WindowOffByOne,
    /// Scores are soft-capped before they are multiplied by the scale instead of after.
    SoftcapBeforeScale,
    /// A fused gate/up projection split the other way round (up rows taken as the gate's).
    GateUpSwapped,
    /// Deterministic noise (zero mean, unit variance per element) times `rel` times each row's
    /// RMS, added to layer `layer`'s block output in prefill and decode.
    Perturb { layer: usize, rel: f32 },
    /// Layer `layer`'s two norms use `times` the model's epsilon (a per-layer setting misread).
    NormEpsilonAt { layer: usize, times: f32 },
    /// [`Fault::Perturb`]'s noise on layer `layer`'s FFN output, before the residual add.
    PerturbFfn { layer: usize, rel: f32 },
    /// RoPE angles read from a table of `positions` rows, as an engine that precomputes cos/sin
    /// for a training context would: position p at or past `positions` gets row p mod
    /// `positions`, so every position before it is exact and every one after is rotated wrong.
    RopeTableWrap { positions: usize },
}

impl Fault {
    /// The command-line names of the faults without parameters; `perturb:LAYER:REL`,
    /// `perturb-ffn:LAYER:REL`, `norm-eps-at:LAYER:TIMES` and `rope-wrap:POSITIONS` besides.
    pub const SPECS: [(&'static str, Fault); 22] = [
        ("norm-eps", Fault::NormEpsilon),
        ("rope-pairing", Fault::RopePairing),
        ("missing-attn-scale", Fault::MissingAttnScale),
        ("dropped-ffn-residual", Fault::DroppedFfnResidual),
        ("norm-eps-x100", Fault::NormEpsilonTimes100),
        ("gelu-erf", Fault::GeluErf),
        ("softmax-off", Fault::SoftmaxOff),
        ("rope-theta-one-layer", Fault::RopeThetaOneLayer),
        ("f16-subnormals-flushed", Fault::F16SubnormalsFlushed),
        ("q8-scale-bf16", Fault::Q8ScaleBf16),
        ("q4_1-scale-bf16", Fault::Q41ScaleBf16),
        ("decode-rope-off-by-one", Fault::DecodeRopeOffByOne),
        ("decode-attends-one-fewer", Fault::DecodeAttendsOneFewer),
        ("temperature-after-softmax", Fault::TemperatureAfterSoftmax),
        ("top-p-one-too-few", Fault::TopPOneTooFew),
        ("rope-scaling-reversed", Fault::RopeScalingReversed),
        ("bias-after-rope", Fault::BiasAfterRope),
        ("qk-norm-after-rope", Fault::QkNormAfterRope),
        ("norm-without-plus-one", Fault::NormWithoutPlusOne),
        ("window-off-by-one", Fault::WindowOffByOne),
        ("softcap-before-scale", Fault::SoftcapBeforeScale),
        ("gate-up-swapped", Fault::GateUpSwapped),
    ];
}

impl std::str::FromStr for Fault {
    type Err = String;

    /// `gelu-erf`, `norm-eps-x100`, ... or `perturb:LAYER:REL` (`perturb:3:1e-4`).
    fn from_str(spec: &str) -> std::result::Result<Fault, String> {
        if let Some(&(_, fault)) = Fault::SPECS.iter().find(|(name, _)| *name == spec) {
            return Ok(fault);
        }
        if let Some(args) = spec.strip_prefix("norm-eps-at:") {
            let (layer, times) = layer_and_number(spec, args)?;
            return Ok(Fault::NormEpsilonAt { layer, times });
        }
        if let Some(args) = spec.strip_prefix("rope-wrap:") {
            let positions = args
                .parse()
                .ok()
                .filter(|&p: &usize| p > 0)
                .ok_or_else(|| format!("plant {spec:?}: needs a whole number of positions above 0 (rope-wrap:4096)"))?;
            return Ok(Fault::RopeTableWrap { positions });
        }
        if let Some(args) = spec.strip_prefix("perturb-ffn:") {
            let (layer, rel) = layer_and_number(spec, args)?;
            return Ok(Fault::PerturbFfn { layer, rel });
        }
        if let Some(args) = spec.strip_prefix("perturb:") {
            let (layer, rel) =
                args.split_once(':').ok_or_else(|| format!("plant {spec:?}: perturb needs a layer and a relative size (perturb:3:1e-4)"))?;
            let layer = layer.parse().map_err(|_| format!("plant {spec:?}: layer {layer:?} is not a whole number"))?;
            let rel: f32 = rel.parse().map_err(|_| format!("plant {spec:?}: relative size {rel:?} is not a number"))?;
            if !(rel.is_finite() && rel > 0.0) {
                return Err(format!("plant {spec:?}: the relative size must be a finite number above 0"));
            }
            return Ok(Fault::Perturb { layer, rel });
        }
        let known: Vec<&str> = Fault::SPECS.iter().map(|(name, _)| *name).collect();
        Err(format!(
            "unknown plant {spec:?} (known: {}, perturb:LAYER:REL, perturb-ffn:LAYER:REL, norm-eps-at:LAYER:TIMES, rope-wrap:POSITIONS)",
            known.join(", ")
        ))
    }
}

/// `LAYER:X` of a parameterised plant: a whole layer number and a finite number above 0.
fn layer_and_number(spec: &str, args: &str) -> Result<(usize, f32), String> {
    let (layer, x) = args.split_once(':').ok_or_else(|| format!("plant {spec:?}: needs a layer and a number (norm-eps-at:17:10)"))?;
    let layer = layer.parse().map_err(|_| format!("plant {spec:?}: layer {layer:?} is not a whole number"))?;
    let x: f32 = x.parse().map_err(|_| format!("plant {spec:?}: {x:?} is not a number"))?;
    if !(x.is_finite() && x > 0.0) {
        return Err(format!("plant {spec:?}: the number must be finite and above 0"));
    }
    Ok((layer, x))
}

impl std::fmt::Display for Fault {
    /// The spelling [`FromStr`](std::str::FromStr) reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Perturb { layer, rel } => write!(f, "perturb:{layer}:{rel:e}"),
            Fault::NormEpsilonAt { layer, times } => write!(f, "norm-eps-at:{layer}:{times}"),
            Fault::PerturbFfn { layer, rel } => write!(f, "perturb-ffn:{layer}:{rel:e}"),
            Fault::RopeTableWrap { positions } => write!(f, "rope-wrap:{positions}"),
            other => f.write_str(Fault::SPECS.iter().find(|(_, x)| x == other).map_or("?", |(name, _)| name)),
        }
    }
}
