//! `checkpoints/provenance.toml`: whose code computed each checkpoint, per reference and model
//! family. Read here, checked against the catalog, and handed to the results (each case carries its
//! checkpoints' provenance) so the confidence level counts only a reference's own model code.
//!
//! Layout: one table per reference and family, `[<reference>.<family>]`, naming every catalog
//! checkpoint once, as `"own"` or `{ kind = "kernels" | "ours" | "own", reason = "one line" }`; a
//! reason is required where the kind is not `own`.

use crate::catalog::Catalog;
use crate::reference::dumper_of;
use crate::spec::FAMILIES;
use reports::results::Provenance as Entry;
use reports::vocab::Authorship;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{origin} is not valid TOML: {source}")]
    Parse { origin: String, source: toml::de::Error },
    #[error("{origin}: {at}: {problem}")]
    Invalid { origin: String, at: String, problem: String },
    #[error("{origin} has no provenance for reference {reference:?} on {family} models; add a [{reference}.{family}] table")]
    Uncovered { origin: String, reference: String, family: String },
}

/// Every reference's provenance, by (reference, family) and then checkpoint name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Provenance {
    origin: String,
    by: BTreeMap<(String, String), BTreeMap<String, Entry>>,
}

impl Provenance {
    /// Reads and checks `path`; `references` are the reference names that exist (a dumper each).
    pub fn load(path: &Path, catalog: &Catalog, references: &[String]) -> Result<Provenance, ProvenanceError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProvenanceError::Io { path: path.to_path_buf(), source })?;
        Provenance::parse(&text, &path.display().to_string(), catalog, references)
    }

    /// Parses `text` (named `origin` in errors). Refused: a reference not in `references`, a family
    /// not in [`FAMILIES`], a checkpoint not in the catalog, a table that leaves one out, an
    /// unknown kind, and a `kernels` or `ours` entry without a one-line reason.
    pub fn parse(text: &str, origin: &str, catalog: &Catalog, references: &[String]) -> Result<Provenance, ProvenanceError> {
        let invalid = |at: String, problem: String| ProvenanceError::Invalid { origin: origin.to_string(), at, problem };
        let table: toml::Table = toml::from_str(text).map_err(|source| ProvenanceError::Parse { origin: origin.to_string(), source })?;
        let mut by = BTreeMap::new();
        for (reference, families) in &table {
            if !references.contains(reference) {
                return Err(invalid(format!("[{reference}]"), format!("{reference:?} is not a reference (known: {})", references.join(", "))));
            }
            let families = families.as_table().ok_or_else(|| invalid(format!("[{reference}]"), "must be a table of model families".into()))?;
            for (family, checkpoints) in families {
                let at = format!("[{reference}.{family}]");
                if !FAMILIES.contains(&family.as_str()) {
                    return Err(invalid(at, format!("{family:?} is not a model family (known: {})", FAMILIES.join(", "))));
                }
                let checkpoints = checkpoints.as_table().ok_or_else(|| invalid(at.clone(), "must be a table of checkpoints".into()))?;
                by.insert((reference.clone(), family.clone()), checkpoints_table(checkpoints, origin, &at, catalog)?);
            }
        }
        Ok(Provenance { origin: origin.to_string(), by })
    }

    /// The checkpoints' provenance of `reference` on `family` models.
    /// A pinned release (`llamacpp@0.3.20`) runs its dumper's code: its dumper's table.
    pub fn of(&self, reference: &str, family: &str) -> Result<&BTreeMap<String, Entry>, ProvenanceError> {
        let reference = dumper_of(reference);
        self.by.get(&(reference.to_string(), family.to_string())).ok_or_else(|| ProvenanceError::Uncovered {
            origin: self.origin.clone(),
            reference: reference.to_string(),
            family: family.to_string(),
        })
    }

    /// Checks that every one of `references` has provenance for some model family, so a run
    /// cannot start and then meet a reference nobody has said anything about. A reference may
    /// serve fewer families than the engine (MLX has no GPT-2); a case of a family its table lacks
    /// is refused by [`Provenance::of`] when the case is judged.
    pub fn covers(&self, references: &[&str]) -> Result<(), ProvenanceError> {
        for reference in references {
            if !self.by.keys().any(|(r, _)| r == dumper_of(reference)) {
                self.of(reference, FAMILIES[0])?;
            }
        }
        Ok(())
    }
}

/// One table of checkpoints, `at` in `origin`: every catalog checkpoint, each with its kind (and a
/// reason unless `own`).
fn checkpoints_table(checkpoints: &toml::Table, origin: &str, at: &str, catalog: &Catalog) -> Result<BTreeMap<String, Entry>, ProvenanceError> {
    let invalid = |at: String, problem: String| ProvenanceError::Invalid { origin: origin.to_string(), at, problem };
    let mut entries = BTreeMap::new();
    for (name, value) in checkpoints {
        let at = format!("{at} {name}");
        if !catalog.checkpoints.iter().any(|c| &c.name == name) {
            return Err(invalid(at, format!("{name:?} is not a checkpoint of the catalog")));
        }
        entries.insert(name.clone(), entry(value).map_err(|problem| invalid(at, problem))?);
    }
    if let Some(missing) = catalog.checkpoints.iter().find(|c| !entries.contains_key(&c.name)) {
        return Err(invalid(at.to_string(), format!("checkpoint {:?} is not listed (every catalog checkpoint must be)", missing.name)));
    }
    Ok(entries)
}

/// An outside subject's own word on whose code computed each checkpoint: its manifest's
/// `[provenance]` table (`origin` names the manifest), checked as a table of this file is. A
/// manifest without one gets [`undeclared`].
pub fn declared(provenance: Option<&toml::Table>, origin: &str, catalog: &Catalog) -> Result<BTreeMap<String, Entry>, ProvenanceError> {
    match provenance {
        Some(checkpoints) => checkpoints_table(checkpoints, origin, "[provenance]", catalog),
        None => Ok(undeclared(catalog)),
    }
}

/// What a subject that declared nothing is credited with: nothing (`ours` everywhere), so that no
/// pass is read as its own evidence until its dumper says where its own code ran.
pub fn undeclared(catalog: &Catalog) -> BTreeMap<String, Entry> {
    let why = "undeclared: the subject's manifests have no [provenance] table (docs/subjects.md)";
    catalog.checkpoints.iter().map(|c| (c.name.clone(), Entry { kind: Authorship::Ours, reason: Some(why.to_string()) })).collect()
}

/// The references that exist: `references/<name>/dump.py` under `root`.
pub fn references_in(root: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("references"))? {
        let entry = entry?;
        if entry.path().join("dump.py").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn entry(value: &toml::Value) -> Result<Entry, String> {
    let kind_of = |text: &str| text.parse::<Authorship>().map_err(|e| e.to_string());
    let (kind, reason) = match value {
        toml::Value::String(kind) => (kind_of(kind)?, None),
        toml::Value::Table(t) => {
            if let Some(key) = t.keys().find(|k| !["kind", "reason"].contains(&k.as_str())) {
                return Err(format!("unknown key {key:?} (kind, reason)"));
            }
            let kind = t.get("kind").and_then(|k| k.as_str()).ok_or("needs a kind: own, kernels or ours")?;
            let reason = match t.get("reason") {
                None => None,
                Some(r) => Some(r.as_str().ok_or("reason must be text")?.to_string()),
            };
            (kind_of(kind)?, reason)
        }
        _ => return Err("must be a kind (\"own\") or a table { kind, reason }".into()),
    };
    match &reason {
        Some(r) if r.trim().is_empty() || r.contains('\n') => return Err("the reason must be one non-empty line".into()),
        None if kind != Authorship::Own => return Err(format!("{kind} needs a reason: whose code computes what")),
        _ => {}
    }
    Ok(Entry { kind, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::parse(include_str!("../../checkpoints/catalog.toml"), "catalog").unwrap()
    }

    fn known() -> Vec<String> {
        ["llamacpp", "mlx", "pytorch", "pytorch-f64", "tinygrad"].map(String::from).to_vec()
    }

    /// A table naming every catalog checkpoint `own` but `replace`d ones.
    fn table(header: &str, replace: &[(&str, &str)]) -> String {
        let mut text = format!("[{header}]\n");
        for c in &catalog().checkpoints {
            let value = replace.iter().find(|(n, _)| *n == c.name).map_or("\"own\"", |(_, v)| v);
            text += &format!("{} = {value}\n", c.name);
        }
        text
    }

    fn parse(text: &str) -> Result<Provenance, ProvenanceError> {
        Provenance::parse(text, "provenance.toml", &catalog(), &known())
    }

    #[test]
    fn the_project_provenance_covers_every_reference_family_and_checkpoint() {
        let p = parse(include_str!("../../checkpoints/provenance.toml")).unwrap();
        p.covers(&["llamacpp", "pytorch", "tinygrad", "pytorch-f64", "mlx"]).unwrap();
        // MLX's fused attention hides the probabilities on both families: ours on MLX ops.
        assert_eq!(p.of("mlx", "gpt2").unwrap()["attn_probs"].kind, Authorship::Kernels);
        assert_eq!(p.of("mlx", "llama").unwrap()["attn_probs"].kind, Authorship::Kernels);
        assert_eq!(p.of("mlx", "llama").unwrap()["ffn_out"].kind, Authorship::Own);
        // llama.cpp's model code is its own everywhere; tinygrad's GPT-2 forward pass is ours.
        assert!(p.of("llamacpp", "gpt2").unwrap().values().filter(|e| e.kind != Authorship::Own).all(|e| e.reason.is_some()));
        assert_eq!(p.of("tinygrad", "gpt2").unwrap()["attn_probs"].kind, Authorship::Kernels);
        assert_eq!(p.of("tinygrad", "llama").unwrap()["attn_probs"].kind, Authorship::Kernels);
        assert_eq!(p.of("tinygrad", "llama").unwrap()["ffn_out"].kind, Authorship::Own);
    }

    #[test]
    fn a_subjects_manifest_table_is_checked_as_ours_and_nothing_is_credited_without_one() {
        let full: String = catalog().checkpoints.iter().map(|c| format!("{} = \"own\"\n", c.name)).collect();
        let text = full.replace("sampling = \"own\"", "sampling = { kind = \"ours\", reason = \"our sampler\" }");
        let table: toml::Table = toml::from_str(&text).unwrap();
        let entries = declared(Some(&table), "m/manifest.toml", &catalog()).unwrap();
        assert_eq!(entries["sampling"], Entry { kind: Authorship::Ours, reason: Some("our sampler".into()) });
        assert_eq!(entries["norm"].kind, Authorship::Own);
        let unexplained: toml::Table = toml::from_str(&full.replace("norm = \"own\"", "norm = \"kernels\"")).unwrap();
        let e = declared(Some(&unexplained), "m/manifest.toml", &catalog()).unwrap_err().to_string();
        assert!(e.starts_with("m/manifest.toml: [provenance] norm: "), "{e}");
        let partial: toml::Table = toml::from_str("norm = \"own\"").unwrap();
        assert!(declared(Some(&partial), "m", &catalog()).unwrap_err().to_string().contains("is not listed"));
        let none = declared(None, "m", &catalog()).unwrap();
        assert_eq!(none.len(), catalog().checkpoints.len());
        assert!(none.values().all(|e| e.kind == Authorship::Ours && e.reason.as_deref().is_some_and(|r| r.starts_with("undeclared"))));
    }

    #[test]
    fn a_kind_with_its_reason_is_read_per_checkpoint() {
        let p = parse(&table("tinygrad.llama", &[("attn_probs", "{ kind = \"kernels\", reason = \"our attention core\" }")])).unwrap();
        let entries = p.of("tinygrad", "llama").unwrap();
        assert_eq!(entries["attn_probs"], Entry { kind: Authorship::Kernels, reason: Some("our attention core".into()) });
        assert_eq!(entries["norm"], Entry { kind: Authorship::Own, reason: None });
        assert!(matches!(p.of("tinygrad", "gpt2"), Err(ProvenanceError::Uncovered { .. })));
        // A reference with some family's table is covered; one with none is refused up front.
        p.covers(&["tinygrad"]).unwrap();
        p.covers(&["tinygrad@0.14.0"]).unwrap();
        assert!(std::ptr::eq(p.of("tinygrad@0.14.0", "llama").unwrap(), p.of("tinygrad", "llama").unwrap()), "a release has its dumper's table");
        assert!(matches!(p.covers(&["pytorch"]), Err(ProvenanceError::Uncovered { .. })));
    }

    #[test]
    fn unknown_references_families_and_checkpoints_are_refused_by_name() {
        let e = parse(&table("tinygrd.llama", &[])).unwrap_err().to_string();
        assert!(e.contains("\"tinygrd\" is not a reference (known: llamacpp, mlx, pytorch, pytorch-f64, tinygrad)"), "{e}");
        let e = parse(&table("tinygrad.mamba", &[])).unwrap_err().to_string();
        assert!(e.contains("\"mamba\" is not a model family"), "{e}");
        let e = parse(&(table("tinygrad.llama", &[]) + "attn_prob = \"own\"\n")).unwrap_err().to_string();
        assert!(e.contains("\"attn_prob\" is not a checkpoint of the catalog"), "{e}");
    }

    #[test]
    fn a_table_leaving_a_checkpoint_out_is_refused() {
        let text = table("pytorch.gpt2", &[]).replace("sampling = \"own\"\n", "");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("[pytorch.gpt2]: checkpoint \"sampling\" is not listed"), "{e}");
    }

    #[test]
    fn a_kind_that_is_not_own_needs_a_one_line_reason_and_a_known_name() {
        for (value, expected) in [
            ("\"kernels\"", "kernels needs a reason"),
            ("{ kind = \"ours\", reason = \" \" }", "one non-empty line"),
            ("{ kind = \"ours\", reason = \"a\\nb\" }", "one non-empty line"),
            ("\"borrowed\"", "authorship \"borrowed\" is unknown (known: own, kernels, ours)"),
            ("{ kind = \"ours\", why = \"x\" }", "unknown key \"why\""),
            ("3", "must be a kind"),
        ] {
            let e = parse(&table("tinygrad.llama", &[("qkv", value)])).unwrap_err().to_string();
            assert!(e.contains(expected), "{value}: {e}");
        }
        // `own` may carry a note.
        parse(&table("tinygrad.llama", &[("qkv", "{ kind = \"own\", reason = \"a note\" }")])).unwrap();
    }
}
