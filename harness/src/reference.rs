//! A reference's name as runs, dumps and reports spell it: its dumper (`references/<dumper>/`)
//! and, for a second release pinned beside the shared environment's, that release's version:
//! `llamacpp@0.3.20`. The version picks the environment the dumper runs in
//! (`$PARITY_CACHE/venv-llamacpp@0.3.20`, made by `scripts/setup-reference-version.sh`); the
//! dumper's code, its provenance table and the suite's per-reference settings are the dumper's.
//! So `--subject llamacpp --refs llamacpp@0.3.20,pytorch` judges today's llama.cpp against an
//! older release, and a release's numeric changes show up as checkpoint differences.

use std::fmt;

/// A parsed reference name: `dumper` or `dumper@version`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RefName {
    dumper: String,
    version: Option<String>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum RefNameError {
    #[error("{name:?}: the version after @ must be dotted numbers, like llamacpp@0.3.20")]
    BadVersion { name: String },
    #[error("{name:?}: no dumper before the @")]
    NoDumper { name: String },
}

impl RefName {
    /// `dumper` or `dumper@version` (dotted numbers). Whether the dumper exists is the caller's
    /// question: it knows which do.
    pub fn parse(name: &str) -> Result<RefName, RefNameError> {
        let Some((dumper, version)) = name.split_once('@') else {
            return Ok(RefName { dumper: name.to_string(), version: None });
        };
        if dumper.is_empty() {
            return Err(RefNameError::NoDumper { name: name.to_string() });
        }
        let dotted = !version.is_empty() && version.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
        if !dotted {
            return Err(RefNameError::BadVersion { name: name.to_string() });
        }
        Ok(RefName { dumper: dumper.to_string(), version: Some(version.to_string()) })
    }

    /// The dumper folder under `references/`: whose code runs and whose provenance applies.
    pub fn dumper(&self) -> &str {
        &self.dumper
    }

    /// The pinned release, when the name asks for one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Whether a dump whose manifest says `reference` and `version` is this one's: made by this
    /// dumper and, for a pinned release, by that release (its version string names it as a whole
    /// word, as `llama-cpp-python 0.3.20, kv cache f32` names 0.3.20).
    pub fn made(&self, reference: &str, version: &str) -> bool {
        reference == self.dumper
            && self.version.as_deref().is_none_or(|want| version.split(|c: char| !(c.is_ascii_digit() || c == '.')).any(|word| word == want))
    }
}

/// The dumper part of a name already checked with [`RefName::parse`] (the suite's, `--refs`'):
/// the key of the per-dumper tables (provenance, the suite's `ref_class` and `ref_paths`).
pub fn dumper_of(name: &str) -> &str {
    name.split_once('@').map_or(name, |(dumper, _)| dumper)
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(version) => write!(f, "{}@{version}", self.dumper),
            None => f.write_str(&self.dumper),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_a_dumper_and_maybe_a_pinned_release() {
        let old = RefName::parse("llamacpp@0.3.20").unwrap();
        assert_eq!((old.dumper(), old.version()), ("llamacpp", Some("0.3.20")));
        assert_eq!(old.to_string(), "llamacpp@0.3.20");
        let shared = RefName::parse("pytorch-f64").unwrap();
        assert_eq!((shared.dumper(), shared.version()), ("pytorch-f64", None));
        assert_eq!(dumper_of("llamacpp@0.3.20"), "llamacpp");
        assert_eq!(dumper_of("tinygrad"), "tinygrad");
    }

    #[test]
    fn a_version_that_is_not_dotted_numbers_or_a_missing_dumper_is_refused() {
        for bad in ["llamacpp@", "llamacpp@latest", "llamacpp@0..3", "llamacpp@0.3.", "llamacpp@0.3/../x", "llamacpp@1@2"] {
            assert_eq!(RefName::parse(bad), Err(RefNameError::BadVersion { name: bad.into() }), "{bad}");
        }
        assert_eq!(RefName::parse("@0.3.20"), Err(RefNameError::NoDumper { name: "@0.3.20".into() }));
    }

    #[test]
    fn a_pinned_release_owns_only_dumps_its_version_string_names() {
        let old = RefName::parse("llamacpp@0.3.20").unwrap();
        assert!(old.made("llamacpp", "llama-cpp-python 0.3.20, kv cache f32"));
        assert!(!old.made("llamacpp", "llama-cpp-python 0.3.36, kv cache f32"));
        assert!(!old.made("llamacpp", "llama-cpp-python 0.3.201, kv cache f32"));
        assert!(!old.made("pytorch", "0.3.20"));
        let shared = RefName::parse("llamacpp").unwrap();
        assert!(shared.made("llamacpp", "llama-cpp-python 0.3.36, kv cache f32"));
    }
}
