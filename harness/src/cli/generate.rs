//! `parity generate`: run the engine alone and stream its text to stdout.

use anyhow::{Context, Result};
use engine::tokenizer::TextStream;
use engine::{Model, SamplerConfig};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A .gguf file, or an HF folder (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate (stops earlier at end-of-sequence).
    #[arg(short = 'n', long, default_value_t = 32)]
    pub n: usize,
    /// 0 is greedy (ties go to the lowest token id).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    super::threads::init(args.threads)?;
    let model = Model::load(&args.model).with_context(|| format!("loading {}", args.model.display()))?;
    let sampling = SamplerConfig { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(args.prompt.as_bytes())?;
    // Tokens may split a UTF-8 character: TextStream holds bytes until they form whole characters.
    let mut text = TextStream::default();
    let started = std::time::Instant::now();
    let tokens = model.generate(&args.prompt, args.n, sampling, |id| {
        let _ = out.write_all(text.push(&model.tokenizer.token_bytes(id)).as_bytes());
        let _ = out.flush();
    })?;
    out.write_all(text.finish().as_bytes())?;
    writeln!(out)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!("[{} tokens in {secs:.2} s, {:.1} tokens/s including prefill]", tokens.len(), tokens.len() as f64 / secs.max(1e-9));
    Ok(())
}
