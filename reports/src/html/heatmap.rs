//! report.html's layer x checkpoint map of one side of a case: a cell per per-layer tensor,
//! coloured by its margin (the unused fraction of its allowance), each a link to its details
//! (status, judgements, every metric, the note, the command that lists its worst elements, and
//! the layer's own error beside the inherited when `parity replay` data is given).
//! No script: a detail panel shows when it is the page's target (`:target` in report.css).

use super::esc;
use crate::replay::{CaseReplay, Cell as Replayed};
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
pub fn maps(o: &mut String, s: &Subject, replays: &[CaseReplay], next_id: &mut usize) {
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
        let replayed = replays
            .iter()
            .filter(|r| r.model == s.model && r.prompt == s.prompt)
            .flat_map(|r| &r.sides)
            .find(|r| &r.reference == side)
            .map(|r| &r.cells[..])
            .unwrap_or_default();
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
                let own = replayed.iter().find(|r| r.own.key == c.key);
                // Outlined where the layer's own error fails: where the replay says to look.
                let own_fails = if own.is_some_and(|r| r.own.status.is_failure()) { " own-fail" } else { "" };
                let _ = write!(
                    o,
                    "<td class=\"{}{own_fails}\"><a href=\"#{id}\" title=\"{}: {}\">&nbsp;</a></td>",
                    class_of(c),
                    esc(&c.key),
                    esc(&label)
                );
                panel(&mut panels, &id, c, side, s, own);
            }
            o.push_str("</tr>\n");
        }
        let _ = write!(o, "</table>\n{panels}</details>\n");
    }
}

/// One cell's details, shown when targeted.
fn panel(o: &mut String, id: &str, c: &CheckResult, side: &str, s: &Subject, replayed: Option<&Replayed>) {
    let _ = write!(o, "<div class=\"detail\" id=\"{id}\"><p><strong>{}</strong> against {}: {}", esc(&c.key), esc(side), status_name(c.status));
    if let Some(note) = &c.note {
        let _ = write!(o, " ({})", esc(note));
    }
    o.push_str("</p>\n<ul>\n");
    for j in &c.judgements {
        let _ = writeln!(o, "<li>judged {} = {:.4e} {} {:.4e}, margin {}</li>", j.metric, j.value, j.op, j.threshold, margin_text(j.margin));
    }
    if let Some(r) = replayed {
        let rms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4e}"));
        let _ = writeln!(
            o,
            "<li class=\"own\">own error (replayed on {}'s input) {}: relative RMS {}; inherited (plain run) {}; one-layer floor {}</li>",
            esc(side),
            status_name(r.own.status),
            rms(r.own_rms),
            rms(r.inherited_rms),
            rms(r.floor_rms)
        );
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
        assert!(!html.contains("own error (replayed"), "no replay data, no own error");
    }

    /// Replay data for one cell of the fixture: pytorch's blk.1.k on tiny-llama-f32 x fox.
    fn replay_of(run: &crate::results::RunResults) -> crate::replay::CaseReplay {
        use crate::replay::{CaseReplay, Cell, SideReplay};
        let check = run.cases[1].checks.iter().find(|c| c.key == "blk.1.k").unwrap().clone();
        let cell = Cell { own: check, own_rms: Some(1.5e-7), inherited_rms: Some(2.5e-6), floor_rms: Some(1e-7) };
        let side = SideReplay { reference: "pytorch".into(), role: crate::results::Role::Reference, cells: vec![cell] };
        CaseReplay { model: "tiny-llama-f32".into(), prompt: "fox".into(), sides: vec![side] }
    }

    #[test]
    fn with_replay_data_a_cells_panel_shows_its_own_error_beside_the_inherited() {
        let run = fixture::run();
        let html = super::super::render_with(&run, &[replay_of(&run)]);
        // The tiny-llama subject's panel (tiny-gpt2-hf, first on the page, has a blk.1.k too).
        let llama = html.find("<h2>tiny-llama-f32 / fox").expect("the subject");
        let at = llama + html[llama..].find("<strong>blk.1.k</strong> against pytorch").expect("the panel");
        let panel = &html[at..at + html[at..].find("</div>").unwrap()];
        assert!(
            panel.contains(
                "own error (replayed on pytorch's input) pass: relative RMS 1.5000e-7; inherited (plain run) 2.5000e-6; one-layer floor 1.0000e-7"
            ),
            "{panel}"
        );
        assert_eq!(html.matches("own error (replayed").count(), 1);
        assert!(!html.contains(" own-fail\""), "its own error passes: no outline");
        let mut failing = replay_of(&run);
        failing.sides[0].cells[0].own.status = crate::results::Status::Fail;
        let html = super::super::render_with(&run, &[failing]);
        // The plain check passes with 90% left (m3); its own error fails: outlined, once.
        assert_eq!(html.matches("<td class=\"m3 own-fail\"><a href=\"#").count(), 1);
    }
}
