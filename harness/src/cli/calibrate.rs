//! `parity calibrate`: tolerances from evidence. For every case, every pair of references is
//! compared with the same metrics the spec judges the engine with. Per checkpoint, tolerance class
//! and model family, each pair's worst value over the checkpoint's tensors is one sample; a pair
//! ten times the median of the others, or every pair of one reference ten times the pairs without
//! it, is printed as an outlier and left out, and the worst of the rest is the measured spread
//! (`harness::spec::robust_spread`). The proposed threshold is that
//! spread times a safety factor (rule in `harness::spec`), written with the spread beside it: per
//! family as `[family.<arch>.checkpoint.<name>.<class>]`, and as the class default the worst over
//! the families measured (what a model of another family is judged by).

use super::select::Selection;
use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use harness::compare;
use harness::dumps::{Dump, Lookup};
use harness::metrics;
use harness::pipeline::{case_fed, fetch_dump};
use harness::spec::{self, Class, Evidence, Metric, Op, PairSpread, RobustSpread, Spreads};
use harness::tensor::{Tensor, Values};
use reports::vocab::{CheckpointName, TensorName};
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
    /// Keep a calibrated spread already in the spec when it is worse than the one measured now and
    /// was measured on the same suite and cases (repeated live runs keep the worst seen). A spread
    /// measured on anything else is replaced: calibrating can tighten.
    #[arg(long)]
    pub accumulate: bool,
}

/// (checkpoint, class, family) -> pair -> its spread there.
type Samples = BTreeMap<(String, Class, String), BTreeMap<String, PairSpread>>;

pub fn run(args: CalibrateArgs, root: &Path) -> Result<i32> {
    let loaded = args.selection.load(root)?;
    if !loaded.subject.is_engine() {
        bail!("parity calibrate measures the references' spread, which no subject changes; leave out --subject");
    }
    let setup = loaded.setup(&loaded.source);
    let mut samples = Samples::new();
    let mut measured_on = Vec::new();
    for case in &loaded.cases {
        let fed = case_fed(&setup, case).with_context(|| format!("the truth on {}/{}", case.model.id, case.prompt.id))?;
        let dumps: Vec<Dump> = case
            .refs
            .iter()
            .map(|r| fetch_dump(&setup, case, r, &fed).with_context(|| format!("{r} on {}/{}", case.model.id, case.prompt.id)))
            .collect::<Result<_>>()?;
        if dumps.len() < 2 {
            continue;
        }
        measured_on.push(format!("{}/{}", case.model.id, case.prompt.id));
        let first = &dumps[0].manifest;
        let family = first.arch.clone();
        let entries = loaded.catalog.entries(&first.arch, first.n_layers);
        for (i, a) in dumps.iter().enumerate() {
            for (j, b) in dumps.iter().enumerate().skip(i + 1) {
                // A pair is measured in the looser of its two references' classes.
                let class = case.model.class_for(&case.refs[i]).looser(case.model.class_for(&case.refs[j]));
                let pair = format!("{}/{} {}~{}", case.model.id, case.prompt.id, case.refs[i], case.refs[j]);
                for entry in &entries {
                    let (Some(x), Some(y)) = (f32_values(a, &entry.key), f32_values(b, &entry.key)) else {
                        continue;
                    };
                    if x.len() != y.len() || x.is_empty() || loaded.spec.class_default(&entry.checkpoint, class).is_none() {
                        continue;
                    }
                    let values = compare::f32_metrics(&x, &y, TensorName::is_probability(&entry.tensor));
                    samples
                        .entry((entry.checkpoint.clone(), class, family.clone()))
                        .or_default()
                        .entry(pair.clone())
                        .or_insert_with(|| PairSpread::new(pair.clone(), &case.refs[i], &case.refs[j]))
                        .add(&values);
                }
            }
        }
    }
    let robust: BTreeMap<(String, Class, String), RobustSpread> =
        samples.iter().map(|(k, pairs)| (k.clone(), spec::robust_spread(&pairs.values().cloned().collect::<Vec<_>>()))).collect();
    let date = reports::bundle::Provenance::now("calibrate", "", None).created.chars().take(10).collect::<String>();
    let evidence = Evidence { date, on: evidence_of(&loaded) };
    let (by_family, by_class, logit_spreads) = spreads_of(&robust);
    let mut proposed = loaded.spec.clone();
    for (class, s) in &by_class {
        proposed = spec::calibrate(&proposed, *class, None, s, args.accumulate, &evidence)?;
    }
    for ((class, family), s) in &by_family {
        if spec::FAMILIES.contains(&family.as_str()) {
            proposed = spec::calibrate(&proposed, *class, Some(family), s, args.accumulate, &evidence)?;
        } else {
            println!(
                "family {family:?} has no tolerances of its own (known: {}): its spreads count toward the class defaults only",
                spec::FAMILIES.join(", ")
            );
        }
    }
    for (class, &spread) in &logit_spreads {
        proposed = spec::calibrate_near_tie(&proposed, *class, spread, args.accumulate, &evidence);
    }
    print_table(&loaded.spec, &proposed, &robust, &by_class, &logit_spreads);
    print_outliers(&robust);
    let out = match (args.write, &args.out) {
        (true, _) => loaded.spec_path.clone(),
        (false, Some(p)) => p.clone(),
        (false, None) => loaded.root.join("checkpoints/tolerances.proposed.toml"),
    };
    let tmp = out.with_extension("toml.tmp");
    std::fs::write(&tmp, spec::to_toml(&proposed, &loaded.catalog)).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    println!("measured on: {} ({})", measured_on.join(", "), evidence.on);
    println!("wrote {}", out.display());
    Ok(0)
}

/// class -> family -> spreads; class -> spreads, the worst over the families (the class
/// defaults); class -> the largest last_logits max_abs over the families (the near-tie gaps).
type Split = (BTreeMap<(Class, String), Spreads>, BTreeMap<Class, Spreads>, BTreeMap<Class, f64>);

fn spreads_of(robust: &BTreeMap<(String, Class, String), RobustSpread>) -> Split {
    let (mut by_family, mut by_class, mut logits) = (BTreeMap::new(), BTreeMap::<Class, Spreads>::new(), BTreeMap::new());
    for ((checkpoint, class, family), r) in robust {
        if r.kept == 0 {
            continue;
        }
        by_family.entry((*class, family.clone())).or_insert_with(Spreads::new).insert(checkpoint.clone(), r.metrics.clone());
        let slot = by_class.entry(*class).or_default().entry(checkpoint.clone()).or_default();
        for (&metric, &v) in &r.metrics {
            let e = slot.entry(metric).or_insert(v);
            *e = if metric.op() == Op::Le { e.max(v) } else { e.min(v) };
        }
        if let (true, Some(&m)) = (CheckpointName::LastLogits.is(checkpoint), r.metrics.get(&Metric::MaxAbs)) {
            let e = logits.entry(*class).or_insert(0.0f64);
            *e = e.max(m);
        }
    }
    (by_family, by_class, logits)
}

/// `"<suite>, <n> cases #<digest>"`: the suite file and a digest of the cases measured (model id
/// and file, prompt id and text, references), so `--accumulate` can tell the same evidence.
fn evidence_of(loaded: &super::select::Loaded) -> String {
    let mut ids: Vec<String> = loaded
        .cases
        .iter()
        .filter(|c| c.refs.len() >= 2)
        .map(|c| {
            let refs: Vec<String> = c.refs.iter().map(|r| format!("{r}@{}", c.model.class_for(r))).collect();
            format!("{}={}/{}={}:{}", c.model.id, c.model.path, c.prompt.id, c.prompt.text, refs.join("+"))
        })
        .collect();
    ids.sort();
    let suite = loaded.suite_path.strip_prefix(&loaded.root).unwrap_or(&loaded.suite_path);
    format!("{}, {} cases #{:08x}", suite.display(), ids.len(), fnv1a(ids.join("\n").as_bytes()) >> 32)
}

/// FNV-1a, 64 bits: stable across Rust versions, unlike the standard hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn f32_values(dump: &Dump, key: &str) -> Option<Vec<f32>> {
    match dump.get(key) {
        Ok(Lookup::Tensor(Tensor { values: Values::F32(v), .. })) if metrics::all_finite(&v) => Some(v),
        _ => None,
    }
}

fn print_table(
    current: &spec::Spec,
    proposed: &spec::Spec,
    robust: &BTreeMap<(String, Class, String), RobustSpread>,
    by_class: &BTreeMap<Class, Spreads>,
    logit_spreads: &BTreeMap<Class, f64>,
) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "class",
        "checkpoint",
        "family",
        "metric",
        "pairs kept",
        "spread between references",
        "current",
        "proposed",
    ]);
    for ((checkpoint, class, family), r) in robust {
        for (metric, spread) in &r.metrics {
            let get = |sp: &spec::Spec| {
                sp.thresholds(checkpoint, *class, family)
                    .and_then(|t| t.get(metric))
                    .map(|t| format!("{} {:.3e}", t.op.as_str(), t.threshold))
                    .unwrap_or_default()
            };
            if current.thresholds(checkpoint, *class, family).is_some_and(|t| t.contains_key(metric)) {
                let pairs = format!("{}/{}", r.kept, r.kept + r.outliers.len());
                table.add_row(vec![
                    class.to_string(),
                    checkpoint.clone(),
                    family.clone(),
                    metric.to_string(),
                    pairs,
                    format!("{spread:.3e}"),
                    get(current),
                    get(proposed),
                ]);
            }
        }
    }
    for (class, s) in by_class {
        for (checkpoint, metrics) in s {
            for (metric, spread) in metrics {
                let get = |sp: &spec::Spec| {
                    sp.class_default(checkpoint, *class)
                        .and_then(|t| t.get(metric))
                        .map(|t| format!("{} {:.3e}", t.op.as_str(), t.threshold))
                        .unwrap_or_default()
                };
                if current.class_default(checkpoint, *class).is_some_and(|t| t.contains_key(metric)) {
                    let row = [class.as_str(), checkpoint, "default", metric.as_str(), "", &format!("{spread:.3e}"), &get(current), &get(proposed)];
                    table.add_row(row.map(|c| c.to_string()).to_vec());
                }
            }
        }
    }
    for (class, spread) in logit_spreads {
        let gap = |sp: &spec::Spec| sp.near_tie_gap(CheckpointName::Generated.as_str(), *class).map(|g| format!("gap {g:.3e}")).unwrap_or_default();
        table.add_row(vec![
            class.to_string(),
            format!("{}, {}", CheckpointName::Argmax, CheckpointName::Generated),
            "all".into(),
            format!("near-tie gap ({} {})", CheckpointName::LastLogits, Metric::MaxAbs),
            String::new(),
            format!("{spread:.3e}"),
            gap(current),
            gap(proposed),
        ]);
    }
    println!("{table}");
}

/// One line per outlier pair: checkpoint, class, family, pair, its spread, its ratio to the others.
fn print_outliers(robust: &BTreeMap<(String, Class, String), RobustSpread>) {
    for ((checkpoint, class, family), r) in robust {
        for o in &r.outliers {
            println!(
                "outlier: checkpoint {checkpoint}, class {class}, family {family}, pair {}, spread {:.3e} (relative RMS), {:.1}x the median of {}: left out of the threshold",
                o.pair, o.rms, o.ratio, o.against
            );
        }
        if r.kept == 0 && !r.outliers.is_empty() {
            println!("nothing left at checkpoint {checkpoint}, class {class}, family {family}: its thresholds are not recalibrated");
        }
    }
}
