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
    let records = args.bundles.iter().map(|dir| Ok((dir.clone(), bundle::read_record(dir)?))).collect::<Result<Vec<_>>>()?;
    check_shards(&records)?;
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
                if all.subject != part.subject {
                    bail!("{} judged {}, the bundles before it {}: shards of one run judge one subject", dir.display(), part.subject, all.subject);
                }
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

/// A merge stands for one whole run only when its bundles are every shard of it exactly once
/// (`--shard K/N`, K = 1..N), made by one engine commit from one suite, spec and catalog: one
/// shard of four would otherwise merge to a PASS on a quarter of the cases.
fn check_shards(records: &[(PathBuf, bundle::Record)]) -> Result<()> {
    let mut seen = std::collections::BTreeMap::new();
    let mut count = None;
    for (dir, record) in records {
        let shard =
            record.run.shard.as_deref().with_context(|| {
                format!("{} is not a shard (its run had no --shard K/N); merge joins the shards of one sharded run", dir.display())
            })?;
        let parsed: harness::suite::Shard = shard.parse().map_err(|e| anyhow::anyhow!("{}: its shard {shard:?}: {e}", dir.display()))?;
        if *count.get_or_insert(parsed.count) != parsed.count {
            bail!("{} is shard {shard}, but another bundle is of {} shards; merge the shards of one run", dir.display(), count.unwrap_or(0));
        }
        if let Some(other) = seen.insert(parsed.index, dir) {
            bail!("shard {shard} is given twice ({} and {})", other.display(), dir.display());
        }
    }
    let count = count.context("give at least one bundle")?;
    let absent: Vec<String> = (1..=count).filter(|k| !seen.contains_key(k)).map(|k| format!("{k}/{count}")).collect();
    if !absent.is_empty() {
        bail!("shard {} not given: a merge of {} of {count} shards would judge only part of the suite", absent.join(", "), seen.len());
    }
    let (first_dir, first) = &records[0];
    for (dir, record) in &records[1..] {
        if record.provenance.engine_commit != first.provenance.engine_commit {
            bail!(
                "{} was made by engine commit {} and {} by {}; merge shards of one commit",
                dir.display(),
                record.provenance.engine_commit,
                first_dir.display(),
                first.provenance.engine_commit
            );
        }
        for role in ["suite", "spec", "catalog"] {
            if record.input_sha256(role) != first.input_sha256(role) {
                bail!("{} and {} ran different {role} files (sha256 differ); merge shards of one run", dir.display(), first_dir.display());
            }
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use reports::bundle::{FileHash, Provenance, Record, RunInfo};

    fn shard(name: &str, shard: Option<&str>, commit: &str, suite: &str) -> (PathBuf, Record) {
        let input = |role: &str, sha256: &str| FileHash {
            role: role.into(),
            path: format!("{role}.toml"),
            sha256: sha256.into(),
            bytes: 1,
            transient: false,
        };
        let record = Record {
            kind: "run".into(),
            provenance: Provenance { run_id: name.into(), created: String::new(), command: String::new(), engine_commit: commit.into() },
            run: RunInfo { shard: shard.map(String::from), ..RunInfo::default() },
            inputs: vec![input("suite", suite), input("spec", "s"), input("catalog", "c")],
        };
        (PathBuf::from(name), record)
    }

    fn refusal(records: &[(PathBuf, Record)]) -> String {
        format!("{:#}", check_shards(records).unwrap_err())
    }

    #[test]
    fn every_shard_once_of_one_commit_and_suite_merges() {
        let all = [shard("a", Some("2/3"), "c1", "x"), shard("b", Some("1/3"), "c1", "x"), shard("c", Some("3/3"), "c1", "x")];
        check_shards(&all).unwrap();
    }

    #[test]
    fn an_incomplete_or_duplicated_set_of_shards_is_refused() {
        let one_of_four = [shard("a", Some("1/4"), "c1", "x")];
        assert!(refusal(&one_of_four).contains("shard 2/4, 3/4, 4/4 not given"), "{}", refusal(&one_of_four));
        let twice = [shard("a", Some("1/2"), "c1", "x"), shard("b", Some("1/2"), "c1", "x")];
        assert!(refusal(&twice).contains("shard 1/2 is given twice"), "{}", refusal(&twice));
        let mixed = [shard("a", Some("1/2"), "c1", "x"), shard("b", Some("2/3"), "c1", "x")];
        assert!(refusal(&mixed).contains("another bundle is of 2 shards"), "{}", refusal(&mixed));
        let whole = [shard("a", None, "c1", "x")];
        assert!(refusal(&whole).contains("is not a shard"), "{}", refusal(&whole));
    }

    #[test]
    fn shards_of_different_commits_or_suites_are_refused() {
        let commits = [shard("a", Some("1/2"), "c1", "x"), shard("b", Some("2/2"), "c2", "x")];
        assert!(refusal(&commits).contains("engine commit c2"), "{}", refusal(&commits));
        let suites = [shard("a", Some("1/2"), "c1", "x"), shard("b", Some("2/2"), "c1", "y")];
        assert!(refusal(&suites).contains("different suite files"), "{}", refusal(&suites));
    }
}
