//! `parity reduce` on a real failing case: SmolLM2-135M Q4_1 with RoPE rotating the wrong pairs
//! (`--plant rope-pairing`, first caught at `blk.0.q_rope`) on the real suite's `short` prompt.
//! The bundle must be under 5 MB, intact, and fail the same checkpoint when run from a copy of
//! it alone, in an empty folder with an empty parity cache (no model, dump or dumper reachable).
//!
//! Needs the `plant` feature (the binary's `--plant`) and the reference environment and real
//! models (`.ci/run` runs it: `cargo nextest run -p harness --features plant --test reduce_real`).
//! Without the models or the reference environment it says so and passes, unless
//! `PARITY_REQUIRE_REFERENCES` is set. Its trials go through the dump cache: 106 s here with the
//! case as given cached and two trials new, seconds once every trial is cached.

use engine::gguf::GgufFile;
use reports::results::RunResults;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn size_of(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| if e.file_type().unwrap().is_dir() { size_of(&e.path()) } else { e.metadata().unwrap().len() })
        .sum()
}

/// The first failing check's key against `side`, in forward order, from a run bundle's results.
fn first_failure(results: &RunResults, side: &str) -> Option<String> {
    let case = results.cases.iter().find(|c| c.reference == side)?;
    case.checks.iter().find(|c| c.status.is_failure()).map(|c| c.key.clone())
}

#[test]
fn a_planted_rope_bug_reduces_to_a_small_bundle_that_fails_the_same_checkpoint_alone() {
    let cache = harness::suite::parity_cache();
    let needs = [cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"), cache.join("venv/bin/python")];
    if let Some(absent) = needs.iter().find(|p| !p.exists()) {
        let why = format!("{} is missing: run scripts/setup-references.sh and scripts/make-real-models.sh", absent.display());
        assert!(std::env::var_os("PARITY_REQUIRE_REFERENCES").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let proofs = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_parity"))
        .current_dir(root())
        .args(["reduce", "--suite", "checkpoints/suite-real.toml", "--model", "smollm2-q4_1", "--prompt", "short", "--plant", "rope-pairing"])
        .env("LLORCH_PROOF_DIR", proofs.path())
        .env("LLORCH_RUN_ID", "reduce-test")
        .env_remove("LLORCH_SIGNING_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("first failure against pytorch-f64: blk.0.q_rope"), "{stdout}");
    // One token has nothing to rotate against in the prompt: it fails only in decode, which is
    // another checkpoint, so the reproducer needs two.
    assert!(stdout.contains("reproducer: 2 of 5 prompt tokens (\"The capital\"), 1 of 30 layers"), "{stdout}");
    let bundle = proofs.path().join("reduce/reduce-test");

    // What the bundle holds: one layer, the prompt's tokens only, every reference's dump.
    let model = GgufFile::open(&bundle.join("model.gguf")).unwrap();
    assert_eq!(model.get_u32("llama.block_count").unwrap(), 1);
    let vocab = model.get_str_array("tokenizer.ggml.tokens").unwrap().len();
    assert!(vocab < 300, "{vocab} tokens kept of 49152");
    assert_eq!(std::fs::read_to_string(bundle.join("prompt.txt")).unwrap(), "The capital");
    for side in ["llamacpp", "pytorch", "tinygrad", "mlx", "pytorch-f64"] {
        assert!(bundle.join("dumps/model/reduced").join(side).join("manifest.toml").is_file(), "{side}");
    }
    let size = size_of(&bundle);
    assert!(size < 5_000_000, "{size} bytes");
    let verify = Command::new(env!("CARGO_BIN_EXE_parity")).arg("verify").arg(&bundle).output().unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", String::from_utf8_lossy(&verify.stdout));

    // The bundle alone: copied away, run from an empty folder with an empty parity cache.
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("bundle");
    copy_tree(&bundle, &copy);
    let empty_cache = elsewhere.path().join("cache");
    let reruns = elsewhere.path().join("proofs");
    let rerun = Command::new("sh")
        .arg(copy.join("rerun.sh"))
        .current_dir(elsewhere.path())
        .env("PARITY", env!("CARGO_BIN_EXE_parity"))
        .env("PARITY_CACHE", &empty_cache)
        .env("LLORCH_PROOF_DIR", &reruns)
        .env("LLORCH_RUN_ID", "rerun")
        .env_remove("LLORCH_SIGNING_KEY")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rerun.stdout);
    assert_eq!(rerun.status.code(), Some(1), "{text}\n{}", String::from_utf8_lossy(&rerun.stderr));
    let results: RunResults = serde_json::from_str(&std::fs::read_to_string(reruns.join("run/rerun/results.json")).unwrap()).unwrap();
    assert!(results.reference_errors.is_empty(), "{:?}", results.reference_errors);
    assert_eq!(first_failure(&results, "pytorch-f64").as_deref(), Some("blk.0.q_rope"));
    // Every reference's tokenizer gave the cut model's prompt the engine's ids.
    for case in &results.cases {
        let embeddings = case.checks.iter().filter(|c| c.checkpoint == "embeddings");
        assert!(embeddings.clone().count() > 0 && embeddings.clone().all(|c| !c.status.is_failure()), "{}", case.reference);
    }
}
