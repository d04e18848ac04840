//! The suite: a matrix of models x prompts x references (`checkpoints/suite.toml`), and how it is
//! split into shards for a CI matrix.

use crate::reference::{dumper_of, RefName};
use anyhow::{bail, Context, Result};
use reports::vocab::Class;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// Where the reference dumps live: relative to the project root, or `cache:x` under the
    /// parity cache folder (dumps of real models are not committed).
    pub dumps: String,
    pub n_generate: usize,
    pub temperature: f32,
    pub threads: usize,
    /// The reference every case is also measured against as ground truth (`pytorch-f64`): the
    /// yardstick of each tensor's noise floor, never a vote in the verdict. Without it, checks are
    /// judged by the pooled tolerances of `tolerances.toml`.
    #[serde(default)]
    pub truth: Option<String>,
    /// The lowest confidence level (number or name, see reports::confidence) a passing run of
    /// this suite must reach, else it exits 1: a change that drops references or the generation
    /// match cannot pass the gate at a lower confidence nobody reads. `--min-confidence` overrides.
    #[serde(default)]
    pub min_confidence: Option<String>,
    #[serde(rename = "model")]
    pub models: Vec<SuiteModel>,
    #[serde(rename = "prompt")]
    pub prompts: Vec<SuitePrompt>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteModel {
    pub id: String,
    /// A .gguf file or an HF folder, relative to the project root (or absolute; `~/` expands).
    pub path: String,
    pub refs: Vec<String>,
    /// The tolerance class its comparisons are judged with (`checkpoints/tolerances.toml`), and
    /// the label its results carry.
    #[serde(default = "default_class")]
    pub class: Class,
    /// The class per reference where it differs from `class`: a reference that computes in
    /// another precision than the file's type suggests (PyTorch and tinygrad dequantize Q4_1 or
    /// F16 weights and compute in f32, as the engine does; llama.cpp rounds activations too).
    #[serde(default)]
    pub ref_class: std::collections::BTreeMap<String, Class>,
    /// Why this class: shown in reports (e.g. "llama.cpp rounds activations to 8 bits").
    #[serde(default)]
    pub about: Option<String>,
    /// What a reference loads instead of `path`, when it cannot read that format: the same
    /// weights written as a file it reads (an HF folder's F32 GGUF twin for llama.cpp).
    #[serde(default)]
    pub ref_paths: std::collections::BTreeMap<String, String>,
    /// Prompt ids this model runs (default: every prompt of the suite), to keep a large matrix
    /// inside the CI time budget.
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
}

impl SuiteModel {
    /// The tolerance class comparisons against `reference` are judged with.
    /// The class `reference` is judged in: its own entry, else its dumper's (a pinned release,
    /// `llamacpp@0.3.20`, computes as its dumper does), else the model's.
    pub fn class_for(&self, reference: &str) -> Class {
        self.ref_class.get(reference).or_else(|| self.ref_class.get(dumper_of(reference))).copied().unwrap_or(self.class)
    }

    /// The file `reference` reads: its own entry, else its dumper's, else the model's.
    pub fn reference_path(&self, reference: &str) -> &str {
        self.ref_paths.get(reference).or_else(|| self.ref_paths.get(dumper_of(reference))).map_or(&self.path, String::as_str)
    }
}

fn default_class() -> Class {
    Class::F32
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuitePrompt {
    pub id: String,
    pub text: String,
}

/// One model x prompt, with the references to compare it against.
#[derive(Clone, Debug)]
pub struct Case {
    pub model: SuiteModel,
    pub prompt: SuitePrompt,
    pub refs: Vec<String>,
}

impl Suite {
    pub fn load(path: &Path) -> Result<Suite> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading suite {}", path.display()))?;
        let suite: Suite = toml::from_str(&text).with_context(|| format!("parsing suite {}", path.display()))?;
        if suite.models.is_empty() || suite.prompts.is_empty() {
            bail!("suite {} lists no models or no prompts", path.display());
        }
        suite.check_names().with_context(|| format!("suite {}", path.display()))?;
        // A process argument cannot hold U+0000, so no dumper could be given such a prompt.
        if let Some(prompt) = suite.prompts.iter().find(|p| p.text.contains('\0')) {
            bail!("suite {}: prompt {} holds U+0000, which no dumper can be given; remove it", path.display(), prompt.id);
        }
        if let Some(level) = suite.min_confidence.as_deref().filter(|l| reports::confidence::level_named(l).is_none()) {
            bail!("suite {}: min_confidence {level:?} is not a confidence level (0-4 or {})", path.display(), reports::confidence::LEVELS.join(", "));
        }
        for model in &suite.models {
            if let Some(truth) = suite.truth.as_ref().filter(|t| model.refs.contains(t)) {
                bail!(
                    "suite {}: model {} lists the truth {truth:?} among its references; the truth is a yardstick, not a vote",
                    path.display(),
                    model.id
                );
            }
            for id in model.prompts.iter().flatten() {
                if !suite.prompts.iter().any(|p| &p.id == id) {
                    bail!("suite {}: model {} lists prompt {id:?}, which the suite does not define", path.display(), model.id);
                }
            }
        }
        Ok(suite)
    }

    /// Every id and reference name of the suite is one plain path component, since each is
    /// joined into a dump path (`<dumps>/<model id>/<prompt id>/<reference>/`).
    pub fn check_names(&self) -> std::result::Result<(), NameError> {
        for reference in self.truth.iter() {
            check_name("truth reference", reference)?;
        }
        for prompt in &self.prompts {
            check_name("prompt id", &prompt.id)?;
        }
        for model in &self.models {
            check_name("model id", &model.id)?;
            let refs = model.refs.iter().chain(model.ref_class.keys()).chain(model.ref_paths.keys());
            for reference in refs {
                let what = format!("model {}: reference", model.id);
                check_name(&what, reference)?;
                if let Err(e) = RefName::parse(reference) {
                    let why = match e {
                        crate::reference::RefNameError::BadVersion { .. } => "the version after @ must be dotted numbers, like llamacpp@0.3.20",
                        crate::reference::RefNameError::NoDumper { .. } => "no dumper before the @",
                    };
                    return Err(NameError { what, name: reference.clone(), why });
                }
            }
        }
        Ok(())
    }

    /// Every model x prompt, in file order.
    pub fn cases(&self) -> Vec<Case> {
        let mut cases = Vec::new();
        for model in &self.models {
            for prompt in &self.prompts {
                if model.prompts.as_ref().is_some_and(|ids| !ids.contains(&prompt.id)) {
                    continue;
                }
                cases.push(Case { model: model.clone(), prompt: prompt.clone(), refs: model.refs.clone() });
            }
        }
        cases
    }

    /// The folder holding one reference's dump of one case.
    pub fn dump_dir(&self, root: &Path, case: &Case, reference: &str) -> PathBuf {
        resolve(root, &self.dumps).join(&case.model.id).join(&case.prompt.id).join(reference)
    }
}

/// An id or reference name that cannot be one folder of a dump path.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{what} {name:?} is not a usable name: {why}")]
pub struct NameError {
    pub what: String,
    pub name: String,
    pub why: &'static str,
}

/// Refuses a name that would not stay one folder when joined into a path: empty, `.`, `..`, a
/// separator, or a control character (which also garbles error lines and manifests).
pub fn check_name(what: &str, name: &str) -> std::result::Result<(), NameError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." {
        "it names a folder relative to its parent"
    } else if name.contains(['/', '\\']) {
        "it contains a path separator (/ or \\)"
    } else if name.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(NameError { what: what.into(), name: name.into(), why })
}

/// `K/N`: the K-th (1-based) of N shards.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Shard, String> {
        let (k, n) = s.split_once('/').ok_or_else(|| format!("--shard {s:?}: expected K/N, e.g. 2/4"))?;
        let (index, count): (usize, usize) = match (k.parse(), n.parse()) {
            (Ok(k), Ok(n)) => (k, n),
            _ => return Err(format!("--shard {s:?}: K and N must be whole numbers")),
        };
        if count == 0 || index == 0 || index > count {
            return Err(format!("--shard {s:?}: need 1 <= K <= N"));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Round-robin over the case list, so every shard gets a mix of models.
    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        items.into_iter().enumerate().filter(|(i, _)| i % self.count == self.index - 1).map(|(_, t)| t).collect()
    }
}

/// `cache:x` (under the parity cache folder), `~/x` and relative paths (against `root`) made
/// absolute.
pub fn resolve(root: &Path, path: &str) -> PathBuf {
    if let Some(rest) = path.strip_prefix("cache:") {
        return parity_cache().join(rest);
    }
    match path.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None => root.join(path),
    }
}

/// Where setup puts what git does not hold: `$PARITY_CACHE`, default `~/.cache/parity`.
pub fn parity_cache() -> PathBuf {
    std::env::var_os("PARITY_CACHE").map(PathBuf::from).unwrap_or_else(|| home().join(".cache/parity"))
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_cases_without_overlap() {
        let parts: Vec<Vec<usize>> = (1..=3).map(|k| Shard { index: k, count: 3 }.select((0..8).collect())).collect();
        assert_eq!(parts, [vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]]);
    }

    #[test]
    fn shard_syntax_errors_say_what_is_expected() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        assert!("0/4".parse::<Shard>().unwrap_err().contains("1 <= K <= N"));
        assert!("5/4".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().unwrap_err().contains("K/N"));
    }

    #[test]
    fn the_committed_default_suite_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let suite = Suite::load(&root.join("checkpoints/suite.toml")).unwrap();
        assert!(suite.cases().len() >= 2);
    }

    #[test]
    fn the_committed_real_suite_parses_and_restricts_prompts_per_model() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let suite = Suite::load(&root.join("checkpoints/suite-real.toml")).unwrap();
        for case in suite.cases() {
            if let Some(ids) = &case.model.prompts {
                assert!(ids.contains(&case.prompt.id), "{} ran prompt {}", case.model.id, case.prompt.id);
            }
        }
    }

    fn suite_with(model_prompts: &str) -> Result<Suite> {
        suite_with_top("", model_prompts)
    }

    fn suite_with_top(top: &str, model_prompts: &str) -> Result<Suite> {
        let dir = std::env::temp_dir().join(format!("parity-suite-test-{}-{}-{}", std::process::id(), top.len(), model_prompts.len()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("suite.toml");
        let text = format!(
            "{top}dumps = \"d\"\nn_generate = 1\ntemperature = 1.0\nthreads = 1\n\
             [[model]]\nid = \"m\"\npath = \"m.gguf\"\nrefs = [\"pytorch\"]\n{model_prompts}\n\
             [[prompt]]\nid = \"a\"\ntext = \"A\"\n[[prompt]]\nid = \"b\"\ntext = \"B\"\n"
        );
        std::fs::write(&path, text)?;
        let suite = Suite::load(&path);
        std::fs::remove_dir_all(&dir)?;
        suite
    }

    #[test]
    fn a_prompt_holding_nul_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("parity-suite-nul-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("suite.toml");
        let text = "dumps = \"d\"\nn_generate = 1\ntemperature = 1.0\nthreads = 1\n[[model]]\nid = \"m\"\npath = \"m.gguf\"\n\
                    refs = [\"pytorch\"]\n[[prompt]]\nid = \"nul\"\ntext = \"a\\u0000b\"\n";
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", Suite::load(&path).unwrap_err());
        assert!(err.contains("prompt nul holds U+0000"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_suite_gate_names_a_confidence_level() {
        assert_eq!(suite_with_top("min_confidence = \"high\"\n", "").unwrap().min_confidence.as_deref(), Some("high"));
        for bad in ["hihg", "7"] {
            let err = suite_with_top(&format!("min_confidence = \"{bad}\"\n"), "").unwrap_err();
            assert!(format!("{err:#}").contains(&format!("min_confidence \"{bad}\" is not a confidence level")), "{err:#}");
        }
    }

    #[test]
    fn a_model_runs_only_the_prompts_it_lists() {
        let all = suite_with("").unwrap();
        assert_eq!(all.cases().len(), 2);
        let one = suite_with("prompts = [\"b\"]").unwrap();
        let ids: Vec<_> = one.cases().iter().map(|c| c.prompt.id.clone()).collect();
        assert_eq!(ids, ["b"]);
    }

    #[test]
    fn a_model_listing_an_unknown_prompt_is_an_error() {
        let err = suite_with("prompts = [\"zz\"]").unwrap_err();
        assert!(format!("{err:#}").contains("\"zz\""), "{err:#}");
    }

    #[test]
    fn a_reference_may_be_judged_in_its_own_class() {
        let suite = suite_with("class = \"quantized\"\nref_class = { pytorch = \"f32\" }").unwrap();
        let model = &suite.models[0];
        assert_eq!((model.class_for("pytorch"), model.class_for("llamacpp")), (Class::F32, Class::Quantized));
        let err = suite_with("ref_class = { pytorch = \"fp8\" }").unwrap_err();
        assert!(format!("{err:#}").contains("\"fp8\""), "{err:#}");
    }

    #[test]
    fn ids_and_reference_names_that_are_not_one_folder_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "tab\there", "bell\u{7}", "del\u{7f}", "nl\n"] {
            let err = check_name("model id", bad).unwrap_err();
            assert_eq!(err.name, bad);
            assert!(err.to_string().starts_with("model id "), "{err}");
        }
        for good in ["smollm2-f32", "gpt2_small.hf", "...x", "prompt", "café"] {
            assert_eq!(check_name("model id", good), Ok(()));
        }
        let cases = [
            ("id = \"m\"", "prompts = []", "[[prompt]]\nid = \"..\""),
            ("id = \"../../etc\"", "", "[[prompt]]\nid = \"a\""),
            ("id = \"m\"", "ref_paths = { \"a/b\" = \"x\" }", "[[prompt]]\nid = \"a\""),
        ];
        for (model_id, extra, prompt) in cases {
            let text = format!(
                "dumps = \"d\"\nn_generate = 1\ntemperature = 1.0\nthreads = 1\n\
                 [[model]]\n{model_id}\npath = \"m.gguf\"\nrefs = [\"pytorch\"]\n{extra}\n{prompt}\ntext = \"A\"\n"
            );
            let suite: Suite = toml::from_str(&text).unwrap();
            let err = suite.check_names().unwrap_err();
            assert!(err.to_string().contains("is not a usable name"), "{err}");
        }
    }

    #[test]
    fn cache_dumps_resolve_under_the_parity_cache() {
        let root = Path::new("/project");
        assert_eq!(resolve(root, "fixtures/dumps"), root.join("fixtures/dumps"));
        assert_eq!(resolve(root, "cache:dumps/real"), parity_cache().join("dumps/real"));
    }
}
