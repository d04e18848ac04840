//! Generates the `Tap` enum from `checkpoints/catalog.toml`, so the engine names its checkpoints
//! from the same data the dumpers and the harness read.

use serde::Deserialize;
use std::fmt::Write as _;

#[derive(Deserialize)]
struct Catalog {
    checkpoint: Vec<Checkpoint>,
    tensor: Vec<Tensor>,
    sampling: Sampling,
    sampler: Vec<Sampler>,
}

#[derive(Deserialize)]
struct Sampling {
    seed: u64,
    draws: usize,
}

#[derive(Deserialize)]
struct Sampler {
    name: String,
    temperature: f32,
    #[serde(default)]
    top_k: usize,
    #[serde(default = "all")]
    top_p: f32,
}

fn all() -> f32 {
    1.0
}

#[derive(Deserialize)]
struct Checkpoint {
    id: u32,
    tensors: Vec<String>,
}

#[derive(Deserialize)]
struct Tensor {
    name: String,
    scope: String,
    #[serde(default)]
    dtype: Option<String>,
}

fn camel(name: &str) -> String {
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let path = std::path::Path::new(&manifest).join("../checkpoints/catalog.toml");
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let catalog: Catalog = toml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));

    let checkpoint_of = |tensor: &str| {
        catalog
            .checkpoint
            .iter()
            .find(|c| c.tensors.iter().any(|t| t == tensor))
            .map(|c| c.id)
            .unwrap_or_else(|| panic!("catalog tensor {tensor} belongs to no checkpoint"))
    };

    let mut out = String::new();
    out.push_str("/// A canonical checkpoint tensor, generated from `checkpoints/catalog.toml`.\n");
    out.push_str("#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]\npub enum Tap {\n");
    for t in &catalog.tensor {
        writeln!(out, "    {},", camel(&t.name)).unwrap();
    }
    out.push_str("}\n\nimpl Tap {\n    pub const ALL: &'static [Tap] = &[");
    for t in &catalog.tensor {
        write!(out, "Tap::{}, ", camel(&t.name)).unwrap();
    }
    out.push_str("];\n\n    /// The catalog name (`attn_norm`); per-layer files are `blk.<L>.<name>`.\n");
    out.push_str("    pub const fn name(self) -> &'static str {\n        match self {\n");
    for t in &catalog.tensor {
        writeln!(out, "            Tap::{} => {:?},", camel(&t.name), t.name).unwrap();
    }
    out.push_str("        }\n    }\n\n    /// The checkpoint number (its catalog id) this tensor belongs to.\n");
    out.push_str("    pub const fn checkpoint(self) -> u32 {\n        match self {\n");
    for t in &catalog.tensor {
        writeln!(out, "            Tap::{} => {},", camel(&t.name), checkpoint_of(&t.name)).unwrap();
    }
    out.push_str("        }\n    }\n\n    /// True for tensors recorded once per layer.\n");
    out.push_str("    pub const fn per_layer(self) -> bool {\n        match self {\n");
    for t in &catalog.tensor {
        writeln!(out, "            Tap::{} => {},", camel(&t.name), t.scope == "layer").unwrap();
    }
    out.push_str("        }\n    }\n\n    /// True for tensors of token ids (i64 in dumps); the rest are f32.\n");
    out.push_str("    pub const fn is_ids(self) -> bool {\n        match self {\n");
    for t in &catalog.tensor {
        writeln!(out, "            Tap::{} => {},", camel(&t.name), t.dtype.as_deref() == Some("id")).unwrap();
    }
    out.push_str("        }\n    }\n\n    /// The decode-path tap (`dec_<name>`) a decode step's `<name>` is recorded as, if the catalog has one.\n");
    out.push_str("    pub const fn decoded(self) -> Option<Tap> {\n        match self {\n");
    for t in &catalog.tensor {
        let dec = format!("dec_{}", t.name);
        match catalog.tensor.iter().any(|u| u.name == dec) {
            true => writeln!(out, "            Tap::{} => Some(Tap::{}),", camel(&t.name), camel(&dec)).unwrap(),
            false => writeln!(out, "            Tap::{} => None,", camel(&t.name)).unwrap(),
        }
    }
    out.push_str("        }\n    }\n}\n");

    // The `sampling` checkpoint's samplers, for engine/src/sampling.rs.
    let s = &catalog.sampling;
    let mut samplers = String::new();
    samplers.push_str("/// The noise-stream seed of the `sampling` checkpoint, generated from `checkpoints/catalog.toml`.\n");
    writeln!(samplers, "pub const SAMPLING_SEED: u64 = {};", s.seed).unwrap();
    samplers.push_str("/// Draws per sampler in the `sampling` checkpoint.\n");
    writeln!(samplers, "pub const SAMPLING_DRAWS: usize = {};", s.draws).unwrap();
    samplers.push_str("/// The `sampling` checkpoint's samplers by name, in catalog order.\n");
    samplers.push_str("pub const CATALOG_SAMPLERS: &[(&str, SamplerConfig)] = &[\n");
    for x in &catalog.sampler {
        writeln!(
            samplers,
            "    ({:?}, SamplerConfig {{ temperature: {:?}, top_k: {}, top_p: {:?}, seed: SAMPLING_SEED }}),",
            x.name, x.temperature, x.top_k, x.top_p
        )
        .unwrap();
    }
    samplers.push_str("];\n");

    let dest = std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("tap.rs");
    std::fs::write(dest, out).expect("writing generated tap.rs");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("samplers.rs");
    std::fs::write(dest, samplers).expect("writing generated samplers.rs");
}
