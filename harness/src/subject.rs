//! The subject: the one implementation a run judges, against the references and the truth.
//!
//! By default it is our engine, run in-process (the fast path: its taps are the tensors judged,
//! and a near-tie's gap can be measured with one more forward pass). Any implementation that
//! writes a dump under the dumper contract (`references/common/dumpkit.py`, `docs/subjects.md`)
//! can take its place: a reference's dumper, an outside command, or a folder of dumps. Judging
//! does not care which: every subject's tensors reach the comparison as one map by dump key.

use crate::reference::{dumper_of, RefName};
use std::path::PathBuf;

/// The engine's name wherever an implementation is named: in `--subject`, `--refs`, results.
pub const ENGINE: &str = "engine";

/// Which implementation a run judges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Our engine, in-process.
    Engine,
    /// One of the reference dumpers (`references/<name>/dump.py`), live or from the dumps folder.
    Reference(String),
    /// An implementation outside this project, whose dumps name it `name`.
    External { name: String, from: External },
}

/// Where an outside subject's dumps come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum External {
    /// A command line run like a dumper (the contract's options appended, `sh -c`), writing its
    /// dumps under `out` and killed after `timeout`.
    Command { line: String, out: PathBuf, timeout: std::time::Duration },
    /// Finished dumps under `<dir>/<model id>/<prompt id>/<name>/`.
    Dumps(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    #[error("--subject {name}: the truth is the yardstick every subject is measured with, never a subject")]
    Truth { name: String },
    #[error("--subject {name}: not the engine or a reference ({known}); an outside engine needs --subject-cmd or --subject-dumps")]
    Unknown { name: String, known: String },
    #[error("--subject {name}: that name is taken by {taken}; name an outside engine something else")]
    Taken { name: String, taken: String },
    #[error("--subject-cmd and --subject-dumps need --subject NAME: the name its manifests carry (`reference = \"NAME\"`)")]
    Unnamed,
    #[error("--subject {name}: {problem}")]
    BadName { name: String, problem: String },
    #[error("{name} is the subject and cannot also be a reference of the same run; drop it from --refs")]
    AlsoReference { name: String },
}

impl Subject {
    /// The subject the options name. `references` are the dumpers that exist, `truth` the suite's.
    /// A reference may be named at a pinned release (`llamacpp@0.3.20`, [`RefName`]).
    pub fn pick(name: Option<&str>, external: Option<External>, references: &[String], truth: Option<&str>) -> Result<Subject, SubjectError> {
        let dumper = |name: &str| RefName::parse(name).map(|n| n.dumper().to_string());
        let is_reference = |name: &str| dumper(name).is_ok_and(|d| references.contains(&d));
        let taken = |name: &str| {
            if name == ENGINE {
                Some("the engine".to_string())
            } else {
                is_reference(name).then(|| format!("the {name} reference"))
            }
        };
        if let Some(name) = name.filter(|n| truth.is_some_and(|t| dumper(n).is_ok_and(|d| d == t))) {
            return Err(SubjectError::Truth { name: name.to_string() });
        }
        if let Some((name, Err(e))) = name.filter(|n| external.is_none() && n.contains('@')).map(|n| (n, RefName::parse(n))) {
            return Err(SubjectError::BadName { name: name.to_string(), problem: e.to_string() });
        }
        match (name, external) {
            (None | Some(ENGINE), None) => Ok(Subject::Engine),
            (Some(name), None) if is_reference(name) => Ok(Subject::Reference(name.to_string())),
            (Some(name), None) => {
                let mut known = vec![ENGINE.to_string()];
                known.extend(references.iter().filter(|r| Some(r.as_str()) != truth).cloned());
                Err(SubjectError::Unknown { name: name.to_string(), known: known.join(", ") })
            }
            (None, Some(_)) => Err(SubjectError::Unnamed),
            (Some(name), Some(from)) => {
                if let Some(taken) = taken(name) {
                    return Err(SubjectError::Taken { name: name.to_string(), taken });
                }
                crate::suite::check_name("subject", name).map_err(|e| SubjectError::BadName { name: name.to_string(), problem: e.to_string() })?;
                Ok(Subject::External { name: name.to_string(), from })
            }
        }
    }

    /// The name results, reports and manifests give it.
    pub fn name(&self) -> &str {
        match self {
            Subject::Engine => ENGINE,
            Subject::Reference(name) | Subject::External { name, .. } => name,
        }
    }

    pub fn is_engine(&self) -> bool {
        matches!(self, Subject::Engine)
    }

    /// The references a case judges this subject against: an explicit list must not name it (it
    /// may name another release of it: `--subject llamacpp --refs llamacpp@0.3.20,...`);
    /// a suite's own list loses it and gains the engine in its place (when the engine is not the
    /// subject), so `--subject llamacpp` alone is judged against the others and the engine.
    pub fn references_for(&self, suite_refs: &[String], explicit: bool) -> Result<Vec<String>, SubjectError> {
        let name = self.name();
        if explicit {
            if suite_refs.iter().any(|r| r == name) {
                return Err(SubjectError::AlsoReference { name: name.to_string() });
            }
            return Ok(suite_refs.to_vec());
        }
        // Another release of the subject's own dumper is left out too: it is named, not implied.
        let mut refs: Vec<String> = suite_refs.iter().filter(|r| dumper_of(r) != dumper_of(name)).cloned().collect();
        if !self.is_engine() && !refs.iter().any(|r| r == ENGINE) {
            refs.push(ENGINE.to_string());
        }
        Ok(refs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs() -> Vec<String> {
        ["llamacpp", "pytorch", "pytorch-f64", "tinygrad"].map(String::from).to_vec()
    }

    fn pick(name: Option<&str>, external: Option<External>) -> Result<Subject, SubjectError> {
        Subject::pick(name, external, &refs(), Some("pytorch-f64"))
    }

    #[test]
    fn the_engine_is_the_subject_unless_another_is_named() {
        assert_eq!(pick(None, None).unwrap(), Subject::Engine);
        assert_eq!(pick(Some("engine"), None).unwrap(), Subject::Engine);
        assert_eq!(pick(Some("llamacpp"), None).unwrap(), Subject::Reference("llamacpp".into()));
        let cmd = External::Command { line: "./dump".into(), out: "o".into(), timeout: std::time::Duration::from_secs(1) };
        assert_eq!(pick(Some("candle"), Some(cmd.clone())).unwrap(), Subject::External { name: "candle".into(), from: cmd });
    }

    #[test]
    fn the_truth_an_unknown_name_or_a_taken_name_is_refused() {
        assert!(matches!(pick(Some("pytorch-f64"), None), Err(SubjectError::Truth { .. })));
        let unknown = pick(Some("candle"), None).unwrap_err().to_string();
        assert!(unknown.contains("--subject-cmd") && !unknown.contains("pytorch-f64"), "{unknown}");
        let dumps = External::Dumps("d".into());
        assert!(matches!(pick(Some("pytorch"), Some(dumps.clone())), Err(SubjectError::Taken { .. })));
        assert!(matches!(pick(Some("engine"), Some(dumps.clone())), Err(SubjectError::Taken { .. })));
        assert!(matches!(pick(None, Some(dumps.clone())), Err(SubjectError::Unnamed)));
        assert!(matches!(pick(Some("../x"), Some(dumps)), Err(SubjectError::BadName { .. })));
    }

    #[test]
    fn a_reference_can_be_the_subject_at_a_pinned_release_and_judged_by_another() {
        let new = pick(Some("llamacpp@0.3.36"), None).unwrap();
        assert_eq!(new, Subject::Reference("llamacpp@0.3.36".into()));
        let explicit: Vec<String> = ["llamacpp@0.3.20", "pytorch", "tinygrad"].map(String::from).to_vec();
        assert_eq!(new.references_for(&explicit, true).unwrap(), explicit);
        let suite: Vec<String> = ["llamacpp", "pytorch"].map(String::from).to_vec();
        assert_eq!(new.references_for(&suite, false).unwrap(), ["pytorch", "engine"], "the suite's llamacpp is not implied");
        assert!(matches!(pick(Some("llamacpp@latest"), None), Err(SubjectError::BadName { .. })));
        assert!(matches!(pick(Some("pytorch-f64@2.15"), None), Err(SubjectError::Truth { .. })));
        assert!(matches!(pick(Some("candle@0.9"), None), Err(SubjectError::Unknown { .. })));
    }

    #[test]
    fn a_subject_is_never_also_a_reference_of_its_run() {
        let llamacpp = Subject::Reference("llamacpp".into());
        let suite: Vec<String> = ["llamacpp", "pytorch", "tinygrad"].map(String::from).to_vec();
        assert!(matches!(llamacpp.references_for(&suite, true), Err(SubjectError::AlsoReference { .. })));
        assert_eq!(llamacpp.references_for(&suite, false).unwrap(), ["pytorch", "tinygrad", "engine"]);
        assert_eq!(Subject::Engine.references_for(&suite, false).unwrap(), suite);
        let with_engine: Vec<String> = ["pytorch", "engine"].map(String::from).to_vec();
        assert!(matches!(Subject::Engine.references_for(&with_engine, true), Err(SubjectError::AlsoReference { .. })));
    }
}
