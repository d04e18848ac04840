//! The references, checked against each other and by their own tests.
//!
//! Agreement between references runs on the committed default-suite dumps, always: the same prompt
//! ids from all three, last-token logits within cosine 0.999 of each other, the same argmax; and the
//! float64 truth (`pytorch-f64`) of every case is the float32 PyTorch dump's computation, within f32
//! rounding noise of it. Each dumper's own end-to-end test (`references/<name>/test_dump.py`) runs when the reference
//! environment of `scripts/setup-references.sh` is present, and is skipped with a printed reason
//! when it is not, unless `PARITY_REQUIRE_REFERENCES` is set (CI sets it: there a missing
//! environment is a failure, not a skip).

use harness::dumps::{Dump, Lookup};
use harness::metrics::Sums;
use harness::suite::{parity_cache, resolve, Suite};
use harness::tensor::{Tensor, Values};
use std::path::{Path, PathBuf};
use std::process::Command;

const REFERENCES: [&str; 3] = ["llamacpp", "pytorch", "tinygrad"];
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
fn the_three_references_agree_on_tokens_last_logits_and_argmax_for_every_fixture() {
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
    assert!(compared >= 2 * 12, "compared only {compared} reference pairs");
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

/// The reference environment's Python, if setup has made it.
fn reference_python() -> Option<PathBuf> {
    let py = parity_cache().join("venv/bin/python");
    py.exists().then_some(py)
}

fn run_dumper_test(reference: &str) {
    let Some(py) = reference_python() else {
        assert!(
            std::env::var_os("PARITY_REQUIRE_REFERENCES").is_none(),
            "PARITY_REQUIRE_REFERENCES is set but there is no reference environment at {}; run scripts/setup-references.sh",
            parity_cache().join("venv").display()
        );
        println!("skipped: no reference environment at {}; run scripts/setup-references.sh", parity_cache().join("venv").display());
        return;
    };
    let script = resolve(&root(), &format!("references/{reference}/test_dump.py"));
    let out = Command::new(&py).arg(&script).env("DEV", "CPU").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "{} exited {:?}:\n{text}", script.display(), out.status.code());
}

#[test]
fn the_llamacpp_dumper_passes_its_own_test() {
    run_dumper_test("llamacpp");
}

#[test]
fn the_pytorch_dumper_passes_its_own_test() {
    run_dumper_test("pytorch");
}

#[test]
fn the_pytorch_f64_dumper_passes_its_own_test() {
    run_dumper_test(TRUTH);
}

#[test]
fn the_tinygrad_dumper_passes_its_own_test() {
    run_dumper_test("tinygrad");
}
