//! Bugs planted in the engine (the `fault-injection` feature) must be caught at the checkpoint
//! where they live, in layer 0, with everything before it passing: the promise `parity bisect`
//! makes to an engineer hunting a regression. Runs on the committed default-suite dumps.

use engine::config::Fault;
use engine::model::Model;
use harness::bisect::bisect;
use harness::catalog::Catalog;
use harness::pipeline::{self, Setup, Source};
use harness::spec::Spec;
use harness::suite::{resolve, Suite};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (first failing checkpoint key, last passing key) for `model` x fox against pytorch, with `fault` planted.
fn first_failure(model_id: &str, fault: Option<Fault>) -> (Option<String>, Option<String>) {
    let root = root();
    let mut suite = Suite::load(&root.join("checkpoints/suite.toml")).unwrap();
    suite.models.retain(|m| m.id == model_id);
    suite.prompts.retain(|p| p.id == "fox");
    let catalog = Catalog::load(&root.join("checkpoints/catalog.toml")).unwrap();
    let spec = Spec::load(&root.join("checkpoints/tolerances.toml")).unwrap();
    let source = Source::Dumps(resolve(&root, &suite.dumps));
    let plant = move |m: &mut Model| {
        if let Some(f) = fault {
            m.inject_fault(f)
        }
    };
    let setup = Setup { root: &root, suite: &suite, catalog: &catalog, spec: &spec, source: &source, prepare: Some(&plant) };
    let mut cases = suite.cases();
    for case in &mut cases {
        case.refs = vec!["pytorch".into()];
    }
    let (results, runs) = pipeline::run(&setup, cases, "planted").unwrap();
    let found = bisect(&runs, &results, Some("pytorch"));
    assert_eq!(found.len(), 1);
    let b = &found[0];
    (b.first_failure.as_ref().map(|c| c.key.clone()), b.last_pass.as_ref().map(|c| c.key.clone()))
}

#[test]
fn without_a_plant_nothing_fails() {
    assert_eq!(first_failure("tiny-llama-f32", None).0, None);
    assert_eq!(first_failure("tiny-gpt2-f32", None).0, None);
}

#[test]
fn a_wrong_norm_epsilon_is_caught_at_the_first_norm() {
    let (fail, pass) = first_failure("tiny-llama-f32", Some(Fault::NormEpsilon));
    assert_eq!((fail.as_deref(), pass.as_deref()), (Some("blk.0.attn_norm"), Some("embed")));
    assert_eq!(first_failure("tiny-gpt2-f32", Some(Fault::NormEpsilon)).0.as_deref(), Some("blk.0.attn_norm"));
}

#[test]
fn rotating_the_wrong_rope_pairs_is_caught_after_rope_with_q_k_v_passing() {
    let (fail, pass) = first_failure("tiny-llama-f32", Some(Fault::RopePairing));
    assert_eq!((fail.as_deref(), pass.as_deref()), (Some("blk.0.q_rope"), Some("blk.0.v")));
}

#[test]
fn a_missing_attention_scale_is_caught_at_the_attention_probabilities() {
    let (fail, _) = first_failure("tiny-llama-f32", Some(Fault::MissingAttnScale));
    assert_eq!(fail.as_deref(), Some("blk.0.attn_probs"));
    assert_eq!(first_failure("tiny-gpt2-f32", Some(Fault::MissingAttnScale)).0.as_deref(), Some("blk.0.attn_probs"));
}

#[test]
fn a_dropped_ffn_residual_is_caught_at_the_block_output_not_the_ffn() {
    let (fail, pass) = first_failure("tiny-llama-f32", Some(Fault::DroppedFfnResidual));
    assert_eq!((fail.as_deref(), pass.as_deref()), (Some("blk.0.block_out"), Some("blk.0.ffn_out")));
    assert_eq!(first_failure("tiny-gpt2-f32", Some(Fault::DroppedFfnResidual)).0.as_deref(), Some("blk.0.block_out"));
}
