//! `parity conform`: is an outside engine's dumper ready to be put under test? Its dumps of the
//! fixture suite's f32 cases (tiny models whose truth dumps are committed, the known answers) are
//! checked against the contract one finding per line ([`harness::conform`]), then, if they keep
//! it, judged against the truth as `parity run` would judge them.
//!
//! Exit codes: 0 conforms, 1 a finding, 2 bad input, 3 the dumper could not run.

use super::select::Selection;
use anyhow::{bail, Context, Result};
use harness::conform::{self, Expected, Finding, Problem};
use harness::live::ReferenceError;
use harness::pipeline::{self, Fed};
use harness::spec::Class;
use harness::subject::{External, Subject};
use reports::results::Role;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct ConformArgs {
    #[command(flatten)]
    pub selection: Selection,
}

pub fn run(args: ConformArgs, root: &Path) -> Result<i32> {
    let mut loaded = args.selection.load(root)?;
    let (name, from) = match &loaded.subject {
        Subject::External { name, from } => (name.clone(), from.clone()),
        Subject::Reference(name) => bail!("--subject {name}: conform checks an outside engine's dumper; give --subject-cmd or --subject-dumps"),
        Subject::Engine => bail!("conform checks an outside engine's dumper: give --subject NAME and --subject-cmd or --subject-dumps"),
    };
    let Some(truth_name) = loaded.suite.truth.clone() else { bail!("{}: conform needs a suite with a truth", loaded.suite_path.display()) };
    // The known answers are f32 answers: a case whose weights make engines round activations
    // (f16, quantized) is only checked when named with --model.
    if args.selection.model.is_none() {
        loaded.cases.retain(|c| c.model.class == Class::F32);
    }
    if loaded.cases.is_empty() {
        bail!("the selection holds no case to check");
    }
    let setup = loaded.setup(&loaded.source);
    let mut findings: Vec<Finding> = Vec::new();
    let mut tensors = 0;
    for case in &loaded.cases {
        let at = format!("{}/{}", case.model.id, case.prompt.id);
        let fed = pipeline::case_fed(&setup, case).with_context(|| format!("the truth of {at}"))?;
        let truth = pipeline::fetch_dump(&setup, case, &truth_name, &Fed::default()).with_context(|| format!("the truth of {at}"))?;
        let dump = match pipeline::external_dump(&setup, case, &name, &from, &fed) {
            Ok(dump) => dump,
            Err(e) if e.downcast_ref::<ReferenceError>().is_some() => {
                println!("conform: {at}: the dumper could not run: {e:#}");
                return Ok(3);
            }
            Err(e) => {
                findings.push(Finding { problem: Problem::Unreadable, case: at, key: "dump".into(), detail: format!("{e:#}") });
                continue;
            }
        };
        let model_sha256 = pipeline::model_sha(&harness::suite::resolve(root, &case.model.path))?;
        let expected =
            Expected { name: &name, prompt: &case.prompt.text, model_sha256: &model_sha256, n_generate: loaded.suite.n_generate, fed: &fed };
        findings.extend(conform::check_manifest(&at, &dump, &truth, &expected));
        findings.extend(conform::check_provenance(&at, &dump, &loaded.catalog));
        let entries = loaded.catalog.entries(&truth.manifest.arch, truth.manifest.n_layers);
        tensors += entries.len();
        findings.extend(conform::check_tensors(&at, &dump, &truth, &entries));
    }
    // Values only once the layout is right: a wrong layout's distances say nothing.
    if findings.is_empty() {
        let made = match from {
            External::Command { out, .. } => External::Dumps(out),
            dumps => dumps,
        };
        let subject = Subject::External { name: name.clone(), from: made };
        let (results, _) = pipeline::run(&pipeline::Setup { subject: &subject, ..loaded.setup(&loaded.source) }, loaded.cases.clone(), "conform")?;
        if !results.reference_errors.is_empty() {
            for (what, e) in &results.reference_errors {
                println!("conform: {what}: {e}");
            }
            return Ok(3);
        }
        for case in results.cases.iter().filter(|c| c.role == Role::Truth) {
            for check in case.checks.iter().filter(|k| k.status.is_failure()) {
                let units = check
                    .metrics
                    .get(reports::vocab::Metric::NoiseUnits.as_str())
                    .map(|u| format!("{u:.2} noise floors from the truth (at most {})", harness::noise::K));
                let why: Vec<String> = units.into_iter().chain(check.note.clone()).collect();
                let detail = format!("{}: {}", reports::summary::status_name(check.status), why.join("; "));
                findings.push(Finding { problem: Problem::Value, case: format!("{}/{}", case.model, case.prompt), key: check.key.clone(), detail });
            }
        }
    }
    for f in &findings {
        println!("{f}");
    }
    let cases = loaded.cases.len();
    let values = findings.iter().filter(|f| f.problem == Problem::Value).count();
    if findings.is_empty() {
        println!("conform: {name} keeps the dump contract on {cases} cases ({tensors} tensors), and its values are within the truth's noise");
        Ok(0)
    } else if values == findings.len() {
        println!("conform: {name} keeps the dump contract on {cases} cases, but {values} tensors are beyond the truth's noise (its numerics, or a tap in the wrong place)");
        Ok(1)
    } else {
        println!("conform: {name} does not keep the dump contract: {} findings on {cases} cases", findings.len());
        Ok(1)
    }
}
