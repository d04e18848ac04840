//! `parity verify` (is a bundle intact?) and `parity merge` (the shards of a CI matrix joined into
//! one bundle and report).

use anyhow::{bail, Context, Result};
use reports::bundle::{self, Bundle, RunInfo};
use reports::results::RunResults;
use reports::summary::Verdict;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The shard bundles (.proof_bundle/run/<run id>), each from `parity run --shard K/N`.
    #[arg(required = true)]
    pub bundles: Vec<PathBuf>,
}

/// Exit 0 when every listed file still has its recorded hash and nothing was added; 1 otherwise.
pub fn verify(dir: &Path) -> Result<i32> {
    let v = bundle::verify(dir).with_context(|| format!("verifying {}", dir.display()))?;
    for (what, files) in [("changed", &v.changed), ("missing", &v.missing), ("not in the manifest", &v.extra)] {
        for f in files {
            println!("{what}: {f}");
        }
    }
    if !v.gone.is_empty() {
        println!("not re-hashable: {} live reference dump file(s), removed after the run as intended; their sha256 is in the manifest", v.gone.len());
    }
    if v.is_clean() {
        println!("intact: {}", dir.display());
        Ok(0)
    } else {
        println!("NOT intact: {}", dir.display());
        Ok(1)
    }
}

pub fn run(args: MergeArgs, root: &Path) -> Result<i32> {
    let mut merged: Option<RunResults> = None;
    let mut inputs = Vec::new();
    for dir in &args.bundles {
        let v = bundle::verify(dir).with_context(|| format!("verifying {}", dir.display()))?;
        if !v.is_clean() {
            bail!("{} is not intact (changed {:?}, missing {:?}); refusing to merge it", dir.display(), v.changed, v.missing);
        }
        let path = dir.join("results.json");
        let part = read_results(&path)?;
        inputs.push(path);
        match &mut merged {
            None => merged = Some(part),
            Some(all) => {
                all.cases.extend(part.cases);
                all.reference_errors.extend(part.reference_errors);
            }
        }
    }
    let Some(mut results) = merged else { bail!("give at least one bundle") };
    let settings = super::BundleSettings::from_env();
    let provenance = settings.provenance(&std::env::args().collect::<Vec<_>>().join(" "), "merged");
    results.run_id = provenance.run_id.clone();
    let mut b = Bundle::create(&settings.root(root), "merge", provenance)?;
    for path in &inputs {
        b.add_input("shard results", path)?;
    }
    for (name, render) in super::run::RENDERS {
        b.write_text(name, &render(&results).with_context(|| format!("rendering {name}"))?)?;
    }
    let dir = b.finish(RunInfo { replay: std::env::args().collect::<Vec<_>>().join(" "), ..RunInfo::default() })?;
    let verdict = Verdict::of(&results);
    println!("{}: {} cases merged from {} bundles into {}", verdict.label(), results.cases.len(), args.bundles.len(), dir.display());
    Ok(verdict.exit_code())
}

/// A bundle's `results.json`, without the generated-file header field.
fn read_results(path: &Path) -> Result<RunResults> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(obj) = value.as_object_mut() {
        obj.remove("_generated");
    }
    serde_json::from_value(value).with_context(|| format!("{} does not hold parity results", path.display()))
}
