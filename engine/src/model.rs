//! A loaded model: weights, config and tokenizer, with prefill, decode, generation and a traced
//! run that shows every checkpoint to an observer.

use crate::attention::KvCache;
use crate::config::{Arch, Config, Mechanism, WeightFacts};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::gpt2::Gpt2;
use crate::llama::Llama;
use crate::loader::{HfStore, WeightStore};
use crate::ops::{argmax, softmax_in_place};
use crate::prefill::{ChunkJoin, Prefill};
use crate::sampling::{Sampler, SamplerConfig, CATALOG_SAMPLERS, SAMPLING_DRAWS};
use crate::tap::{decode_steps, DecodeStack, Observer, Tap, TapValue, Taps};
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

enum Net {
    Llama(Llama),
    Gpt2(Gpt2),
}

/// What every implementation of a case is given besides the prompt, so that their outputs can be
/// compared step for step (see [`Model::trace_forced`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Shared<'a> {
    /// The decode history to feed instead of the model's own choices.
    pub history: Option<&'a [u32]>,
    /// The logits the `sampling` checkpoint samples from instead of the model's last logits.
    pub sampler_logits: Option<&'a [f32]>,
}

/// See [`Model::product_cost`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProductCost {
    pub weight_bytes: usize,
    pub multiply_adds: usize,
}

pub struct Model {
    net: Net,
    pub tokenizer: Tokenizer,
    pub path: PathBuf,
    /// The model's own Jinja chat template: GGUF `tokenizer.chat_template`, or `chat_template`
    /// in an HF folder's `tokenizer_config.json`; rendering it is the server's business.
    pub chat_template: Option<String>,
    /// How the traced run ([`Model::trace_forced`]) prefills the prompt: one batch unless set.
    pub prefill: Prefill,
}

impl Model {
    /// Loads a `.gguf` file, or an HF folder with `config.json`, safetensors and `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Model> {
        if path.is_dir() {
            Self::load_hf(path)
        } else {
            Self::load_gguf(path)
        }
    }

    fn load_gguf(path: &Path) -> Result<Model> {
        let file = GgufFile::open(path)?;
        let vocab = file.tensor("token_embd.weight")?.rows();
        let config = Config::from_gguf(&file, vocab)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let chat_template = file.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
        Ok(Model { net: Net::build(config, &file)?, tokenizer, path: path.to_path_buf(), chat_template, prefill: Prefill::OneBatch })
    }

    fn load_hf(dir: &Path) -> Result<Model> {
        let config = Config::from_hf(&dir.join("config.json"))?;
        let store = HfStore::open(dir, config.arch)?;
        let tokenizer = Tokenizer::from_hf_json(&dir.join("tokenizer.json"))?;
        let chat_template = hf_chat_template(&dir.join("tokenizer_config.json"))?;
        Ok(Model { net: Net::build(config, &store)?, tokenizer, path: dir.to_path_buf(), chat_template, prefill: Prefill::OneBatch })
    }

    pub fn config(&self) -> &Config {
        match &self.net {
            Net::Llama(m) => &m.config,
            Net::Gpt2(m) => &m.config,
        }
    }

    /// The mechanisms this model uses (every one the engine implements; see [`Config::mechanisms`]).
    pub fn mechanisms(&self) -> Vec<Mechanism> {
        let weights = match &self.net {
            Net::Llama(m) => WeightFacts { tied_output: m.tied_output(), qkv_bias: m.qkv_bias() },
            Net::Gpt2(_) => WeightFacts { tied_output: true, qkv_bias: false },
        };
        self.config().mechanisms(weights)
    }

    /// Plants a deliberate bug (see [`Fault`](crate::fault::Fault)) for the harness's own tests
    /// and `parity run --plant`. Dequantization bugs are planted in the weights' bytes.
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&mut self, fault: crate::fault::Fault) {
        let matrices = match &mut self.net {
            Net::Llama(m) => {
                m.config.faults.push(fault);
                m.matrices_mut()
            }
            Net::Gpt2(m) => {
                m.config.faults.push(fault);
                m.matrices_mut()
            }
        };
        matrices.into_iter().for_each(|w| w.plant(fault));
    }

    /// What one token costs in matrix products: the bytes of every weight matrix it reads and
    /// the multiply-adds it does with them (attention over the cache comes on top).
    pub fn product_cost(&self) -> ProductCost {
        let products = match &self.net {
            Net::Llama(m) => m.products(),
            Net::Gpt2(m) => m.products(),
        };
        ProductCost {
            weight_bytes: products.iter().map(|w| w.bytes.len()).sum(),
            multiply_adds: products.iter().map(|w| w.shape.iter().product::<usize>()).sum(),
        }
    }

    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let c = self.config();
        KvCache::new(c.n_layers, c.n_kv_heads, c.head_dim, capacity)
    }

    /// Runs `tokens` after what the cache holds. Logits `[T, vocab]` when `all_logits`, else `[vocab]`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, taps: &mut Taps, all_logits: bool) -> Result<Vec<f32>> {
        let vocab = self.config().vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Config(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        if tokens.is_empty() || cache.len() + tokens.len() > cache.capacity() {
            return Err(Error::ContextOverflow { tokens: cache.len() + tokens.len(), generate: 0, context: cache.capacity() });
        }
        Ok(match &self.net {
            Net::Llama(m) => m.forward(tokens, cache, taps, all_logits),
            Net::Gpt2(m) => m.forward(tokens, cache, taps, all_logits),
        })
    }

    /// Layer `l` alone on `input` (`[T, d_model]` row-major, positions `0..T`), as the full
    /// forward pass runs it, with a fresh KV cache: its checkpoints shown to `taps`, its block
    /// output returned. What `parity replay` feeds a reference's own input to.
    pub fn forward_layer(&self, l: usize, input: &[f32], taps: &mut Taps) -> Result<Vec<f32>> {
        let c = self.config();
        if l >= c.n_layers {
            return Err(Error::Config(format!("layer {l} does not exist (the model has layers 0..{})", c.n_layers)));
        }
        if input.is_empty() || !input.len().is_multiple_of(c.d_model) {
            return Err(Error::Config(format!("a layer input of {} values is not whole rows of d_model {}", input.len(), c.d_model)));
        }
        let rows = input.len() / c.d_model;
        if rows > c.context {
            return Err(Error::ContextOverflow { tokens: rows, generate: 0, context: c.context });
        }
        let mut cache = self.new_cache(rows);
        let mut x = input.to_vec();
        match &self.net {
            Net::Llama(m) => m.forward_layer(l, &mut x, &mut cache, taps),
            Net::Gpt2(m) => m.forward_layer(l, &mut x, &mut cache, taps),
        }
        Ok(x)
    }

    /// Tokenizes `prompt` and checks that it and `n_generate` more tokens fit the context.
    pub fn prompt_tokens(&self, prompt: &str, n_generate: usize) -> Result<Vec<u32>> {
        let tokens = self.tokenizer.encode(prompt);
        self.check_fits(&tokens, n_generate)?;
        Ok(tokens)
    }

    /// Checks that `tokens` is not empty and that it and `n_generate` more tokens fit the context.
    pub fn check_fits(&self, tokens: &[u32], n_generate: usize) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let context = self.config().context;
        if tokens.len() + n_generate > context {
            return Err(Error::ContextOverflow { tokens: tokens.len(), generate: n_generate, context });
        }
        Ok(())
    }

    /// The traced run the harness compares: prefill of the prompt with every checkpoint shown to
    /// `observer`, then `n_generate` greedy tokens decoded one at a time through the KV cache.
    /// `probs` is `softmax(last_logits / temperature)`.
    pub fn trace(&self, prompt: &str, n_generate: usize, temperature: f32, observer: &mut dyn Observer) -> Result<()> {
        self.trace_forced(prompt, n_generate, temperature, Shared::default(), observer)
    }

    /// [`Model::trace`] on inputs every implementation of a case is given ([`Shared`]): with a
    /// history, step `t`'s logits come after the prompt and `history[..t]` (teacher forcing), and
    /// `Generated` holds the greedy choice at each step given that history, so implementations fed
    /// the same history stay aligned after a token flip; with sampler logits, the `sampling`
    /// checkpoint samples from those instead of the model's own last logits.
    pub fn trace_forced(&self, prompt: &str, n_generate: usize, temperature: f32, shared: Shared, observer: &mut dyn Observer) -> Result<()> {
        let vocab = self.config().vocab_size;
        let history = shared.history;
        if let Some(l) = shared.sampler_logits.filter(|l| l.len() != vocab) {
            return Err(Error::Config(format!("sampler logits of {} values for a vocabulary of {vocab}", l.len())));
        }
        if let Some(h) = history {
            if h.len() != n_generate {
                return Err(Error::Config(format!("a forced history of {} tokens for {n_generate} generated steps", h.len())));
            }
            if let Some(&bad) = h.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::Config(format!("forced token id {bad} is outside the vocabulary of {vocab}")));
            }
        }
        let tokens = self.prompt_tokens(prompt, n_generate)?;
        let mut taps = Taps::new(observer);
        taps.record(Tap::Tokens, None, || TapValue::Ids(tokens.clone()));

        let mut cache = self.new_cache(tokens.len() + n_generate);
        let logits = self.prefill_traced(&tokens, &mut cache, &mut taps)?;
        taps.record(Tap::Logits, None, || TapValue::f32(&[tokens.len(), vocab], logits.clone()));
        let last = &logits[(tokens.len() - 1) * vocab..];
        taps.record(Tap::LastLogits, None, || TapValue::f32(&[vocab], last.to_vec()));
        taps.record(Tap::Argmax, None, || TapValue::Id(argmax(last) as u32));
        taps.record(Tap::Probs, None, || {
            let mut p: Vec<f32> = last.iter().map(|v| v / temperature).collect();
            softmax_in_place(&mut p);
            TapValue::f32(&[vocab], p)
        });
        self.trace_sampling(shared.sampler_logits.unwrap_or(last), &mut taps);

        // n greedy tokens, each shown with the logits it was chosen from; the chosen decode
        // steps' layer taps stacked into the decode_layers tensors.
        let mut sampler = Sampler::new(SamplerConfig::default());
        let mut step = 0;
        let mut rows = Vec::new();
        let context = tokens.len() + n_generate.saturating_sub(1);
        let mut stack = DecodeStack::new(decode_steps(n_generate), self.config().n_layers, self.decode_tap_shapes(context));
        let generated = self.decode(last, n_generate, history, &mut cache, &mut sampler, Some(&mut stack), |_, logits| {
            taps.step_logits(step, logits);
            if taps.active() {
                rows.extend_from_slice(logits);
            }
            step += 1;
            true
        })?;
        stack.finish(&mut taps);
        taps.record(Tap::StepLogits, None, || TapValue::f32(&[generated.len(), vocab], rows));
        taps.record(Tap::Generated, None, || TapValue::Ids(generated));
        Ok(())
    }

    /// The prompt through the cache as [`Model::prefill`] says, every position's logits returned
    /// and the taps shown to `taps` in the one-batch layout whatever the chunks.
    fn prefill_traced(&self, tokens: &[u32], cache: &mut KvCache, taps: &mut Taps) -> Result<Vec<f32>> {
        let Prefill::Chunks(size) = self.prefill else { return self.forward(tokens, cache, taps, true) };
        let mut join = ChunkJoin::default();
        let mut logits = Vec::with_capacity(tokens.len() * self.config().vocab_size);
        for chunk in tokens.chunks(size.max(1)) {
            let mut chunk_taps = if taps.active() { Taps::new(&mut join) } else { Taps::none() };
            logits.extend(self.forward(chunk, cache, &mut chunk_taps, true)?);
        }
        join.finish(tokens.len(), taps);
        Ok(logits)
    }

    /// The `sampling` checkpoint: each catalog sampler's distribution over `logits`, and its first
    /// draws from the shared noise stream.
    fn trace_sampling(&self, logits: &[f32], taps: &mut Taps) {
        let samplers = || CATALOG_SAMPLERS.iter().map(|(_, config)| self.sampler(config.clone()));
        let distributions: Vec<Vec<f32>> = if taps.active() { samplers().map(|s| s.distribution(logits)).collect() } else { Vec::new() };
        taps.record(Tap::SamplerProbs, None, || TapValue::f32(&[CATALOG_SAMPLERS.len(), logits.len()], distributions.concat()));
        taps.record(Tap::Sampled, None, || {
            let ids = samplers().zip(&distributions).flat_map(|(mut s, probs)| (0..SAMPLING_DRAWS).map(move |_| s.draw(probs))).collect();
            TapValue::IdRows { rows: CATALOG_SAMPLERS.len(), ids }
        });
    }

    /// The per-step shape of each `decode_layers` tensor this model has (after the leading S
    /// axis), in a context of `context` positions (T+N-1).
    fn decode_tap_shapes(&self, context: usize) -> Vec<(Tap, Vec<usize>)> {
        let c = self.config();
        let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let rope = c.arch.is_llama_block();
        let qk_norm = c.arch == Arch::Qwen3;
        let post_norms = c.arch == Arch::Gemma2;
        let shapes = [
            (Tap::DecAttnNorm, vec![c.d_model]),
            (Tap::DecQ, vec![q]),
            (Tap::DecK, vec![kv]),
            (Tap::DecV, vec![kv]),
            (Tap::DecQNorm, if qk_norm { vec![q] } else { vec![] }),
            (Tap::DecKNorm, if qk_norm { vec![kv] } else { vec![] }),
            (Tap::DecQRope, if rope { vec![q] } else { vec![] }),
            (Tap::DecKRope, if rope { vec![kv] } else { vec![] }),
            (Tap::DecKCache, vec![c.n_kv_heads, context, c.head_dim]),
            (Tap::DecVCache, vec![c.n_kv_heads, context, c.head_dim]),
            (Tap::DecAttnProbs, vec![c.n_heads, context]),
            (Tap::DecAttnOut, vec![c.d_model]),
            (Tap::DecPostAttnNorm, if post_norms { vec![c.d_model] } else { vec![] }),
            (Tap::DecFfnNorm, vec![c.d_model]),
            (Tap::DecFfnOut, vec![c.d_model]),
            (Tap::DecPostFfnNorm, if post_norms { vec![c.d_model] } else { vec![] }),
            (Tap::DecBlockOut, vec![c.d_model]),
        ];
        shapes.into_iter().filter(|(_, shape)| !shape.is_empty()).collect()
    }

    /// Samples up to `n` tokens, decoding each through the cache; `on_token` sees each one with
    /// the logits it was chosen from, and returns false to stop early. With `history`, step `i`
    /// feeds `history[i]` to the cache instead of the token it chose. `stack` observes the
    /// forward passes of the decode steps it wants (step t gives the logits of token t).
    #[allow(clippy::too_many_arguments)]
    fn decode(
        &self,
        last: &[f32],
        n: usize,
        history: Option<&[u32]>,
        cache: &mut KvCache,
        sampler: &mut Sampler,
        mut stack: Option<&mut DecodeStack>,
        mut on_token: impl FnMut(u32, &[f32]) -> bool,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(n);
        let mut logits = last.to_vec();
        for i in 0..n {
            let next = sampler.sample(&logits);
            out.push(next);
            if !on_token(next, &logits) {
                break;
            }
            if i + 1 < n {
                let fed = history.and_then(|h| h.get(i).copied()).unwrap_or(next);
                let mut taps = match stack.as_deref_mut().filter(|s| s.wants(i + 1)) {
                    Some(observer) => Taps::new(observer),
                    None => Taps::none(),
                };
                logits = self.forward(&[fed], cache, &mut taps, false)?;
            }
        }
        Ok(out)
    }

    /// A sampler for this model (with the model's planted sampler bugs, if any).
    pub fn sampler(&self, config: SamplerConfig) -> Sampler {
        Sampler::new(config).with_faults(self.config().sampler_faults())
    }

    /// Generates up to `n` tokens after `prompt`, handing each to `on_token` as it is chosen;
    /// stops early at the end-of-sequence token.
    pub fn generate(&self, prompt: &str, n: usize, sampling: SamplerConfig, mut on_token: impl FnMut(u32)) -> Result<Vec<u32>> {
        let tokens = self.prompt_tokens(prompt, n)?;
        self.generate_from(&tokens, n, sampling, |t| {
            on_token(t);
            true
        })
    }

    /// [`Model::generate`] after prompt ids already tokenized (e.g. a rendered chat template with
    /// its special tokens); `on_token` returns false to stop after that token (a server's client
    /// went away, a stop sequence was met).
    pub fn generate_from(&self, tokens: &[u32], n: usize, sampling: SamplerConfig, mut on_token: impl FnMut(u32) -> bool) -> Result<Vec<u32>> {
        self.check_fits(tokens, n)?;
        let mut cache = self.new_cache(tokens.len() + n);
        let last = self.forward(tokens, &mut cache, &mut Taps::none(), false)?;
        let eos = self.tokenizer.eos_id();
        let mut sampler = self.sampler(sampling);
        self.decode(&last, n, None, &mut cache, &mut sampler, None, |t, _| on_token(t) && Some(t) != eos)
    }
}

/// `chat_template` from an HF `tokenizer_config.json`, if the file and the key are there.
fn hf_chat_template(path: &Path) -> Result<Option<String>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(None) };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Format { path: path.to_path_buf(), format: "JSON", reason: e.to_string() })?;
    Ok(json.get("chat_template").and_then(|v| v.as_str()).map(str::to_string))
}

impl Net {
    fn build(config: Config, store: &dyn WeightStore) -> Result<Net> {
        Ok(match config.arch {
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma2 | Arch::Phi3 => Net::Llama(Llama::load(config, store)?),
            Arch::Gpt2 => Net::Gpt2(Gpt2::load(config, store)?),
        })
    }
}
