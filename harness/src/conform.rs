//! Does a dump keep the dumper contract? What an outside engine's author checks before putting it
//! under test (`parity conform`, docs/subjects.md): the manifest describes this case, every
//! catalog checkpoint is there by its name, each tensor has the truth's dtype and shape (never
//! broadcast or reshaped to fit) and is finite. Whether the values are right is the run's
//! judgement, made after these pass.

use crate::catalog::Entry;
use crate::dumps::{Dump, Lookup};
use crate::pipeline::Fed;
use crate::tensor::{Tensor, Values};
use std::fmt;

/// What kind of contract breach a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A manifest field says another case, model, prompt, history or sampler input than this one.
    Manifest,
    /// A catalog checkpoint the manifest does not list.
    Missing,
    /// Listed, with the dumper's reason it could not produce it: a run counts it missing.
    Unavailable,
    /// A tensor file listed under a key that is no checkpoint of the catalog for this model.
    Unknown,
    /// The file cannot be read, or disagrees with its own manifest record.
    Unreadable,
    Dtype,
    Shape,
    NonFinite,
    /// The manifest's `[provenance]` is missing or not a valid table: a run then credits the
    /// subject with no checkpoint.
    Provenance,
    /// The values are too far from the truth (the run's noise-floor judgement).
    Value,
}

impl Problem {
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Manifest => "manifest",
            Problem::Missing => "missing",
            Problem::Unavailable => "unavailable",
            Problem::Unknown => "unknown",
            Problem::Unreadable => "unreadable",
            Problem::Dtype => "dtype",
            Problem::Shape => "shape",
            Problem::NonFinite => "non-finite",
            Problem::Provenance => "provenance",
            Problem::Value => "value",
        }
    }
}

/// One breach, printed on one line: `tiny-llama-f32/fox: shape: blk.0.q: ...`.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub problem: Problem,
    /// `<model id>/<prompt id>`.
    pub case: String,
    /// The dump key or manifest field concerned.
    pub key: String,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}: {}", self.case, self.problem.as_str(), self.key, self.detail)
    }
}

/// What a case expects of the dump besides its tensors.
pub struct Expected<'a> {
    pub name: &'a str,
    pub prompt: &'a str,
    pub model_sha256: &'a str,
    pub n_generate: usize,
    pub fed: &'a Fed,
}

/// The manifest's fields against the case and the truth's dump of it.
pub fn check_manifest(case: &str, dump: &Dump, truth: &Dump, expected: &Expected) -> Vec<Finding> {
    let m = &dump.manifest;
    let t = &truth.manifest;
    let history = expected.fed.history.as_ref().map(|h| h.iter().map(|&id| i64::from(id)).collect::<Vec<_>>());
    let sampled = expected.fed.sampler_logits.as_ref().map(|s| s.sha256.as_str());
    let quoted = |s: &str| format!("{s:?}");
    let checks: Vec<(&str, bool, String, String)> = vec![
        ("reference", m.reference == expected.name, quoted(&m.reference), quoted(expected.name)),
        ("model_sha256", m.model_sha256 == expected.model_sha256, m.model_sha256.clone(), expected.model_sha256.to_string()),
        ("prompt", m.prompt == expected.prompt, quoted(&m.prompt), quoted(expected.prompt)),
        ("arch", m.arch == t.arch, quoted(&m.arch), quoted(&t.arch)),
        ("n_layers", m.n_layers == t.n_layers, m.n_layers.to_string(), t.n_layers.to_string()),
        ("token_ids", m.token_ids == t.token_ids, format!("{:?}", m.token_ids), format!("{:?} (the truth's)", t.token_ids)),
        ("n_generate", m.n_generate == expected.n_generate, m.n_generate.to_string(), expected.n_generate.to_string()),
        ("force_tokens", m.force_tokens == history, format!("{:?}", m.force_tokens), format!("{history:?} (--force-tokens)")),
        (
            "sampler_logits_sha256",
            m.sampler_logits_sha256.as_deref() == sampled,
            format!("{:?}", m.sampler_logits_sha256),
            format!("{sampled:?} (of the --sampler-logits file's f32 values)"),
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, ok, _, _)| !ok)
        .map(|(field, _, got, want)| Finding {
            problem: Problem::Manifest,
            case: case.into(),
            key: field.into(),
            detail: format!("is {got}, expected {want}"),
        })
        .collect()
}

/// The manifest's `[provenance]`: declared, and a table every checkpoint of `catalog` is in with
/// its kind (and a reason unless `own`), as checkpoints/provenance.toml's.
pub fn check_provenance(case: &str, dump: &Dump, catalog: &crate::catalog::Catalog) -> Option<Finding> {
    let detail = match &dump.manifest.provenance {
        None => {
            "the manifest declares no [provenance]: a run credits the subject with no checkpoint (`ours` everywhere); say whose code computed each"
                .to_string()
        }
        Some(table) => crate::provenance::declared(Some(table), "manifest.toml", catalog).err()?.to_string(),
    };
    Some(Finding { problem: Problem::Provenance, case: case.into(), key: "provenance".into(), detail })
}

/// Every catalog entry of the model in the dump, each against the truth's tensor: listed, readable,
/// the truth's dtype and shape, finite; and no key the catalog does not name.
pub fn check_tensors(case: &str, dump: &Dump, truth: &Dump, entries: &[Entry]) -> Vec<Finding> {
    let finding = |problem, key: &str, detail: String| Finding { problem, case: case.into(), key: key.into(), detail };
    let mut out = Vec::new();
    for entry in entries {
        let key = entry.key.as_str();
        let tensor = match dump.get(key) {
            Ok(Lookup::NotListed) => {
                out.push(finding(Problem::Missing, key, format!("checkpoint {} is not in the manifest", entry.checkpoint)));
                continue;
            }
            Ok(Lookup::Unavailable(why)) => {
                out.push(finding(Problem::Unavailable, key, format!("the dumper says {why:?}; a run counts it missing")));
                continue;
            }
            Err(e) => {
                out.push(finding(Problem::Unreadable, key, e.to_string()));
                continue;
            }
            Ok(Lookup::Tensor(t)) => t,
        };
        if let Ok(Lookup::Tensor(want)) = truth.get(key) {
            if tensor.dtype_name() != want.dtype_name() {
                out.push(finding(Problem::Dtype, key, format!("{} where the truth has {}", tensor.dtype_name(), want.dtype_name())));
                continue;
            }
            if tensor.shape != want.shape {
                let detail = format!("{:?} where the truth has {:?}; never broadcast or reshaped", tensor.shape, want.shape);
                out.push(finding(Problem::Shape, key, detail));
                continue;
            }
        }
        let bad = non_finite(&tensor);
        if bad > 0 {
            out.push(finding(Problem::NonFinite, key, format!("{bad} of {} values are NaN or infinite", tensor.len())));
        }
    }
    // A dumper may say why it has no tensor the model's family lacks (`q_rope` of GPT-2); a file
    // under a name the catalog does not give this model would be compared with nothing.
    for (key, record) in &dump.manifest.tensors {
        if record.file.is_some() && !entries.iter().any(|e| &e.key == key) {
            out.push(finding(
                Problem::Unknown,
                key,
                format!("not a checkpoint of the catalog for {} with {} layers", truth.manifest.arch, truth.manifest.n_layers),
            ));
        }
    }
    out
}

fn non_finite(t: &Tensor) -> usize {
    match &t.values {
        Values::F32(v) => v.iter().filter(|x| !x.is_finite()).count(),
        Values::Ids(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::npy;
    use std::path::{Path, PathBuf};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The committed pytorch dump of a fixture case copied into a scratch folder as `name`, its
    /// manifest's `reference` renamed: a conforming dump to break one way at a time.
    fn copy_of(case: &str, name: &str, test: &str) -> PathBuf {
        let from = root().join("fixtures/dumps").join(case).join("pytorch");
        let to = std::env::temp_dir().join(format!("parity-conform-{}-{test}", std::process::id())).join(name);
        let _ = std::fs::remove_dir_all(&to);
        std::fs::create_dir_all(&to).unwrap();
        for item in std::fs::read_dir(&from).unwrap() {
            let item = item.unwrap();
            std::fs::copy(item.path(), to.join(item.file_name())).unwrap();
        }
        let manifest =
            std::fs::read_to_string(to.join("manifest.toml")).unwrap().replacen("reference = \"pytorch\"", &format!("reference = \"{name}\""), 1);
        std::fs::write(to.join("manifest.toml"), manifest).unwrap();
        to
    }

    fn truth(case: &str) -> Dump {
        Dump::open(&root().join("fixtures/dumps").join(case).join("pytorch-f64")).unwrap()
    }

    fn entries(truth: &Dump) -> Vec<Entry> {
        let catalog = Catalog::load(&root().join("checkpoints/catalog.toml")).unwrap();
        catalog.entries(&truth.manifest.arch, truth.manifest.n_layers)
    }

    fn problems(dir: &Path) -> Vec<Finding> {
        let truth = truth("tiny-llama-f32/fox");
        check_tensors("tiny-llama-f32/fox", &Dump::open(dir).unwrap(), &truth, &entries(&truth))
    }

    fn edit_manifest(dir: &Path, from: &str, to: &str) {
        let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
        assert!(text.contains(from), "{from} not in the manifest");
        std::fs::write(dir.join("manifest.toml"), text.replacen(from, to, 1)).unwrap();
    }

    #[test]
    fn a_reference_dump_of_the_fixture_conforms() {
        assert_eq!(problems(&copy_of("tiny-llama-f32/fox", "mine", "ok")), vec![]);
    }

    #[test]
    fn a_checkpoint_left_out_of_the_manifest_is_reported_missing_by_name() {
        let dir = copy_of("tiny-llama-f32/fox", "mine", "missing");
        edit_manifest(&dir, "[tensors.\"blk.0.attn_probs\"]", "[tensors.\"dropped\"]");
        let found = problems(&dir);
        let missing = found.iter().find(|f| f.problem == Problem::Missing).expect("a missing finding");
        assert_eq!(missing.key, "blk.0.attn_probs");
        assert_eq!(missing.to_string(), "tiny-llama-f32/fox: missing: blk.0.attn_probs: checkpoint attn_probs is not in the manifest");
        assert!(found.iter().any(|f| f.problem == Problem::Unknown && f.key == "dropped"), "{found:?}");
    }

    #[test]
    fn a_transposed_tensor_is_a_shape_finding_never_broadcast() {
        let dir = copy_of("tiny-llama-f32/fox", "mine", "shape");
        let Lookup::Tensor(t) = Dump::open(&dir).unwrap().get("blk.0.attn_norm").unwrap() else { panic!("tensor") };
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let file = Dump::open(&dir).unwrap().manifest.tensors["blk.0.attn_norm"].file.clone().unwrap();
        npy::write(&dir.join(&file), &Tensor { shape: vec![cols, rows], values: t.values.clone() }).unwrap();
        // The manifest record is updated too: the dumper wrote what it says, in the wrong layout.
        let record = format!("[tensors.\"blk.0.attn_norm\"]\nfile = \"{file}\"\nshape = ");
        edit_manifest(&dir, &format!("{record}[{rows}, {cols}]"), &format!("{record}[{cols}, {rows}]"));
        let found = problems(&dir);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].problem, Problem::Shape);
        assert!(found[0].detail.contains(&format!("[{cols}, {rows}] where the truth has [{rows}, {cols}]")), "{}", found[0]);
    }

    #[test]
    fn nan_in_a_tensor_is_a_non_finite_finding() {
        let dir = copy_of("tiny-llama-f32/fox", "mine", "nan");
        let dump = Dump::open(&dir).unwrap();
        let Lookup::Tensor(mut t) = dump.get("logits").unwrap() else { panic!("tensor") };
        let Values::F32(v) = &mut t.values else { panic!("f32") };
        v[3] = f32::NAN;
        v[5] = f32::INFINITY;
        npy::write(&dir.join(dump.manifest.tensors["logits"].file.as_ref().unwrap()), &t).unwrap();
        let found = problems(&dir);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].problem, Problem::NonFinite);
        assert!(found[0].detail.starts_with("2 of "), "{}", found[0]);
    }

    #[test]
    fn ids_written_as_floats_are_a_dtype_finding() {
        let dir = copy_of("tiny-llama-f32/fox", "mine", "dtype");
        let dump = Dump::open(&dir).unwrap();
        let Lookup::Tensor(t) = dump.get("tokens").unwrap() else { panic!("tensor") };
        let Values::Ids(ids) = &t.values else { panic!("ids") };
        let floats = Tensor::f32(t.shape.clone(), ids.iter().map(|&i| i as f32).collect());
        npy::write(&dir.join(dump.manifest.tensors["tokens"].file.as_ref().unwrap()), &floats).unwrap();
        edit_manifest(&dir, "dtype = \"i64\"", "dtype = \"f32\"");
        let found = problems(&dir);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].problem, found[0].key.as_str()), (Problem::Dtype, "tokens"));
        assert_eq!(found[0].detail, "f32 where the truth has i64");
    }

    #[test]
    fn a_manifest_naming_another_prompt_or_history_is_reported_field_by_field() {
        let dir = copy_of("tiny-llama-f32/fox", "mine", "manifest");
        edit_manifest(&dir, "reference = \"mine\"", "reference = \"theirs\"");
        let truth = truth("tiny-llama-f32/fox");
        let dump = Dump::open(&dir).unwrap();
        let fed = Fed { history: Some(vec![1, 2]), sampler_logits: None };
        let expected = Expected {
            name: "mine",
            prompt: "another prompt",
            model_sha256: &truth.manifest.model_sha256,
            n_generate: truth.manifest.n_generate,
            fed: &fed,
        };
        let found = check_manifest("c", &dump, &truth, &expected);
        let fields: Vec<&str> = found.iter().map(|f| f.key.as_str()).collect();
        assert!(fields.contains(&"reference") && fields.contains(&"prompt") && fields.contains(&"force_tokens"), "{fields:?}");
        assert!(!fields.contains(&"model_sha256") && !fields.contains(&"token_ids"), "{fields:?}");
    }
}
