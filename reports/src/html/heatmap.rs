//! report.html's layer x checkpoint map of one side of a case: a cell per per-layer tensor,
//! coloured by its margin (the unused fraction of its allowance), each a link to its details
//! (status, judgements, every metric, the note, and the command that lists its worst elements).
//! No script: a detail panel shows when it is the page's target (`:target` in report.css).

use super::esc;
use crate::results::CheckResult;
use crate::summary::{margin_text, status_name, Subject};
use std::fmt::Write;

/// The colour class of a margin: `m0` failed (or unjudged and failing), `m1` under 50% left,
/// `m2` under 90%, `m3` 90% or more (an exact match is 100%).
fn class_of(check: &CheckResult) -> &'static str {
    let margin = check.judgements.iter().map(|j| j.margin).filter(|m| m.is_finite()).reduce(f64::min);
    match (check.status.is_failure(), margin) {
        (true, _) => "m0",
        (false, None) => "mx",
        (false, Some(m)) if m < 0.5 => "m1",
        (false, Some(m)) if m < 0.9 => "m2",
        _ => "m3",
    }
}

/// The maps of `s`, one per side with per-layer checks (the truth's first, open), folded.
/// `next_id` numbers the detail panels across the page.
pub fn maps(o: &mut String, s: &Subject, next_id: &mut usize) {
    let sides = s.truth.iter().chain(&s.references).map(|(name, _)| name);
    for (i, side) in sides.enumerate() {
        let checks: Vec<&CheckResult> = s
            .cells
            .iter()
            .filter(|((_, r), _)| r == side)
            .flat_map(|(_, cell)| cell.raw.iter().copied())
            .filter(|c| c.layer.is_some() && !c.tensor.starts_with("dec_"))
            .collect();
        if checks.is_empty() {
            continue;
        }
        let mut tensors: Vec<&str> = Vec::new();
        for c in &checks {
            if !tensors.contains(&c.tensor.as_str()) {
                tensors.push(&c.tensor);
            }
        }
        let mut layers: Vec<usize> = checks.iter().filter_map(|c| c.layer).collect();
        layers.sort_unstable();
        layers.dedup();
        let _ = write!(
            o,
            "<details class=\"heatmap\"{}><summary>Layer x checkpoint margin against {} (click a cell)</summary>\n<table class=\"map\">\n<tr><th>layer</th>",
            if i == 0 { " open" } else { "" },
            esc(side)
        );
        for t in &tensors {
            let _ = write!(o, "<th>{}</th>", esc(t));
        }
        o.push_str("</tr>\n");
        let mut panels = String::new();
        for l in layers {
            let _ = write!(o, "<tr><th>{l}</th>");
            for t in &tensors {
                let Some(c) = checks.iter().find(|c| c.layer == Some(l) && c.tensor == *t) else {
                    o.push_str("<td></td>");
                    continue;
                };
                let id = format!("map-{next_id}");
                *next_id += 1;
                let margin = c.judgements.iter().map(|j| j.margin).filter(|m| m.is_finite()).reduce(f64::min);
                let label = margin.map_or(status_name(c.status).to_string(), margin_text);
                let _ = write!(o, "<td class=\"{}\"><a href=\"#{id}\" title=\"{}: {}\">&nbsp;</a></td>", class_of(c), esc(&c.key), esc(&label));
                panel(&mut panels, &id, c, side, s);
            }
            o.push_str("</tr>\n");
        }
        let _ = write!(o, "</table>\n{panels}</details>\n");
    }
}

/// One cell's details, shown when targeted.
fn panel(o: &mut String, id: &str, c: &CheckResult, side: &str, s: &Subject) {
    let _ = write!(o, "<div class=\"detail\" id=\"{id}\"><p><strong>{}</strong> against {}: {}", esc(&c.key), esc(side), status_name(c.status));
    if let Some(note) = &c.note {
        let _ = write!(o, " ({})", esc(note));
    }
    o.push_str("</p>\n<ul>\n");
    for j in &c.judgements {
        let _ = writeln!(o, "<li>judged {} = {:.4e} {} {:.4e}, margin {}</li>", j.metric, j.value, j.op, j.threshold, margin_text(j.margin));
    }
    for (name, value) in &c.metrics {
        let _ = writeln!(o, "<li>{} = {value:.4e}</li>", esc(name));
    }
    let case = format!("--model {} --prompt {}", s.model, s.prompt);
    let layer = c.layer.unwrap_or(0);
    let _ = writeln!(
        o,
        "</ul>\n<p>Worst elements with their indices and a histogram of errors: <code>parity diff {case} --checkpoint {} --layer {layer} --ref {side}</code>; its own error apart from the inherited: <code>parity replay {case} --layer {layer}</code>.</p></div>",
        esc(&c.tensor),
        case = esc(&case),
        side = esc(side),
    );
}

#[cfg(test)]
mod tests {
    use crate::fixture;

    #[test]
    fn every_layer_tensor_is_a_cell_linking_to_its_own_details_and_a_failure_is_red() {
        let html = super::super::render(&fixture::run());
        let links = html.matches("<a href=\"#map-").count();
        let panels = html.matches("<div class=\"detail\" id=\"map-").count();
        assert!(links > 0 && links == panels, "{links} links, {panels} panels");
        for i in 0..links {
            assert_eq!(html.matches(&format!("id=\"map-{i}\"")).count(), 1, "panel {i}");
        }
        // Per-layer checks only: the model-scope `embed` never gets a cell.
        assert!(!html.contains("title=\"embed:"));
        // The fixture's failing qkv check is coloured as failed, passing ones by their margin.
        assert!(html.contains("<td class=\"m0\">"), "no failed cell");
        assert!(html.contains("class=\"m3\"") || html.contains("class=\"m2\"") || html.contains("class=\"m1\""));
        assert!(!html.contains("<script"));
    }
}
