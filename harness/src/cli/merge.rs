//! `parity verify` (is a bundle intact, and who signed it?) and `parity merge` (the shards of a CI
//! matrix joined into one bundle and report).

use anyhow::{bail, Context, Result};
use reports::bundle::{self, Bundle, RunInfo};
use reports::results::RunResults;
use reports::signing::{self, Check, PublicKey};
use reports::summary::Verdict;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The shard bundles (.proof_bundle/run/<run id>), each from `parity run --shard K/N`.
    #[arg(required = true)]
    pub bundles: Vec<PathBuf>,
}

/// Exit 0 when every listed file still has its recorded hash and nothing was added, and, given a
/// public key, the manifest is signed by it; 1 otherwise; 2 when the key file is unusable.
pub fn verify(dir: &Path, public_key: Option<&Path>) -> Result<i32> {
    // Read first: a key file error is bad input (exit 2), whatever the bundle holds.
    let trusted = public_key.map(|path| PublicKey::load(path).context("--public-key")).transpose()?;
    let v = bundle::verify(dir).with_context(|| format!("verifying {}", dir.display()))?;
    for (what, files) in [("changed", &v.changed), ("missing", &v.missing), ("not in the manifest", &v.extra)] {
        for f in files {
            println!("{what}: {f}");
        }
    }
    if !v.gone.is_empty() {
        println!("not re-hashable: {} live reference dump file(s), removed after the run as intended; their sha256 is in the manifest", v.gone.len());
    }
    let intact = v.is_clean();
    println!("{}: {}", if intact { "intact" } else { "NOT intact" }, dir.display());
    let Some(trusted) = trusted else {
        println!("note: this proves integrity (no file changed since the manifest was written), not authorship: anyone can rewrite a file and its manifest line; give --public-key FILE to check who signed it");
        if let Some(claimed) = signing::claimed_signer(dir) {
            println!("{} names signer {claimed}, unchecked without --public-key", signing::SIGNATURE);
        }
        return Ok(if intact { 0 } else { 1 });
    };
    let signed = match signing::check(dir, &trusted) {
        Check::Signed(fingerprint) => {
            println!("signed by {fingerprint}");
            true
        }
        Check::Unsigned => {
            println!("NOT signed: no {} (the run had no LLORCH_SIGNING_KEY)", signing::SIGNATURE);
            false
        }
        Check::OtherSigner(fingerprint) => {
            println!("NOT signed by {}: signed by another key, {fingerprint}", trusted.fingerprint());
            false
        }
        Check::Bad(why) => {
            println!("BAD signature: {why}");
            false
        }
    };
    Ok(if intact && signed { 0 } else { 1 })
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
    let signer = settings.signer()?;
    let provenance = settings.provenance(&std::env::args().collect::<Vec<_>>().join(" "), "merged");
    results.run_id = provenance.run_id.clone();
    let mut b = Bundle::create(&settings.root(root), "merge", provenance)?;
    if let Some(signer) = signer {
        b.sign_with(signer);
    }
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
