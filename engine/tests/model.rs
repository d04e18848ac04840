//! The engine end to end on the committed tiny fixtures (`scripts/make-fixtures.py`): the same
//! random-weight models written as GGUF F32/F16/Q8_0 and as HF safetensors.

use engine::sampling::{CATALOG_SAMPLERS, SAMPLING_DRAWS};
use engine::tap::{Recorder, Tap, TapValue};
use engine::{Error, Model, Shared, Taps};
use std::path::PathBuf;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models").join(rel)
}

fn load(rel: &str) -> Model {
    Model::load(&fixture(rel)).unwrap_or_else(|e| panic!("loading fixture {rel}: {e}"))
}

fn forced(history: &[u32]) -> Shared<'_> {
    Shared { history: Some(history), ..Default::default() }
}

const PROMPT: &str = "The quick brown fox jumps over the lazy dog";

fn f32_tensor(rec: &Recorder, key: &str) -> (Vec<usize>, Vec<f32>) {
    match rec.tensors.get(key) {
        Some(TapValue::F32 { shape, data }) => (shape.clone(), data.clone()),
        other => panic!("{key}: expected an f32 tap, got {other:?}"),
    }
}

fn trace(model: &Model, n_generate: usize) -> Recorder {
    let mut rec = Recorder::default();
    model.trace(PROMPT, n_generate, 1.0, &mut rec).expect("trace");
    rec
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn prefill_then_decode_equals_full_prefill_on_the_last_position() {
    for rel in ["tiny-llama/model-f32.gguf", "tiny-gpt2/model-f32.gguf"] {
        let model = load(rel);
        let tokens = model.prompt_tokens(PROMPT, 0).unwrap();
        let n = tokens.len();
        let mut full_cache = model.new_cache(n);
        let full = model.forward(&tokens, &mut full_cache, &mut Taps::none(), false).unwrap();
        let mut cache = model.new_cache(n);
        model.forward(&tokens[..n - 1], &mut cache, &mut Taps::none(), false).unwrap();
        let step = model.forward(&tokens[n - 1..], &mut cache, &mut Taps::none(), false).unwrap();
        // Same math, different grouping of rows: only f32 rounding of the attention sums differs.
        assert!(max_abs_diff(&full, &step) < 1e-4, "{rel}: {}", max_abs_diff(&full, &step));
    }
}

#[test]
fn gguf_and_hf_layouts_of_one_model_agree_at_every_tap() {
    // The GGUF llama file has permuted Q/K rows and the GPT-2 HF file Conv1D weights: after the
    // engine's handling both must show the same canonical tensors.
    for arch in ["tiny-llama", "tiny-gpt2"] {
        let gguf = trace(&load(&format!("{arch}/model-f32.gguf")), 4);
        let hf = trace(&load(&format!("{arch}/hf")), 4);
        assert_eq!(gguf.tensors.keys().collect::<Vec<_>>(), hf.tensors.keys().collect::<Vec<_>>());
        for (key, a) in &gguf.tensors {
            match (a, &hf.tensors[key]) {
                (TapValue::F32 { shape: sa, data: da }, TapValue::F32 { shape: sb, data: db }) => {
                    assert_eq!(sa, sb, "{arch} {key}");
                    assert!(max_abs_diff(da, db) < 1e-4, "{arch} {key}: {}", max_abs_diff(da, db));
                }
                (a, b) => assert_eq!(a, b, "{arch} {key}"),
            }
        }
    }
}

#[test]
fn every_catalog_tap_is_recorded_with_its_catalog_shape() {
    for (rel, llama) in [("tiny-llama/model-f32.gguf", true), ("tiny-gpt2/model-f32.gguf", false)] {
        let model = load(rel);
        let c = model.config().clone();
        let rec = trace(&model, 3);
        let t = match &rec.tensors["tokens"] {
            TapValue::Ids(ids) => ids.len(),
            other => panic!("tokens: {other:?}"),
        };
        let (d, kv, hd, h, v) = (c.d_model, c.n_kv_heads, c.head_dim, c.n_heads, c.vocab_size);
        for tap in Tap::ALL {
            let layers: Vec<Option<usize>> = if tap.per_layer() { (0..c.n_layers).map(Some).collect() } else { vec![None] };
            for layer in layers {
                let key = tap.key(layer);
                let rope = matches!(tap, Tap::QRope | Tap::KRope | Tap::DecQRope | Tap::DecKRope);
                if rope && !llama {
                    assert!(!rec.tensors.contains_key(&key), "{rel}: GPT-2 has no {key}");
                    continue;
                }
                if matches!(tap, Tap::QNorm | Tap::KNorm | Tap::DecQNorm | Tap::DecKNorm) {
                    assert!(!rec.tensors.contains_key(&key), "{rel}: only Qwen3 has {key}");
                    continue;
                }
                if matches!(tap, Tap::PostAttnNorm | Tap::PostFfnNorm | Tap::DecPostAttnNorm | Tap::DecPostFfnNorm) {
                    assert!(!rec.tensors.contains_key(&key), "{rel}: only Gemma-2 has {key}");
                    continue;
                }
                let want: Vec<usize> = match tap {
                    Tap::Tokens => vec![t],
                    Tap::Embed | Tap::AttnNorm | Tap::AttnOut | Tap::FfnNorm | Tap::FfnOut | Tap::BlockOut | Tap::FinalNorm => vec![t, d],
                    Tap::Q | Tap::QRope => vec![t, h * hd],
                    Tap::K | Tap::V | Tap::KRope => vec![t, kv * hd],
                    Tap::KCache | Tap::VCache => vec![kv, t, hd],
                    Tap::AttnProbs => vec![h, t, t],
                    Tap::Logits => vec![t, v],
                    Tap::LastLogits | Tap::Probs => vec![v],
                    Tap::Argmax => vec![],
                    Tap::Generated => vec![3],
                    Tap::StepLogits => vec![3, v],
                    Tap::SamplerProbs => vec![CATALOG_SAMPLERS.len(), v],
                    Tap::Sampled => vec![CATALOG_SAMPLERS.len(), SAMPLING_DRAWS],
                    // N = 3: decode steps 1 and 2; the context after step 2 is T+2.
                    Tap::DecAttnNorm | Tap::DecAttnOut | Tap::DecFfnNorm | Tap::DecFfnOut | Tap::DecBlockOut => vec![2, d],
                    Tap::DecQ | Tap::DecQRope => vec![2, h * hd],
                    Tap::DecK | Tap::DecV | Tap::DecKRope => vec![2, kv * hd],
                    Tap::DecKCache | Tap::DecVCache => vec![2, kv, t + 2, hd],
                    Tap::DecAttnProbs => vec![2, h, t + 2],
                    Tap::QNorm | Tap::KNorm | Tap::DecQNorm | Tap::DecKNorm => unreachable!("skipped above"),
                    Tap::PostAttnNorm | Tap::PostFfnNorm | Tap::DecPostAttnNorm | Tap::DecPostFfnNorm => unreachable!("skipped above"),
                };
                let got = rec.tensors.get(&key).unwrap_or_else(|| panic!("{rel}: {key} never recorded")).shape();
                assert_eq!(got, want, "{rel} {key}");
            }
        }
        let (_, probs) = f32_tensor(&rec, "blk.0.attn_probs");
        for row in probs.chunks_exact(t) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        assert_eq!(probs[1], 0.0, "the causal mask leaves exact zeros");
    }
}

#[test]
fn decode_taps_at_the_chosen_steps_equal_the_prefill_taps_of_their_position() {
    for rel in ["tiny-llama/model-f32.gguf", "tiny-gpt2/model-f32.gguf"] {
        let model = load(rel);
        let n = 8; // decode steps 1, 4 and 7
        let rec = trace(&model, n);
        let Some(TapValue::Ids(generated)) = rec.tensors.get("generated") else { panic!("{rel}: no generated ids") };
        let tokens = model.prompt_tokens(PROMPT, n).unwrap();
        let t = tokens.len();
        let ctx = t + n - 1;
        // One prefill of the prompt and the fed history (the engine's own tokens but the last).
        let all: Vec<u32> = tokens.iter().chain(&generated[..n - 1]).copied().collect();
        let mut prefill = Recorder::default();
        model.forward(&all, &mut model.new_cache(ctx), &mut Taps::new(&mut prefill), true).unwrap();
        let c = model.config();
        let (h, kv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        for layer in 0..c.n_layers {
            for name in
                ["attn_norm", "q", "k", "v", "q_rope", "k_rope", "attn_out", "ffn_norm", "ffn_out", "block_out", "attn_probs", "k_cache", "v_cache"]
            {
                let key = format!("blk.{layer}.{name}");
                let Some(TapValue::F32 { data: full, .. }) = prefill.tensors.get(&key) else {
                    assert!(name.ends_with("rope"), "{rel}: prefill has no {key}");
                    continue;
                };
                let (shape, dec) = f32_tensor(&rec, &format!("blk.{layer}.dec_{name}"));
                assert_eq!(shape[0], 3, "{rel} {key}");
                for (s, step) in [1, 4, 7].into_iter().enumerate() {
                    let pos = t + step - 1; // the position step `step` fed
                    let row = &dec[s * dec.len() / 3..(s + 1) * dec.len() / 3];
                    // The prefill's layout at that position, with the decode step's zeros after it.
                    let want: Vec<f32> = match name {
                        "attn_probs" => (0..h).flat_map(|hh| full[(hh * ctx + pos) * ctx..(hh * ctx + pos + 1) * ctx].to_vec()).collect(),
                        "k_cache" | "v_cache" => (0..kv * ctx * hd).map(|i| if (i / hd) % ctx <= pos { full[i] } else { 0.0 }).collect(),
                        _ => full[pos * row.len()..(pos + 1) * row.len()].to_vec(),
                    };
                    assert!(max_abs_diff(row, &want) < 1e-4, "{rel} {key} step {step}: {}", max_abs_diff(row, &want));
                }
            }
        }
    }
}

#[test]
fn without_a_decode_step_the_decode_taps_are_empty() {
    let rec = trace(&load("tiny-llama/model-f32.gguf"), 1);
    let (shape, data) = f32_tensor(&rec, "blk.1.dec_k_cache");
    assert_eq!((shape[0], data.len()), (0, 0));
    assert_eq!(f32_tensor(&rec, "blk.0.dec_attn_probs").0[0], 0);
}

#[test]
fn f16_and_q8_0_weights_stay_close_to_f32() {
    let f32_logits = f32_tensor(&trace(&load("tiny-llama/model-f32.gguf"), 0), "last_logits").1;
    for (rel, tol) in [("tiny-llama/model-f16.gguf", 2e-2), ("tiny-llama/model-q8_0.gguf", 1e-1)] {
        let logits = f32_tensor(&trace(&load(rel), 0), "last_logits").1;
        let spread = f32_logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // Rounding weights to f16 (11-bit mantissa) or 8-bit blocks moves logits by a small
        // fraction of their range, never by their size.
        assert!(max_abs_diff(&f32_logits, &logits) < tol * spread, "{rel}: {} vs range {spread}", max_abs_diff(&f32_logits, &logits));
    }
}

#[test]
fn traces_are_bit_identical_across_runs() {
    let model = load("tiny-llama/model-f32.gguf");
    assert_eq!(trace(&model, 4).tensors, trace(&model, 4).tensors);
}

#[test]
fn traces_are_bit_identical_across_thread_counts() {
    // Rows are split into fixed chunks of 16 whatever the pool size, and each chunk sums in one
    // order, so the number of threads cannot change a bit (the fixture's 64-wide layers and
    // 449-token vocabulary span several chunks).
    let model = load("tiny-llama/model-f32.gguf");
    let on = |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| trace(&model, 4).tensors);
    let (one, three) = (on(1), on(3));
    assert_eq!(one.len(), three.len());
    for (key, a) in &one {
        assert_eq!(format!("{:?}", a), format!("{:?}", three[key]), "{key} differs between 1 and 3 threads");
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let model = load("tiny-gpt2/model-f32.gguf");
    let long = "word ".repeat(model.config().context * 2);
    match model.trace(&long, 0, 1.0, &mut Recorder::default()) {
        Err(Error::ContextOverflow { context, .. }) => assert_eq!(context, model.config().context),
        other => panic!("expected ContextOverflow, got {:?}", other.err()),
    }
}

#[test]
fn an_empty_prompt_without_bos_is_refused() {
    let model = load("tiny-gpt2/model-f32.gguf");
    assert!(matches!(model.trace("", 1, 1.0, &mut Recorder::default()), Err(Error::EmptyPrompt)));
}

/// Keeps the step logits a trace shows, beside its taps.
#[derive(Default)]
struct StepLogits {
    taps: Recorder,
    steps: Vec<(usize, Vec<f32>)>,
}

impl engine::Observer for StepLogits {
    fn observe(&mut self, tap: Tap, layer: Option<usize>, value: TapValue) {
        engine::Observer::observe(&mut self.taps, tap, layer, value);
    }

    fn step_logits(&mut self, step: usize, logits: &[f32]) {
        self.steps.push((step, logits.to_vec()));
    }
}

#[test]
fn a_trace_shows_the_logits_each_generated_token_was_chosen_from() {
    let model = load("tiny-llama/model-f32.gguf");
    let mut obs = StepLogits::default();
    model.trace(PROMPT, 5, 1.0, &mut obs).expect("trace");
    assert_eq!(obs.steps.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    // Step 0 is the prompt's last position; every step's greedy choice is the generated token.
    assert_eq!(obs.steps[0].1, f32_tensor(&obs.taps, "last_logits").1);
    let Some(TapValue::Ids(generated)) = obs.taps.tensors.get("generated") else { panic!("generated tap") };
    let argmax = |l: &[f32]| l.iter().enumerate().fold(0, |best, (i, v)| if *v > l[best] { i } else { best }) as u32;
    assert_eq!(obs.steps.iter().map(|(_, l)| argmax(l)).collect::<Vec<_>>(), *generated);
}

#[test]
fn a_forced_history_is_fed_instead_of_the_engines_own_choices() {
    for rel in ["tiny-llama/model-f32.gguf", "tiny-gpt2/model-f32.gguf"] {
        let model = load(rel);
        let prompt = model.prompt_tokens(PROMPT, 0).unwrap();
        // A history the engine would never choose: ids 5, 6, 7, 8.
        let history = [5u32, 6, 7, 8];
        let mut obs = StepLogits::default();
        model.trace_forced(PROMPT, 4, 1.0, forced(&history), &mut obs).expect("trace");
        for (t, (_, logits)) in obs.steps.iter().enumerate() {
            // Step t's logits are those of one prefill of the prompt and the history's first t ids.
            let ids: Vec<u32> = prompt.iter().copied().chain(history[..t].iter().copied()).collect();
            let mut cache = model.new_cache(ids.len());
            let want = model.forward(&ids, &mut cache, &mut Taps::none(), false).unwrap();
            assert!(max_abs_diff(logits, &want) < 1e-4, "{rel} step {t}");
        }
        let argmax = |l: &[f32]| l.iter().enumerate().fold(0, |best, (i, v)| if *v > l[best] { i } else { best }) as u32;
        let Some(TapValue::Ids(generated)) = obs.taps.tensors.get("generated") else { panic!("generated tap") };
        assert_eq!(obs.steps.iter().map(|(_, l)| argmax(l)).collect::<Vec<_>>(), *generated, "{rel}");
    }
}

#[test]
fn a_forced_history_of_the_wrong_length_or_outside_the_vocabulary_is_refused() {
    let model = load("tiny-llama/model-f32.gguf");
    let mut rec = Recorder::default();
    assert!(matches!(model.trace_forced(PROMPT, 3, 1.0, forced(&[1, 2]), &mut rec), Err(Error::Config(_))));
    let vocab = model.config().vocab_size as u32;
    assert!(matches!(model.trace_forced(PROMPT, 2, 1.0, forced(&[1, vocab]), &mut rec), Err(Error::Config(_))));
}

#[test]
fn the_sampling_checkpoint_samples_the_given_logits_when_given_and_its_own_otherwise() {
    let model = load("tiny-llama/model-f32.gguf");
    let vocab = model.config().vocab_size;
    let sampled = |shared: Shared| {
        let mut rec = Recorder::default();
        model.trace_forced(PROMPT, 1, 1.0, shared, &mut rec).expect("trace");
        let (_, probs) = f32_tensor(&rec, "sampler_probs");
        let (_, last) = f32_tensor(&rec, "last_logits");
        (probs, last)
    };
    let (own, last) = sampled(Shared::default());
    // Each row is a distribution; the first sampler (no cut) is softmax(last / T) itself.
    for row in own.chunks_exact(vocab) {
        assert!((row.iter().map(|&p| f64::from(p)).sum::<f64>() - 1.0).abs() < 1e-5);
    }
    let t = f64::from(CATALOG_SAMPLERS[0].1.temperature);
    let max = last.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f64> = last.iter().map(|&v| ((f64::from(v) - f64::from(max)) / t).exp()).collect();
    let sum: f64 = e.iter().sum();
    assert!(own[..vocab].iter().zip(&e).all(|(&p, &q)| (f64::from(p) - q / sum).abs() < 1e-6));
    // Given logits (here: the prompt's logits reversed) are what gets sampled.
    let given: Vec<f32> = last.iter().rev().copied().collect();
    let (from_given, _) = sampled(Shared { sampler_logits: Some(&given), ..Default::default() });
    let max_at = |row: &[f32]| row.iter().enumerate().fold(0, |best, (i, &p)| if p > row[best] { i } else { best });
    assert_eq!(max_at(&from_given[..vocab]), vocab - 1 - max_at(&own[..vocab]));
    let mut rec = Recorder::default();
    let short = vec![0.0; vocab - 1];
    assert!(matches!(
        model.trace_forced(PROMPT, 1, 1.0, Shared { sampler_logits: Some(&short), ..Default::default() }, &mut rec),
        Err(Error::Config(_))
    ));
}

#[test]
fn layers_run_one_at_a_time_on_the_traced_inputs_repeat_the_traced_pass_bit_for_bit() {
    // forward_layer is the same block code the full pass runs: fed the traced `embed` and each
    // traced `block_out`, every layer's taps are the trace's own, exactly.
    for rel in ["tiny-llama/model-f32.gguf", "tiny-gpt2/model-f32.gguf"] {
        let model = load(rel);
        let rec = trace(&model, 1);
        for l in 0..model.config().n_layers {
            let input = if l == 0 { "embed".to_string() } else { format!("blk.{}.block_out", l - 1) };
            let mut one = Recorder::default();
            let out = model.forward_layer(l, &f32_tensor(&rec, &input).1, &mut Taps::new(&mut one)).unwrap();
            assert_eq!(out, f32_tensor(&rec, &format!("blk.{l}.block_out")).1, "{rel} layer {l}");
            assert!(one.tensors.len() >= 10, "{rel} layer {l}: {:?}", one.tensors.keys());
            for (key, value) in &one.tensors {
                assert!(key.starts_with(&format!("blk.{l}.")), "{key}");
                assert_eq!(Some(value), rec.tensors.get(key), "{rel} {key}");
            }
        }
    }
}

#[test]
fn a_layer_out_of_range_or_an_input_of_partial_rows_is_refused() {
    let model = load("tiny-llama/model-f32.gguf");
    let (n, d) = (model.config().n_layers, model.config().d_model);
    let err = model.forward_layer(n, &vec![0.0; d], &mut Taps::none()).unwrap_err().to_string();
    assert!(err.contains(&format!("layer {n} does not exist")), "{err}");
    for bad in [0, d + 1] {
        let err = model.forward_layer(0, &vec![0.0; bad], &mut Taps::none()).unwrap_err().to_string();
        assert!(err.contains("not whole rows"), "{err}");
    }
}

#[test]
fn a_prefill_in_chunks_shows_the_same_taps_as_one_batch() {
    // Chunks of 3 and token by token: the same keys and shapes as one batch, every value within
    // f32 rounding (attention sums grouped differently), the decode after it the same.
    for rel in ["tiny-llama/model-f32.gguf", "tiny-gpt2/model-f32.gguf"] {
        let mut model = load(rel);
        let one = trace(&model, 4);
        for prefill in [engine::Prefill::Chunks(3), engine::Prefill::Chunks(1)] {
            model.prefill = prefill;
            let chunked = trace(&model, 4);
            assert_eq!(one.tensors.keys().collect::<Vec<_>>(), chunked.tensors.keys().collect::<Vec<_>>(), "{rel} {prefill}");
            for (key, value) in &one.tensors {
                match (value, &chunked.tensors[key]) {
                    (TapValue::F32 { shape, data }, TapValue::F32 { shape: s, data: d }) => {
                        assert_eq!(shape, s, "{rel} {prefill} {key}");
                        let scale = data.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                        assert!(max_abs_diff(data, d) <= 1e-5 * scale, "{rel} {prefill} {key}: {}", max_abs_diff(data, d));
                    }
                    (a, b) => assert_eq!(a, b, "{rel} {prefill} {key}"),
                }
            }
        }
    }
}
