//! The checkpoint catalog (`checkpoints/catalog.toml`), read at run time, and the list of dump keys
//! a given model should produce, in the order a forward pass produces them.

use reports::vocab::TensorName;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Catalog tensors the harness treats specially, as keys: the decode path's logits (read as
/// evidence for token flips, recomputed by one prefill) and the sampling checkpoint's two tensors
/// (judged knowing where the samplers' cuts are). Spelled by the vocabulary.
pub const STEP_LOGITS: &str = TensorName::StepLogits.as_str();
pub const SAMPLER_PROBS: &str = TensorName::SamplerProbs.as_str();
pub const SAMPLED: &str = TensorName::Sampled.as_str();

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("catalog {origin} is not valid TOML for the catalog schema: {source}")]
    Parse { origin: String, source: toml::de::Error },
    #[error("catalog {origin}: {problem}")]
    Invalid { origin: String, problem: String },
    #[error("tensor {key}: shape symbol {symbol:?} is not one of T, d, H, KV, hd, V, N, S, samplers, draws or an integer")]
    UnknownSymbol { key: String, symbol: String },
    #[error("tensor {key}: shape term {term:?} overflows")]
    Overflow { key: String, term: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub id: u32,
    pub name: String,
    pub about: String,
    pub tensors: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Model,
    Layer,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub scope: Scope,
    /// `Some("id")` for token ids; absent for f32.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Symbolic dimensions: `"T"`, `"H*hd"`.
    pub shape: Vec<String>,
    /// The architectures that have this tensor; absent means all.
    #[serde(default)]
    pub arch: Option<Vec<String>>,
}

impl TensorSpec {
    pub fn is_ids(&self) -> bool {
        self.dtype.as_deref() == Some("id")
    }

    pub fn applies_to(&self, arch: &str) -> bool {
        self.arch.as_ref().is_none_or(|list| list.iter().any(|a| a == arch))
    }
}

/// The `sampling` checkpoint's shared noise stream: its seed, and the draws per sampler.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub seed: u64,
    pub draws: usize,
}

/// One sampler the `sampling` checkpoint runs (the engine's copy is generated from the same table).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSpec {
    pub name: String,
    pub temperature: f32,
    #[serde(default)]
    pub top_k: usize,
    #[serde(default = "keep_all")]
    pub top_p: f32,
}

fn keep_all() -> f32 {
    1.0
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(rename = "checkpoint")]
    pub checkpoints: Vec<Checkpoint>,
    #[serde(rename = "tensor")]
    pub tensors: Vec<TensorSpec>,
    /// Absent in a catalog without samplers.
    #[serde(default)]
    pub sampling: Option<Sampling>,
    #[serde(default, rename = "sampler")]
    pub samplers: Vec<SamplerSpec>,
}

/// One dump key of one model: `blk.3.attn_probs` with its catalog tensor and checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub tensor: String,
    pub layer: Option<usize>,
    pub checkpoint_id: u32,
    pub checkpoint: String,
    pub is_ids: bool,
    /// The model family (`arch`) it was listed for, which picks the family's tolerances.
    pub arch: String,
}

/// The model's dimensions the catalog's shape symbols stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Prompt tokens.
    pub t: usize,
    /// Hidden size.
    pub d: usize,
    /// Query heads.
    pub h: usize,
    /// Key/value heads.
    pub kv: usize,
    /// Head dim.
    pub hd: usize,
    /// Vocabulary size.
    pub v: usize,
    /// Generated tokens.
    pub n: usize,
    /// The catalog's samplers.
    pub samplers: usize,
    /// Draws per sampler.
    pub draws: usize,
}

impl Dims {
    /// `S`: how many decode steps have layer taps (`decode_layers`), [`engine::tap::decode_steps`].
    pub fn decode_steps(&self) -> usize {
        engine::tap::decode_steps(self.n).len()
    }
}

impl Catalog {
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io { path: path.to_path_buf(), source })?;
        Catalog::parse(&text, &path.display().to_string())
    }

    /// Parses and checks the catalog: ids ascending and unique, every tensor in exactly one checkpoint.
    pub fn parse(text: &str, origin: &str) -> Result<Catalog, CatalogError> {
        let catalog: Catalog = toml::from_str(text).map_err(|source| CatalogError::Parse { origin: origin.to_string(), source })?;
        let invalid = |problem: String| CatalogError::Invalid { origin: origin.to_string(), problem };
        if catalog.checkpoints.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err(invalid("checkpoint ids must be unique and ascending".into()));
        }
        for t in &catalog.tensors {
            let homes = catalog.checkpoints.iter().filter(|c| c.tensors.contains(&t.name)).count();
            if homes != 1 {
                return Err(invalid(format!("tensor {:?} belongs to {homes} checkpoints (must be exactly 1)", t.name)));
            }
        }
        if !catalog.samplers.is_empty() && catalog.sampling.is_none() {
            return Err(invalid("[[sampler]] entries need a [sampling] table (seed, draws)".into()));
        }
        for c in &catalog.checkpoints {
            if let Some(name) = c.tensors.iter().find(|n| catalog.tensor(n).is_none()) {
                return Err(invalid(format!("checkpoint {:?} lists {name:?}, which has no [[tensor]] entry", c.name)));
            }
        }
        Ok(catalog)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn checkpoint(&self, name: &str) -> Option<&Checkpoint> {
        self.checkpoints.iter().find(|c| c.name == name)
    }

    /// Every key a model of `arch` with `n_layers` layers should produce, in forward order. The
    /// catalog's checkpoints fall into passes: a pass is a run of checkpoints with per-layer
    /// tensors and the model-scope tensors that follow them up to the next per-layer one. Per pass,
    /// its layers in turn (each with its per-layer tensors in checkpoint order), then its
    /// model-scope tensors; model-scope tensors before the first pass come first. So: embeddings;
    /// the prompt's layers, then final_norm, logits, ..., probs; the decode steps' layers
    /// (`decode_layers`), then generated and step_logits. A decode step runs after the whole
    /// prompt (its cache, its chosen token), so its layers come after the prompt's head. Bisect
    /// walks this order to find where an error first appears.
    pub fn entries(&self, arch: &str, n_layers: usize) -> Vec<Entry> {
        // (per-layer tensors, model-scope tensors after them) of each pass, after `before`.
        type Pass<'c> = (Vec<(&'c Checkpoint, &'c TensorSpec)>, Vec<(&'c Checkpoint, &'c TensorSpec)>);
        let mut before = Vec::new();
        let mut passes: Vec<Pass> = Vec::new();
        for c in &self.checkpoints {
            for spec in c.tensors.iter().filter_map(|n| self.tensor(n)).filter(|t| t.applies_to(arch)) {
                match (spec.scope, passes.last_mut()) {
                    (Scope::Model, None) => before.push((c, spec)),
                    (Scope::Model, Some((_, after))) => after.push((c, spec)),
                    (Scope::Layer, Some((layers, after))) if after.is_empty() => layers.push((c, spec)),
                    (Scope::Layer, _) => passes.push((vec![(c, spec)], Vec::new())),
                }
            }
        }
        let entry = |c: &Checkpoint, t: &TensorSpec, layer: Option<usize>| Entry {
            key: match layer {
                Some(l) => format!("blk.{l}.{}", t.name),
                None => t.name.clone(),
            },
            tensor: t.name.clone(),
            layer,
            checkpoint_id: c.id,
            checkpoint: c.name.clone(),
            is_ids: t.is_ids(),
            arch: arch.to_string(),
        };
        let mut out: Vec<Entry> = before.iter().map(|(c, t)| entry(c, t, None)).collect();
        for (per_layer, after) in &passes {
            for layer in 0..n_layers {
                out.extend(per_layer.iter().map(|(c, t)| entry(c, t, Some(layer))));
            }
            out.extend(after.iter().map(|(c, t)| entry(c, t, None)));
        }
        out
    }

    /// The shape the catalog promises for `entry` given the model's dimensions.
    pub fn expected_shape(&self, entry: &Entry, dims: &Dims) -> Result<Vec<usize>, CatalogError> {
        let spec = self
            .tensor(&entry.tensor)
            .ok_or_else(|| CatalogError::Invalid { origin: "catalog".into(), problem: format!("no tensor named {:?}", entry.tensor) })?;
        spec.shape.iter().map(|term| eval_term(term, dims, &entry.key)).collect()
    }
}

/// A sum or difference of products of symbols and integers: `"H*hd"`, `"T"`, `"2*d"`, `"T+N-1"`.
/// A negative result is an overflow like any other.
fn eval_term(term: &str, dims: &Dims, key: &str) -> Result<usize, CatalogError> {
    let overflow = || CatalogError::Overflow { key: key.to_string(), term: term.to_string() };
    // Split before each sign: "T+N-1" -> [(+, "T"), (+, "N"), (-, "1")].
    let mut parts = Vec::new();
    let mut start = 0;
    let mut negative = false;
    for (i, c) in term.char_indices().filter(|(_, c)| matches!(c, '+' | '-')) {
        parts.push((negative, &term[start..i]));
        (negative, start) = (c == '-', i + 1);
    }
    parts.push((negative, &term[start..]));
    let total = parts.into_iter().try_fold(0i128, |acc, (negative, product)| {
        let v = i128::try_from(eval_product(product, dims, key)?).map_err(|_| overflow())?;
        Ok(if negative { acc - v } else { acc + v })
    })?;
    usize::try_from(total).map_err(|_| overflow())
}

/// A product of symbols and integers: `"H*hd"`, `"T"`, `"2*d"`.
fn eval_product(term: &str, dims: &Dims, key: &str) -> Result<usize, CatalogError> {
    term.split('*').map(str::trim).try_fold(1usize, |acc, sym| {
        let v = match sym {
            "T" => dims.t,
            "d" => dims.d,
            "H" => dims.h,
            "KV" => dims.kv,
            "hd" => dims.hd,
            "V" => dims.v,
            "N" => dims.n,
            "S" => dims.decode_steps(),
            "samplers" => dims.samplers,
            "draws" => dims.draws,
            other => other.parse().map_err(|_| CatalogError::UnknownSymbol { key: key.to_string(), symbol: other.to_string() })?,
        };
        acc.checked_mul(v).ok_or_else(|| CatalogError::Overflow { key: key.to_string(), term: term.to_string() })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project_catalog() -> Catalog {
        Catalog::parse(include_str!("../../checkpoints/catalog.toml"), "checkpoints/catalog.toml").unwrap()
    }

    #[test]
    fn the_project_catalog_has_16_checkpoints_and_5_samplers() {
        let c = project_catalog();
        assert_eq!(c.checkpoints.len(), 16);
        assert_eq!(c.checkpoints[12].name, "decode_layers");
        assert_eq!(c.checkpoints[13].name, "generated");
        assert_eq!(c.checkpoints[14].name, "step_logits");
        assert_eq!(c.checkpoints[15].name, "sampling");
        assert_eq!(c.samplers.len(), 5);
        assert_eq!((c.samplers[4].temperature, c.samplers[4].top_k, c.samplers[4].top_p), (1.3, 40, 0.9));
        assert_eq!(c.samplers[0].top_p, 1.0, "top_p defaults to keeping everything");
        assert!(c.tensor("argmax").unwrap().is_ids());
    }

    #[test]
    fn entries_follow_the_forward_pass() {
        let keys: Vec<String> = project_catalog().entries("llama", 2).into_iter().map(|e| e.key).collect();
        let names =
            ["attn_norm", "q", "k", "v", "q_rope", "k_rope", "k_cache", "v_cache", "attn_probs", "attn_out", "ffn_norm", "ffn_out", "block_out"];
        let mut expected = vec!["tokens".to_string(), "embed".to_string()];
        // The prompt's layers and head, then the decode steps' layers, then what they decode, then the samplers.
        for l in 0..2 {
            expected.extend(names.map(|n| format!("blk.{l}.{n}")));
        }
        expected.extend(["final_norm", "logits", "last_logits", "argmax", "probs"].map(String::from));
        for l in 0..2 {
            expected.extend(names.map(|n| format!("blk.{l}.dec_{n}")));
        }
        expected.extend(["generated", "step_logits", "sampler_probs", "sampled"].map(String::from));
        assert_eq!(keys, expected);
    }

    #[test]
    fn gpt2_entries_leave_out_rope() {
        let entries = project_catalog().entries("gpt2", 1);
        assert!(!entries.iter().any(|e| e.tensor.ends_with("q_rope") || e.tensor.ends_with("k_rope")));
        assert_eq!(entries.len(), 2 + 11 + 11 + 9);
        let probs = entries.iter().find(|e| e.key == "blk.0.attn_probs").unwrap();
        assert_eq!((probs.checkpoint_id, probs.checkpoint.as_str(), probs.layer), (4, "attn_probs", Some(0)));
        // Each entry names its family, which picks the family's tolerances.
        assert!(entries.iter().all(|e| e.arch == "gpt2"));
    }

    #[test]
    fn expected_shapes_evaluate_symbol_products() {
        let c = project_catalog();
        let dims = Dims { t: 5, d: 576, h: 9, kv: 3, hd: 64, v: 49152, n: 8, samplers: 5, draws: 8 };
        let shape_of = |key: &str| {
            let e = c.entries("llama", 1).into_iter().find(|e| e.key == key).unwrap();
            c.expected_shape(&e, &dims).unwrap()
        };
        assert_eq!(shape_of("blk.0.q"), vec![5, 576]);
        assert_eq!(shape_of("blk.0.k"), vec![5, 192]);
        assert_eq!(shape_of("blk.0.k_cache"), vec![3, 5, 64]);
        assert_eq!(shape_of("blk.0.attn_probs"), vec![9, 5, 5]);
        assert_eq!(shape_of("argmax"), Vec::<usize>::new());
        assert_eq!(shape_of("generated"), vec![8]);
        assert_eq!(shape_of("sampler_probs"), vec![5, 49152]);
        assert_eq!(shape_of("sampled"), vec![5, 8]);
        // Decode steps 1, 4 and 7 of N = 8; the context after the last is T+N-1 = 12 positions.
        assert_eq!(shape_of("blk.0.dec_q"), vec![3, 576]);
        assert_eq!(shape_of("blk.0.dec_attn_probs"), vec![3, 9, 12]);
        assert_eq!(shape_of("blk.0.dec_k_cache"), vec![3, 3, 12, 64]);
        // N < 2 has no decode step: S = 0.
        let e = c.entries("llama", 1).into_iter().find(|e| e.key == "blk.0.dec_v_cache").unwrap();
        assert_eq!(c.expected_shape(&e, &Dims { n: 1, ..dims }).unwrap(), vec![0, 3, 5, 64]);
    }

    #[test]
    fn shape_terms_add_and_subtract_products() {
        let dims = Dims { t: 5, d: 4, h: 3, kv: 1, hd: 2, v: 10, n: 0, samplers: 5, draws: 8 };
        let eval = |term: &str| eval_term(term, &dims, "k");
        assert_eq!(eval("T+N-1").unwrap(), 4);
        assert_eq!(eval("2*d + H*hd - 1").unwrap(), 13);
        assert_eq!(eval("S").unwrap(), 0);
        assert!(matches!(eval("N-1"), Err(CatalogError::Overflow { .. })));
        assert!(matches!(eval("T+Q"), Err(CatalogError::UnknownSymbol { .. })));
        assert!(matches!(eval("T+"), Err(CatalogError::UnknownSymbol { .. })));
    }

    #[test]
    fn refuses_a_tensor_in_no_checkpoint_and_unknown_symbols() {
        let text = "[[checkpoint]]\nid = 0\nname = \"a\"\nabout = \"\"\ntensors = [\"x\"]\n\
                    [[tensor]]\nname = \"x\"\nscope = \"model\"\nshape = [\"Q\"]\n\
                    [[tensor]]\nname = \"y\"\nscope = \"model\"\nshape = [\"T\"]\n";
        assert!(matches!(Catalog::parse(text, "t"), Err(CatalogError::Invalid { .. })));
        let text = text.replace("[[tensor]]\nname = \"y\"\nscope = \"model\"\nshape = [\"T\"]\n", "");
        let c = Catalog::parse(&text, "t").unwrap();
        let e = &c.entries("llama", 0)[0];
        let dims = Dims { t: 1, d: 1, h: 1, kv: 1, hd: 1, v: 1, n: 1, samplers: 1, draws: 1 };
        assert!(matches!(c.expected_shape(e, &dims), Err(CatalogError::UnknownSymbol { .. })));
    }
}
