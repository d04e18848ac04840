//! Planted bugs (the `fault-injection` feature) on the committed tiny fixtures: each changes the
//! tensors it should and nothing before them. Above all, a decode-only bug must leave every
//! prompt tensor bit for bit as it was, and change only what is decoded through the KV cache.
#![cfg(feature = "fault-injection")]

use engine::fault::Fault;
use engine::tap::{Recorder, TapValue};
use engine::Model;
use std::path::PathBuf;

const PROMPT: &str = "The quick brown fox jumps over the lazy dog";

fn load(rel: &str, fault: Option<Fault>) -> Model {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models").join(rel);
    let mut model = Model::load(&path).unwrap_or_else(|e| panic!("loading fixture {rel}: {e}"));
    if let Some(f) = fault {
        model.inject_fault(f);
    }
    model
}

/// Every tap of a traced run, and the logits of each decode step.
#[derive(Default)]
struct Run {
    taps: Recorder,
    steps: Vec<Vec<f32>>,
}

impl engine::Observer for Run {
    fn observe(&mut self, tap: engine::tap::Tap, layer: Option<usize>, value: TapValue) {
        engine::Observer::observe(&mut self.taps, tap, layer, value);
    }

    fn step_logits(&mut self, _step: usize, logits: &[f32]) {
        self.steps.push(logits.to_vec());
    }
}

fn trace(rel: &str, fault: Option<Fault>) -> Run {
    let mut run = Run::default();
    load(rel, fault).trace(PROMPT, 6, 1.0, &mut run).expect("trace");
    run
}

/// The keys whose taps differ between two runs, in key order.
fn changed(a: &Run, b: &Run) -> Vec<String> {
    a.taps.tensors.iter().filter(|(k, v)| b.taps.tensors.get(*k) != Some(v)).map(|(k, _)| k.clone()).collect()
}

#[test]
fn decode_only_bugs_leave_every_prompt_tensor_unchanged_and_change_the_decode_steps() {
    for (rel, fault) in [
        ("tiny-llama/model-f32.gguf", Fault::DecodeRopeOffByOne),
        ("tiny-llama/model-f32.gguf", Fault::DecodeAttendsOneFewer),
        ("tiny-gpt2/model-f32.gguf", Fault::DecodeAttendsOneFewer),
    ] {
        let (clean, planted) = (trace(rel, None), trace(rel, Some(fault)));
        let diff = changed(&clean, &planted);
        // Only the decode taps may change: the decode steps' layer taps, the tokens and the
        // logits of each generated step.
        let decoded = |k: &String| k == "generated" || k == "step_logits" || k.contains(".dec_");
        assert!(diff.iter().all(decoded), "{rel} {fault}: prompt tensors changed: {diff:?}");
        assert!(diff.iter().any(|k| k == "step_logits"), "{rel} {fault}: the step logits did not change");
        // At the first decode step (row 0 of the stacks; its fed token is the prompt's choice, so
        // the same in both runs) the bug shows where it lives, and not before it.
        let row0 = |run: &Run, key: &str| match &run.taps.tensors[key] {
            TapValue::F32 { shape, data } => data[..data.len() / shape[0]].to_vec(),
            other => panic!("{key}: {other:?}"),
        };
        let (same, differs) = match fault {
            Fault::DecodeRopeOffByOne => ("blk.0.dec_q", "blk.0.dec_q_rope"),
            _ => ("blk.0.dec_k_cache", "blk.0.dec_attn_probs"),
        };
        assert_eq!(row0(&clean, same), row0(&planted, same), "{rel} {fault}");
        assert_ne!(row0(&clean, differs), row0(&planted, differs), "{rel} {fault}");
        // Step 0 is chosen from the prompt's logits; every later step went through the cache.
        assert_eq!(clean.steps[0], planted.steps[0]);
        for (i, (a, b)) in clean.steps.iter().zip(&planted.steps).enumerate().skip(1) {
            assert_ne!(a, b, "{rel} {fault}: decode step {i}'s logits did not change");
        }
    }
}

#[test]
fn a_decode_only_bug_does_not_touch_a_one_token_prompt() {
    // A prompt of one token is a prefill at position 0, not a decode step.
    for fault in [Fault::DecodeRopeOffByOne, Fault::DecodeAttendsOneFewer] {
        let (clean, planted) = (load("tiny-llama/model-f32.gguf", None), load("tiny-llama/model-f32.gguf", Some(fault)));
        let run = |m: &Model| {
            let mut cache = m.new_cache(1);
            m.forward(&[5], &mut cache, &mut engine::Taps::none(), false).unwrap()
        };
        assert_eq!(run(&clean), run(&planted), "{fault}");
    }
}

#[test]
fn each_small_bug_first_changes_the_tensor_where_it_lives() {
    let first_change = |rel: &str, fault: Fault| {
        let (clean, planted) = (trace(rel, None), trace(rel, Some(fault)));
        // Taps in forward order: embed, then layer 0's, layer 1's, then the head.
        // The decode steps' layer taps come after the prompt's head: a decode step follows the whole prompt.
        let order = |k: &str| match k.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((_, name)) if name.starts_with("dec_") => (usize::MAX, 1),
            Some((l, name)) => (1 + l.parse::<usize>().unwrap(), TAPS.iter().position(|t| *t == name).unwrap_or(99)),
            None if k == "embed" || k == "tokens" => (0, 0),
            None => (usize::MAX, 0),
        };
        let mut diff = changed(&clean, &planted);
        diff.sort_by_key(|k| order(k));
        diff.first().cloned()
    };
    let cases = [
        ("tiny-llama/model-f32.gguf", Fault::NormEpsilonTimes100, "blk.0.attn_norm"),
        ("tiny-gpt2/model-f32.gguf", Fault::NormEpsilonTimes100, "blk.0.attn_norm"),
        ("tiny-gpt2/model-f32.gguf", Fault::GeluErf, "blk.0.ffn_out"),
        ("tiny-llama/model-f32.gguf", Fault::SoftmaxOff, "blk.0.attn_probs"),
        ("tiny-llama/model-f32.gguf", Fault::RopeThetaOneLayer, "blk.1.q_rope"),
        ("tiny-llama/model-q8_0.gguf", Fault::Q8ScaleBf16, "embed"),
        ("tiny-llama/model-f16.gguf", Fault::F16SubnormalsFlushed, "blk.0.q"),
        ("tiny-gpt2/model-f16.gguf", Fault::F16SubnormalsFlushed, "embed"),
        ("tiny-llama/model-f32.gguf", Fault::Perturb { layer: 1, rel: 1e-4 }, "blk.1.block_out"),
        ("tiny-gpt2/model-f32.gguf", Fault::Perturb { layer: 0, rel: 1e-4 }, "blk.0.block_out"),
    ];
    for (rel, fault, want) in cases {
        assert_eq!(first_change(rel, fault).as_deref(), Some(want), "{rel} {fault}");
    }
    // A fault for another weight type changes nothing at all.
    assert_eq!(first_change("tiny-llama/model-f32.gguf", Fault::Q41ScaleBf16), None);
    assert_eq!(first_change("tiny-llama/model-q8_0.gguf", Fault::F16SubnormalsFlushed), None);
}

/// A layer's taps in the order the forward pass records them.
const TAPS: [&str; 13] =
    ["attn_norm", "q", "k", "v", "q_rope", "k_rope", "k_cache", "v_cache", "attn_probs", "attn_out", "ffn_norm", "ffn_out", "block_out"];

#[test]
fn a_wrapping_rope_table_changes_nothing_before_its_length_and_every_rotation_after() {
    // tiny-llama's prompt has 11 tokens; a table of 8 positions leaves positions 0..8 exact.
    let (clean, planted) =
        (trace("tiny-llama/model-f32.gguf", None), trace("tiny-llama/model-f32.gguf", Some(Fault::RopeTableWrap { positions: 8 })));
    let rows = |run: &Run, key: &str| match &run.taps.tensors[key] {
        TapValue::F32 { shape, data } => data.chunks(data.len() / shape[0]).map(<[f32]>::to_vec).collect::<Vec<_>>(),
        other => panic!("{key}: {other:?}"),
    };
    let (a, b) = (rows(&clean, "blk.0.q_rope"), rows(&planted, "blk.0.q_rope"));
    assert!(a.len() > 8);
    assert_eq!(a[..8], b[..8]);
    for pos in 8..a.len() {
        assert_ne!(a[pos], b[pos], "position {pos}");
    }
    assert_eq!(rows(&clean, "blk.0.q"), rows(&planted, "blk.0.q"), "before RoPE nothing changes");
}
