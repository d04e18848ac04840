//! Model hyperparameters, read from GGUF metadata or an HF `config.json`.

use crate::attention::{AttnFaults, Heads};
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::gguf::GgufFile;
use crate::ops::{Rope, RopeLayout};
use crate::sampling::SamplerFaults;
use serde_json::Value as Json;
use std::path::Path;

/// The architectures the engine runs, named as GGUF names them (`general.architecture`) and as
/// the catalog and the dumps do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2 and 3, SmolLM2: RMSNorm, RoPE, grouped-query attention, SwiGLU.
    Llama,
    /// The Llama block with biases on the Q, K and V projections.
    Qwen2,
    /// The Llama block with an RMSNorm per head on q and k before RoPE.
    Qwen3,
    /// The Llama block with Gemma-2's departures ([`Traits`]) and norms after attention and FFN.
    Gemma2,
    /// The Llama block with Q/K/V in one fused projection and gate/up in another.
    Phi3,
    Gpt2,
}

impl Arch {
    pub const ALL: [Arch; 6] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Gemma2, Arch::Phi3, Arch::Gpt2];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma2 => "gemma2",
            Arch::Phi3 => "phi3",
            Arch::Gpt2 => "gpt2",
        }
    }

    /// The architecture of a GGUF `general.architecture` or an HF `model_type` (both spell these
    /// six alike).
    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether the forward pass is the Llama block ([`crate::llama`]) rather than GPT-2's.
    pub fn is_llama_block(self) -> bool {
        self != Arch::Gpt2
    }

    fn known() -> String {
        Arch::ALL.map(Arch::name).join(", ")
    }
}

/// How RoPE's frequencies are changed from `theta^(-2i/hd)`.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Llama 3.1's: pair i's frequency divided by `divisors[i]` (1 for high frequencies, the
    /// factor for low ones, interpolated between). GGUF files carry the divisors as llama.cpp's
    /// converter computed them (`rope_freqs.weight`); for HF they are computed from
    /// `rope_parameters` the way transformers does.
    Llama3 {
        divisors: Vec<f32>,
    },
}

/// Llama 3.1's RoPE scaling parameters (HF `rope_parameters` with `rope_type = "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_context: f64,
}

impl Llama3Scaling {
    /// Pair i's divisor: 1 where the wavelength 2 pi / f_i is below original_context /
    /// high_freq_factor, `factor` where it is above original_context / low_freq_factor, and
    /// between them the divisor that makes the frequency (1 - s) f / factor + s f, with
    /// s = (original_context / wavelength - low) / (high - low).
    pub fn divisors(&self, theta: f32, head_dim: usize) -> Vec<f32> {
        let Llama3Scaling { factor, low_freq_factor: low, high_freq_factor: high, original_context } = *self;
        (0..head_dim / 2)
            .map(|i| {
                let freq = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
                let wavelength = 2.0 * std::f64::consts::PI / freq;
                if wavelength < original_context / high {
                    1.0
                } else if wavelength > original_context / low {
                    factor as f32
                } else {
                    let s = (original_context / wavelength - low) / (high - low);
                    (1.0 / ((1.0 - s) / factor + s)) as f32
                }
            })
            .collect()
    }
}

/// How a family's block departs from the Llama block beyond its weights (Gemma-2's); all off
/// for the other families.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Traits {
    /// Embedding rows multiplied by sqrt(d) before the first block.
    pub scaled_embedding: bool,
    /// The FFN gate goes through the tanh GELU instead of SiLU (GeGLU).
    pub gelu_gate: bool,
    /// The score scale where it is not 1/sqrt(head_dim) (HF Gemma-2's query_pre_attn_scalar^-1/2).
    pub attn_scale: Option<f32>,
    /// Scores become `cap * tanh(scores / cap)` after the scale, before the mask.
    pub attn_softcap: Option<f32>,
    /// Logits become `cap * tanh(logits / cap)`.
    pub final_softcap: Option<f32>,
    pub window: Option<SlidingWindow>,
}

/// Attention limited to the last `size` positions (the query's own included) on some layers.
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    pub size: usize,
    /// Per layer: whether it is a windowed (local) layer.
    pub layers: Vec<bool>,
}

/// What a model's loaded weights say about its mechanisms, beyond its config.
#[derive(Clone, Copy, Debug, Default)]
pub struct WeightFacts {
    /// The output projection is the token embedding (no `output.weight` / `lm_head`).
    pub tied_output: bool,
    /// The Q/K/V projections have biases (Qwen2's, or any Llama file's that has them).
    pub qkv_bias: bool,
}

/// A mechanism a model family uses, for `parity inspect`: what the engine implements, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    RmsNorm,
    LayerNorm,
    LearnedPositions,
    Rope,
    RopeLlama3Scaling,
    GroupedQueryAttention,
    QkvBias,
    QkNorm,
    WideHeads,
    SwiGlu,
    GeGlu,
    Gelu,
    ScaledEmbedding,
    NormPlusOne,
    PostNorms,
    AttnSoftcap,
    FinalSoftcap,
    WindowedAttention,
    FusedQkv,
    FusedGateUp,
    TiedOutput,
}

impl Mechanism {
    pub fn describe(self) -> &'static str {
        match self {
            Mechanism::RmsNorm => "RMSNorm",
            Mechanism::LayerNorm => "LayerNorm",
            Mechanism::LearnedPositions => "learned position embeddings",
            Mechanism::Rope => "RoPE",
            Mechanism::RopeLlama3Scaling => "Llama 3.1 RoPE frequency scaling",
            Mechanism::GroupedQueryAttention => "grouped-query attention",
            Mechanism::QkvBias => "Q/K/V projection biases",
            Mechanism::QkNorm => "per-head RMSNorm on q and k before RoPE",
            Mechanism::WideHeads => "heads x head dim wider than the hidden size",
            Mechanism::SwiGlu => "SwiGLU FFN",
            Mechanism::GeGlu => "GeGLU FFN (tanh GELU gate)",
            Mechanism::Gelu => "GELU FFN",
            Mechanism::ScaledEmbedding => "embedding scaled by sqrt(d)",
            Mechanism::NormPlusOne => "RMSNorm scaling by 1 + weight",
            Mechanism::PostNorms => "RMSNorm on the attention and FFN outputs before the residual",
            Mechanism::AttnSoftcap => "attention scores soft-capped",
            Mechanism::FinalSoftcap => "final logits soft-capped",
            Mechanism::WindowedAttention => "sliding-window attention on alternate layers",
            Mechanism::FusedQkv => "Q, K and V in one fused projection",
            Mechanism::FusedGateUp => "gate and up in one fused projection",
            Mechanism::TiedOutput => "output tied to the token embedding",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub context: usize,
    pub norm_eps: f32,
    /// Llama block only.
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    /// How the Q/K rows of these weights pair dimensions for RoPE.
    pub rope_layout: RopeLayout,
    pub traits: Traits,
    /// Bugs planted on purpose (only with the `fault-injection` feature), so the harness's tests
    /// can check that each is caught at the checkpoint where it lives.
    pub faults: Vec<Fault>,
}

impl Config {
    /// True when `fault` was planted; always false without the `fault-injection` feature.
    #[inline]
    pub fn has_fault(&self, fault: Fault) -> bool {
        cfg!(feature = "fault-injection") && self.faults.contains(&fault)
    }

    /// The normalisation epsilon the forward pass uses.
    pub fn eps(&self) -> f32 {
        if self.has_fault(Fault::NormEpsilon) {
            1e-2
        } else if self.has_fault(Fault::NormEpsilonTimes100) {
            self.norm_eps * 100.0
        } else {
            self.norm_eps
        }
    }

    /// RoPE for these weights' Q/K layout.
    pub fn rope(&self) -> Rope {
        let layout = match (self.rope_layout, self.has_fault(Fault::RopePairing)) {
            (layout, false) => layout,
            (RopeLayout::Interleaved, true) => RopeLayout::HalfSplit,
            (RopeLayout::HalfSplit, true) => RopeLayout::Interleaved,
        };
        Rope::new(layout, self.head_dim, self.rope_theta, self.rope_divisors().as_deref()).wrapping_at(self.rope_table_wrap())
    }

    /// The planted RopeTableWrap fault's table length, if planted.
    fn rope_table_wrap(&self) -> Option<usize> {
        self.faults.iter().find_map(|f| match *f {
            Fault::RopeTableWrap { positions } if cfg!(feature = "fault-injection") => Some(positions),
            _ => None,
        })
    }

    /// The scaling divisors RoPE uses (reversed by the planted RopeScalingReversed fault).
    fn rope_divisors(&self) -> Option<Vec<f32>> {
        match &self.rope_scaling {
            RopeScaling::None => None,
            RopeScaling::Llama3 { divisors } if self.has_fault(Fault::RopeScalingReversed) => Some(divisors.iter().rev().copied().collect()),
            RopeScaling::Llama3 { divisors } => Some(divisors.clone()),
        }
    }

    /// The width of q (and of the attention output before its projection): heads x head dim,
    /// which Qwen3 makes wider than the hidden size.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Layer `l`'s own RoPE where it differs from [`Config::rope`]: only ever with the planted
    /// RopeThetaOneLayer fault, which gives layer 1 the common default base 10000 (a model
    /// trained with another base loaded with the default), or half of it if it is the default.
    pub fn layer_rope(&self, l: usize) -> Option<Rope> {
        if l != 1 || !self.has_fault(Fault::RopeThetaOneLayer) {
            return None;
        }
        let theta = if self.rope_theta == 10000.0 { 5000.0 } else { 10000.0 };
        Some(Rope::new(self.rope().layout, self.head_dim, theta, self.rope_divisors().as_deref()).wrapping_at(self.rope_table_wrap()))
    }

    /// The sampler's planted bugs, if any.
    pub fn sampler_faults(&self) -> SamplerFaults {
        SamplerFaults {
            temperature_after_softmax: self.has_fault(Fault::TemperatureAfterSoftmax),
            top_p_one_too_few: self.has_fault(Fault::TopPOneTooFew),
        }
    }

    /// Layer `l`'s attention: its shape, score scale (1/sqrt(head_dim) unless the family says
    /// otherwise), soft-cap and window.
    pub fn heads(&self, l: usize) -> Heads {
        let t = &self.traits;
        let scale = match self.has_fault(Fault::MissingAttnScale) {
            true => 1.0,
            false => t.attn_scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt()),
        };
        let faults = AttnFaults {
            softmax_off: self.has_fault(Fault::SoftmaxOff),
            decode_skips_oldest: self.has_fault(Fault::DecodeAttendsOneFewer),
            softcap_before_scale: self.has_fault(Fault::SoftcapBeforeScale),
        };
        let window =
            t.window.as_ref().filter(|w| w.layers.get(l) == Some(&true)).map(|w| w.size + usize::from(self.has_fault(Fault::WindowOffByOne)));
        Heads { n_heads: self.n_heads, n_kv_heads: self.n_kv_heads, head_dim: self.head_dim, scale, softcap: t.attn_softcap, window, faults }
    }

    /// Layer `l`'s normalisation epsilon: [`Config::eps`], times the planted NormEpsilonAt factor
    /// in that one layer.
    pub fn layer_eps(&self, l: usize) -> f32 {
        let times = self.faults.iter().find_map(|f| match *f {
            Fault::NormEpsilonAt { layer, times } if cfg!(feature = "fault-injection") && layer == l => Some(times),
            _ => None,
        });
        self.eps() * times.unwrap_or(1.0)
    }

    /// The relative size of the noise the planted Perturb fault adds to layer `l`'s block output.
    pub fn perturbation(&self, l: usize) -> Option<f32> {
        self.faults.iter().find_map(|f| match *f {
            Fault::Perturb { layer, rel } if cfg!(feature = "fault-injection") && layer == l => Some(rel),
            _ => None,
        })
    }

    /// The relative size of the noise the planted PerturbFfn fault adds to layer `l`'s FFN output.
    pub fn ffn_perturbation(&self, l: usize) -> Option<f32> {
        self.faults.iter().find_map(|f| match *f {
            Fault::PerturbFfn { layer, rel } if cfg!(feature = "fault-injection") && layer == l => Some(rel),
            _ => None,
        })
    }
}

impl Config {
    /// Reads `<arch>.*` keys as llama.cpp does; the vocabulary size comes from the token embedding.
    pub fn from_gguf(file: &GgufFile, vocab_size: usize) -> Result<Config> {
        let name = file.architecture()?;
        let arch = Arch::from_name(name).ok_or_else(|| Error::Config(format!("architecture {name:?} is not supported ({})", Arch::known())))?;
        let key = |k: &str| format!("{}.{k}", arch.name());
        let u32_or = |k: &str, default: usize| -> Result<usize> {
            Ok(match file.get(&key(k)) {
                Some(_) => file.get_u32(&key(k))? as usize,
                None => default,
            })
        };
        let n_heads = file.get_u32(&key("attention.head_count"))? as usize;
        let d_model = file.get_u32(&key("embedding_length"))? as usize;
        let n_kv_heads = u32_or("attention.head_count_kv", n_heads)?;
        let head_dim = u32_or("attention.key_length", d_model.checked_div(n_heads).unwrap_or(0))?;
        if u32_or("attention.value_length", head_dim)? != head_dim {
            return Err(Error::Config("value heads of another width than key heads are not supported".into()));
        }
        let n_layers = file.get_u32(&key("block_count"))? as usize;
        let f32_at = |k: &str| -> Result<Option<f32>> { file.get(&key(k)).map(|_| file.get_f32(&key(k))).transpose() };
        let window = u32_or("attention.sliding_window", 0)?;
        let traits = match arch {
            // llama.cpp's Gemma-2: every even layer windowed; scores scaled by 1/sqrt(head_dim),
            // except for the 46-layer (27B) model, which uses 1/sqrt(d / heads).
            Arch::Gemma2 => Traits {
                scaled_embedding: true,
                gelu_gate: true,
                attn_scale: (n_layers == 46).then(|| 1.0 / ((d_model / n_heads.max(1)) as f32).sqrt()),
                attn_softcap: f32_at("attn_logit_softcapping")?,
                final_softcap: f32_at("final_logit_softcapping")?,
                window: (window > 0).then(|| SlidingWindow { size: window, layers: (0..n_layers).map(|l| l % 2 == 0).collect() }),
            },
            _ => {
                let set = ["attn_logit_softcapping", "final_logit_softcapping"].into_iter().find(|k| file.get(&key(k)).is_some());
                if let Some(k) = set.or((window > 0).then_some("attention.sliding_window")) {
                    return Err(Error::Config(format!("{} is set: the engine does not implement it for {}", key(k), arch.name())));
                }
                Traits::default()
            }
        };
        if u32_or("rope.dimension_count", head_dim)? != head_dim {
            return Err(Error::Config(format!(
                "{} is not the head dim {head_dim}: partial rotary embeddings are not supported",
                key("rope.dimension_count")
            )));
        }
        if let Some(t) = ["rope_factors_long.weight", "rope_factors_short.weight"].into_iter().find(|t| file.has_tensor(t)) {
            return Err(Error::Config(format!("tensor {t} is present: LongRoPE scaling is not supported")));
        }
        let (norm_eps, rope_theta, rope_scaling) = if arch.is_llama_block() {
            let theta = match file.get(&key("rope.freq_base")) {
                Some(_) => file.get_f32(&key("rope.freq_base"))?,
                None => 10000.0,
            };
            match file.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
                None | Some("none") => {}
                Some(other) => return Err(Error::Config(format!("RoPE scaling {other:?} is not supported (none, or llama3 as rope_freqs)"))),
            }
            let scaling = match file.has_tensor("rope_freqs.weight") {
                true => RopeScaling::Llama3 { divisors: file.tensor("rope_freqs.weight")?.to_f32() },
                false => RopeScaling::None,
            };
            (file.get_f32(&key("attention.layer_norm_rms_epsilon"))?, theta, scaling)
        } else {
            (file.get_f32(&key("attention.layer_norm_epsilon"))?, 0.0, RopeScaling::None)
        };
        let config = Config {
            arch,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: file.get_u32(&key("feed_forward_length"))? as usize,
            vocab_size,
            context: file.get_u32(&key("context_length"))? as usize,
            norm_eps,
            rope_theta,
            rope_scaling,
            faults: Vec::new(),
            // llama.cpp's converter permutes Llama's Q/K rows so RoPE pairs adjacent dimensions;
            // the others' it leaves alone (llama.cpp rotates them as halves, "NEOX" style).
            rope_layout: match arch {
                Arch::Llama => RopeLayout::Interleaved,
                Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma2 | Arch::Phi3 | Arch::Gpt2 => RopeLayout::HalfSplit,
            },
            traits,
        };
        config.validate()
    }

    /// Reads an HF `config.json` (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM or
    /// GPT2LMHeadModel).
    pub fn from_hf(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let json: Json =
            serde_json::from_str(&text).map_err(|e| Error::Format { path: path.to_path_buf(), format: "config.json", reason: e.to_string() })?;
        let get = |k: &str| json.get(k).filter(|v| !v.is_null());
        let usize_of = |k: &str| -> Result<usize> {
            get(k)
                .and_then(Json::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| Error::Config(format!("{}: missing or non-integer {k:?}", path.display())))
        };
        let f32_of = |k: &str| get(k).and_then(Json::as_f64).map(|v| v as f32);
        let refuse = |what: String| Err(Error::Config(format!("{}: {what}", path.display())));
        let model_type = get("model_type").and_then(Json::as_str).unwrap_or("");
        // Mistral is the Llama block (llama.cpp's converter writes it as `llama`); v0.1's sliding
        // window llama.cpp drops, and no reference here would check ours.
        if model_type == "mistral" && get("sliding_window").is_some() {
            return refuse("a mistral model with sliding_window set is not supported (v0.2 and later have none)".into());
        }
        let Some(arch) = Arch::from_name(model_type).or((model_type == "mistral").then_some(Arch::Llama)) else {
            return refuse(format!("model_type {model_type:?} is not supported ({}, mistral)", Arch::known()));
        };
        let config = if arch.is_llama_block() {
            let n_heads = usize_of("num_attention_heads")?;
            let d_model = usize_of("hidden_size")?;
            let head_dim = usize_of("head_dim").unwrap_or(d_model.checked_div(n_heads).unwrap_or(0));
            if get("mlp_bias").and_then(Json::as_bool) == Some(true) {
                return refuse("mlp_bias is set: the engine does not implement FFN biases".into());
            }
            if get("use_sliding_window").and_then(Json::as_bool) == Some(true) {
                return refuse("use_sliding_window is set: the engine does not implement sliding-window attention".into());
            }
            let n_layers = usize_of("num_hidden_layers")?;
            let traits = match arch {
                Arch::Gemma2 => {
                    let act = get("hidden_activation").or_else(|| get("hidden_act")).and_then(Json::as_str).unwrap_or("gelu_pytorch_tanh");
                    if act != "gelu_pytorch_tanh" {
                        return refuse(format!("hidden_activation {act:?} is not supported for gemma2 (gelu_pytorch_tanh)"));
                    }
                    let window = match (get("sliding_window").and_then(Json::as_u64), get("layer_types").and_then(Json::as_array)) {
                        (None, _) => None,
                        (Some(size), None) => Some(SlidingWindow { size: size as usize, layers: (0..n_layers).map(|l| l % 2 == 0).collect() }),
                        (Some(size), Some(types)) => {
                            let layers: Vec<bool> = types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect();
                            if layers.len() != n_layers {
                                return refuse(format!("layer_types has {} entries for {n_layers} layers", layers.len()));
                            }
                            Some(SlidingWindow { size: size as usize, layers })
                        }
                    };
                    Traits {
                        scaled_embedding: true,
                        gelu_gate: true,
                        attn_scale: Some(f32_of("query_pre_attn_scalar").unwrap_or(head_dim as f32).powf(-0.5)),
                        attn_softcap: f32_of("attn_logit_softcapping"),
                        final_softcap: f32_of("final_logit_softcapping"),
                        window,
                    }
                }
                _ => {
                    if get("sliding_window").is_some() && arch == Arch::Phi3 {
                        return refuse("sliding_window is set: the engine does not implement it for phi3".into());
                    }
                    Traits::default()
                }
            };
            // transformers 5 moved rope_theta and the scaling into rope_parameters; 4 had rope_scaling.
            let rope = get("rope_parameters").or_else(|| get("rope_scaling"));
            let rotary = f32_of("partial_rotary_factor")
                .or_else(|| rope.and_then(|r| r.get("partial_rotary_factor")).and_then(Json::as_f64).map(|v| v as f32));
            if rotary.is_some_and(|f| f != 1.0) {
                return refuse(format!("partial_rotary_factor {} is not supported (1.0)", rotary.unwrap_or(1.0)));
            }
            let theta =
                f32_of("rope_theta").or_else(|| rope.and_then(|r| r.get("rope_theta")).and_then(Json::as_f64).map(|v| v as f32)).unwrap_or(10000.0);
            let rope_scaling = match rope.and_then(|r| r.get("rope_type").or_else(|| r.get("type"))).and_then(Json::as_str) {
                None | Some("default") => RopeScaling::None,
                Some("llama3") => {
                    let param = |k: &str| {
                        rope.and_then(|r| r.get(k))
                            .and_then(Json::as_f64)
                            .ok_or_else(|| Error::Config(format!("{}: llama3 RoPE scaling without {k:?}", path.display())))
                    };
                    let llama3 = Llama3Scaling {
                        factor: param("factor")?,
                        low_freq_factor: param("low_freq_factor")?,
                        high_freq_factor: param("high_freq_factor")?,
                        original_context: param("original_max_position_embeddings")?,
                    };
                    RopeScaling::Llama3 { divisors: llama3.divisors(theta, head_dim) }
                }
                Some(other) => return refuse(format!("RoPE scaling {other:?} is not supported (default, llama3)")),
            };
            Config {
                arch,
                n_layers,
                d_model,
                n_heads,
                n_kv_heads: usize_of("num_key_value_heads").unwrap_or(n_heads),
                head_dim,
                ffn_dim: usize_of("intermediate_size")?,
                vocab_size: usize_of("vocab_size")?,
                context: usize_of("max_position_embeddings")?,
                norm_eps: f32_of("rms_norm_eps").unwrap_or(1e-6),
                rope_theta: theta,
                rope_scaling,
                rope_layout: RopeLayout::HalfSplit,
                traits,
                faults: Vec::new(),
            }
        } else {
            let d_model = usize_of("n_embd")?;
            let n_heads = usize_of("n_head")?;
            Config {
                arch: Arch::Gpt2,
                n_layers: usize_of("n_layer")?,
                d_model,
                n_heads,
                n_kv_heads: n_heads,
                head_dim: d_model.checked_div(n_heads).unwrap_or(0),
                ffn_dim: usize_of("n_inner").unwrap_or(4 * d_model),
                vocab_size: usize_of("vocab_size")?,
                context: usize_of("n_positions")?,
                norm_eps: f32_of("layer_norm_epsilon").unwrap_or(1e-5),
                rope_theta: 0.0,
                rope_scaling: RopeScaling::None,
                rope_layout: RopeLayout::HalfSplit,
                traits: Traits::default(),
                faults: Vec::new(),
            }
        };
        config.validate()
    }

    /// The mechanisms this model uses, each of which the engine implements (anything else is
    /// refused when the model is read).
    pub fn mechanisms(&self, weights: WeightFacts) -> Vec<Mechanism> {
        use Mechanism::*;
        let t = &self.traits;
        let mut out = match self.arch {
            Arch::Gpt2 => vec![LayerNorm, LearnedPositions, Gelu],
            Arch::Gemma2 => vec![RmsNorm, NormPlusOne, PostNorms, Rope, GeGlu],
            Arch::Phi3 => vec![RmsNorm, Rope, SwiGlu, FusedQkv, FusedGateUp],
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => vec![RmsNorm, Rope, SwiGlu],
        };
        let flags = [
            (t.scaled_embedding, ScaledEmbedding),
            (t.attn_softcap.is_some(), AttnSoftcap),
            (t.final_softcap.is_some(), FinalSoftcap),
            (t.window.is_some(), WindowedAttention),
        ];
        out.extend(flags.into_iter().filter_map(|(on, m)| on.then_some(m)));
        if matches!(self.rope_scaling, RopeScaling::Llama3 { .. }) {
            out.push(RopeLlama3Scaling);
        }
        if self.n_kv_heads < self.n_heads {
            out.push(GroupedQueryAttention);
        }
        if self.q_dim() != self.d_model {
            out.push(WideHeads);
        }
        if self.arch == Arch::Qwen3 {
            out.push(QkNorm);
        }
        if weights.qkv_bias {
            out.push(QkvBias);
        }
        if weights.tied_output {
            out.push(TiedOutput);
        }
        out
    }

    /// Rejects shapes no forward pass can run, before any tensor is touched.
    fn validate(self) -> Result<Config> {
        let bad = |what: String| Err(Error::Config(what));
        if self.n_layers == 0 || self.d_model == 0 || self.n_heads == 0 || self.n_kv_heads == 0 || self.vocab_size == 0 {
            return bad(format!("zero-sized model: {self:?}"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("{} query heads cannot share {} KV heads evenly", self.n_heads, self.n_kv_heads));
        }
        if (self.arch == Arch::Gpt2 && self.q_dim() != self.d_model) || self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dim {} x {} heads does not fit d_model {} (or head dim is odd)", self.head_dim, self.n_heads, self.d_model));
        }
        let t = &self.traits;
        let caps = [t.attn_scale, t.attn_softcap, t.final_softcap];
        if caps.iter().flatten().any(|c| !(c.is_finite() && *c > 0.0))
            || t.window.as_ref().is_some_and(|w| w.size == 0 || w.layers.len() != self.n_layers)
        {
            return bad(format!("attention scale, soft-caps or sliding window out of range: {t:?}"));
        }
        if let RopeScaling::Llama3 { divisors } = &self.rope_scaling {
            if divisors.len() != self.head_dim / 2 || divisors.iter().any(|d| !(d.is_finite() && *d > 0.0)) {
                return bad(format!("RoPE frequency divisors: {} finite positive values needed, found {divisors:?}", self.head_dim / 2));
            }
        }
        const LIMIT: usize = 1 << 20;
        if [self.n_layers, self.d_model, self.head_dim, self.ffn_dim, self.vocab_size, self.context].iter().any(|&v| v > LIMIT * 4) {
            return bad(format!("absurd dimensions: {self:?}"));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0 && self.rope_theta.is_finite()) {
            return bad(format!("norm epsilon {} or rope theta {} is not a finite number", self.norm_eps, self.rope_theta));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plant_reads_back_from_its_own_spelling() {
        for (name, fault) in Fault::SPECS {
            assert_eq!(name.parse::<Fault>(), Ok(fault));
            assert_eq!(fault.to_string(), name);
        }
        let perturb = Fault::Perturb { layer: 3, rel: 1e-4 };
        assert_eq!("perturb:3:1e-4".parse::<Fault>(), Ok(perturb));
        assert_eq!("perturb:3:0.0001".parse::<Fault>(), Ok(perturb));
        assert_eq!(perturb.to_string(), "perturb:3:1e-4");
        assert_eq!(perturb.to_string().parse::<Fault>(), Ok(perturb));
        let wrap = Fault::RopeTableWrap { positions: 4096 };
        assert_eq!("rope-wrap:4096".parse::<Fault>(), Ok(wrap));
        assert_eq!(wrap.to_string(), "rope-wrap:4096");
        let eps = Fault::NormEpsilonAt { layer: 17, times: 10.0 };
        assert_eq!("norm-eps-at:17:10".parse::<Fault>(), Ok(eps));
        assert_eq!(eps.to_string().parse::<Fault>(), Ok(eps));
    }

    #[test]
    fn a_per_layer_epsilon_plant_changes_that_layer_only() {
        let mut c =
            Config::from_hf(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/models/tiny-llama/hf/config.json"))).unwrap();
        let eps = c.eps();
        c.faults.push(Fault::NormEpsilonAt { layer: 1, times: 100.0 });
        assert_eq!((c.layer_eps(0), c.layer_eps(2)), (eps, eps));
        assert_eq!(c.layer_eps(1), if cfg!(feature = "fault-injection") { eps * 100.0 } else { eps });
    }

    #[test]
    fn a_bad_plant_spec_is_refused_with_the_reason() {
        let err = |s: &str| s.parse::<Fault>().unwrap_err();
        assert!(err("gelu").starts_with("unknown plant \"gelu\" (known: norm-eps, "), "{}", err("gelu"));
        assert!(err("gelu").ends_with("perturb:LAYER:REL, perturb-ffn:LAYER:REL, norm-eps-at:LAYER:TIMES, rope-wrap:POSITIONS)"));
        assert!(err("rope-wrap:0").contains("above 0"));
        assert!(err("rope-wrap:x").contains("whole number of positions"));
        assert!(err("norm-eps-at:17").contains("needs a layer and a number"));
        assert!(err("norm-eps-at:17:0").contains("above 0"));
        assert!(err("perturb:3").contains("needs a layer and a relative size"));
        assert!(err("perturb:x:1e-4").contains("not a whole number"));
        assert!(err("perturb:3:big").contains("not a number"));
        for bad in ["perturb:3:0", "perturb:3:-1e-3", "perturb:3:inf", "perturb:3:NaN"] {
            assert!(err(bad).contains("above 0"), "{bad}: {}", err(bad));
        }
    }
}

#[cfg(test)]
mod family_tests {
    use super::*;

    #[test]
    fn llama3_divisors_keep_high_frequencies_scale_low_ones_and_blend_between() {
        // theta 500000, hd 64, original context 128, factor 8, low 1, high 4: the wavelength of
        // pair i is 2 pi * 500000^(i/32). Pair 0: 6.28 < 128/4 = 32, kept (1). Pair 31: about
        // 1.4e6 > 128, scaled by 8. Pair 5: 2 pi * 500000^(5/32) = 48.83, between: s = (128/48.83
        // - 1) / 3 = 0.5405, divisor 1 / ((1 - s) / 8 + s) = 1.6723.
        let s = Llama3Scaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_context: 128.0 };
        let d = s.divisors(500000.0, 64);
        assert_eq!(d.len(), 32);
        assert_eq!((d[0], d[31]), (1.0, 8.0));
        assert!((d[5] - 1.6723).abs() < 1e-3, "{}", d[5]);
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "divisors grow with the wavelength: {d:?}");
    }

    #[test]
    fn unsupported_rope_scaling_and_model_types_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("parity-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let refused = |json: &str| {
            std::fs::write(&path, json).unwrap();
            Config::from_hf(&path).unwrap_err().to_string()
        };
        let llama = r#""hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 128, "vocab_size": 10, "max_position_embeddings": 64"#;
        let yarn = refused(&format!(r#"{{"model_type": "llama", {llama}, "rope_scaling": {{"rope_type": "yarn", "factor": 4.0}}}}"#));
        assert!(yarn.contains("RoPE scaling \"yarn\" is not supported"), "{yarn}");
        let falcon = refused(&format!(r#"{{"model_type": "falcon", {llama}}}"#));
        assert!(falcon.contains("model_type \"falcon\" is not supported (llama, qwen2, qwen3, gemma2, phi3, gpt2, mistral)"), "{falcon}");
        let mistral = refused(&format!(r#"{{"model_type": "mistral", {llama}, "sliding_window": 4096}}"#));
        assert!(mistral.contains("mistral model with sliding_window set is not supported"), "{mistral}");
        let window = refused(&format!(r#"{{"model_type": "qwen2", {llama}, "use_sliding_window": true}}"#));
        assert!(window.contains("sliding-window attention"), "{window}");
        let phi_window = refused(&format!(r#"{{"model_type": "phi3", {llama}, "sliding_window": 2047}}"#));
        assert!(phi_window.contains("sliding_window is set: the engine does not implement it for phi3"), "{phi_window}");
        let partial = refused(&format!(r#"{{"model_type": "phi3", {llama}, "partial_rotary_factor": 0.75}}"#));
        assert!(partial.contains("partial_rotary_factor 0.75 is not supported"), "{partial}");
        let erf = refused(&format!(r#"{{"model_type": "gemma2", {llama}, "hidden_activation": "gelu"}}"#));
        assert!(erf.contains("hidden_activation \"gelu\" is not supported for gemma2"), "{erf}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The family model `name` in the parity cache (scripts/make-family-models.py), if made.
    fn family_model(name: &str) -> Option<std::path::PathBuf> {
        let cache = std::env::var_os("PARITY_CACHE")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/parity")));
        let dir = cache.map(|c| c.join("models/families").join(name)).filter(|d| d.join("model-f32.gguf").is_file());
        if dir.is_none() {
            assert!(std::env::var_os("PARITY_REQUIRE_REFERENCES").is_none(), "no {name} family model: run scripts/make-family-models.py");
            eprintln!("skipped: no {name} family model");
        }
        dir
    }

    /// Gemma-2's departures as llama.cpp's converter wrote them and as config.json has them
    /// (scripts/make-family-models.py: window 8 on even layers, caps 0.5 and 1.0,
    /// query_pre_attn_scalar 128 = head dim, so both scales are 128^-1/2).
    #[test]
    fn gemma2_traits_read_alike_from_gguf_and_hf() {
        let Some(dir) = family_model("gemma2") else { return };
        let file = GgufFile::open(&dir.join("model-f32.gguf")).unwrap();
        let gguf = Config::from_gguf(&file, 32000).unwrap();
        let hf = Config::from_hf(&dir.join("hf/config.json")).unwrap();
        let window = SlidingWindow { size: 8, layers: vec![true, false, true, false] };
        let want = Traits {
            scaled_embedding: true,
            gelu_gate: true,
            attn_scale: None,
            attn_softcap: Some(0.5),
            final_softcap: Some(1.0),
            window: Some(window),
        };
        assert_eq!(gguf.traits, want);
        assert_eq!(hf.traits, Traits { attn_scale: Some(128f32.powf(-0.5)), ..want });
        assert_eq!(gguf.heads(0).scale, hf.heads(0).scale);
        assert_eq!((gguf.heads(0).window, gguf.heads(1).window), (Some(8), None));
        assert_eq!((gguf.rope_layout, hf.rope_layout), (RopeLayout::HalfSplit, RopeLayout::HalfSplit));
    }

    /// llama.cpp's converter wrote the divisors it computed into the Llama-3 family file
    /// (`rope_freqs.weight`); the engine computes them from the HF folder's config.
    #[test]
    fn llama3_divisors_from_hf_config_equal_the_converters() {
        let cache = std::env::var_os("PARITY_CACHE")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/parity")));
        let Some(dir) = cache.map(|c| c.join("models/families/llama3")).filter(|d| d.join("model-f32.gguf").is_file()) else {
            assert!(std::env::var_os("PARITY_REQUIRE_REFERENCES").is_none(), "no Llama-3 family model: run scripts/make-family-models.py");
            return eprintln!("skipped: no Llama-3 family model");
        };
        let file = GgufFile::open(&dir.join("model-f32.gguf")).unwrap();
        let from_gguf = Config::from_gguf(&file, 128256).unwrap().rope_scaling;
        let from_hf = Config::from_hf(&dir.join("hf/config.json")).unwrap().rope_scaling;
        let (RopeScaling::Llama3 { divisors: a }, RopeScaling::Llama3 { divisors: b }) = (from_gguf, from_hf) else {
            panic!("both should carry Llama 3 scaling")
        };
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-6 * x, "pair {i}: converter {x}, engine {y}");
        }
    }
}
