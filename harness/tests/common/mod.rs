//! What the tests that run the pipeline on the engine share: the project's root, its checkpoint
//! data, and a run from a suite's dumps folder with a fault planted in the engine.

use engine::fault::Fault;
use engine::model::Model;
use harness::catalog::Catalog;
use harness::pipeline::{self, CaseRun, Setup, Source};
use harness::provenance::{references_in, Provenance};
use harness::spec::Spec;
use harness::subject::Subject;
use harness::suite::{resolve, Case, Suite};
use reports::results::RunResults;
use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The catalog, tolerances and provenance under checkpoints/.
pub struct Checkpoints {
    pub catalog: Catalog,
    pub spec: Spec,
    pub provenance: Provenance,
}

impl Checkpoints {
    pub fn load() -> Checkpoints {
        let root = root();
        let catalog = Catalog::load(&root.join("checkpoints/catalog.toml")).unwrap();
        let spec = Spec::load(&root.join("checkpoints/tolerances.toml")).unwrap();
        let provenance = Provenance::load(&root.join("checkpoints/provenance.toml"), &catalog, &references_in(&root).unwrap()).unwrap();
        Checkpoints { catalog, spec, provenance }
    }
}

/// `cases` of `suite`, read from its dumps folder, with the engine as the subject and `fault`
/// (if any) planted in every model it loads.
pub fn run_engine(checkpoints: &Checkpoints, suite: &Suite, cases: Vec<Case>, fault: Option<Fault>, label: &str) -> (RunResults, Vec<CaseRun>) {
    let root = root();
    let source = Source::Dumps(resolve(&root, &suite.dumps));
    let plant = move |m: &mut Model| fault.into_iter().for_each(|f| m.inject_fault(f));
    let setup = Setup {
        root: &root,
        suite,
        catalog: &checkpoints.catalog,
        spec: &checkpoints.spec,
        provenance: &checkpoints.provenance,
        source: &source,
        subject: &Subject::Engine,
        prepare: Some(&plant),
    };
    pipeline::run(&setup, cases, label).unwrap()
}
