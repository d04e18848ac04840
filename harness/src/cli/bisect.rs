//! `parity bisect`: where the engine first goes wrong. Checks are walked in the order the forward
//! pass produces them (embeddings, then each layer's checkpoints, then the head), and the first
//! that fails is named with the last that passed before it.

use super::select::Selection;
use anyhow::{bail, Result};
use harness::bisect::bisect;
use reports::results::CheckResult;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct BisectArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// The reference to bisect against (default: each case's first).
    #[arg(long = "ref")]
    pub reference: Option<String>,
    #[command(flatten)]
    pub plant: super::plant::PlantArgs,
}

pub fn run(args: BisectArgs, root: &Path) -> Result<i32> {
    let faults = args.plant.faults()?;
    if let Some(line) = super::plant::label(&faults) {
        eprintln!("{line}");
    }
    let loaded = args.selection.load(root)?;
    let plant = |m: &mut engine::Model| super::plant::plant_in(&faults, m);
    let (results, runs) = loaded.run("bisect", (!faults.is_empty()).then_some(&plant as &dyn Fn(&mut engine::Model)))?;
    for (what, err) in &results.reference_errors {
        eprintln!("reference error: {what}: {err}");
    }
    let found = bisect(&runs, &results, args.reference.as_deref());
    if found.is_empty() {
        bail!("nothing to bisect: no case has the reference {:?}", args.reference.unwrap_or_default());
    }
    let mut any = false;
    for b in &found {
        println!("{} / {} against {}:", b.model, b.prompt, b.reference);
        match &b.first_failure {
            None => println!("  every checkpoint passes"),
            Some(f) => {
                any = true;
                println!(
                    "  first failure: checkpoint {} {} at {} ({})",
                    f.checkpoint_id,
                    f.checkpoint,
                    describe(f),
                    reports::summary::status_name(f.status)
                );
                for j in f.judgements.iter().filter(|j| !j.pass) {
                    println!("    {} = {:.4e}, needs {} {:.4e}", j.metric, j.value, j.op, j.threshold);
                }
                if let Some(note) = &f.note {
                    println!("    {note}");
                }
                match &b.last_pass {
                    Some(p) => println!("  last pass before it: checkpoint {} {} at {}", p.checkpoint_id, p.checkpoint, describe(p)),
                    None => println!("  nothing passes before it"),
                }
            }
        }
    }
    Ok(if any {
        1
    } else if results.reference_errors.is_empty() {
        0
    } else {
        3
    })
}

fn describe(c: &CheckResult) -> String {
    match c.layer {
        Some(l) => format!("layer {l}, tensor {} ({})", c.tensor, c.key),
        None => format!("tensor {}", c.key),
    }
}
