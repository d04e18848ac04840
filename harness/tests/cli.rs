//! The `parity` binary as CI and engineers meet it: exit codes, one-line errors on bad input, and
//! the proof bundle a run leaves (verifiable, never overwritten).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A scratch folder unique to this test process and `name`, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("parity-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn parity(args: &[&str], proof_dir: &Path, run_id: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parity"))
        .args(args)
        .current_dir(root())
        .env("LLORCH_PROOF_DIR", proof_dir)
        .env("LLORCH_RUN_ID", run_id)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A bad-input error is one line starting `parity:`, exit 2, and no panic.
fn assert_one_line_error(o: &Output, mentions: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("parity: ") && err.contains(mentions), "{err}");
}

#[test]
fn the_default_suite_passes_writes_a_bundle_that_verifies_and_refuses_a_second_run_with_its_id() {
    let proof = scratch("default");
    let out = parity(&["run", "--model", "tiny-llama-f32"], &proof, "cli-test");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("PASS"));
    let bundle = proof.join("run/cli-test");
    for file in ["results.json", "summary.json", "report.md", "report.html", "junit.xml", "manifest.toml"] {
        assert!(bundle.join(file).is_file(), "{file} missing from the bundle");
    }
    let verify = parity(&["verify", bundle.to_str().unwrap()], &proof, "unused");
    assert_eq!(verify.status.code(), Some(0));

    let again = parity(&["run", "--model", "tiny-llama-f32"], &proof, "cli-test");
    assert_one_line_error(&again, "cli-test");

    let report = bundle.join("report.md");
    let mut text = std::fs::read(&report).unwrap();
    let last = text.len() - 2;
    text[last] ^= 1;
    std::fs::write(&report, text).unwrap();
    let tampered = parity(&["verify", bundle.to_str().unwrap()], &proof, "unused");
    assert_eq!(tampered.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&tampered.stdout).contains("changed: report.md"));
    std::fs::remove_dir_all(&proof).unwrap();
}

#[test]
fn the_json_summary_carries_the_verdict_and_exit_code() {
    let proof = scratch("json");
    let out = parity(&["run", "--model", "tiny-gpt2-f32", "--prompt", "fox", "--format", "json"], &proof, "cli-json");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["verdict"], "pass");
    assert_eq!(summary["exit_code"], 0);
    std::fs::remove_dir_all(&proof).unwrap();
}

#[test]
fn a_truncated_model_is_a_one_line_error_with_exit_2() {
    let dir = scratch("truncated");
    let bytes = std::fs::read(root().join("fixtures/models/tiny-llama/model-f32.gguf")).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = parity(&["generate", "--model", cut.to_str().unwrap(), "--prompt", "hi", "-n", "2"], &dir, "unused");
    assert_one_line_error(&out, "cut.gguf");
    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"not a model at all").unwrap();
    let out = parity(&["inspect", garbage.to_str().unwrap()], &dir, "unused");
    assert_one_line_error(&out, "garbage.gguf");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_model_and_an_unknown_reference_are_exit_2() {
    let dir = scratch("missing");
    assert_one_line_error(&parity(&["run", "--model", "no/such/model.gguf"], &dir, "m1"), "no/such/model.gguf");
    assert_one_line_error(&parity(&["run", "--refs", "llamacpp,vllm"], &dir, "m2"), "vllm");
    assert!(!dir.join("run/m1").exists() && !dir.join("run/m2").exists(), "a refused run left a bundle");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_suite_id_or_reference_that_is_not_one_folder_is_exit_2() {
    let dir = scratch("names");
    for (model_id, refs, bad) in [("../../escape", "pytorch", "../../escape"), ("m", "..", "\"..\""), ("a\\u0001b", "pytorch", "a\\u{1}b")] {
        let suite = dir.join("suite.toml");
        let text = format!(
            "dumps = \"fixtures/dumps\"\nn_generate = 1\ntemperature = 1.0\nthreads = 1\n\
             [[model]]\nid = \"{model_id}\"\npath = \"fixtures/models/tiny-llama/model-f32.gguf\"\nrefs = [\"{refs}\"]\n\
             [[prompt]]\nid = \"p\"\ntext = \"hello\"\n"
        );
        std::fs::write(&suite, text).unwrap();
        let out = parity(&["run", "--suite", suite.to_str().unwrap()], &dir, "names");
        assert_one_line_error(&out, "is not a usable name");
        assert!(stderr(&out).contains(bad), "{}", stderr(&out));
    }
    assert!(!dir.join("run/names").exists(), "a refused run left a bundle");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_prompt_and_one_longer_than_the_context_are_refused() {
    let dir = scratch("prompts");
    let gpt2 = "fixtures/models/tiny-gpt2/model-f32.gguf";
    let out = parity(&["generate", "--model", gpt2, "--prompt", "", "-n", "1"], &dir, "unused");
    assert_one_line_error(&out, "prompt");
    let long = "word ".repeat(5000);
    let out = parity(&["generate", "--model", gpt2, "--prompt", &long, "-n", "1"], &dir, "unused");
    assert_one_line_error(&out, "context");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn a_reference_dump_copied_into_another_references_folder_is_refused_not_counted() {
    let proof = scratch("copied-dump");
    let dumps = proof.join("dumps");
    copy_dir(&root().join("fixtures/dumps/tiny-llama-f32"), &dumps.join("tiny-llama-f32"));
    for prompt in std::fs::read_dir(dumps.join("tiny-llama-f32")).unwrap() {
        let prompt = prompt.unwrap().path();
        std::fs::remove_dir_all(prompt.join("tinygrad")).unwrap();
        copy_dir(&prompt.join("pytorch"), &prompt.join("tinygrad"));
    }
    let out = parity(&["run", "--model", "tiny-llama-f32", "--dumps", dumps.to_str().unwrap()], &proof, "copied");
    let report = std::fs::read_to_string(proof.join("run/copied/report.md")).unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(report.contains("expected a tinygrad dump, but its manifest says it is pytorch's"), "{report}");
}

#[test]
fn a_tolerance_spec_with_a_reversed_operator_a_bad_threshold_or_one_its_spread_does_not_give_is_exit_2() {
    let dir = scratch("tolerances");
    let good = std::fs::read_to_string(root().join("checkpoints/tolerances.toml")).unwrap();
    // The logits' f32 nmse line, edited four ways; each refusal names file, table and metric.
    let line = good.lines().skip_while(|l| *l != "[checkpoint.logits.f32]").find(|l| l.starts_with("nmse = ")).unwrap();
    let threshold = line.split("threshold = ").nth(1).unwrap().split(',').next().unwrap();
    let edits = [
        (line.replace("op = \"<=\"", "op = \">=\""), "[checkpoint.logits.f32] nmse: operator >= is reversed"),
        (line.replace(&format!("threshold = {threshold}"), "threshold = -1.0"), "[checkpoint.logits.f32] nmse: threshold -1e0 is negative"),
        (line.replace(&format!("threshold = {threshold}"), "threshold = inf"), "[checkpoint.logits.f32] nmse: threshold inf is not finite"),
        (
            line.replace(&format!("threshold = {threshold}"), "threshold = 0.5"),
            "[checkpoint.logits.f32] nmse: threshold 5e-1 does not follow from its spread",
        ),
        (line.replacen("nmse", "nmsee", 1), "metric \"nmsee\" is unknown"),
    ];
    for (k, (edited, mentions)) in edits.iter().enumerate() {
        let file = dir.join(format!("tolerances-{k}.toml"));
        std::fs::write(&file, good.replacen(line, edited, 1)).unwrap();
        let out = parity(&["run", "--model", "tiny-llama-f32", "--tolerances", file.to_str().unwrap()], &dir, "tolerances");
        assert_one_line_error(&out, mentions);
        assert!(stderr(&out).contains(&format!("tolerances-{k}.toml")), "{}", stderr(&out));
    }
    assert!(!dir.join("run/tolerances").exists(), "a refused run left a bundle");
    std::fs::remove_dir_all(&dir).unwrap();
}
