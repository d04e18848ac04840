//! `parity calibrate`: tolerances from evidence. For every case, every pair of references is
//! compared with the same metrics the spec judges the engine with; the worst value per checkpoint,
//! metric and tolerance class is the measured spread, and the proposed threshold is that spread
//! times a safety factor (rule in `harness::spec`), written with the spread beside it.

use super::select::Selection;
use anyhow::{Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use harness::compare;
use harness::dumps::{Dump, Lookup};
use harness::metrics;
use harness::pipeline::{fetch_dump, Setup};
use harness::spec::{self, Spreads};
use harness::tensor::{Tensor, Values};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Where to write the proposed spec (default: checkpoints/tolerances.proposed.toml).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the tolerance spec itself (the --tolerances file) with the proposal.
    #[arg(long)]
    pub write: bool,
    /// Keep a calibrated spread already in the spec when it is worse than the one measured now, so
    /// calibrating on several suites in turn keeps the evidence of each.
    #[arg(long)]
    pub accumulate: bool,
}

pub fn run(args: CalibrateArgs, root: &Path) -> Result<i32> {
    let live_out = std::env::temp_dir().join(format!("parity-calibrate-{}", std::process::id()));
    let loaded = args.selection.load(root, &live_out)?;
    let setup =
        Setup { root: &loaded.root, suite: &loaded.suite, catalog: &loaded.catalog, spec: &loaded.spec, source: &loaded.source, prepare: None };
    // class -> spreads, and what they were measured on.
    let mut spreads: BTreeMap<String, Spreads> = BTreeMap::new();
    // class -> largest last_logits max_abs between references, for the near-tie gaps.
    let mut logit_spreads: BTreeMap<String, f64> = BTreeMap::new();
    let mut measured_on = Vec::new();
    for case in &loaded.cases {
        let dumps: Vec<Dump> = case
            .refs
            .iter()
            .map(|r| fetch_dump(&setup, case, r).with_context(|| format!("{r} on {}/{}", case.model.id, case.prompt.id)))
            .collect::<Result<_>>()?;
        if dumps.len() < 2 {
            continue;
        }
        measured_on.push(format!("{}/{}", case.model.id, case.prompt.id));
        let first = &dumps[0].manifest;
        let entries = loaded.catalog.entries(&first.arch, first.n_layers);
        for (i, a) in dumps.iter().enumerate() {
            for (j, b) in dumps.iter().enumerate().skip(i + 1) {
                // A pair is measured in the looser of its two references' classes.
                let class = spec::looser(case.model.class_for(&case.refs[i]), case.model.class_for(&case.refs[j])).to_string();
                for entry in &entries {
                    let (Some(x), Some(y)) = (f32_values(a, &entry.key), f32_values(b, &entry.key)) else {
                        continue;
                    };
                    if x.len() != y.len() || x.is_empty() {
                        continue;
                    }
                    let Some(thresholds) = loaded.spec.thresholds(&entry.checkpoint, &class) else {
                        continue;
                    };
                    let values = compare::f32_metrics(&x, &y, entry.tensor == "probs");
                    if entry.tensor == "last_logits" {
                        let e = logit_spreads.entry(class.clone()).or_insert(0.0);
                        *e = e.max(values["max_abs"]);
                    }
                    let slot = spreads.entry(class.clone()).or_default().entry(entry.checkpoint.clone()).or_default();
                    for (metric, t) in thresholds {
                        let Some(&v) = values.get(metric) else {
                            continue;
                        };
                        let e = slot.entry(metric.clone()).or_insert(v);
                        // The worst: largest for an error (<=), smallest for a similarity (>=).
                        *e = if t.op.as_str() == "<=" { e.max(v) } else { e.min(v) };
                    }
                }
            }
        }
    }
    let date = reports::bundle::Provenance::now("calibrate", "").created.chars().take(10).collect::<String>();
    let provenance = format!("{date} on {} ({} cases)", loaded.cases.iter().map(|c| c.refs.join("+")).next().unwrap_or_default(), measured_on.len());
    let mut proposed = loaded.spec.clone();
    for (class, s) in &spreads {
        proposed = spec::calibrate(&proposed, class, s, args.accumulate, &provenance)?;
    }
    for (class, &spread) in &logit_spreads {
        proposed = spec::calibrate_near_tie(&proposed, class, spread, args.accumulate, &provenance);
    }
    print_table(&loaded.spec, &proposed, &spreads, &logit_spreads);
    let out = match (args.write, &args.out) {
        (true, _) => loaded.spec_path.clone(),
        (false, Some(p)) => p.clone(),
        (false, None) => loaded.root.join("checkpoints/tolerances.proposed.toml"),
    };
    let tmp = out.with_extension("toml.tmp");
    std::fs::write(&tmp, spec::to_toml(&proposed, &loaded.catalog)).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    println!("measured on: {}", measured_on.join(", "));
    println!("wrote {}", out.display());
    let _ = std::fs::remove_dir_all(&live_out);
    Ok(0)
}

fn f32_values(dump: &Dump, key: &str) -> Option<Vec<f32>> {
    match dump.get(key) {
        Ok(Lookup::Tensor(Tensor { values: Values::F32(v), .. })) if metrics::all_finite(&v) => Some(v),
        _ => None,
    }
}

fn print_table(current: &spec::Spec, proposed: &spec::Spec, spreads: &BTreeMap<String, Spreads>, logit_spreads: &BTreeMap<String, f64>) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec!["class", "checkpoint", "metric", "spread between references", "current", "proposed"]);
    for (class, s) in spreads {
        for (checkpoint, metrics) in s {
            for (metric, spread) in metrics {
                let get = |sp: &spec::Spec| {
                    sp.thresholds(checkpoint, class)
                        .and_then(|t| t.get(metric))
                        .map(|t| format!("{} {:.3e}", t.op.as_str(), t.threshold))
                        .unwrap_or_default()
                };
                table.add_row(vec![class.clone(), checkpoint.clone(), metric.clone(), format!("{spread:.3e}"), get(current), get(proposed)]);
            }
        }
    }
    for (class, spread) in logit_spreads {
        let gap = |sp: &spec::Spec| sp.near_tie_gap("generated", class).map(|g| format!("gap {g:.3e}")).unwrap_or_default();
        table.add_row(vec![
            class.clone(),
            "argmax, generated".into(),
            "near-tie gap (last_logits max_abs)".into(),
            format!("{spread:.3e}"),
            gap(current),
            gap(proposed),
        ]);
    }
    println!("{table}");
}
