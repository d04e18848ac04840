//! `parity diff`: one checkpoint in depth, for the engineer chasing where the engine goes wrong.

use super::select::Selection;
use anyhow::{bail, Context, Result};
use harness::catalog::Entry;
use harness::compare;
use harness::dumps::{Dump, Lookup};
use harness::pipeline::CaseRun;
use harness::replay;
use harness::tensor::{Tensor, Values};
use reports::vocab::TensorName;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// A checkpoint name (`attn_probs`, `qkv`) or tensor name (`q`, `k_cache`).
    #[arg(long)]
    pub checkpoint: String,
    /// The layer, for per-layer checkpoints (default 0).
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    /// The reference (or the truth) to compare with (default: the case's first reference).
    #[arg(long = "ref")]
    pub reference: Option<String>,
    /// How many of the worst elements to list.
    #[arg(long, default_value_t = 10)]
    pub worst: usize,
}

pub fn run(args: DiffArgs, root: &Path) -> Result<i32> {
    let mut loaded = args.selection.load(root)?;
    // One case: the first the selection names (pick others with --model/--prompt or --shard).
    loaded.cases.truncate(1);
    let (results, runs) = loaded.run("diff", None)?;
    let run = runs.first().context("the selection holds no case")?;
    let reference = args.reference.clone().or_else(|| run.case.refs.first().cloned()).context("the case has no reference")?;
    let dump = match run.dumps.iter().chain(&run.truth).find(|(r, _)| *r == reference) {
        Some((_, Ok(d))) => d,
        Some((_, Err(e))) => bail!("{reference}: {e}"),
        None => bail!("{reference} is not a reference of {} (it has {:?})", run.case.model.id, run.case.refs),
    };
    let model = engine::Model::load(&run.model_path)?;
    let entries = loaded.catalog.entries(model.config().arch.name(), model.config().n_layers);
    let wanted: Vec<&Entry> = entries
        .iter()
        .filter(|e| (e.checkpoint == args.checkpoint || e.tensor == args.checkpoint) && e.layer.is_none_or(|l| l == args.layer))
        .collect();
    if wanted.is_empty() {
        bail!("no checkpoint or tensor {:?} at layer {} (names are in checkpoints/catalog.toml)", args.checkpoint, args.layer);
    }
    let subject = loaded.subject.name();
    println!("{} / {}: {subject} against {} ({})", run.case.model.id, run.case.prompt.id, reference, dump.manifest.version);
    let checks = results.cases.iter().filter(|c| c.reference == reference).flat_map(|c| &c.checks);
    // Made here or inherited: the layer run on the reference's own input (parity replay).
    let layers = if wanted.iter().any(|e| e.layer.is_some()) { replay::layers(&model, Some(args.layer))? } else { Vec::new() };
    let replayed = replay::replay_case(&model, run, &entries, &loaded.spec, &layers)?;
    let check_failed = |key: &str| checks.clone().any(|c| c.key == key && c.status.is_failure());
    for entry in wanted {
        println!();
        println!("== checkpoint {} {}: {}", entry.checkpoint_id, entry.checkpoint, entry.key);
        if let Some(check) = checks.clone().find(|c| c.key == entry.key) {
            println!("status: {}{}", reports::summary::status_name(check.status), check.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default());
            for j in &check.judgements {
                println!(
                    "  judged  {:<15} {:>12.4e} {} {:.4e}  margin {}",
                    j.metric,
                    j.value,
                    j.op,
                    j.threshold,
                    reports::summary::margin_text(j.margin)
                );
            }
        }
        let Some((eng, refv, shape)) = f32_pair(run, dump, &entry.key) else {
            println!("(ids or missing on one side: see the status above)");
            continue;
        };
        let metrics = compare::f32_metrics(&refv, eng, TensorName::is_probability(&entry.tensor));
        for (name, value) in &metrics {
            println!("  metric  {name:<15} {value:>12.4e}");
        }
        let axes = axis_names(&loaded.catalog, &entry.tensor);
        println!("worst elements:");
        for w in compare::worst_elements(&refv, eng, &shape, args.worst) {
            let at: Vec<String> = w.index.iter().zip(&axes).map(|(i, a)| format!("{a} {i}")).collect();
            println!("  [{}] reference {:>12.6} {subject} {:>12.6} |error| {:.3e}", at.join(", "), w.reference, w.engine, w.abs_error);
        }
        let errors: Vec<f64> = refv.iter().zip(eng).map(|(r, e)| (*e as f64 - *r as f64).abs()).collect();
        let h = compare::histogram(&errors);
        println!("|error| histogram: exact {}{}", h.exact, if h.non_finite > 0 { format!(", non-finite {}", h.non_finite) } else { String::new() });
        for (decade, count) in &h.decades {
            println!("  [1e{decade}, 1e{}) {count:>8} {}", decade + 1, "#".repeat(((*count as f64).log2().max(0.0) as usize) + 1));
        }
        match entry.layer.and_then(|_| replayed.sides.iter().find(|s| s.reference == reference)?.cells.iter().find(|c| c.own.key == entry.key)) {
            Some(cell) => {
                let rms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3e}"));
                let verdict = if cell.own.status.is_failure() {
                    "made here: the layer's own error exceeds the noise"
                } else if check_failed(&entry.key) {
                    "inherited: the layer's own error is within the noise"
                } else {
                    "within the noise, own and inherited"
                };
                println!(
                    "origin: {verdict} (relative RMS {} replayed on {reference}'s input to layer {}, {} in the plain run; parity replay shows every layer)",
                    rms(cell.own_rms),
                    args.layer,
                    rms(cell.inherited_rms)
                );
            }
            None => println!("origin: not a layer's checkpoint (parity replay covers the layers)"),
        }
    }
    Ok(0)
}

/// Both sides' values of an f32 tensor with equal shapes.
fn f32_pair<'a>(run: &'a CaseRun, dump: &Dump, key: &str) -> Option<(&'a [f32], Vec<f32>, Vec<usize>)> {
    let eng = run.subject.get(key)?;
    let Ok(Lookup::Tensor(Tensor { shape, values: Values::F32(r) })) = dump.get(key) else {
        return None;
    };
    match &eng.values {
        Values::F32(e) if eng.shape == shape && !e.is_empty() => Some((e, r, shape)),
        _ => None,
    }
}

/// Readable names of a catalog tensor's axes, from its shape symbols.
fn axis_names(catalog: &harness::catalog::Catalog, tensor: &str) -> Vec<String> {
    let Some(spec) = catalog.tensor(tensor) else {
        return Vec::new();
    };
    spec.shape
        .iter()
        .map(|s| {
            match s.as_str() {
                "T" => "token",
                "d" | "H*hd" | "KV*hd" => "channel",
                "H" => "head",
                "KV" => "kv head",
                "hd" => "dim",
                "V" => "vocab id",
                "N" => "step",
                other => other,
            }
            .to_string()
        })
        .collect()
}
