//! The `--format json` summary: verdict, exit code, confidence (with its rule) and one entry per
//! checkpoint per reference per model/prompt. The full results are `results.json` (the data model).

use crate::confidence::{Confidence, RULE};
use crate::results::RunResults;
use crate::summary::{self, Verdict};
use crate::vocab::{Authorship, Judged, Metric};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub run_id: String,
    pub engine_version: String,
    /// The implementation judged and its version ("engine 0.1.0", "llamacpp b4779").
    pub subject: String,
    pub verdict: Verdict,
    pub exit_code: i32,
    pub confidence: Confidence,
    pub confidence_rule: Vec<&'static str>,
    pub reference_errors: BTreeMap<String, String>,
    pub checks: Vec<CellSummary>,
}

/// One checkpoint against one reference on one model/prompt.
#[derive(Debug, Serialize)]
pub struct CellSummary {
    pub model: String,
    pub prompt: String,
    pub dtype: Judged,
    pub reference: String,
    pub checkpoint_id: u32,
    pub checkpoint: String,
    pub status: crate::results::Status,
    pub checks: usize,
    pub failed: usize,
    pub worst_margin: Option<f64>,
    pub worst_key: Option<String>,
    pub worst_metric: Option<Metric>,
    /// Whose code computed this checkpoint for this reference, and why when not its own.
    pub authorship: Authorship,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorship_reason: Option<String>,
    /// References whose dump holds some tensor of this checkpoint bit for bit as this one's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub duplicate_of: Vec<String>,
    /// Whether this cell counts toward the confidence level (own code, no duplicate).
    pub independent: bool,
}

pub fn summarize(run: &RunResults) -> Summary {
    let verdict = Verdict::of(run);
    let mut checks = Vec::new();
    for subject in summary::subjects(run) {
        for ((id, reference), cell) in &subject.cells {
            let name = subject.checkpoints.iter().find(|(c, _)| c == id).map_or("", |(_, n)| n.as_str());
            checks.push(CellSummary {
                model: subject.model.clone(),
                prompt: subject.prompt.clone(),
                dtype: subject.dtype,
                reference: reference.clone(),
                checkpoint_id: *id,
                checkpoint: name.to_string(),
                status: cell.status,
                checks: cell.checks,
                failed: cell.failed,
                worst_margin: cell.worst.as_ref().map(|w| w.margin),
                worst_key: cell.worst.as_ref().map(|w| w.key.clone()),
                worst_metric: cell.worst.as_ref().map(|w| w.metric),
                authorship: cell.authorship,
                authorship_reason: cell.reason.map(str::to_string),
                duplicate_of: cell.duplicates.iter().map(|d| d.of.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect(),
                independent: cell.independent(),
            });
        }
    }
    Summary {
        run_id: run.run_id.clone(),
        engine_version: run.engine_version.clone(),
        subject: run.subject_label(),
        verdict,
        exit_code: verdict.exit_code(),
        confidence: Confidence::of(run),
        confidence_rule: RULE.to_vec(),
        reference_errors: run.reference_errors.clone(),
        checks,
    }
}

/// Pretty-printed JSON of [`summarize`].
pub fn render(run: &RunResults) -> String {
    // Serializing plain structs of strings and numbers to a String cannot fail.
    serde_json::to_string_pretty(&summarize(run)).expect("summary serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn json_summary_matches_snapshot() {
        insta::assert_snapshot!(render(&fixture::run()));
    }

    #[test]
    fn summary_carries_the_verdicts_exit_code() {
        let value: serde_json::Value = serde_json::from_str(&render(&fixture::run())).expect("valid JSON");
        assert_eq!(value["verdict"], "fail");
        assert_eq!(value["exit_code"], 1);
        assert_eq!(value["confidence"]["level"], 0);
    }
}
