//! report.html: the markdown report's content as one self-contained page (inline CSS, no external
//! assets), plus per checkpoint and reference an inline SVG chart of the judged error metric against
//! layer index on a log scale, so error growth through depth is visible, and a clickable layer x
//! checkpoint map of margins per side ([`heatmap`]). All text is HTML-escaped.

use crate::confidence::{glance, Confidence, GLANCE_COLUMNS, GLANCE_NOTE, RULE};
use crate::markdown::{agreeing_text, cell_summary, noise_summary, thin_text};
use crate::replay::CaseReplay;
use crate::results::{CheckResult, Judgement, RunResults, STEP_METRIC};
use crate::summary::{self, keys_summary, status_name, Subject, Verdict};
use crate::vocab::{Metric, Op};
use std::collections::BTreeMap;
use std::fmt::Write;

mod heatmap;

const CSS: &str = include_str!("../templates/report.css");
const COLORS: [&str; 6] = ["#1f6feb", "#d97706", "#15803d", "#9333ea", "#b42318", "#0891b2"];

pub fn render(run: &RunResults) -> String {
    render_with(run, &[])
}

/// [`render`], with what `parity replay` found for its cases: each map cell's panel then shows
/// the layer's own error beside the inherited.
pub fn render_with(run: &RunResults, replays: &[CaseReplay]) -> String {
    let verdict = Verdict::of(run);
    let c = Confidence::of(run);
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>parity report {id}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n\
         <h1>parity report: run <code>{id}</code></h1>\n<p>Subject: <code>{subject}</code> (the implementation judged){harness}</p>\n\
         <p class=\"verdict {vclass}\">Verdict: {vlabel} (exit code {code})</p>\n<p><strong>Confidence: {clabel}</strong></p>\n",
        id = esc(&run.run_id),
        subject = esc(&run.subject_label()),
        harness = if run.subject == "engine" { String::new() } else { format!("; harness <code>{}</code>", esc(&run.engine_version)) },
        vclass = serde_json::to_value(verdict).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        vlabel = verdict.label(),
        code = verdict.exit_code(),
        clabel = esc(&c.label()),
    );
    glance_section(&mut o, run, &c);
    let _ = write!(
        o,
        "<h2>Confidence</h2>\n<p>{} checks, {} failed; the least-covered checkpoint agrees with {} independent reference(s); generation {}.</p>\n<details><summary>The rule</summary>\n<ul>\n",
        c.checks,
        c.failures,
        c.min_agreeing_references,
        if c.generation_matches { "matches exactly everywhere" } else { "does not match exactly everywhere" }
    );
    for rule in RULE {
        let _ = writeln!(o, "<li>{}</li>", esc(rule));
    }
    o += "</ul>\n</details>\n";
    let thin: Vec<String> = c.thin.iter().map(thin_text).collect();
    if !thin.is_empty() {
        let _ = writeln!(o, "<details><summary>{} checkpoint(s) resting on fewer than three independent references</summary>", thin.len());
        list(&mut o, "At each, the fewest independent references found, where, and who was not counted:", &thin);
        o.push_str("</details>\n");
    }
    list(&mut o, &format!("Near-ties ({}), not failures:", c.near_ties.len()), &c.near_ties);
    provenance_section(&mut o, run);
    if !run.reference_errors.is_empty() {
        o += "<h2>Reference errors</h2>\n<ul>\n";
        for (reference, error) in &run.reference_errors {
            let _ = writeln!(o, "<li><strong>{}</strong>: {}</li>", esc(reference), esc(error));
        }
        o += "</ul>\n";
    }
    let mut next_id = 0;
    for subject in summary::subjects(run) {
        subject_section(&mut o, &subject);
        heatmap::maps(&mut o, &subject, replays, &mut next_id);
    }
    o += "</body>\n</html>\n";
    o
}

/// One row per model, as the markdown report's "At a glance".
fn glance_section(o: &mut String, run: &RunResults, c: &Confidence) {
    let rows = glance(run, c);
    if rows.is_empty() {
        return;
    }
    o.push_str("<h2>At a glance</h2>\n<table>\n<tr>");
    for column in GLANCE_COLUMNS {
        let _ = write!(o, "<th>{}</th>", esc(column));
    }
    o.push_str("</tr>\n");
    for row in rows {
        o.push_str("<tr>");
        for cell in row.cells() {
            let _ = write!(o, "<td>{}</td>", esc(&cell));
        }
        o.push_str("</tr>\n");
    }
    let _ = writeln!(o, "</table>\n<p>{}</p>", esc(GLANCE_NOTE));
}

fn provenance_section(o: &mut String, run: &RunResults) {
    let rows = summary::not_own(run);
    o.push_str("<h2>Provenance</h2>\n");
    if rows.is_empty() {
        o.push_str("<p>Every reference computed every checkpoint compared with its own model code.</p>\n");
        return;
    }
    let _ = writeln!(o, "<details><summary>{} reference x checkpoint pairs computed with code that is not the reference's own</summary>", rows.len());
    o.push_str(
        "<p>Every reference computed every checkpoint with its own model code, except (<code>kernels</code>: the library's tensor ops under model code of ours; <code>ours</code>: our code):</p>\n\
         <table>\n<tr>",
    );
    for column in summary::NOT_OWN_COLUMNS {
        let _ = write!(o, "<th>{}</th>", esc(column));
    }
    o.push_str("</tr>\n");
    for r in rows {
        o.push_str("<tr>");
        for cell in r.cells() {
            let _ = write!(o, "<td>{}</td>", esc(&cell));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table>\n</details>\n");
}

fn list(o: &mut String, title: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(o, "<p>{}</p>\n<ul>", esc(title));
    for item in items {
        let _ = writeln!(o, "<li>{}</li>", esc(item));
    }
    o.push_str("</ul>\n");
}

fn subject_section(o: &mut String, s: &Subject) {
    let refs: Vec<String> = s.references.iter().map(|(r, v)| format!("{r} {v}")).collect();
    let _ = write!(
        o,
        "<h2>{}</h2>\n<p>References: {}</p>\n<table>\n<tr><th>#</th><th>checkpoint</th><th>agreeing</th>",
        esc(&s.title()),
        esc(&refs.join(", "))
    );
    for (reference, _) in s.references.iter().chain(&s.truth) {
        let _ = write!(o, "<th>{}</th>", esc(reference));
    }
    o.push_str("</tr>\n");
    for (id, name) in &s.checkpoints {
        let _ = write!(o, "<tr><td>{id:02}</td><td>{}</td><td>{}</td>", esc(name), agreeing_text(s, *id));
        for (reference, _) in &s.references {
            let cell = s.cells.get(&(*id, reference.clone()));
            let class = cell.map_or("not-compared", |c| status_name(c.status));
            let _ = write!(o, "<td class=\"{class}\">{}</td>", esc(&cell_summary(cell)));
        }
        if let Some((truth, _)) = &s.truth {
            let cell = s.cells.get(&(*id, truth.clone()));
            let class = cell.map_or("not-compared", |c| status_name(c.status));
            let _ = write!(o, "<td class=\"{class}\">{}</td>", esc(&noise_summary(cell)));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table>\n");
    let mut findings = Vec::new();
    for ((id, reference), cell) in &s.cells {
        for f in &cell.findings {
            let note = if f.note.is_empty() { String::new() } else { format!(": {}", f.note) };
            findings.push(format!("{id:02} against {reference}: {} {} ({}){note}", status_name(f.status), keys_summary(&f.keys), f.keys.len()));
        }
    }
    list(o, "Not passing (missing, failing, near-ties):", &findings);
    let mut charts = String::new();
    for ((id, reference), cell) in &s.cells {
        let name = s.checkpoints.iter().find(|(c, _)| c == id).map_or("", |(_, n)| n.as_str());
        if let Some(svg) = chart(&cell.raw, "layer") {
            let _ = write!(charts, "<figure>\n{svg}<figcaption>{id:02} {} against {}</figcaption>\n</figure>\n", esc(name), esc(reference));
        }
        let steps = along_steps(&cell.raw);
        if let Some(svg) = chart(&steps.iter().collect::<Vec<_>>(), "step") {
            let _ = write!(
                charts,
                "<figure>\n{svg}<figcaption>{id:02} {} against {}, by generated step</figcaption>\n</figure>\n",
                esc(name),
                esc(reference)
            );
        }
    }
    if !charts.is_empty() {
        let _ = write!(o, "<h3>Error through depth</h3>\n<div class=\"charts\">\n{charts}</div>\n");
    }
}

/// The error a judgement measures, oriented so smaller is better: the value of a `<=` metric, and
/// `1 - value` of a `>=` one (cosine similarity becomes 1 - cosine).
/// Returns (metric label, error, threshold on the same scale).
fn error_of(check: &CheckResult) -> Option<(String, f64, f64)> {
    let j = check.judgements.first()?;
    match j.op {
        Op::Ge => Some((format!("1 - {}", j.metric), 1.0 - j.value, 1.0 - j.threshold)),
        Op::Le => Some((j.metric.to_string(), j.value, j.threshold)),
    }
}

/// A line per tensor of the first judged metric against layer, with the threshold dashed when all
/// lines share one; `None` unless some tensor has two or more judged layers (model-scope
/// checkpoints have nothing to plot).
/// The per-step errors a check carries (`step_rel_rms.<t>`, from `step_logits`) as one check per
/// step, the step in place of the layer, so [`chart`] draws the error along the generation.
fn along_steps(checks: &[&CheckResult]) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for &check in checks {
        for (name, &value) in &check.metrics {
            let Some(step) = name.strip_prefix(STEP_METRIC).and_then(|t| t.parse().ok()) else { continue };
            let judgement = Judgement { metric: Metric::RelRms, value, op: Op::Le, threshold: f64::NAN, margin: f64::NAN, pass: true };
            out.push(CheckResult { layer: Some(step), metrics: BTreeMap::new(), judgements: vec![judgement], ..check.clone() });
        }
    }
    out
}

/// The first judged metric of each check against its layer (or step: `axis` names it).
fn chart(checks: &[&CheckResult], axis: &str) -> Option<String> {
    let mut series: BTreeMap<(String, String), Vec<(usize, f64)>> = BTreeMap::new();
    let mut thresholds = Vec::new();
    for &check in checks {
        if let (Some(layer), Some((metric, err, threshold))) = (check.layer, error_of(check)) {
            if err.is_finite() {
                series.entry((check.tensor.clone(), metric.clone())).or_default().push((layer, err));
                thresholds.push((metric, threshold));
            }
        }
    }
    series.retain(|_, points| points.len() >= 2);
    if series.is_empty() {
        return None;
    }
    // Checks judged by a noise floor: per layer, the largest floor and allowance over the tensors,
    // drawn as a shaded band and a dashed line so the engine's line reads against the noise.
    let mut band: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for &check in checks {
        if let (Some(layer), Some(&noise), Some(j)) = (check.layer, check.metrics.get(Metric::NoiseRms.as_str()), check.judgements.first()) {
            let entry = band.entry(layer).or_insert((0.0, 0.0));
            *entry = (entry.0.max(noise), entry.1.max(j.threshold));
        }
    }
    thresholds.dedup();
    let threshold = match thresholds.as_slice() {
        [(_, t)] if t.is_finite() && *t > 0.0 => Some(*t),
        _ => None,
    };
    // The legend sits right of the plot: as wide as its longest label at the chart's 10 px font
    // (about 6 px a character), so no label is cut off at the edge.
    let longest = series.keys().map(|(tensor, metric)| tensor.chars().count() + 1 + metric.chars().count()).max().unwrap_or(0);
    let right = 8.0 + 6.0 * longest as f64;
    let (h, left, top, bottom, plot_width) = (170.0, 46.0, 10.0, 28.0, 224.0);
    let w = left + plot_width + right;
    let points = series.values().flatten();
    let max_layer = points.clone().map(|p| p.0).max().unwrap_or(0).max(1) as f64;
    // Errors of exactly zero sit on the floor of the plot, 1e-12.
    let logs = points.map(|p| p.1).chain(threshold).chain(band.values().flat_map(|&(n, a)| [n, a])).map(|e| e.max(1e-12).log10());
    let lo = logs.clone().fold(f64::INFINITY, f64::min).floor();
    let hi = logs.fold(f64::NEG_INFINITY, f64::max).ceil().max(lo + 1.0);
    let x = |layer: usize| left + (w - left - right) * layer as f64 / max_layer;
    let y = |err: f64| top + (h - top - bottom) * (hi - err.max(1e-12).log10()) / (hi - lo);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" font-size=\"10\" font-family=\"sans-serif\">"
    );
    let _ = writeln!(
        svg,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#ccc\"/>",
        w - left - right,
        h - top - bottom
    );
    let mut decade = lo;
    while decade <= hi {
        let yy = y(10f64.powf(decade));
        let _ = writeln!(svg, "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">1e{decade}</text>", w - right, left - 4.0, yy + 3.0);
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{left}\" y=\"{:.1}\">{axis} 0</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{max_layer}</text>",
        h - 8.0,
        w - right,
        h - 8.0
    );
    if let Some(t) = threshold {
        let yy = y(t);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#b42318\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" style=\"fill:#b42318\">threshold</text>",
            w - right,
            left + 4.0,
            yy - 3.0
        );
    }
    if band.len() >= 2 {
        let bottom_y = h - bottom;
        let (first, last) = (*band.keys().next().unwrap_or(&0), *band.keys().last().unwrap_or(&0));
        let noise: Vec<String> = band.iter().map(|(&l, &(n, _))| format!("{:.1},{:.1}", x(l), y(n))).collect();
        let allowance: Vec<String> = band.iter().map(|(&l, &(_, a))| format!("{:.1},{:.1}", x(l), y(a))).collect();
        let _ =
            writeln!(svg, "<polygon fill=\"#e4e7ec\" points=\"{:.1},{bottom_y:.1} {} {:.1},{bottom_y:.1}\"/>", x(first), noise.join(" "), x(last));
        let _ = writeln!(svg, "<polyline fill=\"none\" stroke=\"#b42318\" stroke-dasharray=\"4 3\" points=\"{}\"/>", allowance.join(" "));
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" style=\"fill:#667085\">grey: noise floor; dashed: allowed</text>",
            left + 4.0,
            bottom_y - 4.0
        );
    }
    for (i, ((tensor, metric), pts)) in series.iter_mut().enumerate() {
        pts.sort_by_key(|p| p.0);
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts.iter().map(|&(l, e)| format!("{:.1},{:.1}", x(l), y(e))).collect();
        let _ = writeln!(svg, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>", path.join(" "));
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" style=\"fill:{color}\">{} {}</text>",
            w - right + 4.0,
            top + 12.0 + 12.0 * i as f64,
            esc(tensor),
            esc(metric)
        );
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

/// Escapes text for HTML element content and double-quoted attributes.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn report_html_matches_snapshot() {
        insta::assert_snapshot!(render(&fixture::run()));
    }

    #[test]
    fn page_is_self_contained_and_escaped() {
        let html = render(&fixture::run());
        assert!(!html.contains("<link") && !html.contains("<script") && !html.contains("src=\""));
        // Fixture note: `tinygrad keeps no <cache> tensor & cannot dump it`.
        assert!(html.contains("no &lt;cache&gt; tensor &amp; cannot"));
        assert!(!html.contains("<cache>"));
    }

    #[test]
    fn layered_checkpoints_get_one_chart_per_reference_and_model_scope_ones_none() {
        let html = render(&fixture::run());
        // Fixture: qkv (3 refs on llama, 1 on gpt2) and rope_kv_cache (llamacpp, pytorch; tinygrad's
        // checks are missing, unjudged) have two layers; embeddings, logits, generated have none.
        assert_eq!(html.matches("<svg").count(), 6);
    }

    #[test]
    fn checks_judged_by_a_noise_floor_draw_the_floor_as_a_band_and_the_allowance_dashed() {
        // Engine 1e-6 at every layer, floor 1e-5 and allowance 1e-4 (decades 1e-6..1e-4: 66 px
        // each, top 10 px): the floor at y 76, the allowance along the top.
        let checks: Vec<_> = (0..3)
            .map(|l| {
                let mut c = fixture::judged(2, "qkv", "q", Some(l), 1e-6);
                c.metrics.insert("noise_rms".into(), 1e-5);
                c.judgements[0].threshold = 1e-4;
                c
            })
            .collect();
        let svg = chart(&checks.iter().collect::<Vec<_>>(), "layer").expect("three layers");
        assert!(svg.contains("<polygon fill=\"#e4e7ec\" points=\"46.0,142.0 46.0,76.0 158.0,76.0 270.0,76.0 270.0,142.0\""), "{svg}");
        assert!(svg.contains("stroke-dasharray=\"4 3\" points=\"46.0,10.0 158.0,10.0 270.0,10.0\""), "{svg}");
        let plain: Vec<_> = (0..3).map(|l| fixture::judged(2, "qkv", "q", Some(l), 1e-6)).collect();
        assert!(!chart(&plain.iter().collect::<Vec<_>>(), "layer").expect("three layers").contains("<polygon"));
    }

    #[test]
    fn step_logits_errors_are_charted_along_the_generation() {
        let mut check = fixture::judged(13, "step_logits", "step_logits", None, 1e-6);
        for (t, e) in [1e-6, 1e-5, 1e-4].iter().enumerate() {
            check.metrics.insert(format!("{STEP_METRIC}{t}"), *e);
        }
        let steps = along_steps(&[&check]);
        assert_eq!(steps.iter().map(|c| (c.layer, c.judgements[0].value)).collect::<Vec<_>>(), [(Some(0), 1e-6), (Some(1), 1e-5), (Some(2), 1e-4)]);
        let svg = chart(&steps.iter().collect::<Vec<_>>(), "step").expect("three steps");
        // One decade per step, as for layers; no threshold line (each step has its own).
        assert!(svg.contains("points=\"46.0,142.0 158.0,76.0 270.0,10.0\"") && svg.contains(">step 0<"), "{svg}");
        assert!(!svg.contains("#b42318"), "{svg}");
        assert!(along_steps(&[&fixture::judged(2, "qkv", "q", Some(0), 1e-6)]).is_empty());
    }

    #[test]
    fn error_growing_tenfold_per_layer_climbs_one_decade_per_layer() {
        let checks: Vec<_> = (0..3).map(|l| fixture::judged(2, "qkv", "q", Some(l), 1e-6 * 10f64.powi(l as i32))).collect();
        let svg = chart(&checks.iter().collect::<Vec<_>>(), "layer").expect("three layers");
        // The 1e-4 threshold is the top of the range: 132 px over decades 1e-6..1e-4, so 66 px per
        // decade, layer 0 at the bottom, the threshold line along the top.
        assert!(svg.contains("points=\"46.0,142.0 158.0,76.0 270.0,10.0\""), "{svg}");
        assert!(svg.contains("y1=\"10.0\" x2=\"270.0\" y2=\"10.0\" stroke=\"#b42318\""), "{svg}");
    }
}
