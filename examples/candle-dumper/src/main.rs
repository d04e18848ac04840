//! A parity dumper for candle (huggingface/candle), an engine that is not one of parity's
//! references: it puts candle under test by the dump contract of docs/subjects.md.
//!
//!     candle-dumper --model HF_FOLDER --prompt=TEXT --n-generate N --temperature T --threads K \
//!         [--force-tokens=ID,...] [--sampler-logits FILE.npy] --out DIR
//!
//! Llama models in HF safetensors only (a GGUF file or another architecture exits 2). Two forward
//! passes run, and the manifest's `[provenance]` says which computed what:
//!
//! - candle-transformers' own Llama (`own`): `last_logits`, `argmax`, and the decode path's
//!   `step_logits` and `generated`, one token at a time through its own KV cache. It returns the
//!   last position's logits only, so it can give nothing else.
//! - a Llama forward written here with candle's ops (forward.rs, `kernels`): the taps inside the
//!   blocks, `logits` at every position, and the decode-step taps through our own cache.
//! - `embeddings` (`kernels`): candle has no tokenizer; the ids come from parity's engine
//!   tokenizer (engine::tokenizer) and the row lookup is candle's.
//! - `probs` (`kernels`): candle's softmax of candle's own last logits, divided by T here.
//! - `sampling` (`ours`): candle's LogitsProcessor draws a token but exposes no distribution, so
//!   the distribution and draws are parity's engine sampler (engine::sampling) on the given logits.
//!
//! Exit 0 when dumped, 2 on bad input, 3 when candle failed; the last stderr line says why.

mod dump;
mod forward;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama as candle_llama;
use dump::{quote, Dump};
use forward::{argmax, pad_axis, Cache, Net, Sizes, Taps};
use std::fmt::Write as _;
use std::path::PathBuf;

/// The candle release this dumper is built against (Cargo.toml pins it exactly).
const CANDLE: &str = "0.11.1";

/// Whose code computed each catalog checkpoint (checkpoints/provenance.toml's format).
const PROVENANCE: &[(&str, &str, &str)] = &[
    ("embeddings", "kernels", "token ids from parity's engine tokenizer (candle has none); the embedding row lookup is candle's index_select"),
    ("norm", "kernels", "a Llama forward written in this example on candle's ops (rms_norm); candle-transformers' Llama exposes no intermediates"),
    ("qkv", "kernels", "a Llama forward written in this example on candle's ops (matmul)"),
    ("rope_kv_cache", "kernels", "a Llama forward written in this example on candle's ops (rotary_emb::rope, cat); the cache is ours"),
    ("attn_probs", "kernels", "a Llama forward written in this example on candle's ops (matmul, softmax_last_dim)"),
    ("attn_out", "kernels", "a Llama forward written in this example on candle's ops (matmul)"),
    ("ffn_out", "kernels", "a Llama forward written in this example on candle's ops (rms_norm, silu, matmul)"),
    ("block_out", "kernels", "a Llama forward written in this example on candle's ops (add)"),
    ("logits", "kernels", "every position's logits from the forward written here; candle-transformers' Llama returns the last position's only"),
    ("last_logits", "own", ""),
    ("argmax", "own", ""),
    ("probs", "kernels", "candle's softmax_last_dim of candle-transformers' last logits over the temperature, the division ours"),
    ("decode_layers", "kernels", "the decode steps of the forward written here, through its own KV cache"),
    ("generated", "own", ""),
    ("step_logits", "own", ""),
    ("sampling", "ours", "candle's LogitsProcessor exposes no distribution: parity's engine sampler (engine::sampling) on the given logits"),
];

const EXIT_USAGE: i32 = 2;
const EXIT_ENGINE: i32 = 3;

struct Failure {
    code: i32,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: EXIT_USAGE, message: message.into() }
}

impl From<candle_core::Error> for Failure {
    fn from(e: candle_core::Error) -> Failure {
        Failure { code: EXIT_ENGINE, message: format!("candle: {e}") }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure { code: EXIT_ENGINE, message: format!("writing the dump: {e}") }
    }
}

struct Args {
    model: PathBuf,
    prompt: String,
    n_generate: usize,
    temperature: f32,
    threads: usize,
    force_tokens: Option<Vec<u32>>,
    sampler_logits: Option<PathBuf>,
    out: PathBuf,
    command: String,
}

fn parse_args(argv: &[String]) -> Result<Args, Failure> {
    let mut opts = std::collections::BTreeMap::new();
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        let Some(name) = arg.strip_prefix("--") else { return Err(usage(format!("unexpected argument {arg:?}"))) };
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => {
                i += 1;
                (name.to_string(), argv.get(i).cloned().ok_or_else(|| usage(format!("--{name} needs a value")))?)
            }
        };
        opts.insert(name, value);
        i += 1;
    }
    let mut take = |name: &str| opts.remove(name);
    let need = |v: Option<String>, name: &str| v.ok_or_else(|| usage(format!("--{name} is required")));
    let number = |v: String, name: &str| v.parse::<f64>().map_err(|_| usage(format!("--{name} {v:?} is not a number")));
    let args = Args {
        model: PathBuf::from(need(take("model"), "model")?),
        prompt: need(take("prompt"), "prompt")?,
        n_generate: number(need(take("n-generate"), "n-generate")?, "n-generate")? as usize,
        temperature: number(need(take("temperature"), "temperature")?, "temperature")? as f32,
        threads: take("threads").map(|t| number(t, "threads")).transpose()?.unwrap_or(2.0).max(1.0) as usize,
        force_tokens: take("force-tokens")
            .map(|ids| {
                ids.split(',').map(|id| id.trim().parse::<u32>().map_err(|_| usage(format!("--force-tokens: {id:?} is not a token id")))).collect()
            })
            .transpose()?,
        sampler_logits: take("sampler-logits").map(PathBuf::from),
        out: PathBuf::from(need(take("out"), "out")?),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    if let Some(extra) = opts.keys().next() {
        return Err(usage(format!("unknown option --{extra}")));
    }
    if args.temperature <= 0.0 {
        return Err(usage("--temperature must be above 0"));
    }
    Ok(args)
}

/// The decode steps whose layer taps are dumped: the distinct steps among 1, N/2 and N-1.
fn decode_steps(n: usize) -> Vec<usize> {
    if n < 2 {
        return Vec::new();
    }
    let mut steps = vec![1, n / 2, n - 1];
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// The per-layer taps, each also dumped for the chosen decode steps as `dec_NAME`.
const LAYER_TAPS: [&str; 13] =
    ["attn_norm", "q", "k", "v", "q_rope", "k_rope", "k_cache", "v_cache", "attn_probs", "attn_out", "ffn_norm", "ffn_out", "block_out"];

fn run(args: &Args) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    if !args.model.join("config.json").is_file() {
        return Err(usage(format!(
            "{}: not an HF model folder (config.json); this candle example reads Llama safetensors only",
            args.model.display()
        )));
    }
    let config_text = std::fs::read_to_string(args.model.join("config.json"))?;
    let config: serde_json::Value = serde_json::from_str(&config_text).map_err(|e| usage(format!("config.json: {e}")))?;
    if config["model_type"] != "llama" {
        return Err(usage(format!("model_type {} : this candle example covers Llama only", config["model_type"])));
    }
    let sizes: Sizes = serde_json::from_value(config.clone()).map_err(|e| usage(format!("config.json: {e}")))?;
    let tokenizer =
        engine::tokenizer::Tokenizer::from_hf_json(&args.model.join("tokenizer.json")).map_err(|e| usage(format!("tokenizer.json: {e}")))?;
    let tokens = tokenizer.encode(&args.prompt);
    if tokens.is_empty() {
        return Err(usage("the prompt tokenizes to nothing"));
    }

    let device = Device::Cpu;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.model)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    // SAFETY: the files are mapped read-only for the life of the VarBuilder; nothing here writes them.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &device)? };
    let net = Net::load(&vb, sizes.clone())?;
    let llama_config: candle_llama::LlamaConfig =
        serde_json::from_value(config).map_err(|e| usage(format!("config.json for candle-transformers: {e}")))?;
    let llama_config = llama_config.into_config(false);
    let own = candle_llama::Llama::load(vb, &llama_config)?;

    let (t, n) = (tokens.len(), args.n_generate);
    let (h, kv, hd, v_size) = (sizes.num_attention_heads, sizes.kv_heads(), sizes.head_dim(), sizes.vocab_size);
    let mut dump = Dump::new(&args.out)?;

    // The prompt through the forward written here, every tap copied out.
    let mut cache: Cache = vec![None; sizes.num_hidden_layers];
    let mut taps = Taps::new();
    let logits = net.forward(&tokens, 0, &mut cache, Some(&mut taps))?;
    dump.put("tokens", &Tensor::new(tokens.as_slice(), &device)?, true)?;
    for (key, tensor) in &taps {
        dump.put(key, tensor, false)?;
    }
    dump.put("logits", &logits, false)?;

    // candle-transformers' own Llama: the last logits, then one token at a time through its cache.
    let mut own_cache = candle_llama::Cache::new(true, DType::F32, &llama_config, &device)?;
    let last = own.forward(&Tensor::new(tokens.as_slice(), &device)?.unsqueeze(0)?, 0, &mut own_cache)?.squeeze(0)?;
    dump.put("last_logits", &last, false)?;
    dump.put("argmax", &Tensor::new(argmax(&last)? as i64, &device)?, true)?;
    dump.put("probs", &candle_nn::ops::softmax_last_dim(&(&last / f64::from(args.temperature))?)?, false)?;

    let steps = decode_steps(n);
    let width = t + n.saturating_sub(1);
    let mut step_logits = vec![last.clone()];
    let mut generated = vec![argmax(&last)?];
    let mut decode_taps: Vec<Taps> = Vec::new();
    for step in 1..n {
        let token = match &args.force_tokens {
            Some(ids) => *ids.get(step - 1).ok_or_else(|| usage(format!("--force-tokens has {} ids, {n} needed", ids.len())))?,
            None => generated[step - 1],
        };
        let pos = t + step - 1;
        let row = own.forward(&Tensor::new(&[token], &device)?.unsqueeze(0)?, pos, &mut own_cache)?.squeeze(0)?;
        generated.push(argmax(&row)?);
        step_logits.push(row);
        // The forward written here takes the same token, tapped at the chosen steps.
        let mut step_taps = Taps::new();
        net.forward(&[token], pos, &mut cache, steps.contains(&step).then_some(&mut step_taps))?;
        if steps.contains(&step) {
            decode_taps.push(step_taps);
        }
    }
    if n > 0 {
        dump.put("step_logits", &Tensor::stack(&step_logits, 0)?, false)?;
    } else {
        dump.put("step_logits", &Tensor::zeros((0, v_size), DType::F32, &device)?, false)?;
    }
    let generated: Vec<u32> = generated.into_iter().take(n).collect();
    dump.put("generated", &Tensor::new(generated.as_slice(), &device)?, true)?;
    for l in 0..sizes.num_hidden_layers {
        for name in LAYER_TAPS {
            let key = format!("blk.{l}.{name}");
            let rows = decode_taps
                .iter()
                .map(|taps| {
                    let t = &taps[&key];
                    match name {
                        "k_cache" | "v_cache" => pad_axis(t, 1, width),     // [KV, T+t, hd]
                        "attn_probs" => pad_axis(&t.squeeze(1)?, 1, width), // [H, T+t]
                        _ => t.squeeze(0),                                  // [1, x] -> [x]
                    }
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let stacked = if rows.is_empty() {
                let shape: Vec<usize> = match name {
                    "k_cache" | "v_cache" => vec![0, kv, width, hd],
                    "attn_probs" => vec![0, h, width],
                    "q" | "q_rope" => vec![0, h * hd],
                    "k" | "v" | "k_rope" => vec![0, kv * hd],
                    _ => vec![0, sizes.hidden_size],
                };
                Tensor::zeros(shape, DType::F32, &device)?
            } else {
                Tensor::stack(&rows, 0)?
            };
            dump.put(&format!("blk.{l}.dec_{name}"), &stacked, false)?;
        }
    }

    // The sampling checkpoint: parity's engine sampler (see PROVENANCE) on the given logits.
    let sampler_input: Vec<f32> = match &args.sampler_logits {
        Some(path) => Tensor::read_npy(path)
            .map_err(|e| usage(format!("--sampler-logits {}: {e}", path.display())))?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?,
        None => last.to_vec1()?,
    };
    if sampler_input.len() != v_size {
        return Err(usage(format!("--sampler-logits has {} logits; the model's vocabulary is {v_size}", sampler_input.len())));
    }
    let (mut rows, mut draws) = (Vec::new(), Vec::new());
    for (_, config) in engine::sampling::CATALOG_SAMPLERS {
        let mut sampler = engine::sampling::Sampler::new(config.clone());
        let probs = sampler.distribution(&sampler_input);
        draws.extend((0..engine::sampling::SAMPLING_DRAWS).map(|_| sampler.draw(&probs)));
        rows.extend(probs);
    }
    let count = engine::sampling::CATALOG_SAMPLERS.len();
    dump.put("sampler_probs", &Tensor::from_vec(rows, (count, v_size), &device)?, false)?;
    dump.put("sampled", &Tensor::from_vec(draws, (count, engine::sampling::SAMPLING_DRAWS), &device)?, true)?;

    let mut head = String::new();
    let ids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let _ = writeln!(head, "reference = \"candle\"");
    let _ = writeln!(head, "version = {}", quote(&format!("candle {CANDLE}, candle-transformers llama; taps from a Llama forward on candle ops")));
    let _ = writeln!(head, "arch = \"llama\"\nn_layers = {}", sizes.num_hidden_layers);
    let _ = writeln!(head, "model = {}\nmodel_sha256 = \"{}\"", quote(&args.model.display().to_string()), dump::model_sha256(&args.model)?);
    let _ = writeln!(head, "prompt = {}\ntoken_ids = [{}]", quote(&args.prompt), ids(&tokens));
    let _ = writeln!(head, "dtype = \"float32\"\nthreads = {}\nn_generate = {n}\ntemperature = {:?}", args.threads, f64::from(args.temperature));
    let _ = writeln!(head, "wall_time_s = {:.3}\ncommand = {}", started.elapsed().as_secs_f64(), quote(&args.command));
    if let Some(forced) = &args.force_tokens {
        let _ = writeln!(head, "force_tokens = [{}]", ids(forced));
    }
    let _ = writeln!(head, "sampler_logits_sha256 = \"{}\"", dump::f32_sha256(&sampler_input));
    head.push_str("\n[provenance]\n");
    for (checkpoint, kind, reason) in PROVENANCE {
        if reason.is_empty() {
            let _ = writeln!(head, "{checkpoint} = \"{kind}\"");
        } else {
            let _ = writeln!(head, "{checkpoint} = {{ kind = \"{kind}\", reason = {} }}", quote(reason));
        }
    }
    dump.finish(&head)?;
    eprintln!("candle: {t} prompt tokens, generated {:?}", tokenizer.decode(&generated));
    Ok(())
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&argv).and_then(|args| {
        // candle's CPU kernels size their thread pool from this, read on first use.
        std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
        run(&args)
    });
    if let Err(f) = result {
        eprintln!("candle: {}", f.message);
        std::process::exit(f.code);
    }
}
