//! What `run`, `diff`, `bisect` and `calibrate` compare: the command-line options that pick the
//! cases and where their reference dumps come from, shared by all four.

use anyhow::{bail, Context, Result};
use harness::catalog::Catalog;
use harness::dump_cache::DumpCache;
use harness::live::{Dumpers, PrivateDir};
use harness::pipeline::{self, CaseRun, Setup, Source};
use harness::provenance::{references_in, Provenance};
use harness::reference::{dumper_of, RefName};
use harness::spec::{Class, Spec};
use harness::subject::{External, Subject, ENGINE};
use harness::suite::{Case, Shard, Suite, SuiteModel, SuitePrompt};
use reports::results::RunResults;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct Selection {
    /// The suite to run (models x prompts x references).
    #[arg(long, default_value = "checkpoints/suite.toml")]
    pub suite: PathBuf,
    /// One of the suite's models, by id; or any model (a .gguf file or an HF folder) in place of
    /// the suite's models.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// One of the suite's prompts, by id; or any text in place of the suite's prompts.
    #[arg(long)]
    pub prompt: Option<String>,
    /// References to compare against, comma-separated, `engine` among them when another is the
    /// subject (default: each model's list in the suite, less the subject, plus the engine when
    /// it is not the subject; with --model FILE: llama.cpp, PyTorch, tinygrad and MLX).
    #[arg(long, value_delimiter = ',')]
    pub refs: Option<Vec<String>>,
    /// The implementation judged: `engine` (the default, in-process), a reference's name
    /// (`llamacpp`), or the name an outside engine's dumps carry, with --subject-cmd or
    /// --subject-dumps (docs/subjects.md).
    #[arg(long, value_name = "NAME")]
    pub subject: Option<String>,
    /// An outside engine's dumper, a shell command line given the dumper contract's options.
    #[arg(long, value_name = "CMD", conflicts_with = "subject_dumps", requires = "subject")]
    pub subject_cmd: Option<String>,
    /// An outside engine's finished dumps, under DIR/<model id>/<prompt id>/<NAME>/.
    #[arg(long, value_name = "DIR", requires = "subject")]
    pub subject_dumps: Option<PathBuf>,
    /// Tolerance class of llama.cpp for --model (f32, f16, quantized): the one reference that
    /// rounds activations to the weights' precision. The others compute in f32 and are judged so.
    /// Default: from the file's block matrices (quantized, else f16/bf16, else f32).
    #[arg(long)]
    pub class: Option<Class>,
    /// Run the reference dumpers now (needs scripts/setup-references.sh) instead of reading dumps.
    #[arg(long, conflicts_with = "dumps")]
    pub live: bool,
    /// Read dumps from DIR/<model id>/<prompt id>/<reference>/ (default: the suite's `dumps`).
    #[arg(long)]
    pub dumps: Option<PathBuf>,
    /// Run only the K-th of N parts of the case list (1-based), for a CI matrix.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// With --live, run every dumper even when the dump cache holds its dump for the same
    /// request (the cache: `$PARITY_DUMP_CACHE_DIR`, default `$PARITY_CACHE/dump-cache`, at most
    /// `$PARITY_DUMP_CACHE_GB` GB, 16 by default; least recently used dumps go first).
    #[arg(long)]
    pub no_dump_cache: bool,
    /// Seconds each reference dumper may take (--live).
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Worker threads for the engine (default: the suite's `threads`).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The checkpoint catalog.
    #[arg(long, default_value = "checkpoints/catalog.toml")]
    pub catalog: PathBuf,
    /// The tolerance spec.
    #[arg(long, default_value = "checkpoints/tolerances.toml")]
    pub tolerances: PathBuf,
    /// Whose code computed each checkpoint, per reference and model family.
    #[arg(long, default_value = "checkpoints/provenance.toml")]
    pub provenance: PathBuf,
}

/// The loaded inputs of a selection.
pub struct Loaded {
    pub root: PathBuf,
    pub suite: Suite,
    pub suite_path: PathBuf,
    pub catalog: Catalog,
    pub catalog_path: PathBuf,
    pub spec: Spec,
    pub spec_path: PathBuf,
    pub provenance: Provenance,
    pub cases: Vec<Case>,
    pub source: Source,
    pub subject: Subject,
    /// Where live dumps go: a fresh owner-only folder, removed with this (even on an error).
    pub _live_dir: Option<PrivateDir>,
    /// Where an outside subject's command writes its dumps, likewise.
    pub _subject_dir: Option<PrivateDir>,
}

impl Selection {
    /// Reads suite, catalog and spec, and lists the cases.
    pub fn load(&self, root: &Path) -> Result<Loaded> {
        let at = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                root.join(p)
            }
        };
        let (suite_path, catalog_path, spec_path) = (at(&self.suite), at(&self.catalog), at(&self.tolerances));
        let mut suite = Suite::load(&suite_path)?;
        let catalog = Catalog::load(&catalog_path).with_context(|| format!("reading the catalog {}", catalog_path.display()))?;
        let spec = Spec::load(&spec_path).with_context(|| format!("reading the tolerances {}", spec_path.display()))?;
        // The error names the file, table and metric itself.
        spec.validate(&catalog, &spec_path.display().to_string())?;
        let provenance_path = at(&self.provenance);
        let known = references_in(root).with_context(|| format!("listing the reference dumpers under {}", root.join("references").display()))?;
        let provenance = Provenance::load(&provenance_path, &catalog, &known)?;
        let mut subject_dir = None;
        let external = match (&self.subject_cmd, &self.subject_dumps) {
            (Some(line), _) => {
                let dir = PrivateDir::new("parity-subject").context("making a private folder for the subject's dumps")?;
                let out = dir.path().to_path_buf();
                subject_dir = Some(dir);
                Some(External::Command { line: line.clone(), out, timeout: Duration::from_secs(self.timeout) })
            }
            (None, Some(dir)) => Some(External::Dumps(at(dir))),
            (None, None) => None,
        };
        let subject = Subject::pick(self.subject.as_deref(), external, &known, suite.truth.as_deref())?;
        if let Some(t) = self.threads {
            if t == 0 {
                bail!("--threads must be at least 1");
            }
            suite.threads = t;
        }
        let suite_model = self.model.as_ref().and_then(|m| m.to_str()).and_then(|m| suite.models.iter().find(|x| x.id == m)).cloned();
        let suite_prompt = self.prompt.as_ref().and_then(|p| suite.prompts.iter().find(|x| &x.id == p)).cloned();
        if let Some(model) = suite_model {
            suite.models = vec![model];
        } else if let Some(model) = &self.model {
            // The file's stem names the dump folder, unless it could not be one folder (a control
            // character in the file name, say).
            let id = model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|id| harness::suite::check_name("model id", id).is_ok())
                .unwrap_or_else(|| "model".into());
            let refs = self.refs.clone().unwrap_or_else(|| ["llamacpp", "pytorch", "tinygrad", "mlx"].map(String::from).to_vec());
            let path = std::fs::canonicalize(model).with_context(|| format!("model {} not found", model.display()))?;
            // Only llama.cpp rounds activations to the weights' precision; PyTorch, tinygrad and
            // MLX dequantize and compute in f32 whatever the file holds, so --class is llama.cpp's.
            let ref_class = refs.iter().filter(|r| dumper_of(r) != "llamacpp").map(|r| (r.clone(), Class::F32)).collect();
            suite.models = vec![SuiteModel {
                id,
                path: path.display().to_string(),
                refs,
                class: match self.class {
                    Some(class) => class,
                    None => llamacpp_class(&path)?,
                },
                ref_class,
                about: None,
                ref_paths: Default::default(),
                prompts: None,
            }];
        }
        if let Some(prompt) = suite_prompt {
            for model in &mut suite.models {
                if model.prompts.as_ref().is_some_and(|ids| !ids.contains(&prompt.id)) {
                    bail!("model {} does not run prompt {} in {}", model.id, prompt.id, suite_path.display());
                }
            }
            suite.prompts = vec![prompt];
        } else if let Some(prompt) = &self.prompt {
            suite.prompts = vec![SuitePrompt { id: "prompt".into(), text: prompt.clone() }];
            suite.models.iter_mut().for_each(|m| m.prompts = None);
        }
        let mut cases = suite.cases();
        if let Some(refs) = &self.refs {
            // The truth is the yardstick, never a vote; the engine can be one when it is not the subject.
            let mut allowed: Vec<&str> = known.iter().map(String::as_str).filter(|r| Some(*r) != suite.truth.as_deref()).collect();
            allowed.push(ENGINE);
            for r in refs {
                // A reference may be named at a pinned release: llamacpp@0.3.20.
                let name = RefName::parse(r).map_err(|e| anyhow::anyhow!("--refs: {e}"))?;
                if !allowed.contains(&name.dumper()) || (name.dumper() == ENGINE && name.version().is_some()) {
                    bail!("--refs: unknown reference {r:?} ({}; a reference's pinned release as NAME@VERSION)", allowed.join(", "));
                }
            }
            subject.references_for(refs, true)?;
            for case in &mut cases {
                // The suite's references of the model that --refs names (at any release named),
                // in the suite's order, then the engine if named.
                let mut named: Vec<String> = Vec::new();
                for s in case.refs.iter().filter(|s| s.as_str() != ENGINE) {
                    let of_this = refs.iter().filter(|r| dumper_of(r) == dumper_of(s) && !named.contains(r)).cloned().collect::<Vec<_>>();
                    named.extend(of_this);
                }
                case.refs = named;
                if refs.iter().any(|r| r == ENGINE) {
                    case.refs.push(ENGINE.to_string());
                }
            }
        } else {
            for case in &mut cases {
                case.refs = subject.references_for(&case.refs, false)?;
            }
        }
        // Every reference a case may count, and the truth, must have said whose code it runs (the
        // engine's is its own everywhere).
        let named: Vec<&str> =
            cases.iter().flat_map(|c| c.refs.iter().map(String::as_str)).chain(suite.truth.as_deref()).filter(|r| *r != ENGINE).collect();
        provenance.covers(&named)?;
        if let Some(shard) = self.shard {
            cases = shard.select(cases);
        }
        let mut live_dir = None;
        let source = match (self.live, &self.dumps) {
            (true, _) => {
                let dir = PrivateDir::new("parity-live").context("making a private folder for the live dumps")?;
                let source = self.live_source(root, &catalog_path, dir.path())?;
                live_dir = Some(dir);
                source
            }
            (false, Some(dir)) => Source::Dumps(at(dir)),
            (false, None) => Source::Dumps(harness::suite::resolve(root, &suite.dumps)),
        };
        Ok(Loaded {
            root: root.to_path_buf(),
            suite,
            suite_path,
            catalog,
            catalog_path,
            spec,
            spec_path,
            provenance,
            cases,
            source,
            subject,
            _live_dir: live_dir,
            _subject_dir: subject_dir,
        })
    }

    /// The dumpers, writing into `out`, with the dump cache unless `--no-dump-cache`.
    pub fn live_source(&self, root: &Path, catalog_path: &Path, out: &Path) -> Result<Source> {
        let dumpers = Dumpers::from_env(root, Duration::from_secs(self.timeout));
        let cache = if self.no_dump_cache { None } else { open_dump_cache(catalog_path)? };
        Ok(Source::Live { dumpers, out: out.to_path_buf(), cache })
    }
}

/// The dump cache of this catalog: every key it makes shares its hash (each also has its dumper's).
fn open_dump_cache(catalog_path: &Path) -> Result<Option<DumpCache>> {
    let catalog = std::fs::read(catalog_path).with_context(|| format!("reading {}", catalog_path.display()))?;
    let context = format!("catalog {}", reports::hashes::sha256_bytes(&catalog));
    let gigabytes = match std::env::var("PARITY_DUMP_CACHE_GB") {
        Ok(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|g| g.is_finite() && *g >= 0.0)
            .with_context(|| format!("PARITY_DUMP_CACHE_GB={text:?}: give the dump cache's size limit in GB, a number like 16"))?,
        Err(_) => 16.0,
    };
    let dir = std::env::var_os("PARITY_DUMP_CACHE_DIR").map_or_else(|| harness::suite::parity_cache().join("dump-cache"), PathBuf::from);
    Ok(Some(DumpCache::open(&dir, (gigabytes * 1e9) as u64, &context)?))
}

impl Loaded {
    /// Runs engine, references and comparison over every case.
    pub fn run(&self, run_id: &str, prepare: Option<&dyn Fn(&mut engine::Model)>) -> Result<(RunResults, Vec<CaseRun>)> {
        super::threads::init(Some(self.suite.threads))?;
        pipeline::run(&Setup { prepare, ..self.setup(&self.source) }, self.cases.clone(), run_id)
    }

    /// What the pipeline needs to fetch and judge this selection's cases, reading `source`.
    pub fn setup<'a>(&'a self, source: &'a Source) -> Setup<'a> {
        Setup {
            root: &self.root,
            suite: &self.suite,
            catalog: &self.catalog,
            spec: &self.spec,
            provenance: &self.provenance,
            source,
            subject: &self.subject,
            prepare: None,
        }
    }
}

/// llama.cpp's tolerance class on `model`: it rounds activations to the precision of the block
/// matrices it multiplies, so a file with any quantized one is `quantized`, else any F16/BF16 one
/// `f16`, else `f32`. An HF folder is read as f32 (the suites convert it to F32 GGUF for llama.cpp).
fn llamacpp_class(model: &Path) -> Result<Class> {
    if model.is_dir() {
        return Ok(Class::F32);
    }
    let file = engine::gguf::GgufFile::open(model)
        .with_context(|| format!("reading {} for llama.cpp's tolerance class (or pass --class)", model.display()))?;
    let types: Vec<&str> =
        file.tensor_infos().iter().filter(|t| t.name.starts_with("blk.") && t.shape.len() == 2).map(|t| t.type_name.as_str()).collect();
    Ok(if types.iter().any(|t| !matches!(*t, "F32" | "F16" | "BF16")) {
        Class::Quantized
    } else if types.iter().any(|t| matches!(*t, "F16" | "BF16")) {
        Class::F16
    } else {
        Class::F32
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llamacpp_class_follows_the_block_matrices_of_the_file() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models");
        assert_eq!(llamacpp_class(&models.join("tiny-llama/model-f32.gguf")).unwrap(), Class::F32);
        assert_eq!(llamacpp_class(&models.join("tiny-llama/model-f16.gguf")).unwrap(), Class::F16);
        assert_eq!(llamacpp_class(&models.join("tiny-llama/model-q8_0.gguf")).unwrap(), Class::Quantized);
        assert_eq!(llamacpp_class(&models.join("tiny-llama/hf")).unwrap(), Class::F32);
        assert!(llamacpp_class(&models.join("tiny-llama/hf/config.json")).is_err());
    }
}
