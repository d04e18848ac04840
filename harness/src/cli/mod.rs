//! The `parity` subcommands: each module parses its options and prints its output; the work is
//! done by the library (`harness::*`), the engine and the reports crate.

pub mod bench;
pub mod bisect;
pub mod calibrate;
pub mod conform;
pub mod diff;
pub mod dumps;
pub mod generate;
pub mod inspect;
pub mod keygen;
pub mod merge;
pub mod plant;
pub mod reduce;
pub mod replay;
pub mod run;
pub mod select;
pub mod serve;
pub mod sweep;
pub mod threads;

/// Where proof bundles go, what this run is called and who signs them, from `LLORCH_PROOF_DIR`,
/// `LLORCH_RUN_ID` and `LLORCH_SIGNING_KEY`: read here, once, and handed to the reports crate.
pub struct BundleSettings {
    pub proof_dir: Option<std::path::PathBuf>,
    pub run_id: Option<String>,
    /// A secret key file (`parity keygen`): every bundle written is signed with it.
    pub signing_key: Option<std::path::PathBuf>,
}

impl BundleSettings {
    pub fn from_env() -> BundleSettings {
        BundleSettings {
            proof_dir: std::env::var_os("LLORCH_PROOF_DIR").map(std::path::PathBuf::from),
            run_id: std::env::var("LLORCH_RUN_ID").ok(),
            signing_key: std::env::var_os("LLORCH_SIGNING_KEY").filter(|v| !v.is_empty()).map(std::path::PathBuf::from),
        }
    }

    /// A new bundle's provenance, stamped now.
    pub fn provenance(&self, command: &str, engine_commit: &str) -> reports::bundle::Provenance {
        reports::bundle::Provenance::now(command, engine_commit, self.run_id.clone())
    }

    /// The folder bundles of this project go under.
    pub fn root(&self, project_root: &std::path::Path) -> std::path::PathBuf {
        reports::bundle::default_root(project_root, self.proof_dir.as_deref())
    }

    /// The signing key, loaded now: called before a run's work, so a bad key file fails at once.
    pub fn signer(&self) -> anyhow::Result<Option<reports::signing::Signer>> {
        use anyhow::Context;
        let Some(path) = &self.signing_key else { return Ok(None) };
        reports::signing::Signer::load(path).map(Some).context("LLORCH_SIGNING_KEY")
    }
}
