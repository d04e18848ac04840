//! Where a model's weights come from: a GGUF file, or an HF folder of safetensors.
//!
//! Both are presented through [`WeightStore`] under GGUF tensor names in Linear `[out, in]`
//! layout, so each architecture has one loading path. HF names are mapped here, and GPT-2's HF
//! Conv1D weights (`[in, out]`) are transposed here.

use crate::config::Arch;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::safetensors::SafeTensors;
use crate::tensor::QTensor;
use std::path::{Path, PathBuf};

/// Weights by GGUF name, shape-checked.
pub trait WeightStore {
    fn tensor(&self, name: &str) -> Result<QTensor>;
    fn has(&self, name: &str) -> bool;

    /// A `[rows, cols]` matrix.
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QTensor> {
        let t = self.tensor(name)?;
        if t.shape != [rows, cols] {
            return Err(Error::Shape { tensor: name.to_string(), expected: vec![rows, cols], found: t.shape.clone() });
        }
        Ok(t)
    }

    /// A `[len]` vector (norm weights, biases), dequantized: these are small.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        if t.shape != [len] {
            return Err(Error::Shape { tensor: name.to_string(), expected: vec![len], found: t.shape.clone() });
        }
        Ok(t.to_f32())
    }
}

impl WeightStore for GgufFile {
    fn tensor(&self, name: &str) -> Result<QTensor> {
        GgufFile::tensor(self, name)
    }

    fn has(&self, name: &str) -> bool {
        self.has_tensor(name)
    }
}

/// An HF checkpoint folder (`config.json` + safetensors) seen through GGUF names.
pub struct HfStore {
    pub arch: Arch,
    pub dir: PathBuf,
    pub files: SafeTensors,
}

impl HfStore {
    pub fn open(dir: &Path, arch: Arch) -> Result<HfStore> {
        Ok(HfStore { arch, dir: dir.to_path_buf(), files: SafeTensors::open(dir)? })
    }

    /// The HF name of a GGUF tensor name, and whether it is stored transposed (Conv1D).
    fn hf_name(&self, name: &str) -> Option<(String, bool)> {
        let (layer, rest) = match name.strip_prefix("blk.") {
            Some(r) => {
                let (l, rest) = r.split_once('.')?;
                (Some(l), rest)
            }
            None => (None, name),
        };
        let (stem, suffix) = rest.rsplit_once('.')?;
        match self.arch {
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma2 | Arch::Phi3 => {
                let base = match (layer, stem) {
                    (None, "token_embd") => "model.embed_tokens".to_string(),
                    (None, "output_norm") => "model.norm".to_string(),
                    (None, "output") => "lm_head".to_string(),
                    (Some(l), s) => {
                        let part = match (self.arch, s) {
                            (Arch::Gemma2, "post_attention_norm") => "post_attention_layernorm",
                            (Arch::Gemma2, "ffn_norm") => "pre_feedforward_layernorm",
                            (Arch::Gemma2, "post_ffw_norm") => "post_feedforward_layernorm",
                            (Arch::Phi3, "attn_qkv") => "self_attn.qkv_proj",
                            (Arch::Phi3, "ffn_up") => "mlp.gate_up_proj",
                            (_, s) => match s {
                                "attn_norm" => "input_layernorm",
                                "attn_q" => "self_attn.q_proj",
                                "attn_k" => "self_attn.k_proj",
                                "attn_v" => "self_attn.v_proj",
                                "attn_q_norm" => "self_attn.q_norm",
                                "attn_k_norm" => "self_attn.k_norm",
                                "attn_output" => "self_attn.o_proj",
                                "ffn_norm" => "post_attention_layernorm",
                                "ffn_gate" => "mlp.gate_proj",
                                "ffn_up" => "mlp.up_proj",
                                "ffn_down" => "mlp.down_proj",
                                _ => return None,
                            },
                        };
                        format!("model.layers.{l}.{part}")
                    }
                    _ => return None,
                };
                Some((format!("{base}.{suffix}"), false))
            }
            Arch::Gpt2 => {
                let (base, conv1d) = match (layer, stem) {
                    (None, "token_embd") => ("wte".to_string(), false),
                    (None, "position_embd") => ("wpe".to_string(), false),
                    (None, "output_norm") => ("ln_f".to_string(), false),
                    (None, "output") => return Some(("lm_head.weight".to_string(), false)),
                    (Some(l), s) => {
                        let (part, conv) = match s {
                            "attn_norm" => ("ln_1", false),
                            "attn_qkv" => ("attn.c_attn", true),
                            "attn_output" => ("attn.c_proj", true),
                            "ffn_norm" => ("ln_2", false),
                            "ffn_up" => ("mlp.c_fc", true),
                            "ffn_down" => ("mlp.c_proj", true),
                            _ => return None,
                        };
                        (format!("h.{l}.{part}"), conv)
                    }
                    _ => return None,
                };
                // Checkpoints saved from GPT2LMHeadModel prefix `transformer.`; GPT2Model's do not.
                let full = format!("transformer.{base}.{suffix}");
                let name = if self.files.contains(&full) { full } else { format!("{base}.{suffix}") };
                Some((name, conv1d && suffix == "weight"))
            }
        }
    }
}

impl WeightStore for HfStore {
    fn tensor(&self, name: &str) -> Result<QTensor> {
        let missing = || Error::MissingTensor { tensor: name.to_string(), path: self.dir.clone(), arch: self.arch.name().to_string() };
        let (hf, transposed) = self.hf_name(name).ok_or_else(missing)?;
        if !self.files.contains(&hf) {
            return Err(Error::MissingTensor { tensor: hf, path: self.dir.clone(), arch: self.arch.name().to_string() });
        }
        let t = self.files.tensor(&hf)?;
        if transposed {
            t.transposed()
        } else if self.arch == Arch::Gemma2 && name.ends_with("norm.weight") {
            // Gemma's RMSNorm scales by 1 + weight; GGUF stores the sum, as the engine reads it.
            QTensor::from_f32(name, t.shape.clone(), &t.to_f32().iter().map(|w| w + 1.0).collect::<Vec<_>>())
        } else {
            Ok(t)
        }
    }

    fn has(&self, name: &str) -> bool {
        self.hf_name(name).is_some_and(|(hf, _)| self.files.contains(&hf))
    }
}
