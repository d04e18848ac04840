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
    parity_signing(args, proof_dir, run_id, None)
}

/// `parity` with `LLORCH_SIGNING_KEY` set to `key` when given. The hash store is the test's own
/// (PARITY_CACHE in its scratch folder), so tests neither read nor rewrite the engineer's.
fn parity_signing(args: &[&str], proof_dir: &Path, run_id: &str, key: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parity"));
    command
        .args(args)
        .current_dir(root())
        .env("LLORCH_PROOF_DIR", proof_dir)
        .env("LLORCH_RUN_ID", run_id)
        .env("PARITY_CACHE", proof_dir.join("parity-cache"))
        .env("NO_COLOR", "1")
        .env_remove("LLORCH_SIGNING_KEY");
    if let Some(key) = key {
        command.env("LLORCH_SIGNING_KEY", key);
    }
    command.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `parity keygen --out DIR/NAME`: the secret key's path and its fingerprint.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let out = dir.join(name);
    let made = parity(&["keygen", "--out", out.to_str().unwrap()], dir, "unused");
    assert_eq!(made.status.code(), Some(0), "{}", stderr(&made));
    let fingerprint = stdout(&made).lines().find_map(|l| l.strip_prefix("fingerprint: ")).unwrap().to_string();
    (out, fingerprint)
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
    for prompt in fixture_with_pytorch_as_tinygrad(&dumps) {
        assert!(prompt.join("tinygrad/manifest.toml").is_file());
    }
    let out = parity(&["run", "--model", "tiny-llama-f32", "--dumps", dumps.to_str().unwrap()], &proof, "copied");
    let report = std::fs::read_to_string(proof.join("run/copied/report.md")).unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(report.contains("expected a tinygrad dump, but its manifest says it is pytorch's"), "{report}");
    std::fs::remove_dir_all(&proof).unwrap();
}

/// The tiny-llama-f32 fixture dumps under `dumps`, with each prompt's tinygrad dump replaced by a
/// copy of its PyTorch dump; the prompt folders.
fn fixture_with_pytorch_as_tinygrad(dumps: &Path) -> Vec<PathBuf> {
    copy_dir(&root().join("fixtures/dumps/tiny-llama-f32"), &dumps.join("tiny-llama-f32"));
    let prompts: Vec<PathBuf> = std::fs::read_dir(dumps.join("tiny-llama-f32")).unwrap().map(|p| p.unwrap().path()).collect();
    for prompt in &prompts {
        std::fs::remove_dir_all(prompt.join("tinygrad")).unwrap();
        copy_dir(&prompt.join("pytorch"), &prompt.join("tinygrad"));
    }
    prompts
}

#[test]
fn a_dump_copied_under_another_references_name_is_refused_even_with_its_manifest_renamed() {
    let proof = scratch("renamed-dump");
    let dumps = proof.join("dumps");
    for prompt in fixture_with_pytorch_as_tinygrad(&dumps) {
        let manifest = prompt.join("tinygrad/manifest.toml");
        let text = std::fs::read_to_string(&manifest).unwrap().replace("reference = \"pytorch\"", "reference = \"tinygrad\"");
        std::fs::write(&manifest, text).unwrap();
    }
    let out = parity(&["run", "--model", "tiny-llama-f32", "--dumps", dumps.to_str().unwrap()], &proof, "renamed");
    let report = std::fs::read_to_string(proof.join("run/renamed/report.md")).unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(report.contains("every tensor is bit for bit the pytorch dump's"), "{report}");
    assert!(report.contains("not an independent reference"), "{report}");
    std::fs::remove_dir_all(&proof).unwrap();
}

#[test]
fn a_provenance_file_naming_an_unknown_reference_or_checkpoint_is_bad_input() {
    let proof = scratch("provenance");
    let text = std::fs::read_to_string(root().join("checkpoints/provenance.toml")).unwrap();
    let misspelt = proof.join("misspelt.toml");
    std::fs::write(&misspelt, text.replace("[tinygrad.gpt2]", "[tinygrd.gpt2]")).unwrap();
    let out = parity(&["run", "--provenance", misspelt.to_str().unwrap()], &proof, "misspelt");
    assert_one_line_error(&out, "\"tinygrd\" is not a reference");
    let unknown = proof.join("unknown.toml");
    std::fs::write(&unknown, text.replacen("attn_probs = ", "attn_prob = ", 1)).unwrap();
    let out = parity(&["run", "--provenance", unknown.to_str().unwrap()], &proof, "unknown");
    assert_one_line_error(&out, "\"attn_prob\" is not a checkpoint of the catalog");
}

#[test]
fn shards_merge_only_as_the_complete_set_of_one_run() {
    let proof = scratch("merge");
    for k in ["1", "2"] {
        let out = parity(&["run", "--shard", &format!("{k}/2")], &proof, &format!("shard-{k}"));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let (one, two) = (proof.join("run/shard-1"), proof.join("run/shard-2"));
    let merged = parity(&["merge", one.to_str().unwrap(), two.to_str().unwrap()], &proof, "merged");
    assert_eq!(merged.status.code(), Some(0), "{}", stderr(&merged));
    assert!(String::from_utf8_lossy(&merged.stdout).contains("from 2 bundles"));
    let half = parity(&["merge", one.to_str().unwrap()], &proof, "half");
    assert_one_line_error(&half, "shard 2/2 not given");
    let twice = parity(&["merge", one.to_str().unwrap(), one.to_str().unwrap()], &proof, "twice");
    assert_one_line_error(&twice, "shard 1/2 is given twice");
    std::fs::remove_dir_all(&proof).unwrap();
}

#[test]
fn a_pass_below_the_confidence_gate_exits_1_and_a_bad_level_exits_2() {
    let proof = scratch("gate");
    // Two references agree, but `probs` is llama.cpp's only as numpy code of ours and `embeddings`
    // PyTorch's only with our tokenizer corrections: one independent reference at each, so the
    // checks pass at 2/4, less than the three references `high` asks for.
    let args = ["run", "--model", "tiny-llama-f32", "--prompt", "fox", "--refs", "llamacpp,pytorch", "--min-confidence"];
    let gated = parity(&[&args[..], &["high"]].concat(), &proof, "gated");
    assert_eq!(gated.status.code(), Some(1), "{}", stderr(&gated));
    assert!(String::from_utf8_lossy(&gated.stdout).contains("PASS"));
    assert!(stderr(&gated).contains("below the gate"), "{}", stderr(&gated));
    let low = parity(&[&args[..], &["low"]].concat(), &proof, "low");
    assert_eq!(low.status.code(), Some(0), "{}", stderr(&low));
    let bad = parity(&[&args[..], &["hihg"]].concat(), &proof, "bad");
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("not a confidence level"), "{}", stderr(&bad));
    std::fs::remove_dir_all(&proof).unwrap();
}

#[test]
fn a_suite_that_drops_references_fails_its_own_gate() {
    let proof = scratch("suite-gate");
    // The default suite's first case with one reference left: every check still passes.
    let suite = format!(
        "dumps = {:?}\nn_generate = 8\ntemperature = 1.0\nthreads = 2\ntruth = \"pytorch-f64\"\nmin_confidence = \"full\"\n\
         [[model]]\nid = \"tiny-llama-f32\"\npath = {:?}\nrefs = [\"pytorch\"]\n\
         [[prompt]]\nid = \"fox\"\ntext = \"The quick brown fox jumps over the lazy dog.\"\n",
        root().join("fixtures/dumps").display().to_string(),
        root().join("fixtures/models/tiny-llama/model-f32.gguf").display().to_string()
    );
    std::fs::write(proof.join("suite.toml"), suite).unwrap();
    let out = parity(&["run", "--suite", proof.join("suite.toml").to_str().unwrap()], &proof, "suite-gate");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("below the gate"), "{}", stderr(&out));
    std::fs::remove_dir_all(&proof).unwrap();
}

#[test]
fn a_signed_bundle_names_its_signer_and_catches_results_edited_with_their_manifest_line() {
    let proof = scratch("signed");
    let (key, fingerprint) = keygen(&proof, "signer");
    let public = format!("{}.pub", key.display());
    let out = parity_signing(&["run", "--model", "tiny-llama-f32"], &proof, "signed", Some(&key));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let bundle = proof.join("run/signed");
    let dir = bundle.to_str().unwrap();
    let verify = parity(&["verify", dir, "--public-key", &public], &proof, "unused");
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
    assert!(stdout(&verify).contains(&format!("signed by {fingerprint}")), "{}", stdout(&verify));

    // Flip one digit of results.json and write its new hash into the manifest: still "intact"...
    let results = bundle.join("results.json");
    let text = std::fs::read_to_string(&results).unwrap();
    let at = text.find(|c: char| c.is_ascii_digit()).unwrap();
    let digit = if &text[at..=at] == "1" { "2" } else { "1" };
    let edited = format!("{}{digit}{}", &text[..at], &text[at + 1..]);
    std::fs::write(&results, &edited).unwrap();
    let manifest = std::fs::read_to_string(bundle.join("manifest.toml")).unwrap();
    let sha = |bytes: &[u8]| reports::hashes::sha256_bytes(bytes);
    let forged = manifest.replace(&sha(text.as_bytes()), &sha(edited.as_bytes()));
    assert_ne!(forged, manifest, "the manifest lists results.json's hash");
    std::fs::write(bundle.join("manifest.toml"), forged).unwrap();
    let plain = parity(&["verify", dir], &proof, "unused");
    assert_eq!(plain.status.code(), Some(0), "{}", stdout(&plain));
    assert!(stdout(&plain).contains("proves integrity") && stdout(&plain).contains("not authorship"), "{}", stdout(&plain));
    // ...but not signed by the key any more.
    let verify = parity(&["verify", dir, "--public-key", &public], &proof, "unused");
    assert_eq!(verify.status.code(), Some(1), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("BAD signature"), "{}", stdout(&verify));
    std::fs::remove_dir_all(&proof).unwrap();
}

#[test]
fn a_bundle_signed_by_another_key_or_unsigned_exits_1_under_public_key() {
    let proof = scratch("other-signer");
    let (theirs, their_fingerprint) = keygen(&proof, "theirs");
    let (ours, _) = keygen(&proof, "ours");
    let ours_public = format!("{}.pub", ours.display());
    let out = parity_signing(&["run", "--model", "tiny-gpt2-f32", "--prompt", "fox"], &proof, "theirs", Some(&theirs));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let verify = parity(&["verify", proof.join("run/theirs").to_str().unwrap(), "--public-key", &ours_public], &proof, "unused");
    assert_eq!(verify.status.code(), Some(1), "{}", stdout(&verify));
    assert!(stdout(&verify).contains(&format!("signed by another key, {their_fingerprint}")), "{}", stdout(&verify));

    std::fs::remove_file(proof.join("run/theirs/manifest.sig")).unwrap();
    let verify = parity(&["verify", proof.join("run/theirs").to_str().unwrap(), "--public-key", &ours_public], &proof, "unused");
    assert_eq!(verify.status.code(), Some(1), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("intact") && stdout(&verify).contains("NOT signed: no manifest.sig"), "{}", stdout(&verify));
    std::fs::remove_dir_all(&proof).unwrap();
}

#[test]
fn unusable_key_files_are_one_line_errors_with_exit_2() {
    let dir = scratch("bad-keys");
    let (key, _) = keygen(&dir, "k");
    let missing = dir.join("missing.key");
    let out = parity_signing(&["run", "--model", "tiny-llama-f32"], &dir, "no-key", Some(&missing));
    assert_one_line_error(&out, "LLORCH_SIGNING_KEY");
    assert!(stderr(&out).contains("missing.key") && !dir.join("run/no-key").exists(), "{}", stderr(&out));
    let garbage = dir.join("garbage.pub");
    std::fs::write(&garbage, "ssh-ed25519 AAAA\n").unwrap();
    for (public, says) in [(garbage.as_path(), "not a parity key"), (key.as_path(), "this is a secret key"), (missing.as_path(), "missing.key")] {
        let out = parity(&["verify", "fixtures", "--public-key", public.to_str().unwrap()], &dir, "unused");
        assert_one_line_error(&out, says);
    }
    assert_one_line_error(&parity(&["keygen", "--out", key.to_str().unwrap()], &dir, "unused"), "already exists");
    std::fs::remove_dir_all(&dir).unwrap();
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

/// The fixture's PyTorch dumps of `model` copied under DIR/<model>/<prompt>/NAME, each manifest
/// renamed to NAME and declaring PyTorch's provenance: an outside engine's dumps that keep the contract.
fn pytorch_dumps_as(dir: &Path, model: &str, name: &str) -> Vec<PathBuf> {
    let table: toml::Table = toml::from_str(&std::fs::read_to_string(root().join("checkpoints/provenance.toml")).unwrap()).unwrap();
    let declared = toml::to_string(&toml::Table::from_iter([("provenance".to_string(), table["pytorch"]["llama"].clone())])).unwrap();
    let mut out = Vec::new();
    for prompt in std::fs::read_dir(root().join("fixtures/dumps").join(model)).unwrap() {
        let prompt = prompt.unwrap().path();
        let to = dir.join(model).join(prompt.file_name().unwrap()).join(name);
        copy_dir(&prompt.join("pytorch"), &to);
        let manifest = std::fs::read_to_string(to.join("manifest.toml")).unwrap();
        let renamed = manifest.replacen("reference = \"pytorch\"", &format!("reference = {name:?}"), 1);
        std::fs::write(to.join("manifest.toml"), format!("{renamed}\n{declared}")).unwrap();
        out.push(to);
    }
    out
}

#[test]
fn the_truth_is_never_a_subject_and_a_subject_is_never_also_a_reference() {
    let dir = scratch("subject-refused");
    assert_one_line_error(&parity(&["run", "--subject", "pytorch-f64"], &dir, "s1"), "never a subject");
    assert_one_line_error(&parity(&["run", "--subject", "llamacpp", "--refs", "llamacpp,pytorch"], &dir, "s2"), "cannot also be a reference");
    assert_one_line_error(&parity(&["run", "--refs", "pytorch,engine"], &dir, "s3"), "cannot also be a reference");
    assert_one_line_error(&parity(&["run", "--subject", "candle"], &dir, "s4"), "--subject-cmd");
    assert_one_line_error(&parity(&["run", "--subject", "llamacpp", "--repeat", "2"], &dir, "s5"), "in-process");
    // A pinned release is named DUMPER@VERSION, dotted numbers, of a dumper that exists.
    assert_one_line_error(&parity(&["run", "--refs", "llamacpp@latest,pytorch"], &dir, "s6"), "dotted numbers");
    assert_one_line_error(&parity(&["run", "--refs", "candle@0.11.1"], &dir, "s7"), "unknown reference");
    assert_one_line_error(&parity(&["run", "--subject", "llamacpp@0.3", "--refs", "engine@1.0"], &dir, "s8"), "unknown reference");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn llamacpp_as_the_subject_is_judged_against_the_others_and_the_engine() {
    let proof = scratch("subject-llamacpp");
    let out = parity(&["run", "--model", "tiny-llama-f32", "--subject", "llamacpp", "--format", "json"], &proof, "llamacpp");
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["subject"].as_str().unwrap().starts_with("llamacpp llama-cpp-python"), "{}", summary["subject"]);
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(proof.join("run/llamacpp/results.json")).unwrap()).unwrap();
    let refs: std::collections::BTreeSet<&str> = results["cases"].as_array().unwrap().iter().map(|c| c["reference"].as_str().unwrap()).collect();
    assert_eq!(refs, ["engine", "mlx", "pytorch", "pytorch-f64", "tinygrad"].into_iter().collect());
    // The engine as a reference: its own code at every checkpoint.
    let engine = results["cases"].as_array().unwrap().iter().find(|c| c["reference"] == "engine").unwrap();
    assert!(engine["provenance"].as_object().unwrap().values().all(|p| p["kind"] == "own"), "{}", engine["provenance"]);
    let report = std::fs::read_to_string(proof.join("run/llamacpp/report.md")).unwrap();
    assert!(report.contains("Subject: `llamacpp llama-cpp-python"), "{report}");
    std::fs::remove_dir_all(&proof).unwrap();
}

#[test]
fn an_outside_engines_dumps_are_judged_and_conform_when_they_keep_the_contract() {
    let dir = scratch("subject-dumps");
    let dumps = dir.join("dumps");
    pytorch_dumps_as(&dumps, "tiny-llama-f32", "mine");
    let at = dumps.to_str().unwrap();
    let run = parity(&["run", "--model", "tiny-llama-f32", "--subject", "mine", "--subject-dumps", at], &dir, "mine");
    assert_eq!(run.status.code(), Some(0), "{}{}", stdout(&run), stderr(&run));
    assert!(stdout(&run).contains("subject: mine transformers "), "{}", stdout(&run));
    let ok = parity(&["conform", "--model", "tiny-llama-f32", "--subject", "mine", "--subject-dumps", at], &dir, "unused");
    assert_eq!(ok.status.code(), Some(0), "{}{}", stdout(&ok), stderr(&ok));
    assert!(stdout(&ok).contains("mine keeps the dump contract on 2 cases"), "{}", stdout(&ok));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn conform_reports_a_missing_checkpoint_on_one_line_and_exits_1() {
    let dir = scratch("conform-missing");
    let dumps = dir.join("dumps");
    for to in pytorch_dumps_as(&dumps, "tiny-llama-f32", "mine") {
        let manifest = std::fs::read_to_string(to.join("manifest.toml")).unwrap();
        let undeclared = manifest.split("\n[provenance]").next().unwrap();
        std::fs::write(to.join("manifest.toml"), undeclared.replacen("[tensors.\"blk.1.ffn_out\"]", "[tensors.\"ffn_out_1\"]", 1)).unwrap();
    }
    let out = parity(
        &["conform", "--model", "tiny-llama-f32", "--prompt", "fox", "--subject", "mine", "--subject-dumps", dumps.to_str().unwrap()],
        &dir,
        "unused",
    );
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.lines().any(|l| l == "tiny-llama-f32/fox: missing: blk.1.ffn_out: checkpoint ffn_out is not in the manifest"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("tiny-llama-f32/fox: unknown: ffn_out_1: ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("tiny-llama-f32/fox: provenance: provenance: the manifest declares no [provenance]")), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn conform_exits_3_when_the_dumper_cannot_run_and_2_without_a_dumper() {
    let dir = scratch("conform-broken");
    let out = parity(&["conform", "--model", "tiny-llama-f32", "--prompt", "fox", "--subject", "mine", "--subject-cmd", "exit 7 #"], &dir, "unused");
    assert_eq!(out.status.code(), Some(3), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("the dumper could not run") && stdout(&out).contains("exit code 7"), "{}", stdout(&out));
    assert_one_line_error(&parity(&["conform"], &dir, "unused"), "--subject-cmd");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn replay_of_a_layer_out_of_range_or_on_a_dump_without_a_layer_input_is_exit_2() {
    let proof = scratch("replay-bad-input");
    let out = parity(&["replay", "--model", "tiny-llama-f32", "--prompt", "fox", "--layer", "7"], &proof, "replay-layer");
    assert_one_line_error(&out, "layer 7 does not exist");
    // The PyTorch dump without layer 1's input (blk.0.block_out): no replay of layer 1 on it.
    let dumps = proof.join("dumps");
    copy_dir(&root().join("fixtures/dumps/tiny-llama-f32/fox"), &dumps.join("tiny-llama-f32/fox"));
    std::fs::remove_file(dumps.join("tiny-llama-f32/fox/pytorch/blk.0.block_out.npy")).unwrap();
    let args = ["replay", "--model", "tiny-llama-f32", "--prompt", "fox", "--dumps", dumps.to_str().unwrap()];
    assert_one_line_error(&parity(&args, &proof, "replay-missing"), "blk.0.block_out");
    let clean = parity(&["replay", "--model", "tiny-llama-f32", "--prompt", "fox"], &proof, "replay-clean");
    assert_eq!(clean.status.code(), Some(0), "{}", stderr(&clean));
    assert!(stdout(&clean).contains("place to look: none"), "{}", stdout(&clean));
    std::fs::remove_dir_all(&proof).unwrap();
}

#[test]
fn reduce_takes_one_case_and_one_of_its_references_for_its_trials() {
    let dir = scratch("reduce-input");
    let many = parity(&["reduce"], &dir, "reduce-many");
    assert_one_line_error(&many, "parity reduce takes one case");
    let stranger = parity(&["reduce", "--model", "tiny-llama-f32", "--prompt", "fox", "--trial-refs", "nobody"], &dir, "reduce-stranger");
    assert_one_line_error(&stranger, "--trial-refs: nobody is not one of the case's references");
    assert!(!dir.join("reduce").exists(), "no bundle is started on bad input");
}

#[test]
fn sweep_refuses_several_cases_and_bad_conditions_with_exit_2_and_passes_the_clean_fixture() {
    let proof = scratch("sweep");
    let several = parity(&["sweep", "--model", "tiny-llama-f32"], &proof, "sweep-several");
    assert_one_line_error(&several, "parity sweep judges one case");
    let one = ["sweep", "--model", "tiny-llama-f32", "--prompt", "fox"];
    assert_one_line_error(&parity(&[&one[..], &["--prefill", "chunks:0"]].concat(), &proof, "sweep-prefill"), "chunks:N");
    assert_one_line_error(&parity(&[&one[..], &["--thread-counts", "0"]].concat(), &proof, "sweep-threads"), "at least 1");
    let html = proof.join("sweep.html");
    let args = [&one[..], &["--window", "8", "--thread-counts", "1,2", "--prefill", "token-by-token", "--html", html.to_str().unwrap()]].concat();
    let clean = parity(&args, &proof, "sweep-clean");
    assert_eq!(clean.status.code(), Some(0), "{}", stderr(&clean));
    let text = stdout(&clean);
    for line in ["no failure along position", "no failure along threads", "no failure along prefill", "  32..34 "] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<svg").count(), 3, "one chart per axis");
    std::fs::remove_dir_all(&proof).unwrap();
}
