//! `parity inspect`: what a model file holds (architecture, hyperparameters, tensors).

use anyhow::{Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use engine::config::Mechanism;
use engine::gguf::GgufFile;
use engine::{Config, Model};
use std::path::Path;

pub fn run(path: &Path) -> Result<()> {
    if path.is_dir() {
        let model = Model::load(path).with_context(|| format!("loading {}", path.display()))?;
        print_config(model.config(), &model.mechanisms());
        let store = engine::safetensors::SafeTensors::open(path)?;
        let mut table = tensor_table();
        for name in store.names() {
            let t = store.tensor(&name)?;
            table.add_row(vec![name, t.dtype.name().to_string(), format!("{:?}", t.shape), human_bytes(t.bytes.as_slice().len() as u64)]);
        }
        println!("{table}");
        return Ok(());
    }
    let file = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
    // The mechanisms come from the loaded model (its weights say which biases and outputs it has).
    match Model::load(path) {
        Ok(model) => print_config(model.config(), &model.mechanisms()),
        Err(e) => println!("architecture: {}: not supported by the engine ({e})", file.architecture().unwrap_or("unknown")),
    }
    let mut meta = Table::new();
    meta.load_preset(UTF8_FULL_CONDENSED).set_header(vec!["metadata key", "value"]);
    for (key, value) in file.metadata() {
        let mut shown = format!("{value:?}");
        if shown.len() > 80 {
            shown = format!("{}... ({} chars)", &shown[..shown.char_indices().nth(77).map_or(shown.len(), |(i, _)| i)], shown.len());
        }
        meta.add_row(vec![key.clone(), shown]);
    }
    println!("{meta}");
    let mut table = tensor_table();
    let mut total = 0u64;
    for t in file.tensor_infos() {
        total += t.n_bytes as u64;
        table.add_row(vec![t.name.clone(), t.type_name.clone(), format!("{:?}", t.shape), human_bytes(t.n_bytes as u64)]);
    }
    println!("{table}");
    println!("{} tensors, {}", file.tensor_infos().len(), human_bytes(total));
    Ok(())
}

fn print_config(c: &Config, mechanisms: &[Mechanism]) {
    println!(
        "architecture: {}  layers: {}  d_model: {}  heads: {} (kv {})  head_dim: {}  ffn: {}  vocab: {}  context: {}  norm_eps: {:e}  rope_theta: {}",
        c.arch.name(),
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.ffn_dim,
        c.vocab_size,
        c.context,
        c.norm_eps,
        c.rope_theta
    );
    let names: Vec<&str> = mechanisms.iter().map(|m| m.describe()).collect();
    println!("mechanisms (all implemented by the engine): {}", names.join(", "));
}

fn tensor_table() -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(vec!["tensor", "type", "shape", "size"]);
    t
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
