//! Hand-built runs for the report tests: small enough to read, varied enough to reach every branch
//! (passes, a failure, missing layers, a near-tie, a reference error, text that needs escaping).

use crate::results::{CaseResult, CheckResult, Duplicate, Judgement, Provenance, Role, RunResults, Status};
use crate::vocab::{Authorship, Class, Metric, Op};
use std::collections::BTreeMap;

const THRESHOLD: f64 = 1e-4;

/// A check judged on `max_abs <= 1e-4`; its status follows from the value.
pub fn judged(id: u32, checkpoint: &str, tensor: &str, layer: Option<usize>, value: f64) -> CheckResult {
    let margin = (THRESHOLD - value) / THRESHOLD;
    let pass = value <= THRESHOLD;
    let mut metrics = BTreeMap::new();
    metrics.insert("max_abs".to_string(), value);
    metrics.insert("cosine".to_string(), 1.0 - value);
    CheckResult {
        checkpoint_id: id,
        checkpoint: checkpoint.into(),
        tensor: tensor.into(),
        layer,
        key: key(tensor, layer),
        status: if pass { Status::Pass } else { Status::Fail },
        metrics,
        judgements: vec![Judgement { metric: Metric::MaxAbs, value, op: Op::Le, threshold: THRESHOLD, margin, pass }],
        note: if pass { None } else { Some(format!("max_abs {value:e} > {THRESHOLD:e}")) },
    }
}

/// An unjudged check with a status and a note (missing tensors, token comparisons).
pub fn noted(id: u32, checkpoint: &str, tensor: &str, layer: Option<usize>, status: Status, note: Option<&str>) -> CheckResult {
    CheckResult {
        checkpoint_id: id,
        checkpoint: checkpoint.into(),
        tensor: tensor.into(),
        layer,
        key: key(tensor, layer),
        status,
        metrics: BTreeMap::new(),
        judgements: vec![],
        note: note.map(str::to_string),
    }
}

fn key(tensor: &str, layer: Option<usize>) -> String {
    match layer {
        Some(l) => format!("blk.{l}.{tensor}"),
        None => tensor.to_string(),
    }
}

/// Checkpoints 0, 2, 8 and 12 of a two-layer model, all passing; qkv error grows with depth.
fn passing_checks(scale: f64, generated: Status) -> Vec<CheckResult> {
    let mut checks = vec![noted(0, "embeddings", "tokens", None, Status::Pass, None), judged(0, "embeddings", "embed", None, 1e-7 * scale)];
    for layer in 0..2 {
        let grow = 10f64.powi(layer as i32);
        checks.push(judged(2, "qkv", "q", Some(layer), 1e-6 * grow * scale));
        checks.push(judged(2, "qkv", "k", Some(layer), 2e-6 * grow * scale));
        checks.push(judged(2, "qkv", "v", Some(layer), 5e-7 * grow * scale));
    }
    checks.push(judged(8, "logits", "logits", None, 3e-5 * scale));
    let note = (generated == Status::NearTie).then_some("diverged at step 5: top-two gap 1.2e-6 <= 1e-5");
    checks.push(noted(12, "generated", "generated", None, generated, note));
    checks
}

fn case(model: &str, reference: &str, version: &str, checks: Vec<CheckResult>) -> CaseResult {
    CaseResult {
        model: model.into(),
        model_sha256: "ab".repeat(32),
        prompt: "fox".into(),
        reference: reference.into(),
        reference_version: version.into(),
        dtype: Class::F32.into(),
        role: Role::Reference,
        checks,
        provenance: BTreeMap::new(),
        duplicates: Vec::new(),
    }
}

/// Three references on one model; the pytorch generation is a near-tie; nothing fails.
pub fn all_pass_run() -> RunResults {
    RunResults {
        run_id: "20261122T212400Z-abcd".into(),
        engine_version: "0.1.0 (abc1234)".into(),
        subject: "engine".into(),
        subject_version: "0.1.0 (abc1234)".into(),
        subject_provenance: Default::default(),
        cases: vec![
            case("tiny-llama-f32", "llamacpp", "0.3.36", passing_checks(1.0, Status::Pass)),
            case("tiny-llama-f32", "pytorch", "2.5.1", passing_checks(0.5, Status::NearTie)),
            case("tiny-llama-f32", "tinygrad", "0.14.0", passing_checks(2.0, Status::Pass)),
        ],
        reference_errors: BTreeMap::new(),
    }
}

/// The full-featured run the snapshots are taken on: one failure, missing KV cache layers, a
/// near-tie, a second model with a single reference, a reference error, and `<&">` in notes.
pub fn run() -> RunResults {
    let mut run = all_pass_run();
    // qkv against llamacpp: make blk.1.k the unique tightest margin (value 9e-5 -> margin 0.1).
    let llama = &mut run.cases[0].checks;
    let k1 = llama.iter_mut().find(|c| c.key == "blk.1.k").expect("fixture has blk.1.k");
    *k1 = judged(2, "qkv", "k", Some(1), 9e-5);
    let tinygrad = &mut run.cases[2].checks;
    for layer in 0..2 {
        tinygrad.push(noted(3, "rope_kv_cache", "k_cache", Some(layer), Status::Missing, Some("tinygrad keeps no <cache> tensor & cannot dump it")));
    }
    let logits = tinygrad.iter_mut().find(|c| c.key == "logits").expect("fixture has logits");
    *logits = judged(8, "logits", "logits", None, 1.5e-4);
    for case in &mut run.cases[..2] {
        for layer in 0..2 {
            case.checks.push(judged(3, "rope_kv_cache", "k_cache", Some(layer), 1e-6));
        }
    }
    // Provenance: tinygrad's cache is our code on its kernels; pytorch's blk.0.v copies llamacpp's bits.
    let reason = "our <fixed-capacity> KV cache on tinygrad Tensors".to_string();
    run.cases[2].provenance.insert("rope_kv_cache".into(), Provenance { kind: Authorship::Kernels, reason: Some(reason) });
    run.cases[1].duplicates.push(Duplicate { checkpoint: "qkv".into(), key: "blk.0.v".into(), of: "llamacpp".into() });
    run.cases.push(case("tiny-gpt2-hf", "pytorch", "2.5.1", passing_checks(1.0, Status::Pass)));
    run.reference_errors.insert("llamacpp-hf".into(), "cannot load \"hf\" directories: use <model>.gguf & retry".into());
    run
}
