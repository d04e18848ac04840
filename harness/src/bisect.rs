//! Where the engine first goes wrong: checks walked in the order the forward pass produces them
//! (embeddings, then each layer's checkpoints, then the head), the first failure named with the
//! last pass before it.

use crate::pipeline::CaseRun;
use reports::results::{CheckResult, RunResults, Status};

/// The first failing and the last passing check of one case against one reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Bisection {
    pub model: String,
    pub prompt: String,
    pub reference: String,
    pub first_failure: Option<CheckResult>,
    pub last_pass: Option<CheckResult>,
}

/// Bisects every case of `runs` (whose checks are in `results`) against `reference` (or each
/// case's first reference).
pub fn bisect(runs: &[CaseRun], results: &RunResults, reference: Option<&str>) -> Vec<Bisection> {
    let mut out = Vec::new();
    for run in runs {
        let wanted = reference.unwrap_or_else(|| run.case.refs.first().map_or("", String::as_str));
        for case in results.cases[run.results.clone()].iter().filter(|c| c.reference == wanted) {
            let (mut first_failure, mut last_pass) = (None, None);
            // `checks` are in catalog forward order (compare keeps `entries` order).
            for check in &case.checks {
                if check.status.is_failure() {
                    first_failure = Some(check.clone());
                    break;
                }
                if check.status == Status::Pass {
                    last_pass = Some(check.clone());
                }
            }
            out.push(Bisection {
                model: case.model.clone(),
                prompt: case.prompt.clone(),
                reference: case.reference.clone(),
                first_failure,
                last_pass,
            });
        }
    }
    out
}
