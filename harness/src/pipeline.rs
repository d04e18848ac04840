//! One pass over a suite: for each model x prompt, the subject's tensors (by default the engine's
//! traced run, [`crate::subject`]), each reference's dump (read from disk or produced live; the
//! engine's made in memory when it is a reference), and their comparison. `run`, `diff`, `bisect`
//! and `calibrate` are views of what this collects.

use crate::catalog::{self, Catalog, Entry};
use crate::compare;
use crate::dump_cache::{DumpCache, DumpKey, Origin};
use crate::dumps::{Dump, Lookup};
use crate::duplicates;
use crate::engine_run;
use crate::live::{DumpRequest, Dumpers};
use crate::provenance::Provenance;
use crate::reference::RefName;
use crate::sampling;
use crate::spec::{Class, Spec};
use crate::steps;
use crate::subject::{External, Subject, ENGINE};
use crate::suite::{resolve, Case, Suite};
use crate::tensor::{Tensor, Values};
use anyhow::{Context, Result};
use engine::Model;
use reports::results::{CaseResult, Role, RunResults};
use reports::vocab::TensorName;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where reference dumps come from.
pub enum Source {
    /// Existing dumps under `<root>/<model id>/<prompt id>/<reference>/`.
    Dumps(PathBuf),
    /// Run the dumpers now, into `<out>/<model id>/<prompt id>/<reference>/`, stderr beside them;
    /// with a cache, a dump whose request was answered before is reused from it, and a new one
    /// is stored there (and read from there).
    Live { dumpers: Dumpers, out: PathBuf, cache: Option<DumpCache> },
}

/// Everything the suite pass needs besides the cases.
pub struct Setup<'a> {
    pub root: &'a Path,
    pub suite: &'a Suite,
    pub catalog: &'a Catalog,
    pub spec: &'a Spec,
    /// Whose code computed each checkpoint, per reference and family (checkpoints/provenance.toml).
    pub provenance: &'a Provenance,
    pub source: &'a Source,
    /// The implementation judged: the engine, or any that writes dumps under the contract.
    pub subject: &'a Subject,
    /// Called on every model after loading (the harness's own tests plant bugs with it).
    pub prepare: Option<&'a dyn Fn(&mut Model)>,
}

/// Where a run's time went, summed over its cases: what `parity run` costs beyond the engine and
/// the references themselves.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Loading (and unloading) the model and the engine's traced forward passes.
    pub engine: Duration,
    /// The dumpers' runs (live) or reading their dumps (from disk).
    pub references: Duration,
    /// Comparing and judging every checkpoint.
    pub compare: Duration,
    /// sha256 of the model files, for the results and the bundle.
    pub hashing: Duration,
}

impl std::ops::AddAssign for Timings {
    fn add_assign(&mut self, o: Timings) {
        self.engine += o.engine;
        self.references += o.references;
        self.compare += o.compare;
        self.hashing += o.hashing;
    }
}

/// One case's inputs and outputs, kept for drill-down.
pub struct CaseRun {
    pub case: Case,
    pub model_path: PathBuf,
    pub timings: Timings,
    /// The subject's tensors by dump key (empty when its dump could not be had).
    pub subject: BTreeMap<String, Tensor>,
    /// The subject's dump, when it is not the engine in-process.
    pub subject_dump: Option<Dump>,
    /// Each reference's dump, or why it could not be had.
    pub dumps: Vec<(String, std::result::Result<Dump, String>)>,
    /// For live dumps with the cache: each reference's (the truth's too) dump key, fresh or reused.
    pub origins: BTreeMap<String, Origin>,
    /// What the engine and every reference were fed from the truth's dump.
    pub fed: Fed,
    /// The suite's ground truth for this case, if it has one: its name and dump.
    pub truth: Option<(String, std::result::Result<Dump, String>)>,
    /// This case's results: their place in [`RunResults::cases`].
    pub results: std::ops::Range<usize>,
}

/// Runs every case; a reference that cannot run is recorded in `reference_errors`, not fatal.
pub fn run(ctx: &Setup, cases: Vec<Case>, run_id: &str) -> Result<(RunResults, Vec<CaseRun>)> {
    let mut results = RunResults {
        run_id: run_id.to_string(),
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        subject: ctx.subject.name().to_string(),
        subject_version: match ctx.subject {
            Subject::Engine => env!("CARGO_PKG_VERSION").to_string(),
            _ => String::new(),
        },
        subject_provenance: BTreeMap::new(),
        cases: Vec::new(),
        reference_errors: BTreeMap::new(),
    };
    let mut runs = Vec::new();
    // The model of the previous case, kept while the next case uses it too: (id, model, sha256).
    let mut loaded: Option<(String, Model, String)> = None;
    let mut subject_versions: Vec<String> = Vec::new();
    for case in cases {
        let model_path = resolve(ctx.root, &case.model.path);
        let mut timings = Timings::default();
        if loaded.as_ref().map(|(id, _, _)| id) != Some(&case.model.id) {
            let t = Instant::now();
            drop(loaded.take());
            let mut model = Model::load(&model_path).with_context(|| format!("loading model {} ({})", case.model.id, model_path.display()))?;
            if let Some(prepare) = ctx.prepare {
                prepare(&mut model);
            }
            timings.engine += t.elapsed();
            let t = Instant::now();
            let sha = model_sha(&model_path)?;
            timings.hashing += t.elapsed();
            loaded = Some((case.model.id.clone(), model, sha));
        }
        let (_, model, sha) = loaded.as_ref().expect("loaded just above");
        let mut run = run_case(ctx, case, model_path, model, sha, &mut results)?;
        run.timings += timings;
        if let Some(dump) = &run.subject_dump {
            if !subject_versions.contains(&dump.manifest.version) {
                subject_versions.push(dump.manifest.version.clone());
            }
            let declared = subject_provenance(ctx, dump, model.config().arch.name()).unwrap_or_else(|e| {
                let at = format!("{}/{}/{} (the subject)", run.case.model.id, run.case.prompt.id, ctx.subject.name());
                results.reference_errors.insert(at, format!("{e:#}"));
                crate::provenance::undeclared(ctx.catalog)
            });
            results.subject_provenance.insert(run.case.model.id.clone(), declared);
        }
        runs.push(run);
    }
    // A dumped subject's version is its manifests' (every distinct one, should cases differ).
    if !subject_versions.is_empty() {
        results.subject_version = subject_versions.join("; ");
    }
    // Unloading the last model (unmapping its file, freeing its tokenizer) is the engine's cost as
    // loading it was; the previous model's is timed with the next load.
    let t = Instant::now();
    drop(loaded);
    if let Some(last) = runs.last_mut() {
        last.timings.engine += t.elapsed();
    }
    Ok((results, runs))
}

/// One case, its results appended to `results`.
fn run_case(ctx: &Setup, case: Case, model_path: PathBuf, model: &Model, sha: &str, results: &mut RunResults) -> Result<CaseRun> {
    let mut timings = Timings::default();
    let mut origins = BTreeMap::new();
    let mut fetch = |reference: &str, fed: &Fed, results: &mut RunResults| {
        let t = Instant::now();
        let dump = match fetch(ctx, &case, reference, fed) {
            Ok((dump, origin)) => {
                if let Some(origin) = origin {
                    origins.insert(reference.to_string(), origin);
                }
                Ok(dump)
            }
            Err(e) => {
                let e = format!("{e:#}");
                results.reference_errors.insert(format!("{}/{}/{}", case.model.id, case.prompt.id, reference), e.clone());
                Err(e)
            }
        };
        timings.references += t.elapsed();
        (reference.to_string(), dump)
    };
    // The truth first: its greedy tokens are the decode history the engine and every reference
    // are fed, so their steps stay aligned after a flip and every step can be compared, and its
    // last logits are what every sampler samples.
    let mut truth = ctx.suite.truth.as_ref().map(|name| fetch(name, &Fed::default(), results));
    let fed = match &truth {
        Some((name, Ok(dump))) => match Fed::from_truth(dump, ctx.suite.n_generate) {
            Ok(fed) => fed,
            Err(e) => {
                let e = format!("{e:#}");
                results.reference_errors.insert(format!("{}/{}/{}", case.model.id, case.prompt.id, name), e.clone());
                truth = Some((name.clone(), Err(e)));
                Fed::default()
            }
        },
        _ => Fed::default(),
    };
    // The engine runs when it is the subject or a reference: on what the truth feeds everyone.
    let t = Instant::now();
    let mut trace = if ctx.subject.is_engine() || case.refs.iter().any(|r| r == ENGINE) {
        let traced = engine_run::trace(model, &case.prompt.text, ctx.suite.n_generate, ctx.suite.temperature, fed.shared())
            .with_context(|| format!("engine on {} / {}", case.model.id, case.prompt.id))?;
        Some(traced)
    } else {
        None
    };
    timings.engine += t.elapsed();
    let mut dumps: Vec<_> = case
        .refs
        .iter()
        .map(|reference| match (reference.as_str(), &ctx.subject) {
            (ENGINE, Subject::Engine) => (reference.clone(), Err("the engine is this run's subject, so it is no reference of it".to_string())),
            (ENGINE, _) => {
                let trace = trace.take().expect("traced above: the engine is a reference");
                (reference.clone(), Ok(engine_dump(ctx, &case, model, sha, &fed, trace.tensors)))
            }
            _ => fetch(reference, &fed, results),
        })
        .collect();
    let t = Instant::now();
    let side = match ctx.subject {
        Subject::Engine => Side::Engine(trace.take().expect("traced above: the engine is the subject")),
        subject => match fetch_subject(ctx, &case, subject, &fed) {
            Ok(side) => side,
            Err(e) => {
                results.reference_errors.insert(format!("{}/{}/{} (the subject)", case.model.id, case.prompt.id, subject.name()), format!("{e:#}"));
                timings.references += t.elapsed();
                let empty = BTreeMap::new();
                let at = results.cases.len();
                return Ok(CaseRun { case, model_path, timings, subject: empty, subject_dump: None, dumps, origins, truth, fed, results: at..at });
            }
        },
    };
    timings.references += t.elapsed();
    let subject = side.tensors();
    let arch = model.config().arch.name();
    let entries = ctx.catalog.entries(arch, model.config().n_layers);
    let t = Instant::now();
    let duplicates = refuse_copies(&case, &mut dumps, truth.as_ref(), &entries, results);
    let readable: Vec<(&String, &Dump)> = dumps.iter().filter_map(|(reference, dump)| Some((reference, dump.as_ref().ok()?))).collect();
    let class = |reference: &str| class_of(&case, reference);
    // Flips on the shared history are judged from each reference's own step logits.
    let evidence = match (&truth, &fed.history) {
        (Some((_, Ok(truth))), Some(_)) => {
            let refs: Vec<(&str, &Dump, Class)> = readable.iter().map(|&(r, d)| (r.as_str(), d, class(r))).collect();
            steps::StepEvidence::new(truth, &refs)
        }
        _ => None,
    };
    // Token checks may measure a near-tie's gap, which is an engine forward pass: they go first,
    // one reference at a time, so that pass has the pool to itself and its time is the engine's
    // (as is the decode-vs-prefill pass below: `gap_time` collects both).
    // With a truth, the sampling checkpoint is judged knowing where its samplers' cuts are.
    let cuts = match (&truth, &fed.sampler_logits) {
        (Some((_, Ok(_))), Some(input)) => Some(sampling::Cuts::new(&input.values, &ctx.catalog.samplers)),
        _ => None,
    };
    let at_cuts = |e: &Entry| cuts.is_some() && (e.tensor == catalog::SAMPLER_PROBS || e.tensor == catalog::SAMPLED);
    let (cut_entries, rest): (Vec<Entry>, Vec<Entry>) = entries.iter().cloned().partition(|e| at_cuts(e));
    let (token_entries, tensor_entries): (Vec<_>, Vec<_>) = rest.into_iter().partition(|e| e.is_ids);
    let gap_time = std::sync::Mutex::new(Duration::ZERO);
    let token_checks: Vec<_> = readable
        .iter()
        .map(|&(reference, dump)| {
            let tie = |flip: &compare::Flip| {
                if let Some(e) = &evidence {
                    return e.tie(reference, flip).unwrap_or(compare::Tie::EngineGap(None));
                }
                // Only the in-process engine can measure its own gap; a dumped subject's is unknown.
                let Side::Engine(trace) = &side else { return compare::Tie::EngineGap(None) };
                let t = Instant::now();
                // The reference's own prefix up to the flip: prompt ids, then its first `step` tokens.
                let mut ids: Vec<u32> = dump.manifest.token_ids.iter().map(|&t| t as u32).collect();
                if let Ok(Lookup::Tensor(Tensor { values: Values::Ids(generated), .. })) = dump.get(TensorName::Generated.as_str()) {
                    ids.extend(generated.iter().take(flip.step).map(|&t| t as u32));
                }
                // Up to a flip both sides chose the same tokens, so the engine usually recorded
                // this gap itself while tracing; a forward pass only if the prompts' tokens differ.
                let gap = trace.gap_after(&ids).or_else(|| engine_run::top2_gap(model, &ids));
                *gap_time.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += t.elapsed();
                compare::Tie::EngineGap(gap)
            };
            let tokens = compare::Tokens { aligned: fed.history.is_some(), tie: &tie };
            compare::compare_case(subject, dump, &token_entries, ctx.spec, class(reference), tokens)
        })
        .collect();
    // Every other checkpoint, all references at once: judged by each tensor's noise floor when
    // the suite has a truth and its dump could be had, else by the pooled tolerances.
    let with_class: Vec<(&Dump, Class)> = readable.iter().map(|&(reference, dump)| (dump, class(reference))).collect();
    let (mut tensor_checks, mut truth_checks) = match &truth {
        Some((name, Ok(dump))) => {
            let (by_reference, mut against_truth) = compare::compare_with_truth(subject, &with_class, dump, &tensor_entries, ctx.spec);
            // The decode path's own finding needs the engine in-process: another prefill of it.
            if let Side::Engine(trace) = &side {
                let mut prefill_time = Duration::ZERO;
                let check = decode_vs_prefill(ctx, model, trace, fed.history.as_deref(), &with_class, dump, &tensor_entries, &mut prefill_time)?;
                *gap_time.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += prefill_time;
                if let Some(check) = check {
                    against_truth.push(check);
                }
            }
            (by_reference, Some((name, dump, against_truth)))
        }
        _ => (compare::compare_all(subject, &with_class, &tensor_entries, ctx.spec), None),
    };
    if let (Some(cuts), Some((_, truth_dump, against_truth))) = (&cuts, &mut truth_checks) {
        let sides: Vec<(&str, Class)> = readable.iter().map(|&(reference, _)| (reference.as_str(), class(reference))).collect();
        for e in &cut_entries {
            let references: Vec<_> = readable.iter().map(|(_, d)| d.get(&e.key).map_err(|x| x.to_string())).collect();
            let truth_lookup = truth_dump.get(&e.key).map_err(|x| x.to_string());
            let (by_reference, vs_truth) = if e.tensor == catalog::SAMPLER_PROBS {
                sampling::judge_distributions(e, subject.get(&e.key), &references, &sides, truth_lookup, cuts, ctx.spec)
            } else {
                sampling::judge_all_draws(e, subject.get(&e.key), &references, &truth_lookup, cuts, &ctx.catalog.samplers, ctx.spec)
            };
            for (checks, check) in tensor_checks.iter_mut().zip(by_reference) {
                checks.push(check);
            }
            against_truth.push(vs_truth);
        }
    }
    // Results keep the order of `case.refs`, checks the catalog's.
    let order: BTreeMap<&str, usize> = entries.iter().enumerate().map(|(i, e)| (e.key.as_str(), i)).collect();
    let first = results.cases.len();
    for (&(reference, dump), (mut checks, tensors)) in readable.iter().zip(token_checks.into_iter().zip(tensor_checks)) {
        checks.extend(tensors);
        checks.sort_by_key(|c| order.get(c.key.as_str()).copied());
        let provenance = provenance_of(ctx, reference, arch)?;
        results.cases.push(CaseResult {
            model: case.model.id.clone(),
            model_sha256: sha.to_string(),
            prompt: case.prompt.id.clone(),
            reference: reference.clone(),
            reference_version: dump.manifest.version.clone(),
            dtype: case.model.class.into(),
            role: Role::Reference,
            checks,
            provenance,
            duplicates: duplicates.get(reference.as_str()).cloned().unwrap_or_default(),
        });
    }
    if let Some((name, dump, checks)) = truth_checks {
        let provenance = provenance_of(ctx, name, arch)?;
        results.cases.push(CaseResult {
            model: case.model.id.clone(),
            model_sha256: sha.to_string(),
            prompt: case.prompt.id.clone(),
            reference: name.clone(),
            reference_version: dump.manifest.version.clone(),
            dtype: case.model.class.into(),
            role: Role::Truth,
            checks,
            provenance,
            duplicates: Vec::new(),
        });
    }
    let in_engine = gap_time.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    timings.engine += in_engine;
    timings.compare += t.elapsed().saturating_sub(in_engine);
    let (subject, subject_dump) = side.into_parts();
    Ok(CaseRun { case, model_path, timings, subject, subject_dump, dumps, origins, truth, fed, results: first..results.cases.len() })
}

/// The subject's side of one case.
enum Side {
    /// The engine's traced run, which can still measure a near-tie's gap and prefill its steps.
    Engine(engine_run::Trace),
    /// A dump's tensors, every one read.
    Dumped { tensors: BTreeMap<String, Tensor>, dump: Box<Dump> },
}

impl Side {
    fn tensors(&self) -> &BTreeMap<String, Tensor> {
        match self {
            Side::Engine(trace) => &trace.tensors,
            Side::Dumped { tensors, .. } => tensors,
        }
    }

    fn into_parts(self) -> (BTreeMap<String, Tensor>, Option<Dump>) {
        match self {
            Side::Engine(trace) => (trace.tensors, None),
            Side::Dumped { tensors, dump } => (tensors, Some(*dump)),
        }
    }
}

/// A dumped subject's dump of one case, checked as a reference's is, and every tensor read.
fn fetch_subject(ctx: &Setup, case: &Case, subject: &Subject, fed: &Fed) -> Result<Side> {
    let dump = match subject {
        Subject::Engine => anyhow::bail!("the engine is traced in-process, not fetched"),
        Subject::Reference(name) => fetch_dump(ctx, case, name, fed)?,
        Subject::External { name, from } => {
            let dump = external_dump(ctx, case, name, from, fed)?;
            check_fed(&dump, name, case, &model_sha(&resolve(ctx.root, &case.model.path))?, fed)?;
            dump
        }
    };
    let tensors = dump.read_all().with_context(|| format!("reading the subject's dump {}", dump.dir.display()))?;
    Ok(Side::Dumped { tensors, dump: Box::new(dump) })
}

/// An outside subject's dump of one case, made now when its dumper is a command; not yet checked
/// against the case ([`check_fed`] does that).
pub fn external_dump(ctx: &Setup, case: &Case, name: &str, from: &External, fed: &Fed) -> Result<Dump> {
    let model = resolve(ctx.root, &case.model.path);
    let dir = match from {
        External::Dumps(root) => root.join(&case.model.id).join(&case.prompt.id).join(name),
        External::Command { line, out, timeout } => {
            let dir = out.join(&case.model.id).join(&case.prompt.id).join(name);
            let history = fed.history_ids();
            let req = dump_request(ctx, case, &model, history.as_deref(), fed, &dir);
            let dumpers = Dumpers { root: ctx.root.to_path_buf(), python: PathBuf::from("sh"), timeout: *timeout };
            dumpers.run_line(name, line, &req, &dir.with_extension("stderr.log"))?;
            dir
        }
    };
    Dump::open(&dir).with_context(|| format!("the {name} dump for {}/{}", case.model.id, case.prompt.id))
}

/// The engine as a reference: its traced run as a dump in memory, with the manifest a dumper
/// would write, so it is fetched, checked and judged as every reference's is.
fn engine_dump(ctx: &Setup, case: &Case, model: &Model, sha: &str, fed: &Fed, tensors: BTreeMap<String, Tensor>) -> Dump {
    let token_ids = match tensors.get(TensorName::Tokens.as_str()).map(|t| &t.values) {
        Some(Values::Ids(ids)) => ids.clone(),
        _ => Vec::new(),
    };
    let manifest = crate::dumps::Manifest {
        reference: ENGINE.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        arch: model.config().arch.name().to_string(),
        n_layers: model.config().n_layers,
        model: case.model.path.clone(),
        model_sha256: sha.to_string(),
        prompt: case.prompt.text.clone(),
        token_ids,
        dtype: "float32".to_string(),
        threads: ctx.suite.threads,
        n_generate: ctx.suite.n_generate,
        temperature: f64::from(ctx.suite.temperature),
        wall_time_s: 0.0,
        command: "parity (the engine, in-process)".to_string(),
        force_tokens: fed.history_ids(),
        sampler_logits_sha256: fed.sampler_logits.as_ref().map(|s| s.sha256.clone()),
        provenance: None,
        tensors: BTreeMap::new(),
    };
    Dump::in_memory("(the engine, in-process)", manifest, tensors)
}

/// The tolerance class a side is judged in: the engine computes in f32 whatever the file holds.
fn class_of(case: &Case, name: &str) -> Class {
    if name == ENGINE {
        Class::F32
    } else {
        case.model.class_for(name)
    }
}

/// Whose code computed each checkpoint of `name`'s dumps: the engine's own everywhere (it is its
/// own model code and kernels), every dumper's from checkpoints/provenance.toml.
fn provenance_of(ctx: &Setup, name: &str, arch: &str) -> Result<BTreeMap<String, reports::results::Provenance>> {
    if name == ENGINE {
        let own = reports::results::Provenance { kind: reports::vocab::Authorship::Own, reason: None };
        return Ok(ctx.catalog.checkpoints.iter().map(|c| (c.name.clone(), own.clone())).collect());
    }
    Ok(ctx.provenance.of(name, arch)?.clone())
}

/// Whose code computed each checkpoint of a dumped subject: a reference dumper's from
/// checkpoints/provenance.toml, an outside engine's from its manifest's `[provenance]` (nothing
/// credited when it declares none).
fn subject_provenance(ctx: &Setup, dump: &Dump, arch: &str) -> Result<BTreeMap<String, reports::results::Provenance>> {
    match ctx.subject {
        Subject::External { .. } => {
            let origin = dump.dir.join("manifest.toml").display().to_string();
            Ok(crate::provenance::declared(dump.manifest.provenance.as_ref(), &origin, ctx.catalog)?)
        }
        _ => provenance_of(ctx, ctx.subject.name(), arch),
    }
}

/// Finds the tensors two references dumped bit for bit alike (returned per reference, to be
/// recorded in its results), and refuses a dump identical in every tensor to another reference's
/// or the truth's: a copy under a second name would count as one more independent reference, so
/// it becomes a reference error (exit 3), as a stale dump does.
fn refuse_copies(
    case: &Case,
    dumps: &mut [(String, std::result::Result<Dump, String>)],
    truth: Option<&(String, std::result::Result<Dump, String>)>,
    entries: &[Entry],
    results: &mut RunResults,
) -> BTreeMap<String, Vec<reports::results::Duplicate>> {
    let mut sides = Vec::new();
    let mut at = Vec::new(); // index into `dumps` of each side; None for the truth
    for (i, (name, dump)) in dumps.iter().enumerate() {
        if let Ok(dump) = dump {
            sides.push(duplicates::Side { name, dump, votes: true });
            at.push(Some(i));
        }
    }
    if let Some((name, Ok(dump))) = truth {
        sides.push(duplicates::Side { name, dump, votes: false });
        at.push(None);
    }
    let found = duplicates::find(&sides, entries);
    let names: Vec<String> = sides.iter().map(|s| s.name.to_string()).collect();
    let dirs: Vec<String> = sides.iter().map(|s| s.dump.dir.display().to_string()).collect();
    let mut flagged: BTreeMap<String, Vec<reports::results::Duplicate>> = BTreeMap::new();
    for (name, list) in names.iter().zip(found.duplicates) {
        if !list.is_empty() {
            flagged.insert(name.clone(), list);
        }
    }
    for (copy, original) in found.copies {
        let Some(i) = at[copy] else { continue };
        let e = format!(
            "{}: every tensor is bit for bit the {} dump's ({}): a copy under another name is not an independent reference; remake it (scripts/make-dumps.sh) or run --live",
            dirs[copy], names[original], dirs[original]
        );
        results.reference_errors.insert(format!("{}/{}/{}", case.model.id, case.prompt.id, names[copy]), e.clone());
        dumps[i].1 = Err(e);
        flagged.remove(&names[copy]);
    }
    flagged
}

/// The engine's step logits recomputed by one prefill of the prompt and the whole history, judged
/// against the truth like the decode path's: the decode path's own finding. When `step_logits`
/// fails and this passes, the fault is in the decode path (the KV cache, one-token kernels).
#[allow(clippy::too_many_arguments)]
fn decode_vs_prefill(
    ctx: &Setup,
    model: &Model,
    trace: &engine_run::Trace,
    history: Option<&[u32]>,
    dumps: &[(&Dump, Class)],
    truth: &Dump,
    entries: &[crate::catalog::Entry],
    engine_time: &mut Duration,
) -> Result<Option<reports::results::CheckResult>> {
    let (Some(history), Some(entry)) = (history, entries.iter().find(|e| e.key == catalog::STEP_LOGITS)) else { return Ok(None) };
    let Some(Tensor { values: Values::Ids(prompt), .. }) = trace.tensors.get(TensorName::Tokens.as_str()) else { return Ok(None) };
    let t = Instant::now();
    let prompt: Vec<u32> = prompt.iter().map(|&id| id as u32).collect();
    let prefilled = engine_run::prefill_steps(model, &prompt, history).context("the engine's prefill of the whole history")?;
    *engine_time += t.elapsed();
    let engine = BTreeMap::from([(entry.key.clone(), prefilled)]);
    let (_, mut checks) = compare::compare_with_truth(&engine, dumps, truth, std::slice::from_ref(entry), ctx.spec);
    Ok(checks.pop().map(|mut check| {
        check.key = format!("{}.prefill", entry.key);
        let what = "the same steps by one prefill of the prompt and the history (decode-vs-prefill)";
        check.note = Some(check.note.map_or(what.to_string(), |n| format!("{what}; {n}")));
        check
    }))
}

/// What a case's truth gives the engine and every reference of the case, so that their outputs
/// compare step for step: its greedy tokens as the decode history, and its last logits as the
/// input of every sampler of the `sampling` checkpoint.
#[derive(Clone, Debug, Default)]
pub struct Fed {
    /// The truth's greedy ids, when it generated any.
    pub history: Option<Vec<u32>>,
    pub sampler_logits: Option<SamplerInput>,
}

/// The logits every implementation's samplers are given: the truth's `last_logits` as dumped.
#[derive(Clone, Debug)]
pub struct SamplerInput {
    /// The truth's file of them, handed to live dumpers.
    pub path: PathBuf,
    pub values: Vec<f32>,
    /// Of their little-endian f32 bytes: what every dump records it sampled
    /// (`sampler_logits_sha256`).
    pub sha256: String,
}

impl Fed {
    /// The inputs a truth's dump sets for its case. Its recorded sampler input must be its own
    /// last logits, else it is a stale dump.
    pub fn from_truth(truth: &Dump, n_generate: usize) -> Result<Fed> {
        let history = match truth.get(TensorName::Generated.as_str()) {
            Ok(Lookup::Tensor(Tensor { values: Values::Ids(ids), .. })) if ids.len() == n_generate && !ids.is_empty() => {
                Some(ids.iter().map(|&id| u32::try_from(id)).collect::<std::result::Result<_, _>>().context("the truth's generated ids")?)
            }
            _ => None,
        };
        let sampler_logits = match (
            truth.get(TensorName::LastLogits.as_str())?,
            truth.manifest.tensors.get(TensorName::LastLogits.as_str()).and_then(|r| r.file.as_ref()),
        ) {
            (Lookup::Tensor(Tensor { values: Values::F32(values), .. }), Some(file)) => {
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                let sha256 = reports::hashes::sha256_bytes(&bytes);
                if truth.manifest.sampler_logits_sha256.as_deref() != Some(sha256.as_str()) {
                    anyhow::bail!(
                        "{}: its samplers did not sample its own last logits (an older dump, before the sampling checkpoint?); remake it (scripts/make-dumps.sh) or run --live",
                        truth.dir.display()
                    );
                }
                Some(SamplerInput { path: truth.dir.join(file), values, sha256 })
            }
            _ => None,
        };
        Ok(Fed { history, sampler_logits })
    }

    /// The history as dumps record it (`force_tokens`).
    fn history_ids(&self) -> Option<Vec<i64>> {
        self.history.as_ref().map(|h| h.iter().map(|&id| i64::from(id)).collect())
    }

    /// As the engine takes it.
    pub fn shared(&self) -> engine::Shared<'_> {
        engine::Shared { history: self.history.as_deref(), sampler_logits: self.sampler_logits.as_ref().map(|s| s.values.as_slice()) }
    }
}

/// What a dumper is asked for `case`: the suite's settings on `model`, fed the truth's `history`
/// and logits, written to `out`.
fn dump_request<'a>(ctx: &'a Setup, case: &'a Case, model: &'a Path, history: Option<&'a [i64]>, fed: &'a Fed, out: &'a Path) -> DumpRequest<'a> {
    DumpRequest {
        model,
        prompt: &case.prompt.text,
        n_generate: ctx.suite.n_generate,
        temperature: ctx.suite.temperature,
        threads: ctx.suite.threads,
        force_tokens: history,
        sampler_logits: fed.sampler_logits.as_ref().map(|s| s.path.as_path()),
        out,
    }
}

/// What a case's truth feeds the rest of the case ([`Fed`]), or nothing when the suite has no truth.
pub fn case_fed(ctx: &Setup, case: &Case) -> Result<Fed> {
    let Some(truth) = &ctx.suite.truth else { return Ok(Fed::default()) };
    Fed::from_truth(&fetch_dump(ctx, case, truth, &Fed::default())?, ctx.suite.n_generate)
}

/// One reference's dump of one case: read from the dumps folder, or produced now. Either way it
/// must be this case's dump (see [`check_provenance`]) and made on what the case feeds it.
pub fn fetch_dump(ctx: &Setup, case: &Case, reference: &str, fed: &Fed) -> Result<Dump> {
    Ok(fetch(ctx, case, reference, fed)?.0)
}

/// [`fetch_dump`], and where a live dump came from when the dump cache is on.
pub fn fetch(ctx: &Setup, case: &Case, reference: &str, fed: &Fed) -> Result<(Dump, Option<Origin>)> {
    let model = resolve(ctx.root, case.model.reference_path(reference));
    let model_sha256 = model_sha(&model)?;
    let history = fed.history_ids();
    let mut origin = None;
    let dump = match ctx.source {
        Source::Dumps(root) => {
            let dir = root.join(&case.model.id).join(&case.prompt.id).join(reference);
            Dump::open(&dir).with_context(|| format!("{reference} dump for {}/{}", case.model.id, case.prompt.id))?
        }
        Source::Live { dumpers, out, cache } => {
            let dir = out.join(&case.model.id).join(&case.prompt.id).join(reference);
            let req = dump_request(ctx, case, &model, history.as_deref(), fed, &dir);
            let log = dir.with_extension("stderr.log");
            // Without the dumper's identity (no reference environment) there is no key: the
            // dumper runs, and says what is missing.
            let dumper = dumpers.identity(reference).ok();
            let keyed = cache
                .as_ref()
                .zip(dumper)
                .map(|(c, dumper)| (c, c.key(reference, &dumper, &req, &model_sha256, fed.sampler_logits.as_ref().map(|s| s.sha256.as_str()))));
            let (at, from) = live_dump(dumpers, reference, &req, &log, keyed)?;
            origin = from;
            Dump::open(&at).with_context(|| format!("reading the {reference} dump at {}", at.display()))?
        }
    };
    check_fed(&dump, reference, case, &model_sha256, fed)?;
    Ok((dump, origin))
}

/// A fetched dump must be `name`'s of this case ([`check_provenance`]), made on what the case
/// feeds everyone: the truth's decode history and its last logits for the samplers.
fn check_fed(dump: &Dump, name: &str, case: &Case, model_sha256: &str, fed: &Fed) -> Result<()> {
    check_provenance(dump, name, &case.prompt.text, model_sha256)?;
    let history = fed.history_ids();
    if dump.manifest.force_tokens != history {
        anyhow::bail!(
            "{}: its decode history ({}) is not the one this case feeds ({}); remake it (scripts/make-dumps.sh) or run --live",
            dump.dir.display(),
            history_text(dump.manifest.force_tokens.as_deref()),
            history_text(history.as_deref())
        );
    }
    if let Some(input) = &fed.sampler_logits {
        if dump.manifest.sampler_logits_sha256.as_deref() != Some(input.sha256.as_str()) {
            anyhow::bail!(
                "{}: its samplers did not sample the truth's last logits, which this case feeds them; remake it (scripts/make-dumps.sh) or run --live",
                dump.dir.display()
            );
        }
    }
    Ok(())
}

/// A live dump's folder: the stored one when its key is in the cache, else made now (and stored).
fn live_dump(
    dumpers: &Dumpers,
    reference: &str,
    req: &DumpRequest,
    log: &Path,
    keyed: Option<(&DumpCache, DumpKey)>,
) -> Result<(PathBuf, Option<Origin>)> {
    let Some((cache, key)) = keyed else {
        dumpers.run(reference, req, log)?;
        return Ok((req.out.to_path_buf(), None));
    };
    // The cache saves time; when it cannot be read or written the dumper runs as without it.
    let stored = cache.lookup(&key).unwrap_or_else(|e| {
        eprintln!("parity: warning: {e}; running the {reference} dumper");
        None
    });
    if let Some(stored) = stored {
        let log = cache.log(&key);
        return Ok((stored, Some(Origin { key, reused: true, log })));
    }
    dumpers.run(reference, req, log)?;
    match cache.insert(&key, req.out, Some(log)) {
        Ok(stored) => {
            let log = cache.log(&key);
            Ok((stored, Some(Origin { key, reused: false, log })))
        }
        Err(e) => {
            eprintln!("parity: warning: {e}; the {reference} dump is read from {} and not kept", req.out.display());
            Ok((req.out.to_path_buf(), None))
        }
    }
}

/// A dump is evidence only for the case it was made for. A stale dump (of an older model file or
/// prompt) or a misplaced one (another reference's, copied into this reference's folder) would
/// otherwise be compared as if it were this reference's view of this case, and a copy would count
/// as one more independent reference agreeing.
pub fn check_provenance(dump: &Dump, reference: &str, prompt: &str, model_sha256: &str) -> Result<()> {
    let m = &dump.manifest;
    let at = dump.dir.display();
    let name = RefName::parse(reference)?;
    if !name.made(&m.reference, &m.version) {
        anyhow::bail!("{at}: expected a {reference} dump, but its manifest says it is {}'s ({})", m.reference, m.version);
    }
    if m.model_sha256 != model_sha256 {
        anyhow::bail!(
            "{at}: a dump of another model file (sha256 {}, this case's model is {}); remake it (scripts/make-dumps.sh) or run --live",
            short(&m.model_sha256),
            short(model_sha256)
        );
    }
    if m.prompt != prompt {
        anyhow::bail!("{at}: a dump of another prompt ({:?}, this case's is {prompt:?}); remake it (scripts/make-dumps.sh) or run --live", m.prompt);
    }
    Ok(())
}

fn history_text(ids: Option<&[i64]>) -> String {
    ids.map_or("its own greedy tokens".into(), |ids| format!("forced on {} tokens of the truth", ids.len()))
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The sha256 the dumpers record for a model: of the file, or of every file of a folder
/// concatenated in path order. Remembered while the files do not change ([`reports::hashes`]):
/// a suite names the same file for several cases and references.
pub fn model_sha(path: &Path) -> Result<String> {
    let files = reports::hashes::files_under(path)?;
    Ok(reports::hashes::cache().sha256(path, &files)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dumps::Manifest;

    fn dump(reference: &str, sha: &str, prompt: &str) -> Dump {
        let text = format!(
            "reference = {reference:?}\nversion = \"1\"\narch = \"llama\"\nn_layers = 1\nmodel = \"m.gguf\"\nmodel_sha256 = {sha:?}\nprompt = {prompt:?}\ntoken_ids = [1]\ndtype = \"float32\"\nthreads = 1\nn_generate = 1\ntemperature = 1.0\nwall_time_s = 0.1\ncommand = \"dump\"\n"
        );
        Dump { dir: PathBuf::from("dumps/m/p").join(reference), manifest: Manifest::parse(&text).unwrap(), memory: None }
    }

    #[test]
    fn a_dump_counts_only_for_its_own_reference_model_and_prompt() {
        assert!(check_provenance(&dump("pytorch", "aa", "hi"), "pytorch", "hi", "aa").is_ok());
        let copied = check_provenance(&dump("pytorch", "aa", "hi"), "tinygrad", "hi", "aa").unwrap_err().to_string();
        assert!(copied.contains("expected a tinygrad dump") && copied.contains("pytorch"), "{copied}");
        let release = |version: &str| {
            let mut d = dump("llamacpp", "aa", "hi");
            d.manifest.version = format!("llama-cpp-python {version}, kv cache f32");
            d
        };
        assert!(check_provenance(&release("0.3.20"), "llamacpp@0.3.20", "hi", "aa").is_ok());
        let other_release = check_provenance(&release("0.3.36"), "llamacpp@0.3.20", "hi", "aa").unwrap_err().to_string();
        assert!(other_release.contains("expected a llamacpp@0.3.20 dump") && other_release.contains("0.3.36"), "{other_release}");
        let stale_model = check_provenance(&dump("pytorch", "bb", "hi"), "pytorch", "hi", "aa").unwrap_err().to_string();
        assert!(stale_model.contains("another model file"), "{stale_model}");
        let stale_prompt = check_provenance(&dump("pytorch", "aa", "hi"), "pytorch", "hi!", "aa").unwrap_err().to_string();
        assert!(stale_prompt.contains("another prompt"), "{stale_prompt}");
    }
}
