//! `parity reduce`: a failing case shrunk to the smallest reproducer of its first failure, the
//! layers up to the failing one and the shortest prompt prefix that still fails the same
//! checkpoint, written as a self-contained proof bundle (the cut-down GGUF, the prompt, the
//! reference dumps, the command that re-runs it, a manifest `parity verify` checks). The search
//! is [`harness::reduce`], the cut [`harness::shrink`]; docs/reduce.md.

use super::select::{Loaded, Selection};
use anyhow::{bail, Context, Result};
use harness::bisect::bisect;
use harness::live::PrivateDir;
use harness::pipeline::{self, CaseRun, Setup};
use harness::reduce::{self, Prefix};
use harness::shrink::{self, Shrunk};
use harness::spec::Class;
use reports::bundle::Bundle;
use reports::results::{CheckResult, RunResults};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct ReduceArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// The references each trial of the search is judged against, with the truth (the cheapest
    /// honest oracle); the reproducer found is confirmed against all of the case's references.
    #[arg(long, value_delimiter = ',', default_value = "pytorch")]
    pub trial_refs: Vec<String>,
    #[command(flatten)]
    pub plant: super::plant::PlantArgs,
}

/// The model's file name and the prompt's id in a reduced case (and its bundle).
const MODEL_FILE: &str = "model.gguf";
const PROMPT_ID: &str = "reduced";

/// Exit codes: 0 a bundle was written whose own dumps fail the same checkpoint, 1 the cut-down
/// model did not fail it against all the case's references, 2 bad input (a case that passes
/// among them), 3 a reference could not run.
pub fn run(args: ReduceArgs, root: &Path) -> Result<i32> {
    let started = Instant::now();
    let faults = args.plant.faults()?;
    let planted = super::plant::label(&faults);
    if let Some(line) = &planted {
        eprintln!("{line}");
    }
    let settings = super::BundleSettings::from_env();
    let signer = settings.signer()?;
    let mut selection = args.selection.clone();
    selection.live = true;
    selection.dumps = None;
    let loaded = selection.load(root)?;
    if !loaded.subject.is_engine() {
        bail!("parity reduce cuts the engine's model; --subject {} is not the engine", loaded.subject.name());
    }
    let [case] = loaded.cases.as_slice() else {
        bail!("parity reduce takes one case; {} are selected: pick one with --model and --prompt", loaded.cases.len());
    };
    super::threads::init(Some(loaded.suite.threads))?;
    let plant = |m: &mut engine::Model| super::plant::plant_in(&faults, m);
    let prepare = (!faults.is_empty()).then_some(&plant as &dyn Fn(&mut engine::Model));
    let side = loaded.suite.truth.clone().or_else(|| case.refs.first().cloned()).context("the case has no reference to fail against")?;
    let mut trial_refs = args.trial_refs.clone();
    for r in &trial_refs {
        if !case.refs.contains(r) {
            bail!("--trial-refs: {r} is not one of the case's references ({})", case.refs.join(", "));
        }
    }
    // Without a truth the failure is judged against the case's first reference: trials need it.
    if loaded.suite.truth.is_none() && !trial_refs.contains(&side) {
        trial_refs.push(side.clone());
    }

    let and_truth = if loaded.suite.truth.is_some() { " and the truth" } else { "" };
    println!("reduce {} / {}: the case as given, against {}{and_truth}", case.model.id, case.prompt.id, case.refs.join(", "));
    let t = Instant::now();
    let (results, runs) = pipeline::run(&Setup { prepare, ..loaded.setup(&loaded.source) }, loaded.cases.clone(), "reduce")?;
    let Some(target) = first_failure(&runs, &results, &side) else {
        for (what, err) in &results.reference_errors {
            eprintln!("reference error: {what}: {err}");
        }
        if !results.reference_errors.is_empty() {
            return Ok(3);
        }
        bail!("{} / {} passes against {side}: there is no failure to reduce", case.model.id, case.prompt.id);
    };
    let src = runs[0].model_path.clone();
    if !src.is_file() {
        bail!("parity reduce cuts GGUF files; {} is a folder: give the model's GGUF with --model", src.display());
    }
    let file = engine::gguf::GgufFile::open(&src).with_context(|| format!("reading {}", src.display()))?;
    let arch = file.architecture()?.to_string();
    let n_layers = file.get_u32(&format!("{arch}.block_count"))? as usize;
    let layers = reduce::layers_needed(&loaded.catalog.entries(&arch, n_layers), &target.key, n_layers);
    let candidates = reduce::prefixes(&engine::tokenizer::Tokenizer::from_gguf(&file)?, &case.prompt.text);
    drop(file);
    println!(
        "  first failure against {side}: {} ({}; {:.0} s); keeping layers 0..{} of {n_layers}; {} prompt prefixes to search, {} tokens the longest",
        target.key,
        failed_metrics(&target),
        t.elapsed().as_secs_f64(),
        layers.saturating_sub(1),
        candidates.len(),
        candidates.last().map_or(0, |p| p.tokens)
    );

    let work = PrivateDir::new("parity-reduce").context("making a private folder for the trials")?;
    let ctx = Trials {
        root,
        selection: &args.selection,
        loaded: &loaded,
        src: &src,
        layers,
        class: case.model.class_for("llamacpp"),
        side: &side,
        target: &target.key,
        trial_refs: &trial_refs,
        prepare,
        work: work.path(),
        count: std::cell::Cell::new(0),
    };
    // The search, judged against the trial references and the truth; then the reproducer found,
    // against all of the case's; if that does not fail, the search again with all of them.
    let search = reduce::shortest_failing(candidates.len(), |i| Ok::<_, anyhow::Error>(ctx.trial(&candidates[i], &trial_refs)?.fails()))?;
    let mut found = search.found;
    let mut last = ctx.trial(&candidates[found], &case.refs)?;
    if !last.fails() && found + 1 < candidates.len() {
        println!("  the trial references' verdict does not hold against all references: searching longer prefixes against all of them");
        let rest = &candidates[found + 1..];
        let again = reduce::shortest_failing(rest.len(), |i| Ok::<_, anyhow::Error>(ctx.trial(&rest[i], &case.refs)?.fails()))?;
        found += 1 + again.found;
        last = ctx.trial(&candidates[found], &case.refs)?;
    }
    if !last.fails() {
        for (what, err) in &last.results.reference_errors {
            eprintln!("reference error: {what}: {err}");
        }
        println!("the cut-down model ({layers} layers) does not fail {} against {side} with all references: no reproducer written", target.key);
        return Ok(if last.results.reference_errors.is_empty() { 1 } else { 3 });
    }

    let command = rerun_command("$B", &case.refs, ctx.class, &faults);
    let mut bundle = Bundle::create(&settings.root(root), "reduce", settings.provenance(&super::run::command_line(), &super::run::git_commit(root)))?;
    if let Some(signer) = signer {
        bundle.sign_with(signer);
    }
    write_bundle(&mut bundle, &ctx, &last, &target, &candidates[found], &command, ctx.count.get())?;
    let mut info = super::run::run_info(&last.loaded, &last.runs);
    info.replay = command.clone();
    if !faults.is_empty() {
        info.versions.insert("engine planted".into(), faults.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    }
    let dir = bundle.finish(info)?;

    // The bundle alone: its suite, model and dumps, no dumper.
    let replayed = check_bundle(root, &dir, &case.refs, ctx.class, prepare)?;
    let size = reports::hashes::files_under(&dir)?.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum::<u64>();
    println!(
        "reproducer: {} of {} prompt tokens ({:?}), {} of {n_layers} layers, {} of {} tokens in the vocabulary; {} trials in {:.0} s",
        candidates[found].tokens,
        candidates.last().map_or(0, |p| p.tokens),
        candidates[found].text,
        last.shrunk.layers,
        last.shrunk.vocab,
        last.shrunk.original_vocab,
        ctx.count.get(),
        started.elapsed().as_secs_f64()
    );
    match &replayed {
        Some(f) if f.key == target.key => println!("checked: the bundle's own dumps fail {} against {side} again ({})", f.key, failed_metrics(f)),
        other => {
            println!(
                "the bundle's own dumps do not fail {} (first failure: {}): report this as a parity bug",
                target.key,
                other.as_ref().map_or("none", |f| f.key.as_str())
            );
            return Ok(1);
        }
    }
    println!("bundle: {} ({:.2} MB)", dir.display(), size as f64 / 1e6);
    println!("re-run: sh {}/rerun.sh   (exits 1: {} fails)", dir.display(), target.key);
    if let Some(line) = &planted {
        println!("{line} (the re-run needs a binary built with --features plant)");
    }
    Ok(0)
}

/// The first failure of the (single) case against `side`, in forward order.
fn first_failure(runs: &[CaseRun], results: &RunResults, side: &str) -> Option<CheckResult> {
    bisect(runs, results, Some(side)).into_iter().next()?.first_failure
}

fn failed_metrics(check: &CheckResult) -> String {
    let failed: Vec<String> =
        check.judgements.iter().filter(|j| !j.pass).map(|j| format!("{} {:.3e} > {:.3e}", j.metric, j.value, j.threshold)).collect();
    if failed.is_empty() {
        reports::summary::status_name(check.status).to_string()
    } else {
        failed.join(", ")
    }
}

/// What every trial shares: the case, the model cut, the checkpoint it must fail.
struct Trials<'a> {
    root: &'a Path,
    selection: &'a Selection,
    loaded: &'a Loaded,
    src: &'a Path,
    layers: usize,
    /// llama.cpp's tolerance class in the case (`--class` of the re-run).
    class: Class,
    side: &'a str,
    target: &'a str,
    trial_refs: &'a [String],
    prepare: Option<&'a dyn Fn(&mut engine::Model)>,
    work: &'a Path,
    count: std::cell::Cell<usize>,
}

/// One trial's model, run and verdict; its live dumps stay while it is kept.
struct Trial {
    dir: PathBuf,
    shrunk: Shrunk,
    loaded: Loaded,
    results: RunResults,
    runs: Vec<CaseRun>,
    first: Option<CheckResult>,
    target: String,
}

impl Trial {
    fn fails(&self) -> bool {
        self.first.as_ref().is_some_and(|f| f.key == self.target)
    }
}

impl Trials<'_> {
    /// A command-line path, read from the project root as `Selection::load` reads it.
    fn at(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// The model cut to `self.layers` and `prefix`'s vocabulary, run on `prefix` against `refs`
    /// and the truth, live (reusing the dump cache).
    fn trial(&self, prefix: &Prefix, refs: &[String]) -> Result<Trial> {
        let n = self.count.get() + 1;
        self.count.set(n);
        let t = Instant::now();
        let dir = self.work.join(format!("trial-{n}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
        let model = dir.join(MODEL_FILE);
        let shrunk = shrink::shrink(self.src, self.layers, &prefix.text, &model)?;
        let suite = dir.join("suite.toml");
        std::fs::write(&suite, suite_toml(&self.loaded.suite, refs, &prefix.text)).with_context(|| format!("writing {}", suite.display()))?;
        let selection = Selection {
            suite,
            model: Some(model),
            prompt: None,
            refs: Some(refs.to_vec()),
            class: Some(self.class),
            subject: None,
            subject_cmd: None,
            subject_dumps: None,
            live: true,
            dumps: None,
            shard: None,
            threads: None,
            catalog: self.at(&self.selection.catalog),
            tolerances: self.at(&self.selection.tolerances),
            provenance: self.at(&self.selection.provenance),
            ..self.selection.clone()
        };
        let loaded = selection.load(self.root)?;
        let (results, runs) = pipeline::run(&Setup { prepare: self.prepare, ..loaded.setup(&loaded.source) }, loaded.cases.clone(), "reduce-trial")?;
        let first = first_failure(&runs, &results, self.side);
        let trial = Trial { dir, shrunk, loaded, results, runs, first, target: self.target.to_string() };
        println!(
            "  trial {n}: {} prompt tokens, {} layers, {} tokens in the vocabulary ({:.2} MB), against {}{}: {} ({:.0} s)",
            prefix.tokens,
            trial.shrunk.layers,
            trial.shrunk.vocab,
            trial.shrunk.bytes as f64 / 1e6,
            refs.join(","),
            if self.loaded.suite.truth.is_some() { " + the truth" } else { "" },
            match &trial.first {
                Some(f) if trial.fails() => format!("fails {}", f.key),
                Some(f) => format!("first fails {}, another checkpoint", f.key),
                None if !trial.results.reference_errors.is_empty() => "a reference could not run".to_string(),
                None => "passes".to_string(),
            },
            t.elapsed().as_secs_f64()
        );
        Ok(trial)
    }
}

/// A one-case suite: the original's settings, the cut model (given on the command line with
/// `--model`: a suite's model paths are read from the project root) and the prompt.
fn suite_toml(suite: &harness::suite::Suite, refs: &[String], prompt: &str) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let list = refs.iter().map(|r| quote(r)).collect::<Vec<_>>().join(", ");
    let mut out = String::from("# A case reduced by `parity reduce`: run it with rerun.sh beside this file.\n");
    out += &format!("dumps = \"dumps\"\nn_generate = {}\ntemperature = {:?}\nthreads = {}\n", suite.n_generate, suite.temperature, suite.threads);
    if let Some(truth) = &suite.truth {
        out += &format!("truth = {}\n", quote(truth));
    }
    out += &format!("\n# The command line gives this model as --model <this folder>/{MODEL_FILE}.\n[[model]]\nid = \"model\"\npath = \"{MODEL_FILE}\"\nrefs = [{list}]\n");
    out += &format!("\n[[prompt]]\nid = \"{PROMPT_ID}\"\ntext = {}\n", quote(prompt));
    out
}

/// `parity run` on a bundle at `$B` (a shell variable): its suite, model and dumps, every reference.
fn rerun_command(bundle: &str, refs: &[String], class: Class, faults: &[engine::fault::Fault]) -> String {
    let mut line = format!(
        "parity run --suite \"{bundle}/suite.toml\" --model \"{bundle}/{MODEL_FILE}\" --class {} --refs {} --dumps \"{bundle}/dumps\" --catalog \"{bundle}/catalog.toml\" --tolerances \"{bundle}/tolerances.toml\" --provenance \"{bundle}/provenance.toml\"",
        class.as_str(),
        refs.join(",")
    );
    for f in faults {
        line += &format!(" --plant {f}");
    }
    line
}

/// The bundle's files: the model, the prompt, the suite and the rules it was judged by, every
/// reference's and the truth's dump, the re-run script and a README.
fn write_bundle(bundle: &mut Bundle, ctx: &Trials, last: &Trial, target: &CheckResult, prefix: &Prefix, command: &str, trials: usize) -> Result<()> {
    let copy = |bundle: &mut Bundle, name: &str, from: &Path| -> Result<()> {
        let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        bundle.write_bytes(name, &bytes)?;
        Ok(())
    };
    copy(bundle, MODEL_FILE, &last.dir.join(MODEL_FILE))?;
    copy(bundle, "suite.toml", &last.dir.join("suite.toml"))?;
    copy(bundle, "catalog.toml", &last.loaded.catalog_path)?;
    copy(bundle, "tolerances.toml", &last.loaded.spec_path)?;
    copy(bundle, "provenance.toml", &ctx.at(&ctx.selection.provenance))?;
    bundle.write_bytes("prompt.txt", prefix.text.as_bytes())?;
    let run = &last.runs[0];
    for (reference, dump) in run.dumps.iter().chain(&run.truth) {
        let dump = dump.as_ref().map_err(|e| anyhow::anyhow!("{reference}: {e}"))?;
        for file in reports::hashes::files_under(&dump.dir)? {
            let rel = file.strip_prefix(&dump.dir).context("a dump file outside its folder")?;
            copy(bundle, &format!("dumps/model/{PROMPT_ID}/{reference}/{}", rel.display()), &file)?;
        }
    }
    let script = format!(
        "#!/bin/sh\n# Re-runs the case parity reduce made: exits 1, {} failing against {}.\n# PARITY names the parity binary (default: parity on PATH){}; more options of parity run may follow.\nB=$(cd \"$(dirname \"$0\")\" && pwd)\nexec \"${{PARITY:-parity}}\" {} \"$@\"\n",
        target.key,
        ctx.side,
        if command.contains("--plant") { "; --plant needs one built with --features plant" } else { "" },
        command.trim_start_matches("parity ")
    );
    bundle.write_bytes("rerun.sh", script.as_bytes())?;
    let case = &ctx.loaded.cases[0];
    let truth = ctx.loaded.suite.truth.as_ref().map_or(String::new(), |t| format!(" and the truth ({t})"));
    let readme = format!(
        "# A reduced reproducer\n\nThe case `{} / {}` fails `{}` against `{}` ({}). Cut to layers 0..{} of {} and the first {} prompt tokens ({} tokens kept in the vocabulary of {}), it fails the same checkpoint.\n\nPrompt: {:?}\n\nRe-run from this folder alone (exit 1 expected):\n\n    sh rerun.sh\n\nwhich runs\n\n    {}\n\nwith `$B` this folder. The search ran {} trials, each judged against {}{truth}; the reproducer was confirmed against {}{truth}, whose dumps are under `dumps/`. `parity verify` checks this folder's integrity.\n",
        case.model.id,
        case.prompt.id,
        target.key,
        ctx.side,
        failed_metrics(target),
        last.shrunk.layers - 1,
        last.shrunk.original_layers,
        prefix.tokens,
        last.shrunk.vocab,
        last.shrunk.original_vocab,
        prefix.text,
        command,
        trials,
        ctx.trial_refs.join(", "),
        case.refs.join(", ")
    );
    bundle.write_text("README.md", &readme)?;
    Ok(())
}

/// Runs the finished bundle as its command does, from its own files, and returns its first failure.
fn check_bundle(root: &Path, dir: &Path, refs: &[String], class: Class, prepare: Option<&dyn Fn(&mut engine::Model)>) -> Result<Option<CheckResult>> {
    let selection = Selection {
        suite: dir.join("suite.toml"),
        model: Some(dir.join(MODEL_FILE)),
        prompt: None,
        refs: Some(refs.to_vec()),
        subject: None,
        subject_cmd: None,
        subject_dumps: None,
        class: Some(class),
        live: false,
        dumps: Some(dir.join("dumps")),
        shard: None,
        no_dump_cache: true,
        timeout: 60,
        threads: None,
        catalog: dir.join("catalog.toml"),
        tolerances: dir.join("tolerances.toml"),
        provenance: dir.join("provenance.toml"),
    };
    let loaded = selection.load(root)?;
    let side = loaded.suite.truth.clone().or_else(|| refs.first().cloned()).unwrap_or_default();
    let (results, runs) = pipeline::run(&Setup { prepare, ..loaded.setup(&loaded.source) }, loaded.cases.clone(), "reduce-check")?;
    Ok(first_failure(&runs, &results, &side))
}
