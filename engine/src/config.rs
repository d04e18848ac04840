//! Model hyperparameters, read from GGUF metadata or an HF `config.json`.

use crate::attention::{AttnFaults, Heads};
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::gguf::GgufFile;
use crate::ops::{Rope, RopeLayout};
use crate::sampling::SamplerFaults;
use serde_json::Value as Json;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Gpt2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gpt2 => "gpt2",
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
    /// Llama only.
    pub rope_theta: f32,
    /// How the Q/K rows of these weights pair dimensions for RoPE.
    pub rope_layout: RopeLayout,
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
        Rope::new(layout, self.head_dim, self.rope_theta).wrapping_at(self.rope_table_wrap())
    }

    /// The planted RopeTableWrap fault's table length, if planted.
    fn rope_table_wrap(&self) -> Option<usize> {
        self.faults.iter().find_map(|f| match *f {
            Fault::RopeTableWrap { positions } if cfg!(feature = "fault-injection") => Some(positions),
            _ => None,
        })
    }

    /// Layer `l`'s own RoPE where it differs from [`Config::rope`]: only ever with the planted
    /// RopeThetaOneLayer fault, which gives layer 1 the common default base 10000 (a model
    /// trained with another base loaded with the default), or half of it if it is the default.
    pub fn layer_rope(&self, l: usize) -> Option<Rope> {
        if l != 1 || !self.has_fault(Fault::RopeThetaOneLayer) {
            return None;
        }
        let theta = if self.rope_theta == 10000.0 { 5000.0 } else { 10000.0 };
        Some(Rope::new(self.rope().layout, self.head_dim, theta).wrapping_at(self.rope_table_wrap()))
    }

    /// The sampler's planted bugs, if any.
    pub fn sampler_faults(&self) -> SamplerFaults {
        SamplerFaults {
            temperature_after_softmax: self.has_fault(Fault::TemperatureAfterSoftmax),
            top_p_one_too_few: self.has_fault(Fault::TopPOneTooFew),
        }
    }

    /// The attention shape, with the usual 1/sqrt(head_dim) score scale.
    pub fn heads(&self) -> Heads {
        let scale = if self.has_fault(Fault::MissingAttnScale) { 1.0 } else { 1.0 / (self.head_dim as f32).sqrt() };
        let faults = AttnFaults { softmax_off: self.has_fault(Fault::SoftmaxOff), decode_skips_oldest: self.has_fault(Fault::DecodeAttendsOneFewer) };
        Heads { n_heads: self.n_heads, n_kv_heads: self.n_kv_heads, head_dim: self.head_dim, scale, faults }
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
        let arch = match file.architecture()? {
            "llama" => Arch::Llama,
            "gpt2" => Arch::Gpt2,
            other => return Err(Error::Config(format!("architecture {other:?} is not supported (llama, gpt2)"))),
        };
        let key = |k: &str| format!("{}.{k}", arch.name());
        let n_heads = file.get_u32(&key("attention.head_count"))? as usize;
        let d_model = file.get_u32(&key("embedding_length"))? as usize;
        let n_kv_heads = match file.get(&key("attention.head_count_kv")) {
            Some(_) => file.get_u32(&key("attention.head_count_kv"))? as usize,
            None => n_heads,
        };
        let (norm_eps, rope_theta) = match arch {
            Arch::Llama => {
                let theta = match file.get(&key("rope.freq_base")) {
                    Some(_) => file.get_f32(&key("rope.freq_base"))?,
                    None => 10000.0,
                };
                (file.get_f32(&key("attention.layer_norm_rms_epsilon"))?, theta)
            }
            Arch::Gpt2 => (file.get_f32(&key("attention.layer_norm_epsilon"))?, 0.0),
        };
        let config = Config {
            arch,
            n_layers: file.get_u32(&key("block_count"))? as usize,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim: d_model.checked_div(n_heads).unwrap_or(0),
            ffn_dim: file.get_u32(&key("feed_forward_length"))? as usize,
            vocab_size,
            context: file.get_u32(&key("context_length"))? as usize,
            norm_eps,
            rope_theta,
            // llama.cpp's converter permutes llama Q/K rows so RoPE pairs adjacent dimensions.
            faults: Vec::new(),
            rope_layout: match arch {
                Arch::Llama => RopeLayout::Interleaved,
                Arch::Gpt2 => RopeLayout::HalfSplit,
            },
        };
        config.validate()
    }

    /// Reads an HF `config.json` (LlamaForCausalLM or GPT2LMHeadModel).
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
        let model_type = get("model_type").and_then(Json::as_str).unwrap_or("");
        let config = match model_type {
            "llama" => {
                let n_heads = usize_of("num_attention_heads")?;
                let d_model = usize_of("hidden_size")?;
                // transformers 5 moved rope_theta into rope_parameters.
                let theta = f32_of("rope_theta")
                    .or_else(|| get("rope_parameters").and_then(|r| r.get("rope_theta")).and_then(Json::as_f64).map(|v| v as f32))
                    .unwrap_or(10000.0);
                Config {
                    arch: Arch::Llama,
                    n_layers: usize_of("num_hidden_layers")?,
                    d_model,
                    n_heads,
                    n_kv_heads: usize_of("num_key_value_heads").unwrap_or(n_heads),
                    head_dim: usize_of("head_dim").unwrap_or(d_model.checked_div(n_heads).unwrap_or(0)),
                    ffn_dim: usize_of("intermediate_size")?,
                    vocab_size: usize_of("vocab_size")?,
                    context: usize_of("max_position_embeddings")?,
                    norm_eps: f32_of("rms_norm_eps").unwrap_or(1e-6),
                    rope_theta: theta,
                    rope_layout: RopeLayout::HalfSplit,
                    faults: Vec::new(),
                }
            }
            "gpt2" => {
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
                    rope_layout: RopeLayout::HalfSplit,
                    faults: Vec::new(),
                }
            }
            other => return Err(Error::Config(format!("{}: model_type {other:?} is not supported (llama, gpt2)", path.display()))),
        };
        config.validate()
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
        if self.head_dim * self.n_heads != self.d_model || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dim {} x {} heads does not make d_model {} (or head dim is odd)", self.head_dim, self.n_heads, self.d_model));
        }
        const LIMIT: usize = 1 << 20;
        if [self.n_layers, self.d_model, self.ffn_dim, self.vocab_size, self.context].iter().any(|&v| v > LIMIT * 4) {
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
