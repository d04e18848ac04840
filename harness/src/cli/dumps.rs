//! `parity dumps`: a suite's reference dumps, made by the dumpers exactly as `--live` makes them
//! (the truth first, its greedy tokens and last logits fed to every other reference; a dump whose
//! request was answered before is reused from the dump cache), written into the suite's dumps
//! folder, where runs without `--live`, `parity calibrate` and the tests on real weights read them.

use super::select::Selection;
use anyhow::{bail, Context, Result};
use harness::dump_cache::link_or_copy_tree;
use harness::dumps::Dump;
use harness::live::{PrivateDir, ReferenceError};
use harness::pipeline::{self, Fed, Setup};
use std::path::Path;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct DumpsArgs {
    /// The suite, the cases (--model, --prompt, --shard) and the output folder (--dumps, default
    /// the suite's `dumps`). Dumps are always made live (--live is implied).
    #[command(flatten)]
    pub selection: Selection,
    /// Only this reference's dumps (the suite's truth, or one of a model's references). The truth
    /// is still made or reused, and written, since it is what the others are fed.
    #[arg(long)]
    pub only: Option<String>,
}

/// Exit 0 when every dump was written; 3 when a dumper failed (the dumps before it are written).
pub fn run(args: DumpsArgs, root: &Path) -> Result<i32> {
    let mut selection = args.selection.clone();
    let out_root = selection.dumps.take();
    // The dumps' live source is made below, writing beside their place: not a second one here.
    selection.live = false;
    let loaded = selection.load(root)?;
    if !loaded.subject.is_engine() {
        bail!("parity dumps makes the references' dumps; --subject is for run, diff, bisect and calibrate");
    }
    let out_root = match out_root {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => root.join(dir),
        None => harness::suite::resolve(root, &loaded.suite.dumps),
    };
    if let Some(only) = &args.only {
        let known = loaded.suite.truth.as_ref() == Some(only) || loaded.cases.iter().any(|c| c.refs.contains(only));
        if !known {
            bail!("--only {only}: not the suite's truth nor a reference of any selected case");
        }
    }
    let live = PrivateDir::new("parity-dumps").context("making a private folder for the dumps")?;
    let source = selection.live_source(root, &loaded.catalog_path, live.path())?;
    let setup = loaded.setup(&source);
    let wanted = |reference: &str| args.only.as_deref().is_none_or(|only| only == reference);
    for case in &loaded.cases {
        let at = out_root.join(&case.model.id).join(&case.prompt.id);
        let mut fed = Fed::default();
        if let Some(truth) = &loaded.suite.truth {
            let Some(dump) = make(&setup, case, truth, &fed, &at)? else { return Ok(3) };
            fed = Fed::from_truth(&dump, loaded.suite.n_generate)?;
        }
        for reference in case.refs.iter().filter(|r| wanted(r) && r.as_str() != harness::subject::ENGINE) {
            if make(&setup, case, reference, &fed, &at)?.is_none() {
                return Ok(3);
            }
        }
    }
    Ok(0)
}

/// One dump, made or reused, written to `<at>/<reference>` in place of what was there; None when
/// its dumper failed (said on stderr).
fn make(setup: &Setup, case: &harness::suite::Case, reference: &str, fed: &Fed, at: &Path) -> Result<Option<Dump>> {
    let started = Instant::now();
    let what = format!("{}/{}/{reference}", case.model.id, case.prompt.id);
    let (dump, origin) = match pipeline::fetch(setup, case, reference, fed) {
        Ok(fetched) => fetched,
        Err(e) if e.downcast_ref::<ReferenceError>().is_some() => {
            eprintln!("dumps: {what}: {e:#}");
            return Ok(None);
        }
        Err(e) => return Err(e.context(what)),
    };
    let to = at.join(reference);
    // Built beside its place and renamed: a reader never sees half of it (`.tmp-` is refused).
    let tmp = at.join(format!("{reference}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    link_or_copy_tree(&dump.dir, &tmp)?;
    // The old dump is moved aside first (a rename, so a reader finds the old or the new one
    // whole), then removed.
    let old = at.join(format!("{reference}.tmp-old-{}", std::process::id()));
    match std::fs::rename(&to, &old) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("moving the old dump {} aside", to.display())),
    }
    std::fs::rename(&tmp, &to).with_context(|| format!("renaming {} into place (is another `parity dumps` writing there?)", tmp.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    let how = match &origin {
        Some(o) if o.reused => format!("reused {}", &o.key.hex[..12]),
        Some(o) => format!("made, kept as {}", &o.key.hex[..12]),
        None => "made".to_string(),
    };
    println!("dumps: {what}: {how} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(Some(Dump::open(&to)?))
}
