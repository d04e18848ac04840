//! report.md: one page for a stakeholder. Verdict and confidence first, then per model/prompt a
//! checkpoint x reference table (status, worst margin and where), then everything that did not pass.

use crate::confidence::{glance, Confidence, Thin, GLANCE_COLUMNS, GLANCE_NOTE, RULE};
use crate::results::RunResults;
use crate::summary::{self, keys_summary, margin_text, status_name, Cell, Subject, Verdict};
use std::fmt::Write;

/// Renders the whole report. The bundle adds the generated-file header.
pub fn render(run: &RunResults) -> String {
    let verdict = Verdict::of(run);
    let confidence = Confidence::of(run);
    let mut out = String::new();
    let w = &mut out;
    line(w, format!("# parity report: run `{}`", run.run_id));
    line(w, String::new());
    line(w, format!("Subject: `{}` (the implementation judged)", run.subject_label()));
    if run.subject != "engine" {
        line(w, String::new());
        line(w, format!("Harness: `{}`", run.engine_version));
    }
    line(w, String::new());
    line(w, format!("**Verdict: {}** (exit code {})  ", verdict.label(), verdict.exit_code()));
    line(w, format!("**Confidence: {}**", confidence.label()));
    line(w, String::new());
    glance_section(w, run, &confidence);
    confidence_section(w, &confidence);
    provenance_section(w, run);
    if !run.reference_errors.is_empty() {
        line(w, "## Reference errors".into());
        line(w, String::new());
        for (reference, error) in &run.reference_errors {
            line(w, format!("- **{}**: {}", cell_text(reference), cell_text(error)));
        }
        line(w, String::new());
    }
    for subject in summary::subjects(run) {
        subject_section(w, &subject, &run.subject);
    }
    out
}

fn line(out: &mut String, text: String) {
    let _ = writeln!(out, "{text}");
}

/// Per model, in one row: what was compared, by how many independent implementations, how close
/// the engine came to the truth in noise floors, and what no independent implementation confirmed.
fn glance_section(w: &mut String, run: &RunResults, c: &Confidence) {
    let rows = glance(run, c);
    if rows.is_empty() {
        return;
    }
    line(w, "## At a glance".into());
    line(w, String::new());
    line(w, format!("| {} |", GLANCE_COLUMNS.join(" | ")));
    line(w, format!("|{}", "---|".repeat(GLANCE_COLUMNS.len())));
    for row in rows {
        line(w, format!("| {} |", row.cells().map(|t| cell_text(&t)).collect::<Vec<_>>().join(" | ")));
    }
    line(w, String::new());
    line(w, GLANCE_NOTE.into());
    line(w, String::new());
}

fn confidence_section(w: &mut String, c: &Confidence) {
    line(w, "## Confidence".into());
    line(w, String::new());
    line(
        w,
        format!(
            "{} checks, {} failed; the least-covered checkpoint agrees with {} independent reference(s); generation {}.",
            c.checks,
            c.failures,
            c.min_agreeing_references,
            if c.generation_matches { "matches exactly everywhere" } else { "does not match exactly everywhere" }
        ),
    );
    line(w, String::new());
    line(w, "Rule:".into());
    line(w, String::new());
    for rule in RULE {
        line(w, format!("- {rule}"));
    }
    line(w, String::new());
    if !c.thin.is_empty() {
        line(w, "Checkpoints resting on fewer than three independent references:".into());
        line(w, String::new());
        for t in &c.thin {
            line(w, format!("- {}", cell_text(&thin_text(t))));
        }
        line(w, String::new());
    }
    if !c.near_ties.is_empty() {
        line(w, format!("Near-ties ({}), not failures:", c.near_ties.len()));
        line(w, String::new());
        for tie in &c.near_ties {
            line(w, format!("- {}", cell_text(tie)));
        }
        line(w, String::new());
    }
}

/// `03 rope_kv_cache: 2 independent (tiny-llama-f32 / fox (f32)); not counted: tinygrad (kernels: ...)`.
pub(crate) fn thin_text(t: &Thin) -> String {
    let mut text = format!("{:02} {}: {} independent ({})", t.checkpoint_id, t.checkpoint, t.independent, t.subject);
    if !t.not_counted.is_empty() {
        text += &format!("; not counted: {}", t.not_counted.join(", "));
    }
    text
}

fn provenance_section(w: &mut String, run: &RunResults) {
    line(w, "## Provenance".into());
    line(w, String::new());
    let rows = summary::not_own(run);
    if rows.is_empty() {
        line(w, "Every reference computed every checkpoint compared with its own model code.".into());
        line(w, String::new());
        return;
    }
    line(w, "Every reference computed every checkpoint with its own model code, except (`kernels`: the library's tensor ops under model code of ours; `ours`: our code):".into());
    line(w, String::new());
    line(w, format!("| {} |", summary::NOT_OWN_COLUMNS.join(" | ")));
    line(w, format!("|{}", "---|".repeat(summary::NOT_OWN_COLUMNS.len())));
    for r in rows {
        line(w, format!("| {} |", r.cells().map(|t| cell_text(&t)).join(" | ")));
    }
    line(w, String::new());
}

fn subject_section(w: &mut String, s: &Subject, judged: &str) {
    line(w, format!("## {}", cell_text(&s.title())));
    line(w, String::new());
    let refs: Vec<String> = s.references.iter().map(|(r, v)| format!("{r} {v}")).collect();
    line(w, format!("References: {}", cell_text(&refs.join(", "))));
    line(w, String::new());
    if let Some((truth, version)) = &s.truth {
        line(w, format!(
            "Ground truth: {} {} (not a vote). Its column gives {}'s largest distance from it in units of the noise floor (the largest distance of a reference judged in f32), and where.",
            cell_text(truth),
            cell_text(version),
            cell_text(judged)
        ));
        line(w, String::new());
    }
    let mut header = "| # | checkpoint | agreeing |".to_string();
    let mut rule = "|---|---|---|".to_string();
    for (reference, _) in s.references.iter().chain(&s.truth) {
        header += &format!(" {} |", cell_text(reference));
        rule += "---|";
    }
    line(w, header);
    line(w, rule);
    for (id, name) in &s.checkpoints {
        let mut row = format!("| {id:02} | {name} | {} |", agreeing_text(s, *id));
        for (reference, _) in &s.references {
            row += &format!(" {} |", cell_summary(s.cells.get(&(*id, reference.clone()))));
        }
        if let Some((truth, _)) = &s.truth {
            row += &format!(" {} |", noise_summary(s.cells.get(&(*id, truth.clone()))));
        }
        line(w, row);
    }
    line(w, String::new());
    let mut findings = Vec::new();
    for ((id, reference), cell) in &s.cells {
        for f in &cell.findings {
            findings.push(format!(
                "- {id:02} against {}: **{}** {} ({}){}",
                cell_text(reference),
                status_name(f.status),
                cell_text(&keys_summary(&f.keys)),
                f.keys.len(),
                if f.note.is_empty() { String::new() } else { format!(": {}", cell_text(&f.note)) }
            ));
        }
    }
    if !findings.is_empty() {
        line(w, "Not passing (missing, failing, near-ties):".into());
        line(w, String::new());
        for f in findings {
            line(w, f);
        }
        line(w, String::new());
    }
}

/// `2/3`: references whose checks at this checkpoint all pass or near-tie, of those in the subject;
/// `3/3, 1 independent` when some of them are not independent there.
pub(crate) fn agreeing_text(s: &Subject, id: u32) -> String {
    let cells: Vec<&Cell> = s.references.iter().filter_map(|(r, _)| s.cells.get(&(id, r.clone()))).filter(|c| c.failed == 0).collect();
    let independent = cells.iter().filter(|c| c.independent()).count();
    let mut text = format!("{}/{}", cells.len(), s.references.len());
    if independent < cells.len() {
        text += &format!(", {independent} independent");
    }
    text
}

/// `pass, +90.0% at blk.1.k (max_abs)`; `not compared` when the reference has no checks there.
pub(crate) fn cell_summary(cell: Option<&Cell>) -> String {
    let Some(cell) = cell else {
        return "not compared".into();
    };
    let status = status_name(cell.status);
    let text = match &cell.worst {
        Some(worst) => format!("{status}, {} at {} ({})", margin_text(worst.margin), worst.key, worst.metric),
        None => status.to_string(),
    };
    text + &cell.mark()
}

/// `pass, 1.3x noise at blk.4.ffn_out`: the truth's cell, by its largest distance in noise units.
pub(crate) fn noise_summary(cell: Option<&Cell>) -> String {
    let Some(cell) = cell else {
        return "not compared".into();
    };
    let status = status_name(cell.status);
    match cell.noisiest() {
        Some((units, key)) => format!("{status}, {units:.2}x noise at {key}"),
        None => status.to_string(),
    }
}

/// Keeps text from breaking a table row or turning into markup.
fn cell_text(text: &str) -> String {
    text.replace('|', "\\|").replace('<', "&lt;").replace('>', "&gt;").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn report_md_matches_snapshot() {
        insta::assert_snapshot!(render(&fixture::run()));
    }

    #[test]
    fn a_pipe_in_a_note_does_not_split_the_table_row() {
        assert_eq!(cell_text("a|b"), "a\\|b");
    }
}
