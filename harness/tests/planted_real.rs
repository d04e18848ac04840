//! Small bugs planted in the engine must be caught on real weights, at the checkpoint and layer
//! where they live, against the f64 truth and against every reference: the sharpness the noise
//! floor promises, on SmolLM2-135M (Q4_1 as shipped, F32, F16) and GPT-2-small; and the bug people
//! make in each mechanism the model families add, on the family suite's Llama-3, Qwen2, Qwen3,
//! Gemma-2 and Phi-3.
//!
//! Needs the real-suite and family-suite dumps in the parity cache (`scripts/make-real-models.sh`,
//! then `scripts/make-dumps.sh checkpoints/suite-real.toml` and `checkpoints/suite-families.toml`);
//! `.ci/run` makes them before running this.
//! Without them the tests say so and pass, unless `PARITY_REQUIRE_REFERENCES` is set (CI sets it),
//! where a missing dump is a failure.

mod common;

use common::{root, run_engine, Checkpoints};
use engine::fault::Fault;
use harness::bisect::bisect;
use harness::suite::{resolve, Suite};
use reports::summary::Verdict;

/// Every reference's (and the truth's, last) checks of `model` x its first real-suite prompt with
/// `fault` planted; `None` when the dumps are not there and the environment does not require them.
fn all_checks(model_id: &str, fault: Fault) -> Option<Vec<(String, Vec<reports::results::CheckResult>)>> {
    let (results, _, _) = run(model_id, Some(fault))?;
    Some(results.cases.into_iter().map(|c| (c.reference, c.checks)).collect())
}

/// The run of `model` x the `short` prompt (or its first) with `fault` planted, and the names of
/// its references then its truth.
type Run = (reports::results::RunResults, Vec<harness::pipeline::CaseRun>, Vec<String>);

fn run(model_id: &str, fault: Option<Fault>) -> Option<Run> {
    let root = root();
    let holds = |file: &str| Suite::load(&root.join(file)).unwrap().models.iter().any(|m| m.id == model_id);
    let file = ["checkpoints/suite-real.toml", "checkpoints/suite-families.toml"].into_iter().find(|f| holds(f));
    let file = file.unwrap_or_else(|| panic!("{model_id} is in neither the real nor the family suite"));
    let mut suite = Suite::load(&root.join(file)).unwrap();
    suite.models.retain(|m| m.id == model_id);
    // `short`, or the model's first prompt when it does not run that one.
    let prompt = suite.models[0].prompts.as_ref().map_or("short".to_string(), |p| p[0].clone());
    suite.prompts.retain(|p| p.id == prompt);
    let dumps = resolve(&root, &suite.dumps);
    let case_dir = dumps.join(model_id).join(&prompt);
    let truth = suite.truth.clone().expect("the real suite has a truth");
    let wanted: Vec<String> = suite.models[0].refs.iter().cloned().chain([truth.clone()]).collect();
    if let Some(absent) = wanted.iter().find(|r| !case_dir.join(r).join("manifest.toml").is_file()) {
        let why = format!("no {absent} dump at {}: run scripts/make-dumps.sh {file}", case_dir.display());
        assert!(std::env::var_os("PARITY_REQUIRE_REFERENCES").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return None;
    }
    let cases = suite.cases();
    assert_eq!(cases.len(), 1, "{model_id} x {prompt}");
    let (results, runs) = run_engine(&Checkpoints::load(), &suite, cases, fault, "planted-real");
    assert!(results.reference_errors.is_empty(), "{:?}", results.reference_errors);
    if fault.is_some() {
        assert_eq!(Verdict::of(&results).exit_code(), 1, "a planted run must fail");
    }
    Some((results, runs, wanted))
}

/// Every reference of the case, and the truth (last), with the first failing check's key against
/// each (`None`: nothing failed).
fn first_failures(model_id: &str, fault: Option<Fault>) -> Option<Vec<(String, Option<String>)>> {
    let (results, runs, wanted) = run(model_id, fault)?;
    Some(
        wanted
            .iter()
            .map(|r| {
                let found = bisect(&runs, &results, Some(r));
                assert_eq!(found.len(), 1, "{r}");
                (r.clone(), found[0].first_failure.as_ref().map(|c| c.key.clone()))
            })
            .collect(),
    )
}

/// Asserts the plant is first caught at `key` against the truth, and against every reference
/// either there or not at all before it (a reference in a looser class may see it later).
fn caught_at(model_id: &str, fault: Fault, key: &str) {
    let Some(found) = first_failures(model_id, Some(fault)) else { return };
    let (truth, at) = found.last().expect("the truth is listed last");
    assert_eq!(at.as_deref(), Some(key), "{fault} on {model_id} against {truth}: {found:?}");
    let strict: Vec<_> = found.iter().filter(|(_, at)| at.as_deref() == Some(key)).collect();
    assert!(strict.len() >= 2, "{fault} on {model_id}: caught at {key} by the truth only: {found:?}");
}

#[test]
fn the_clean_engine_passes_every_real_model() {
    for model in ["smollm2-q4_1", "smollm2-f32", "smollm2-f16", "gpt2-small-f32"] {
        let Some(found) = first_failures(model, None) else { return };
        assert!(found.iter().all(|(_, at)| at.is_none()), "{model}: {found:?}");
    }
}

#[test]
fn the_clean_engine_passes_every_family_model() {
    let models = [
        "llama3-f32",
        "llama3-q8_0",
        "qwen2-f32",
        "qwen2-q8_0",
        "qwen3-f32",
        "qwen3-q8_0",
        "gemma2-f32",
        "gemma2-q8_0",
        "mistral-f32",
        "mistral-q8_0",
        "phi3-f32",
        "phi3-q8_0",
    ];
    for model in models {
        let Some(found) = first_failures(model, None) else { return };
        assert!(found.iter().all(|(_, at)| at.is_none()), "{model}: {found:?}");
    }
}

#[test]
fn llama3_rope_scaling_on_the_wrong_frequencies_is_caught_at_the_first_rotated_queries() {
    caught_at("llama3-f32", Fault::RopeScalingReversed, "blk.0.q_rope");
}

#[test]
fn qwen2_biases_added_after_rope_are_caught_at_the_first_queries() {
    // The buggy q is the projection without its bias: wrong already before RoPE.
    caught_at("qwen2-f32", Fault::BiasAfterRope, "blk.0.q");
}

#[test]
fn qwen3_qk_norm_after_rope_is_caught_at_the_first_normalised_queries() {
    caught_at("qwen3-f32", Fault::QkNormAfterRope, "blk.0.q_norm");
}

#[test]
fn gemma2_norms_without_the_plus_one_are_caught_at_the_first_norm() {
    caught_at("gemma2-f32", Fault::NormWithoutPlusOne, "blk.0.attn_norm");
}

#[test]
fn gemma2_softcap_before_the_scale_is_caught_at_the_first_attention_probabilities() {
    caught_at("gemma2-f32", Fault::SoftcapBeforeScale, "blk.0.attn_probs");
}

#[test]
fn gemma2_window_one_too_wide_is_caught_at_the_first_windowed_layer() {
    // The 61-token prompt reaches past layer 0's 8-token window.
    caught_at("gemma2-f32", Fault::WindowOffByOne, "blk.0.attn_probs");
}

#[test]
fn phi3_gate_and_up_split_the_other_way_round_are_caught_at_the_first_ffn_output() {
    caught_at("phi3-f32", Fault::GateUpSwapped, "blk.0.ffn_out");
}

/// The Q8_0 Gemma-2 case's 7-token prompt fits its 8-token window, and its decode leaves it:
/// a window one too wide passes the whole prompt path and fails first in the decode.
#[test]
fn gemma2_window_one_too_wide_passes_the_prompt_inside_the_window_and_fails_the_decode() {
    caught_at("gemma2-q8_0", Fault::WindowOffByOne, "blk.0.dec_attn_probs");
}

#[test]
fn a_norm_epsilon_100_times_too_large_is_caught_at_the_first_norm() {
    caught_at("smollm2-f32", Fault::NormEpsilonTimes100, "blk.0.attn_norm");
}

#[test]
fn a_softmax_a_tenth_of_a_percent_off_is_caught_at_the_first_attention_probabilities() {
    caught_at("smollm2-f32", Fault::SoftmaxOff, "blk.0.attn_probs");
}

#[test]
fn the_erf_gelu_is_caught_at_gpt2s_first_ffn_output() {
    caught_at("gpt2-small-f32", Fault::GeluErf, "blk.0.ffn_out");
}

#[test]
fn another_rope_base_in_layer_1_is_caught_there() {
    caught_at("smollm2-f32", Fault::RopeThetaOneLayer, "blk.1.q_rope");
}

#[test]
fn q4_1_scales_rounded_through_bf16_are_caught_where_q4_1_weights_are_first_used() {
    caught_at("smollm2-q4_1", Fault::Q41ScaleBf16, "blk.0.q");
}

#[test]
fn flushed_f16_subnormals_are_caught_where_the_first_one_is_used() {
    // In layer 0 only attn_v holds subnormals that move its output past the noise.
    caught_at("smollm2-f16", Fault::F16SubnormalsFlushed, "blk.0.v");
}

#[test]
fn noise_of_a_ten_thousandth_on_a_middle_block_is_caught_there() {
    for model in ["smollm2-q4_1", "smollm2-f32", "smollm2-f16"] {
        caught_at(model, Fault::Perturb { layer: 15, rel: 1e-4 }, "blk.15.block_out");
    }
    caught_at("gpt2-small-f32", Fault::Perturb { layer: 6, rel: 1e-4 }, "blk.6.block_out");
}

/// Decode-only plants on SmolLM2 Q4_1: every prompt tensor passes, and the decode path fails first
/// where the bug lives (layer 0's decode-step RoPE or attention row), against the truth and
/// against each reference alone, llama.cpp (judged in the quantized class) included; so do the
/// step logits, and the same steps by one prefill pass.
#[test]
fn decode_only_bugs_fail_first_at_the_decode_layers_against_every_reference_on_real_weights() {
    use reports::results::Status;
    for (fault, first) in [(Fault::DecodeRopeOffByOne, "blk.0.dec_q_rope"), (Fault::DecodeAttendsOneFewer, "blk.0.dec_attn_probs")] {
        let Some(cases) = all_checks("smollm2-q4_1", fault) else { return };
        for (reference, checks) in cases {
            let status = |key: &str| checks.iter().find(|c| c.key == key).map(|c| c.status);
            let failing: Vec<&str> = checks.iter().filter(|c| c.status.is_failure()).map(|c| c.key.as_str()).collect();
            let decoded = |k: &&str| ["generated", "step_logits"].contains(k) || k.contains(".dec_");
            assert!(failing.iter().all(decoded), "{fault} vs {reference}: {failing:?}");
            assert_eq!(failing.first().copied(), Some(first), "{fault} vs {reference}: {failing:?}");
            assert_eq!(status("step_logits"), Some(Status::Fail), "{fault} vs {reference}");
            if reference == "pytorch-f64" {
                assert_eq!(status("step_logits.prefill"), Some(Status::Pass), "{fault}");
            }
        }
    }
}

/// Sampler plants on SmolLM2 Q4_1 and GPT-2-small: every model tensor passes, and the samplers'
/// distributions fail against the truth and against each reference alone, llama.cpp included.
#[test]
fn sampler_bugs_fail_the_samplers_distributions_against_every_reference_on_real_weights() {
    use reports::results::Status;
    for (model, fault) in [
        ("smollm2-q4_1", Fault::TemperatureAfterSoftmax),
        ("smollm2-q4_1", Fault::TopPOneTooFew),
        ("gpt2-small-f32", Fault::TemperatureAfterSoftmax),
        ("gpt2-small-f32", Fault::TopPOneTooFew),
    ] {
        let Some(cases) = all_checks(model, fault) else { return };
        for (reference, checks) in cases {
            let failing: Vec<&str> = checks.iter().filter(|c| c.status.is_failure()).map(|c| c.key.as_str()).collect();
            assert!(failing.iter().all(|k| ["sampler_probs", "sampled"].contains(k)), "{fault} on {model} vs {reference}: {failing:?}");
            let probs = checks.iter().find(|c| c.key == "sampler_probs").map(|c| c.status);
            assert_eq!(probs, Some(Status::Fail), "{fault} on {model} vs {reference}");
        }
    }
}
