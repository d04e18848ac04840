//! `parity replay`: every engine layer run on each reference's own input to it, so each layer's
//! own error shows apart from what it inherits; the first layer whose own error exceeds the noise
//! is named as the place to look (harness::replay, docs/replay.md).

use super::select::Selection;
use anyhow::{bail, Context, Result};
use harness::bisect::bisect;
use harness::replay;
use reports::replay::{CaseReplay, SideReplay};
use reports::results::Role;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Replay this layer only (default: every layer).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Whose layer x checkpoint table to print (default: the truth, else the case's first reference).
    #[arg(long = "ref")]
    pub reference: Option<String>,
    /// `text`, or `json` (every side's cells, for scripts and report.html).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    /// Also write report.html of the run, its map panels showing each layer's own error.
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub plant: super::plant::PlantArgs,
}

pub fn run(args: ReplayArgs, root: &Path) -> Result<i32> {
    let faults = args.plant.faults()?;
    if let Some(line) = super::plant::label(&faults) {
        eprintln!("{line}");
    }
    let loaded = args.selection.load(root)?;
    // Replay runs the engine's layers: it judges the engine, never another subject.
    if !loaded.subject.is_engine() {
        bail!("parity replay runs the engine's own layers; --subject {} is not the engine", loaded.subject.name());
    }
    let plant = |m: &mut engine::Model| super::plant::plant_in(&faults, m);
    let (results, runs) = loaded.run("replay", (!faults.is_empty()).then_some(&plant as &dyn Fn(&mut engine::Model)))?;
    for (what, err) in &results.reference_errors {
        eprintln!("reference error: {what}: {err}");
    }
    let mut replays = Vec::new();
    for run in &runs {
        let mut model = engine::Model::load(&run.model_path).with_context(|| format!("reloading {}", run.model_path.display()))?;
        plant(&mut model);
        let layers = replay::layers(&model, args.layer)?;
        let entries = loaded.catalog.entries(model.config().arch.name(), model.config().n_layers);
        let replayed = replay::replay_case(&model, run, &entries, &loaded.spec, &layers)
            .with_context(|| format!("replaying {} / {}", run.case.model.id, run.case.prompt.id))?;
        replays.push(replayed);
    }
    if let Some(name) = &args.reference {
        if !replays.iter().flat_map(|r| &r.sides).any(|s| &s.reference == name) {
            bail!("--ref {name}: no case has a readable dump of it");
        }
    }
    if let Some(path) = &args.html {
        std::fs::write(path, reports::html::render_with(&results, &replays)).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&replays)?);
    } else {
        for replayed in &replays {
            let plain = |name: &str| {
                let found = bisect(&runs, &results, Some(name));
                let first = found.into_iter().find(|b| b.model == replayed.model && b.prompt == replayed.prompt)?.first_failure?;
                Some(first.key)
            };
            print_case(replayed, args.reference.as_deref(), &plain);
        }
    }
    Ok(if replays.iter().any(|r| r.place_to_look().is_some()) {
        1
    } else if results.reference_errors.is_empty() {
        0
    } else {
        3
    })
}

/// One case: each side's first own failure beside the plain run's first failure, one side's
/// layer x checkpoint table, and the place to look.
fn print_case(replayed: &CaseReplay, focus: Option<&str>, plain: &dyn Fn(&str) -> Option<String>) {
    println!("{} / {}: each layer run on each side's own input to it", replayed.model, replayed.prompt);
    println!("  {:<14} {:<30} first failure (plain run)", "side", "first own failure (replay)");
    for side in &replayed.sides {
        let own = side.first_own_failure().map_or("none".to_string(), |c| c.own.key.clone());
        println!("  {:<14} {:<30} {}", side.reference, own, plain(&side.reference).unwrap_or_else(|| "none".into()));
    }
    let shown = match focus {
        Some(name) => replayed.sides.iter().find(|s| s.reference == name),
        None => replayed.sides.iter().find(|s| s.role == Role::Truth).or(replayed.sides.first()),
    };
    if let Some(side) = shown {
        print_table(side);
    }
    match replayed.place_to_look() {
        Some((side, cell)) => {
            let layer = cell.own.layer.map_or("-".into(), |l| l.to_string());
            let failed: Vec<String> =
                cell.own.judgements.iter().filter(|j| !j.pass).map(|j| format!("{} {:.3e} > {:.3e}", j.metric, j.value, j.threshold)).collect();
            println!("place to look: layer {layer} ({}: own error against {}: {})", cell.own.key, side.reference, failed.join(", "));
        }
        None => println!("place to look: none (every layer's own error is within the noise)"),
    }
    println!();
}

/// `side`'s cells as layers x checkpoints: own / inherited error, in one-layer noise floors
/// (relative RMS) when the case has a truth, else as relative RMS; `*` marks an own failure.
fn print_table(side: &SideReplay) {
    let mut tensors: Vec<&str> = Vec::new();
    for c in &side.cells {
        if !tensors.contains(&c.own.tensor.as_str()) {
            tensors.push(&c.own.tensor);
        }
    }
    let in_floors = side.cells.iter().all(|c| c.floor_rms.is_some());
    let unit =
        if in_floors { "one-layer noise floors (relative RMS; a floor under 2^-20 counts as 2^-20)" } else { "relative RMS (no truth: no floor)" };
    println!("  against {}: own error (replay) / inherited error (plain run), in {unit}", side.reference);
    let width = if in_floors { 11 } else { 19 };
    print!("  {:>5}", "layer");
    for t in &tensors {
        print!(" {:>width$}", t.get(..width).unwrap_or(t));
    }
    println!();
    let mut layers: Vec<usize> = side.cells.iter().filter_map(|c| c.own.layer).collect();
    layers.dedup();
    for l in layers {
        print!("  {l:>5}");
        for t in &tensors {
            let text = side.cells.iter().find(|c| c.own.layer == Some(l) && &c.own.tensor == t).map_or(String::new(), |c| {
                let value = |v: Option<f64>| match (v, c.floor_rms) {
                    (Some(v), Some(f)) => format!("{:.1}", v / f.max(harness::noise::FLOOR)),
                    (Some(v), None) => format!("{v:.1e}"),
                    (None, _) => "-".into(),
                };
                format!("{}/{}{}", value(c.own_rms), value(c.inherited_rms), if c.own.status.is_failure() { "*" } else { "" })
            });
            print!(" {text:>width$}");
        }
        println!();
    }
}
