//! The references, checked against each other and by their own tests.
//!
//! Agreement between references runs on the committed default-suite dumps, always: the same prompt
//! ids from all four, last-token logits within cosine 0.999 of each other, the same argmax; and the
//! float64 truth (`pytorch-f64`) of every case is the float32 PyTorch dump's computation, within f32
//! rounding noise of it. Each of the references' own tests (`references/**/test_*.py`, every one
//! listed in `PYTHON_TESTS`) runs when the reference environment of `scripts/setup-references.sh`
//! is present, and is skipped with a printed reason when it is not, unless
//! `PARITY_REQUIRE_REFERENCES` is set (CI sets it): then a missing environment, a reference that
//! does not import or a model file that is absent is a failure, not a skip
//! (`references/common/testkit.py`).

use harness::dumps::{Dump, Lookup};
use harness::metrics::Sums;
use harness::suite::Suite;
use harness::tensor::{Tensor, Values};
use std::path::{Path, PathBuf};
use std::process::Command;

const REFERENCES: [&str; 4] = ["llamacpp", "pytorch", "tinygrad", "mlx"];
/// The float64 reference that checkpoints/suite.toml names as its `truth`.
const TRUTH: &str = "pytorch-f64";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn f32s(dump: &Dump, key: &str) -> Vec<f32> {
    match dump.get(key) {
        Ok(Lookup::Tensor(Tensor { values: Values::F32(v), .. })) => v,
        other => panic!("{key}: expected f32 values, got {other:?}"),
    }
}

fn ids(dump: &Dump, key: &str) -> Vec<i64> {
    match dump.get(key) {
        Ok(Lookup::Tensor(Tensor { values: Values::Ids(v), .. })) => v,
        other => panic!("{key}: expected ids, got {other:?}"),
    }
}

#[test]
fn the_four_references_agree_on_tokens_last_logits_and_argmax_for_every_fixture() {
    let root = root();
    let suite = Suite::load(&root.join("checkpoints/suite.toml")).unwrap();
    let mut compared = 0;
    for case in suite.cases() {
        let dumps: Vec<Dump> = REFERENCES.iter().map(|r| Dump::open(&suite.dump_dir(&root, &case, r)).unwrap()).collect();
        let label = format!("{}/{}", case.model.id, case.prompt.id);
        for (r, d) in REFERENCES.iter().zip(&dumps).skip(1) {
            assert_eq!(ids(d, "tokens"), ids(&dumps[0], "tokens"), "{label}: {r} prompt ids differ from llamacpp's");
            assert_eq!(ids(d, "argmax"), ids(&dumps[0], "argmax"), "{label}: {r} argmax differs from llamacpp's");
            let c = Sums::of(&f32s(&dumps[0], "last_logits"), &f32s(d, "last_logits")).cosine();
            assert!(c > 0.999, "{label}: last_logits cosine {c} between llamacpp and {r}");
            compared += 1;
        }
    }
    assert!(compared >= 3 * 12, "compared only {compared} reference pairs");
}

#[test]
fn every_fixture_has_a_float64_truth_dump_within_f32_noise_of_the_pytorch_dump() {
    let root = root();
    let suite = Suite::load(&root.join("checkpoints/suite.toml")).unwrap();
    let mut compared = 0;
    for case in suite.cases() {
        let label = format!("{}/{}", case.model.id, case.prompt.id);
        let truth = Dump::open(&suite.dump_dir(&root, &case, TRUTH)).unwrap_or_else(|e| panic!("{label}: no {TRUTH} dump: {e}"));
        let f32_dump = Dump::open(&suite.dump_dir(&root, &case, "pytorch")).unwrap();
        assert_eq!(truth.manifest.reference, TRUTH, "{label}");
        assert_eq!(truth.manifest.dtype, "float64", "{label}");
        assert!(truth.manifest.version.ends_with(", float64"), "{label}: version {:?}", truth.manifest.version);
        assert_eq!(truth.manifest.model_sha256, f32_dump.manifest.model_sha256, "{label}: the truth ran on another model file");
        assert_eq!(truth.manifest.tensors.keys().collect::<Vec<_>>(), f32_dump.manifest.tensors.keys().collect::<Vec<_>>(), "{label}");
        let mut identical = 0;
        for (key, record) in &f32_dump.manifest.tensors {
            match (record.dtype.as_deref(), truth.manifest.tensors[key].dtype.as_deref()) {
                (Some("i64"), Some("i64")) => {
                    assert_eq!(ids(&truth, key), ids(&f32_dump, key), "{label}: {key}")
                }
                (Some("f32"), Some("f32")) => {
                    let (t, f) = (f32s(&truth, key), f32s(&f32_dump, key));
                    // Relative RMS < 1e-5: float32 rounding through two small layers, not a different computation.
                    let nmse = Sums::of(&t, &f).nmse();
                    assert!(nmse < 1e-10, "{label}: {key} relative RMS {} between {TRUTH} and pytorch", nmse.sqrt());
                    identical += usize::from(t == f);
                    compared += 1;
                }
                (None, None) => {}
                other => panic!("{label}: {key} has dtypes {other:?} in pytorch and {TRUTH}"),
            }
        }
        // embed is weight rows in both; everything computed from it rounds differently in float64.
        assert!(identical <= 1, "{label}: {identical} tensors of {TRUTH} are bit-identical to pytorch's");
    }
    assert!(compared >= 12 * 20, "compared only {compared} tensors");
}

/// The Python the reference test file `path` (`references/<reference>/...`) runs in: the shared
/// environment, or the reference's own (the harness's choice, `Dumpers::python_for`). None (the
/// caller skips, saying so) when setup has not made it and `PARITY_REQUIRE_REFERENCES` is not set;
/// a failure when it is set.
fn reference_python_or_skip(path: &str) -> Option<PathBuf> {
    let reference = path.split('/').nth(1).unwrap_or_default();
    let py = harness::live::Dumpers::from_env(&root(), std::time::Duration::from_secs(1)).python_for(reference);
    if py.exists() {
        return Some(py);
    }
    assert!(
        std::env::var_os("PARITY_REQUIRE_REFERENCES").is_none(),
        "PARITY_REQUIRE_REFERENCES is set but there is no reference environment for {path} ({}); run scripts/setup-references.sh",
        py.display()
    );
    println!("skipped: no reference environment for {path} ({}); run scripts/setup-references.sh", py.display());
    None
}

/// Runs one of the references' own test files (`path` relative to the project) with `extra`
/// arguments: (success, stdout and stderr).
fn run_python_test(py: &Path, path: &str, extra: &[&str], env: &[(&str, Option<&Path>)]) -> (bool, String) {
    let mut cmd = Command::new(py);
    cmd.args(extra.iter().filter(|a| a.starts_with('-'))).arg(root().join(path));
    cmd.args(extra.iter().filter(|a| !a.starts_with('-'))).env("DEV", "CPU");
    for (key, value) in env {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Every reference test file (`references/**/test_*.py`), each run by one test below; the test
/// `every_reference_test_file_is_run_here` fails when a file is added without being listed here.
const PYTHON_TESTS: [&str; 7] = [
    "references/common/test_dumpkit.py",
    "references/llamacpp/test_dump.py",
    "references/mlx/test_dump.py",
    "references/pytorch/test_dump.py",
    "references/pytorch-f64/test_dump.py",
    "references/tinygrad/test_dump.py",
    "references/tinygrad/test_gguf_tokenizer.py",
];

fn run_reference_test(path: &str) {
    assert!(PYTHON_TESTS.contains(&path), "{path} is not listed in PYTHON_TESTS");
    let Some(py) = reference_python_or_skip(path) else {
        return;
    };
    let (ok, text) = run_python_test(&py, path, &[], &[]);
    println!("{text}");
    assert!(ok, "{path} failed:\n{text}");
}

#[test]
fn the_llamacpp_dumper_passes_its_own_test() {
    run_reference_test("references/llamacpp/test_dump.py");
}

#[test]
fn the_mlx_dumper_passes_its_own_test() {
    run_reference_test("references/mlx/test_dump.py");
}

#[test]
fn the_pytorch_dumper_passes_its_own_test() {
    run_reference_test("references/pytorch/test_dump.py");
}

#[test]
fn the_pytorch_f64_dumper_passes_its_own_test() {
    run_reference_test("references/pytorch-f64/test_dump.py");
}

#[test]
fn the_tinygrad_dumper_passes_its_own_test() {
    run_reference_test("references/tinygrad/test_dump.py");
}

#[test]
fn the_tinygrad_gguf_tokenizer_passes_its_own_test() {
    run_reference_test("references/tinygrad/test_gguf_tokenizer.py");
}

#[test]
fn the_dump_contract_code_passes_its_own_test() {
    run_reference_test("references/common/test_dumpkit.py");
}

/// `references/**/test_*.py` under `dir`, as project-relative paths.
fn python_test_files(dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() && name != "__pycache__" {
            python_test_files(&path, found);
        } else if name.starts_with("test_") && name.ends_with(".py") {
            found.push(path.strip_prefix(root()).unwrap().to_string_lossy().into_owned());
        }
    }
}

#[test]
fn every_reference_test_file_is_run_here() {
    let mut found = Vec::new();
    python_test_files(&root().join("references"), &mut found);
    found.sort();
    let source = include_str!("references.rs");
    for path in &found {
        assert!(PYTHON_TESTS.contains(&path.as_str()), "{path} is run by no test: add it to PYTHON_TESTS and give it a #[test]");
        assert!(source.contains(&format!("run_reference_test(\"{path}\")")), "{path} has no #[test] calling run_reference_test");
    }
    assert_eq!(found.len(), PYTHON_TESTS.len(), "PYTHON_TESTS lists files that do not exist: {PYTHON_TESTS:?} vs {found:?}");
}

#[test]
fn with_references_required_a_test_that_cannot_import_fails_instead_of_skipping() {
    let required = Some(Path::new("1"));
    for path in PYTHON_TESTS {
        let Some(py) = reference_python_or_skip(path) else {
            return;
        };
        // -S leaves site-packages off the path: numpy, torch, llama_cpp and tinygrad do not import.
        let (ok, text) = run_python_test(&py, path, &["-S"], &[("PARITY_REQUIRE_REFERENCES", None)]);
        assert!(ok && text.starts_with("skipped: "), "{path} without the flag:\n{text}");
        let (ok, text) = run_python_test(&py, path, &["-S"], &[("PARITY_REQUIRE_REFERENCES", required)]);
        assert!(!ok && text.contains("PARITY_REQUIRE_REFERENCES is set"), "{path} with the flag:\n{text}");
    }
}

#[test]
fn with_references_required_a_missing_model_fails_instead_of_skipping() {
    let Some(py) = reference_python_or_skip("references/pytorch") else {
        return;
    };
    let empty_cache = std::env::temp_dir().join(format!("parity-empty-cache-{}", std::process::id()));
    std::fs::create_dir_all(&empty_cache).unwrap();
    let required = Some(Path::new("1"));
    // Only the tests that read SmolLM2: the rest of each file is run by the tests above.
    let runs = [
        ("references/llamacpp/test_dump.py", "SmolLM2"),
        ("references/pytorch/test_dump.py", "GgufTokenizer.test_smollm2_vocabulary_matches_llama_cpp"),
        ("references/tinygrad/test_gguf_tokenizer.py", ""),
    ];
    for (path, only) in runs {
        let extra: Vec<&str> = [only].into_iter().filter(|a| !a.is_empty()).collect();
        let cache = ("PARITY_CACHE", Some(empty_cache.as_path()));
        let (ok, text) = run_python_test(&py, path, &extra, &[cache, ("PARITY_REQUIRE_REFERENCES", None)]);
        assert!(ok && text.contains("skipped"), "{path} without the flag:\n{text}");
        let (ok, text) = run_python_test(&py, path, &extra, &[cache, ("PARITY_REQUIRE_REFERENCES", required)]);
        assert!(!ok && text.contains("PARITY_REQUIRE_REFERENCES is set"), "{path} with the flag:\n{text}");
    }
    std::fs::remove_dir_all(&empty_cache).unwrap();
}

#[test]
fn any_prompt_text_reaches_the_dumper_and_round_trips_through_its_manifest() {
    if reference_python_or_skip("references/pytorch").is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("parity-make-dumps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Options the dumper's argparse would take, and control characters TOML cannot hold raw (not
    // U+0000, which no command-line argument can carry).
    let prompts = [("dash", "-1 is negative"), ("option", "--out /etc"), ("control", "a\u{1}\u{1b}[0m\u{7f} b\u{1f}")];
    let model = root().join("fixtures/models/tiny-llama/model-f32.gguf");
    let mut suite = format!(
        "dumps = {:?}\nn_generate = 2\ntemperature = 1.0\nthreads = 1\n[[model]]\nid = \"tiny\"\npath = {:?}\nrefs = [\"llamacpp\"]\n",
        dir.join("dumps").display().to_string(),
        model.display().to_string()
    );
    for (id, text) in prompts {
        // Rust's debug escapes (\u{1}) are not TOML's; the suite spells control characters as \uXXXX.
        let escaped: String = text.chars().map(|c| if c.is_control() { format!("\\u{:04X}", c as u32) } else { c.to_string() }).collect();
        suite.push_str(&format!("[[prompt]]\nid = \"{id}\"\ntext = \"{escaped}\"\n"));
    }
    let suite_path = dir.join("suite.toml");
    std::fs::write(&suite_path, suite).unwrap();
    // `parity dumps` (what scripts/make-dumps.sh runs), afresh: the prompts must reach the dumper.
    let out = Command::new(env!("CARGO_BIN_EXE_parity"))
        .args(["dumps", "--only", "llamacpp", "--no-dump-cache", "--suite"])
        .arg(&suite_path)
        .current_dir(root())
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "parity dumps failed:\n{log}");
    let loaded = Suite::load(&suite_path).unwrap();
    for case in loaded.cases() {
        let dump = Dump::open(&loaded.dump_dir(&root(), &case, "llamacpp")).unwrap();
        assert_eq!(dump.manifest.prompt, case.prompt.text, "{}", case.prompt.id);
        harness::pipeline::check_provenance(&dump, "llamacpp", &case.prompt.text, &dump.manifest.model_sha256).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_live_run_reuses_the_cached_dumps_and_judges_them_the_same() {
    if reference_python_or_skip("references/pytorch").is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("parity-dump-cache-live-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |id: &str, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_parity"))
            .args(["run", "--live", "--model", "tiny-llama-f32", "--prompt", "fox", "--refs", "llamacpp", "--format", "json"])
            .args(extra)
            .env("PARITY_DUMP_CACHE_DIR", dir.join("cache"))
            .env("LLORCH_PROOF_DIR", dir.join("proof"))
            .env("LLORCH_RUN_ID", id)
            .current_dir(root())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{id}: {}", String::from_utf8_lossy(&out.stderr));
        let manifest = std::fs::read_to_string(dir.join("proof/run").join(id).join("manifest.toml")).unwrap();
        let results = std::fs::read_to_string(dir.join("proof/run").join(id).join("summary.json")).unwrap();
        (manifest, results)
    };
    let (first, first_summary) = run("cold", &[]);
    let (second, second_summary) = run("warm", &[]);
    let (third, _) = run("bypass", &["--no-dump-cache"]);
    // The suite's truth and the reference: made by the first run, reused by the second.
    for reference in ["pytorch-f64", "llamacpp"] {
        let line = |manifest: &str| manifest.lines().find(|l| l.starts_with(&format!("\"tiny-llama-f32/fox/{reference}\""))).map(String::from);
        let (made, reused) = (line(&first).expect("the first run records its dumps"), line(&second).expect("so does the second"));
        assert!(made.contains("= \"fresh "), "{made}");
        assert_eq!(reused, made.replace("fresh", "reused"), "the same key, reused");
        assert!(line(&third).is_none(), "without the cache no dump has a key: {third}");
    }
    let verdicts = |s: &str| s.lines().filter(|l| l.contains("\"status\"") || l.contains("\"verdict\"")).collect::<Vec<_>>().join("\n");
    assert_eq!(verdicts(&first_summary), verdicts(&second_summary));
    std::fs::remove_dir_all(&dir).unwrap();
}
