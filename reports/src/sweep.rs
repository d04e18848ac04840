//! What `parity sweep` found: one case judged at every point of an axis (positions, thread
//! counts, prefill modes), each point's worst margin, and the boundary where checks first fail;
//! rendered as a text table and as one self-contained HTML page of SVG charts.

use crate::junit::escape;
use crate::results::CheckResult;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The conditions a sweep varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Axis {
    /// Windows of positions along the prompt and the decode (`step_logits` rows and every layer's
    /// K and V cache rows at those positions).
    Position,
    /// The engine's worker threads.
    Threads,
    /// The prompt in one batch, in chunks, or token by token.
    Prefill,
}

impl Axis {
    pub fn name(self) -> &'static str {
        match self {
            Axis::Position => "position",
            Axis::Threads => "threads",
            Axis::Prefill => "prefill",
        }
    }
}

/// One point of an axis: what was judged there and how close to failing it came.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The condition, as the axis spells it (`4096..4608`, `2`, `chunks:4`).
    pub at: String,
    /// The smallest margin of any judgement of any check there (the reports' margin: the unused
    /// fraction of the allowance, below 0 failed); -1 for a check failed with no judgement
    /// (missing, layout, non-finite).
    pub margin: f64,
    /// Whether any check there failed.
    pub failed: bool,
    /// Where the worst margin was: `key against side (metric)`.
    pub worst: String,
    /// Checks judged there.
    pub checks: usize,
}

impl Point {
    /// The point of checks judged against one side each: `(side, its checks)`.
    pub fn of(at: impl Into<String>, sides: &[(&str, &[CheckResult])]) -> Point {
        let mut point = Point { at: at.into(), margin: f64::INFINITY, failed: false, worst: String::new(), checks: 0 };
        for (side, checks) in sides {
            for check in checks.iter() {
                point.checks += 1;
                point.failed |= check.status.is_failure();
                let judged = check.judgements.iter().filter(|j| !j.margin.is_nan()).min_by(|a, b| a.margin.total_cmp(&b.margin));
                let (margin, metric) = match judged {
                    Some(j) => (j.margin, j.metric.to_string()),
                    None if check.status.is_failure() => (-1.0, format!("{:?}", check.status).to_lowercase()),
                    None => continue,
                };
                if margin < point.margin {
                    point.margin = margin;
                    point.worst = format!("{} against {side} ({metric})", check.key);
                }
            }
        }
        point
    }
}

/// One axis swept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub axis: Axis,
    /// What each point compares, in a sentence (shown under the table and the chart).
    pub compared: String,
    pub points: Vec<Point>,
}

/// Where an axis first fails: the first failing point, after the last passing one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Boundary {
    pub last_pass: Option<usize>,
    pub first_fail: usize,
}

impl Sweep {
    /// The first failing point in axis order, if any.
    pub fn boundary(&self) -> Option<Boundary> {
        let first_fail = self.points.iter().position(|p| p.failed)?;
        Some(Boundary { last_pass: first_fail.checked_sub(1), first_fail })
    }

    /// The sentence naming the boundary.
    pub fn boundary_text(&self) -> String {
        match self.boundary() {
            None => format!("no failure along {}", self.axis.name()),
            Some(b) => {
                let first = &self.points[b.first_fail];
                let after = b.last_pass.map_or(String::new(), |i| format!(", after {} passed", self.points[i].at));
                format!("first failure at {} {}{after}: {}", self.axis.name(), first.at, first.worst)
            }
        }
    }

    /// The table: one row per point, the boundary marked.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = self.points.iter().map(|p| p.at.len()).max().unwrap_or(0).max(self.axis.name().len());
        let _ = writeln!(out, "  {:<width$}  {:>10}  {:<7}  worst", self.axis.name(), "margin", "verdict");
        let boundary = self.boundary();
        for (i, p) in self.points.iter().enumerate() {
            let mark = if boundary.is_some_and(|b| b.first_fail == i) { "  <- first failure" } else { "" };
            let verdict = if p.failed { "FAIL" } else { "pass" };
            let _ = writeln!(out, "  {:<width$}  {:>10}  {verdict:<7}  {}{mark}", p.at, margin_text(p.margin), p.worst);
        }
        let _ = writeln!(out, "  {}", self.boundary_text());
        out
    }
}

/// A margin as the reports print it (`+93.1%`), in powers of ten past -10,000% (a bug found is
/// often millions of allowances out), or `-` where nothing was judged.
fn margin_text(margin: f64) -> String {
    if !margin.is_finite() {
        "-".into()
    } else if margin.abs() >= 100.0 {
        format!("{:+.1e}%", margin * 100.0)
    } else {
        crate::summary::margin_text(margin)
    }
}

/// One self-contained page (no script, no outside asset): a title, then per axis its chart and table.
pub fn html(title: &str, sweeps: &[Sweep]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>body{{font:14px sans-serif;margin:2em;max-width:60em}}\
         table{{border-collapse:collapse}}td,th{{padding:2px 8px;text-align:left}}tr.fail td{{color:#b00}}</style></head><body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    for sweep in sweeps {
        let _ = writeln!(out, "<h2>worst margin vs {}</h2>\n<p>{}</p>", sweep.axis.name(), escape(&sweep.compared));
        out.push_str(&svg(sweep));
        let _ = writeln!(out, "<p><b>{}</b></p>", escape(&sweep.boundary_text()));
        let _ = writeln!(out, "<table><tr><th>{}</th><th>margin</th><th>verdict</th><th>worst</th></tr>", sweep.axis.name());
        for p in &sweep.points {
            let (class, verdict) = if p.failed { (" class=\"fail\"", "FAIL") } else { ("", "pass") };
            let _ = writeln!(
                out,
                "<tr{class}><td>{}</td><td>{}</td><td>{verdict}</td><td>{}</td></tr>",
                escape(&p.at),
                margin_text(p.margin),
                escape(&p.worst)
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</body></html>\n");
    out
}

/// The margin axis of a chart is clipped to this range (the table has the true values).
const CLIP: (f64, f64) = (-1.0, 1.0);

/// One axis as an SVG line chart: worst margin (clipped to -100%..+100%) per point, the 0% line,
/// failing points in red, and the boundary as a dashed line between the last pass and the first failure.
pub fn svg(sweep: &Sweep) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 260.0, 60.0, 20.0, 20.0, 60.0);
    let n = sweep.points.len().max(1);
    let x = |i: f64| left + (w - left - right) * if n == 1 { 0.5 } else { i / (n - 1) as f64 };
    let y = |m: f64| top + (h - top - bottom) * (CLIP.1 - m.clamp(CLIP.0, CLIP.1)) / (CLIP.1 - CLIP.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    for m in [-1.0, -0.5, 0.0, 0.5, 1.0] {
        let stroke = if m == 0.0 { "#000" } else { "#ddd" };
        let _ = writeln!(out, "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{stroke}\"/>", w - right, y = y(m));
        let _ = writeln!(out, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:+.0}%</text>", left - 6.0, y(m) + 4.0, m * 100.0);
    }
    let finite: Vec<(usize, &Point)> = sweep.points.iter().enumerate().filter(|(_, p)| p.margin.is_finite()).collect();
    let path: Vec<String> = finite.iter().map(|(i, p)| format!("{:.1},{:.1}", x(*i as f64), y(p.margin))).collect();
    let _ = writeln!(out, "<polyline fill=\"none\" stroke=\"#36c\" stroke-width=\"1.5\" points=\"{}\"/>", path.join(" "));
    for (i, p) in &finite {
        let colour = if p.failed { "#c00" } else { "#36c" };
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{}: {}</title></circle>",
            x(*i as f64),
            y(p.margin),
            escape(&p.at),
            margin_text(p.margin)
        );
    }
    // Labels under the axis: every point when few, else about ten.
    let every = n.div_ceil(10);
    for (i, p) in sweep.points.iter().enumerate().filter(|(i, _)| i % every == 0 || *i == n - 1) {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"end\" transform=\"rotate(-35 {:.1} {})\">{}</text>",
            x(i as f64),
            h - bottom + 14.0,
            x(i as f64),
            h - bottom + 14.0,
            escape(&p.at)
        );
    }
    if let Some(b) = sweep.boundary() {
        let at = b.last_pass.map_or(x(0.0) - 8.0, |i| (x(i as f64) + x(b.first_fail as f64)) / 2.0);
        let _ = writeln!(out, "<line x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#c00\" stroke-dasharray=\"4 3\"/>", h - bottom);
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" fill=\"#c00\">first failure: {}</text>",
            at + 4.0,
            top + 10.0,
            escape(&sweep.points[b.first_fail].at)
        );
    }
    let _ = writeln!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", (left + w - right) / 2.0, h - 4.0, sweep.axis.name());
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at: &str, margin: f64, failed: bool) -> Point {
        Point { at: at.into(), margin, failed, worst: format!("step_logits at {at}"), checks: 1 }
    }

    #[test]
    fn the_boundary_is_the_first_failing_point_after_the_last_pass_before_it() {
        let sweep = |points| Sweep { axis: Axis::Position, compared: String::new(), points };
        let s = sweep(vec![point("0..4", 0.9, false), point("4..8", 0.8, false), point("8..12", -3.0, true), point("12..16", 0.5, false)]);
        assert_eq!(s.boundary(), Some(Boundary { last_pass: Some(1), first_fail: 2 }));
        assert_eq!(s.boundary_text(), "first failure at position 8..12, after 4..8 passed: step_logits at 8..12");
        assert!(s.table().contains("\n  8..12        -300.0%  FAIL     step_logits at 8..12  <- first failure\n"), "{}", s.table());
        assert_eq!(sweep(vec![point("0..4", -1.0, true)]).boundary(), Some(Boundary { last_pass: None, first_fail: 0 }));
        assert_eq!(sweep(vec![point("0..4", 0.1, false)]).boundary(), None);
        assert_eq!(sweep(vec![point("0..4", 0.1, false)]).boundary_text(), "no failure along position");
    }

    #[test]
    fn the_chart_marks_the_boundary_and_clips_margins_to_its_range() {
        let s = Sweep { axis: Axis::Threads, compared: "all".into(), points: vec![point("1", 1.0, false), point("2", -50.0, true)] };
        let svg = svg(&s);
        // x: 60 and 700; y: +100% at 20, -100% at 200; the boundary halfway, at 380.
        assert!(svg.contains("points=\"60.0,20.0 700.0,200.0\""), "{svg}");
        assert!(svg.contains("<line x1=\"380.0\" x2=\"380.0\""), "{svg}");
        assert!(svg.contains("first failure: 2"));
        let page = html("sweep <x>", &[s]);
        assert!(page.contains("<title>sweep &lt;x&gt;</title>") && page.contains("-5000.0%"));
        assert_eq!(margin_text(-442512.856), "-4.4e7%");
        assert!(!page.contains("http://") || page.matches("http://").count() == 1, "only the SVG namespace, no outside asset");
    }
}
