//! `parity sweep`: one case judged along axes of conditions (positions, thread counts, prefill
//! modes), each point's worst margin tabled and charted, and the boundary where checks first fail
//! named (harness::sweep, reports::sweep, docs/sweep.md).

use super::select::Selection;
use anyhow::{bail, Context, Result};
use engine::{Model, Prefill};
use harness::sweep;
use reports::sweep::{Axis, Sweep};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Decode this many steps instead of the suite's n_generate: the positions swept reach the
    /// prompt's length plus this (less one). Its reference dumps are then made with --live.
    #[arg(long)]
    pub n_generate: Option<usize>,
    /// Positions per point of the position axis; 0 skips the axis.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Rerun the case with the engine on each of these thread counts (comma-separated: 1,2).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub thread_counts: Vec<usize>,
    /// Rerun the case with the prompt prefilled each of these ways (comma-separated):
    /// one-batch, chunks:N, token-by-token.
    #[arg(long, value_delimiter = ',', value_name = "MODE,...")]
    pub prefill: Vec<String>,
    /// Write the charts and tables as one self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// `text`, or `json` (every axis's points).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    #[command(flatten)]
    pub plant: super::plant::PlantArgs,
}

pub fn run(args: SweepArgs, root: &Path) -> Result<i32> {
    let faults = args.plant.faults()?;
    if let Some(line) = super::plant::label(&faults) {
        eprintln!("{line}");
    }
    let prefills = args.prefill.iter().map(|s| s.parse::<Prefill>().map_err(|e| anyhow::anyhow!("--prefill: {e}"))).collect::<Result<Vec<_>>>()?;
    if args.thread_counts.contains(&0) {
        bail!("--thread-counts: a thread count must be at least 1");
    }
    let mut loaded = args.selection.load(root)?;
    if !loaded.subject.is_engine() {
        bail!("parity sweep runs the engine under each condition; --subject {} is not the engine", loaded.subject.name());
    }
    if loaded.cases.len() != 1 {
        bail!("parity sweep judges one case: pick one model and one prompt (--model, --prompt); this selection has {}", loaded.cases.len());
    }
    if let Some(n) = args.n_generate {
        loaded.suite.n_generate = n;
    }
    let plant = |m: &mut Model| super::plant::plant_in(&faults, m);
    let (results, runs) = loaded.run("sweep", Some(&plant))?;
    for (what, err) in &results.reference_errors {
        eprintln!("reference error: {what}: {err}");
    }
    let run = runs.first().context("the sweep's case did not run")?;
    let whole = sweep::whole_case("as the suite runs it", run, &results);
    let mut sweeps = Vec::new();
    if args.window > 0 {
        let model = Model::load(&run.model_path).with_context(|| format!("reading {}", run.model_path.display()))?;
        let entries = loaded.catalog.entries(model.config().arch.name(), model.config().n_layers);
        sweeps.push(sweep::positions(run, &entries, &loaded.spec, args.window)?);
    }
    // The other axes rerun the whole case with the engine under the condition; the references'
    // dumps are the same (read again, or reused from the dump cache).
    let (base, case) = (loaded.setup(&loaded.source), &loaded.cases[0]);
    let rerun = |at: String, threads: usize, prefill: Prefill| sweep::rerun(&base, case, at, threads, prefill, &plant);
    if !args.thread_counts.is_empty() {
        let points = args.thread_counts.iter().map(|&n| rerun(n.to_string(), n, Prefill::OneBatch)).collect::<Result<_>>()?;
        sweeps.push(Sweep { axis: Axis::Threads, compared: "the whole case, every checkpoint, the engine on this many threads".into(), points });
    }
    if !prefills.is_empty() {
        let threads = loaded.suite.threads;
        let points = prefills.iter().map(|&p| rerun(p.to_string(), threads, p)).collect::<Result<_>>()?;
        sweeps.push(Sweep {
            axis: Axis::Prefill,
            compared: "the whole case, every checkpoint, the engine's prompt prefilled this way".into(),
            points,
        });
    }
    let title = format!("parity sweep: {} / {}", case.model.id, case.prompt.id);
    if let Some(path) = &args.html {
        write_atomic(path, &reports::sweep::html(&title, &sweeps))?;
    }
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "case": whole, "sweeps": sweeps }))?);
    } else {
        println!("{title}");
        println!("  the whole case: margin {:+.1}%, {}", whole.margin * 100.0, if whole.failed { "FAIL" } else { "pass" });
        for s in &sweeps {
            println!("\nworst margin vs {}: {}", s.axis.name(), s.compared);
            print!("{}", s.table());
        }
    }
    Ok(if whole.failed || sweeps.iter().any(|s| s.boundary().is_some()) {
        1
    } else if results.reference_errors.is_empty() {
        0
    } else {
        3
    })
}

/// `body` at `path`, written beside it first and renamed, so no half-written page is left.
fn write_atomic(path: &Path, body: &str) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
