//! `parity run`: the suite (or one model and prompt) through engine, references and comparison,
//! printed as a table (or JSON) and written as a proof bundle.

use super::select::{Loaded, Selection};
use anyhow::{Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Color, Table};
use harness::dumps::Lookup;
use harness::engine_run;
use harness::npy;
use harness::pipeline::CaseRun;
use harness::subject::{External, Subject};
use rayon::prelude::*;
use reports::bundle::{Bundle, RunInfo};
use reports::results::{CaseResult, CheckResult, Role, RunResults, Status};
use reports::summary::{self, Verdict};
use reports::vocab::Judged;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// `table` for people, `json` for machines (the summary on stdout).
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Run the engine this many times per case and report any difference between runs.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Failing tensors saved into the bundle per case and reference (engine and reference side).
    #[arg(long, default_value_t = 20)]
    pub keep_failed: usize,
    /// The gate: exit 1 unless the run's confidence reaches this level (0-4 or none, low,
    /// moderate, high, full), even when every check passed. Default: the suite's `min_confidence`
    /// (not with --refs, which narrows the references the suite's level counts).
    #[arg(long, value_parser = gate_level)]
    pub min_confidence: Option<u8>,
    #[command(flatten)]
    pub plant: super::plant::PlantArgs,
}

fn gate_level(text: &str) -> std::result::Result<u8, String> {
    reports::confidence::level_named(text)
        .ok_or_else(|| format!("{text:?} is not a confidence level (0-4 or {})", reports::confidence::LEVELS.join(", ")))
}

/// `started`: when the process started, the timing line's zero.
pub fn run(args: RunArgs, root: &Path, started: std::time::Instant) -> Result<i32> {
    let faults = args.plant.faults()?;
    let planted = super::plant::label(&faults);
    if let Some(line) = &planted {
        eprintln!("{line}");
    }
    let settings = super::BundleSettings::from_env();
    let signer = settings.signer()?;
    let provenance = settings.provenance(&command_line(), &git_commit(root));
    let loaded = args.selection.load(root)?;
    // Planting and repeating are the in-process engine's: another subject's numbers are its dumps'.
    if !loaded.subject.is_engine() && (!faults.is_empty() || args.repeat > 1) {
        anyhow::bail!("--plant and --repeat run the engine in-process; the subject here is {}", loaded.subject.name());
    }
    let mut bundle = Bundle::create(&settings.root(root), "run", provenance.clone())?;
    if let Some(signer) = signer {
        bundle.sign_with(signer);
    }
    let plant = |m: &mut engine::Model| super::plant::plant_in(&faults, m);
    let (mut results, runs) = loaded.run(&provenance.run_id, (!faults.is_empty()).then_some(&plant as &dyn Fn(&mut engine::Model)))?;
    if args.repeat > 1 {
        results.cases.extend(repeat_checks(&loaded, &runs, args.repeat, &faults)?);
    }

    write_bundle(&mut bundle, &loaded, &results, &runs, args.keep_failed)?;
    let mut info = run_info(&loaded, &runs);
    info.shard = args.selection.shard.map(|s| format!("{}/{}", s.index, s.count));
    // A planted run's manifest says so beside the engine's version.
    if !faults.is_empty() {
        info.versions.insert("engine planted".into(), faults.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    }
    let dir = bundle.finish(info)?;

    let verdict = Verdict::of(&results);
    match args.format.as_str() {
        "json" => println!("{}", reports::json::render(&results)),
        _ => {
            print_table(&results, &dir);
            if let Some(line) = &planted {
                println!("{line}");
            }
            print_timings(&runs, started.elapsed());
        }
    }
    // The suite's gate is for its own references: a run narrowed to fewer (--refs) asks for its own.
    let suite_gate = loaded.suite.min_confidence.as_deref().and_then(reports::confidence::level_named).filter(|_| args.selection.refs.is_none());
    let gate = args.min_confidence.or(suite_gate);
    Ok(gated_exit_code(verdict, &reports::confidence::Confidence::of(&results), gate))
}

/// The verdict's exit code, except that a pass below the gate's confidence level exits 1 (said on
/// stderr): the checks passed, but with less evidence than the gate asks for.
fn gated_exit_code(verdict: Verdict, confidence: &reports::confidence::Confidence, gate: Option<u8>) -> i32 {
    match gate {
        Some(level) if verdict == Verdict::Pass && confidence.level < level => {
            let wanted = reports::confidence::LEVELS[usize::from(level)];
            eprintln!("parity: below the gate: confidence {} is under the {level}/4 ({wanted}) this run must reach", confidence.label());
            1
        }
        _ => verdict.exit_code(),
    }
}

/// `--repeat N`: the engine's runs 2..N against run 1, bit for bit. A difference is its own
/// finding (reference `engine-repeat-K`), never hidden inside a tolerance.
fn repeat_checks(loaded: &Loaded, runs: &[CaseRun], repeat: usize, faults: &[engine::fault::Fault]) -> Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    for run in runs {
        let mut model = engine::Model::load(&run.model_path).with_context(|| format!("reloading {}", run.model_path.display()))?;
        super::plant::plant_in(faults, &mut model);
        for k in 2..=repeat {
            let again =
                engine_run::trace(&model, &run.case.prompt.text, loaded.suite.n_generate, loaded.suite.temperature, run.fed.shared())?.tensors;
            let checks = loaded
                .catalog
                .entries(model.config().arch.name(), model.config().n_layers)
                .iter()
                .map(|e| {
                    let (status, note) = match (run.subject.get(&e.key), again.get(&e.key)) {
                        (Some(a), Some(b)) if a.bit_identical(b) => (Status::Pass, None),
                        (Some(_), Some(_)) => (Status::Fail, Some(format!("non-deterministic: run {k} differs from run 1 with the same threads"))),
                        _ => (Status::Missing, Some("the engine did not produce it".to_string())),
                    };
                    CheckResult {
                        checkpoint_id: e.checkpoint_id,
                        checkpoint: e.checkpoint.clone(),
                        tensor: e.tensor.clone(),
                        layer: e.layer,
                        key: e.key.clone(),
                        status,
                        metrics: BTreeMap::new(),
                        judgements: Vec::new(),
                        note,
                    }
                })
                .collect();
            out.push(CaseResult {
                model: run.case.model.id.clone(),
                model_sha256: String::new(),
                prompt: run.case.prompt.id.clone(),
                reference: format!("engine-repeat-{k}"),
                reference_version: format!("engine {}", env!("CARGO_PKG_VERSION")),
                dtype: Judged::BitExact,
                role: Role::Reference,
                checks,
                provenance: BTreeMap::new(),
                duplicates: Vec::new(),
            });
        }
    }
    Ok(out)
}

/// Renders a bundle file from the results.
pub type Render = fn(&RunResults) -> Result<String>;

/// Every bundle's outputs besides its inputs, by file name. results.json is the whole data model
/// for programs (compact: pretty-printed, writing it was a large share of the harness's time);
/// summary.json, the reports and junit.xml are for people and CI.
pub const RENDERS: [(&str, Render); 5] = [
    ("results.json", |r| Ok(serde_json::to_string(r)?)),
    ("summary.json", |r| Ok(reports::json::render(r))),
    ("report.md", |r| Ok(reports::markdown::render(r))),
    ("report.html", |r| Ok(reports::html::render(r))),
    ("junit.xml", |r| Ok(reports::junit::render(r))),
];

fn write_bundle(bundle: &mut Bundle, loaded: &Loaded, results: &RunResults, runs: &[CaseRun], keep_failed: usize) -> Result<()> {
    // The five renderings are independent: made on the pool, written in a fixed order.
    // Rendering does not wait for the inputs' hashes (mostly file lookups): both at once.
    let (rendered, inputs) = rayon::join(
        || RENDERS.par_iter().map(|(name, render)| (*name, render(results))).collect::<Vec<_>>(),
        || add_inputs(bundle, loaded, results, runs, keep_failed),
    );
    inputs?;
    for (name, body) in rendered {
        bundle.write_text(name, &body.with_context(|| format!("rendering {name}"))?)?;
    }
    Ok(())
}

/// Every input of the run into the bundle (hashed), and the tensors of the first failing checks.
fn add_inputs(bundle: &mut Bundle, loaded: &Loaded, results: &RunResults, runs: &[CaseRun], keep_failed: usize) -> Result<()> {
    bundle.add_input("catalog", &loaded.catalog_path)?;
    bundle.add_input("spec", &loaded.spec_path)?;
    bundle.add_input("suite", &loaded.suite_path)?;
    let mut models_added = std::collections::BTreeSet::new();
    for run in runs {
        if models_added.insert(run.model_path.clone()) {
            bundle.add_input("model", &run.model_path)?;
        }
        // The truth is evidence too: its dump is hashed like every reference's, and so is a
        // dumped subject's. The engine's, made in memory, is the engine's own (its version).
        let subject = run.subject_dump.as_ref().map(|d| (d.manifest.reference.clone(), Ok(d.clone())));
        for (reference, dump) in run.dumps.iter().chain(&run.truth).chain(&subject) {
            let base = format!("{}/{}/{}", run.case.model.id, run.case.prompt.id, reference);
            let origin = run.origins.get(reference);
            match dump {
                Ok(dump) if dump.memory.is_some() => {
                    save_failed(bundle, run, reference, dump, &base, results, keep_failed)?;
                    continue;
                }
                Ok(dump) if run.subject_dump.as_ref().is_some_and(|s| s.dir == dump.dir) => {
                    // Made for this run (a command, a live dumper or the cache's copy) or read from a folder that stays.
                    let live = matches!(loaded.source, harness::pipeline::Source::Live { .. });
                    match &loaded.subject {
                        Subject::External { from: External::Dumps(_), .. } => bundle.add_input("subject dump", &dump.dir)?,
                        Subject::Reference(_) if !live => bundle.add_input("subject dump", &dump.dir)?,
                        _ => bundle.add_transient_input("subject dump (made for this run)", &dump.dir)?,
                    }
                }
                Ok(dump) if matches!(loaded.source, harness::pipeline::Source::Live { .. }) => {
                    // Live dumps are removed after the run, or kept in the dump cache only while
                    // it has room: their hashes are the record.
                    let role = match origin {
                        Some(o) if o.reused => "dump (live, reused from the dump cache)",
                        Some(_) => "dump (live, made now, kept in the dump cache)",
                        None => "dump (live, removed after the run)",
                    };
                    bundle.add_transient_input(role, &dump.dir)?;
                    save_failed(bundle, run, reference, dump, &base, results, keep_failed)?;
                }
                Ok(dump) => {
                    bundle.add_input("dump", &dump.dir)?;
                    save_failed(bundle, run, reference, dump, &base, results, keep_failed)?;
                }
                Err(_) => {}
            }
            // A live dumper's stderr, kept whether it succeeded or not (a reused dump's, from the cache).
            if let harness::pipeline::Source::Live { out, .. } = &loaded.source {
                let log = origin
                    .and_then(|o| o.log.clone())
                    .unwrap_or_else(|| out.join(&run.case.model.id).join(&run.case.prompt.id).join(format!("{reference}.stderr.log")));
                if let Ok(bytes) = std::fs::read(&log) {
                    bundle.write_bytes(&format!("references/{base}.stderr.log"), &bytes)?;
                }
            }
        }
    }
    Ok(())
}

/// The engine's and the reference's tensors for the first `keep` failing checks of a case.
fn save_failed(
    bundle: &mut Bundle,
    run: &CaseRun,
    reference: &str,
    dump: &harness::dumps::Dump,
    base: &str,
    results: &RunResults,
    keep: usize,
) -> Result<()> {
    let failing = results
        .cases
        .iter()
        .filter(|c| c.model == run.case.model.id && c.prompt == run.case.prompt.id && c.reference == reference)
        .flat_map(|c| &c.checks)
        .filter(|k| matches!(k.status, Status::Fail | Status::NonFinite | Status::Layout))
        .take(keep);
    for check in failing {
        if let Some(t) = run.subject.get(&check.key) {
            bundle.write_bytes(&format!("failed/{base}/{}.subject.npy", check.key), &npy::encode(t))?;
        }
        if let Ok(Lookup::Tensor(t)) = dump.get(&check.key) {
            bundle.write_bytes(&format!("failed/{base}/{}.reference.npy", check.key), &npy::encode(&t))?;
        }
    }
    Ok(())
}

pub fn run_info(loaded: &Loaded, runs: &[CaseRun]) -> RunInfo {
    let mut versions = BTreeMap::new();
    versions.insert("engine".to_string(), env!("CARGO_PKG_VERSION").to_string());
    for run in runs {
        if let Some(d) = &run.subject_dump {
            versions.insert(format!("{} (subject)", d.manifest.reference), d.manifest.version.clone());
        }
        for (reference, dump) in &run.dumps {
            if let Ok(d) = dump {
                versions.insert(reference.clone(), d.manifest.version.clone());
            }
        }
    }
    // Which live dumps were made by this run and which reused, by the key of what they answer.
    let dumps = runs
        .iter()
        .flat_map(|run| {
            run.origins.iter().map(move |(reference, o)| (format!("{}/{}/{reference}", run.case.model.id, run.case.prompt.id), o.label()))
        })
        .collect();
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into());
    RunInfo { versions, host, threads: loaded.suite.threads, replay: command_line(), dumps, shard: None }
}

pub fn command_line() -> String {
    std::env::args().map(|a| if a.contains(char::is_whitespace) { format!("{a:?}") } else { a }).collect::<Vec<_>>().join(" ")
}

/// Where the time went: the harness's own cost is everything but the engine and the references.
fn print_timings(runs: &[CaseRun], total: std::time::Duration) {
    let mut t = harness::pipeline::Timings::default();
    for run in runs {
        t += run.timings;
    }
    let own = total.saturating_sub(t.engine + t.references);
    println!(
        "time: {:.2} s = engine {:.2} s + references {:.2} s + harness {:.2} s (comparison {:.2} s, hashing {:.2} s, reports and bundle {:.2} s)",
        total.as_secs_f64(),
        t.engine.as_secs_f64(),
        t.references.as_secs_f64(),
        own.as_secs_f64(),
        t.compare.as_secs_f64(),
        t.hashing.as_secs_f64(),
        own.saturating_sub(t.compare + t.hashing).as_secs_f64()
    );
}

/// The engine's git commit, if the project is a git checkout.
pub fn git_commit(root: &Path) -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// One table per model/prompt: checkpoints down, references across, each cell its status and the
/// smallest margin to a threshold. Color only on a terminal, and never with NO_COLOR set.
fn print_table(results: &RunResults, bundle_dir: &Path) {
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    println!("subject: {} (the implementation judged)", results.subject_label());
    for subject in summary::subjects(results) {
        let mut table = Table::new();
        let mut header = vec![Cell::new("checkpoint")];
        header.extend(subject.references.iter().map(|(r, _)| Cell::new(r)));
        header.extend(subject.truth.iter().map(|(t, _)| Cell::new(format!("{t} (noise)"))));
        table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
        for (id, name) in &subject.checkpoints {
            let mut row = vec![Cell::new(format!("{id:>2} {name}"))];
            for (reference, _) in &subject.references {
                let cell = match subject.cells.get(&(*id, reference.clone())) {
                    None => Cell::new("-"),
                    Some(c) => {
                        // A near-tie's exact-match margin (-100%) says nothing the status does not.
                        let margin = c
                            .worst
                            .as_ref()
                            .filter(|_| c.status != Status::NearTie)
                            .map(|w| format!(" {}", summary::margin_text(w.margin)))
                            .unwrap_or_default();
                        // ` [kernels]`, ` [duplicate of pytorch]`: a cell that is no independent vote.
                        let text = format!("{}{margin}{}", summary::status_name(c.status), c.mark());
                        let tint = match c.status {
                            Status::Pass => Color::Green,
                            Status::NearTie => Color::Yellow,
                            _ => Color::Red,
                        };
                        if color {
                            Cell::new(text).fg(tint)
                        } else {
                            Cell::new(text)
                        }
                    }
                };
                row.push(cell);
            }
            // The truth's column: the engine's largest distance from it, in noise floors.
            if let Some((truth, _)) = &subject.truth {
                let text = match subject.cells.get(&(*id, truth.clone())) {
                    None => "-".to_string(),
                    Some(c) => match c.noisiest() {
                        Some((units, _)) => format!("{} {units:.2}x", summary::status_name(c.status)),
                        None => summary::status_name(c.status).to_string(),
                    },
                };
                row.push(Cell::new(text));
            }
            table.add_row(row);
        }
        println!("{}", subject.title());
        println!("{table}");
    }
    for (what, err) in &results.reference_errors {
        println!("reference error: {what}: {err}");
    }
    let verdict = Verdict::of(results);
    let confidence = reports::confidence::Confidence::of(results);
    println!("{}  confidence: {}", verdict.label(), confidence.label());
    println!("bundle: {}", bundle_dir.display());
    println!("report: {}", bundle_dir.join("report.md").display());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confidence(level: u8) -> reports::confidence::Confidence {
        reports::confidence::Confidence {
            level,
            name: reports::confidence::LEVELS[usize::from(level)],
            failures: 0,
            checks: 10,
            min_agreeing_references: usize::from(level),
            thin: Vec::new(),
            generation_matches: false,
            near_ties: Vec::new(),
            agreement: Vec::new(),
        }
    }

    #[test]
    fn a_pass_below_the_gate_exits_1_and_anything_else_keeps_its_code() {
        assert_eq!(gated_exit_code(Verdict::Pass, &confidence(2), Some(3)), 1, "two references where the gate wants three");
        assert_eq!(gated_exit_code(Verdict::Pass, &confidence(3), Some(3)), 0);
        assert_eq!(gated_exit_code(Verdict::Pass, &confidence(4), Some(3)), 0);
        assert_eq!(gated_exit_code(Verdict::Pass, &confidence(1), None), 0, "no gate, no demand");
        assert_eq!(gated_exit_code(Verdict::Fail, &confidence(0), Some(3)), 1);
        assert_eq!(gated_exit_code(Verdict::ReferenceError, &confidence(1), Some(3)), 3, "a broken reference stays exit 3");
    }
}
