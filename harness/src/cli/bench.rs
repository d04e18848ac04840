//! `parity bench`: the engine's prefill and decode speed beside llama.cpp's, on the same file, the
//! same token ids and the same thread counts, measured in one run.

use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use engine::{Model, Taps};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// GGUF files to measure.
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// Thread counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Runs per measurement (the median is reported, with min and max).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Skip llama.cpp (engine figures only).
    #[arg(long)]
    pub no_reference: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Seconds per run of one phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Opening the model until it can run (the engine maps the file; llama.cpp loads it).
    pub load_s: f64,
    pub prefill_s: Vec<f64>,
    pub decode_s: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub model: String,
    pub threads: usize,
    pub engine: Timings,
    pub llamacpp: Option<Timings>,
    pub llamacpp_version: Option<String>,
}

pub fn run(args: BenchArgs, dumpers_python: &Path, root: &Path) -> Result<()> {
    if args.runs == 0 || args.prompt_tokens == 0 || args.gen_tokens == 0 {
        bail!("--runs, --prompt-tokens and --gen-tokens must be at least 1");
    }
    let mut rows = Vec::new();
    for path in &args.models {
        let start = Instant::now();
        let model = Model::load(path).with_context(|| format!("loading {}", path.display()))?;
        let load_s = start.elapsed().as_secs_f64();
        let ids = token_ids(model.config().vocab_size, args.prompt_tokens + args.gen_tokens);
        for &threads in &args.threads {
            let engine = Timings { load_s, ..measure_engine(&model, &ids, args.prompt_tokens, threads, args.runs)? };
            let (llamacpp, version) = match args.no_reference {
                true => (None, None),
                false => {
                    let (t, v) = measure_llamacpp(dumpers_python, root, path, &ids, args.prompt_tokens, threads, args.runs)?;
                    (Some(t), Some(v))
                }
            };
            let row = Row { model: path.display().to_string(), threads, engine, llamacpp, llamacpp_version: version };
            eprintln!("bench: {} threads {} done", row.model, threads);
            rows.push(row);
        }
    }
    print_table(&rows, args.prompt_tokens, args.gen_tokens);
    if let Some(out) = &args.json {
        std::fs::write(out, serde_json::to_string_pretty(&rows)?).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// The same pseudo-random ids every run and for both engines (a fixed SplitMix64 stream).
fn token_ids(vocab: usize, n: usize) -> Vec<u32> {
    let mut state = 0x5eed_u64;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) % vocab as u64) as u32
        })
        .collect()
}

fn measure_engine(model: &Model, ids: &[u32], n_prompt: usize, threads: usize, runs: usize) -> Result<Timings> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().context("building the thread pool")?;
    pool.install(|| {
        let mut t = Timings::default();
        for _ in 0..runs {
            let mut cache = model.new_cache(ids.len());
            let start = Instant::now();
            model.forward(&ids[..n_prompt], &mut cache, &mut Taps::none(), false)?;
            t.prefill_s.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            for id in &ids[n_prompt..] {
                model.forward(std::slice::from_ref(id), &mut cache, &mut Taps::none(), false)?;
            }
            t.decode_s.push(start.elapsed().as_secs_f64());
        }
        Ok(t)
    })
}

fn measure_llamacpp(
    python: &Path,
    root: &Path,
    model: &Path,
    ids: &[u32],
    n_prompt: usize,
    threads: usize,
    runs: usize,
) -> Result<(Timings, String)> {
    if !python.exists() {
        bail!("llama.cpp is needed for the comparison but {} is missing: run scripts/setup-references.sh (or pass --no-reference)", python.display());
    }
    let tokens: Vec<String> = ids.iter().map(u32::to_string).collect();
    let out = Command::new(python)
        .arg(root.join("references/llamacpp/bench.py"))
        .arg("--model")
        .arg(model)
        .args(["--threads", &threads.to_string(), "--runs", &runs.to_string()])
        .args(["--prompt-tokens", &n_prompt.to_string(), "--tokens", &tokens.join(",")])
        .output()
        .context("running references/llamacpp/bench.py")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("llama.cpp bench failed: {}", err.lines().last().unwrap_or("no stderr"));
    }
    #[derive(Deserialize)]
    struct Out {
        version: String,
        load_s: f64,
        prefill_s: Vec<f64>,
        decode_s: Vec<f64>,
    }
    let parsed: Out = serde_json::from_slice(&out.stdout).context("reading llama.cpp bench output")?;
    Ok((Timings { load_s: parsed.load_s, prefill_s: parsed.prefill_s, decode_s: parsed.decode_s }, parsed.version))
}

/// Median, min and max of tokens per second over the runs.
fn rates(n_tokens: usize, seconds: &[f64]) -> (f64, f64, f64) {
    let mut r: Vec<f64> = seconds.iter().map(|s| n_tokens as f64 / s).collect();
    r.sort_by(f64::total_cmp);
    let median = if r.len() % 2 == 1 { r[r.len() / 2] } else { (r[r.len() / 2 - 1] + r[r.len() / 2]) / 2.0 };
    (median, r[0], r[r.len() - 1])
}

fn print_table(rows: &[Row], n_prompt: usize, n_gen: usize) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "model".to_string(),
        "threads".into(),
        format!("engine pp{n_prompt} tok/s"),
        format!("llama.cpp pp{n_prompt}"),
        "ratio".into(),
        format!("engine tg{n_gen} tok/s"),
        format!("llama.cpp tg{n_gen}"),
        "ratio".into(),
    ]);
    let fmt = |(m, lo, hi): (f64, f64, f64)| format!("{m:.1} ({lo:.1}-{hi:.1})");
    for row in rows {
        let name = Path::new(&row.model).file_name().map_or(row.model.clone(), |f| f.to_string_lossy().into_owned());
        let (ep, ed) = (rates(n_prompt, &row.engine.prefill_s), rates(n_gen, &row.engine.decode_s));
        let (lp, ld) = match &row.llamacpp {
            Some(t) => (Some(rates(n_prompt, &t.prefill_s)), Some(rates(n_gen, &t.decode_s))),
            None => (None, None),
        };
        let ratio = |e: (f64, f64, f64), l: Option<(f64, f64, f64)>| l.map_or("-".into(), |l| format!("{:.2}x", e.0 / l.0));
        table.add_row(vec![
            name,
            row.threads.to_string(),
            fmt(ep),
            lp.map_or("-".into(), fmt),
            ratio(ep, lp),
            fmt(ed),
            ld.map_or("-".into(), fmt),
            ratio(ed, ld),
        ]);
    }
    println!("{table}");
    println!("median (min-max) over the runs; ratio = engine / llama.cpp medians, same file, ids and threads");
    for row in rows.iter().filter(|r| r.threads == rows[0].threads) {
        let llamacpp = row.llamacpp.as_ref().map_or(String::new(), |t| format!(", llama.cpp {:.2} s", t.load_s));
        println!("load {}: engine {:.2} s{llamacpp}", row.model, row.engine.load_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_report_the_median_and_range_of_tokens_per_second() {
        // 10 tokens in 1 s, 2 s and 0.5 s: 10, 5 and 20 tok/s.
        assert_eq!(rates(10, &[1.0, 2.0, 0.5]), (10.0, 5.0, 20.0));
        assert_eq!(rates(10, &[1.0, 2.0]), (7.5, 5.0, 10.0));
    }

    #[test]
    fn bench_ids_are_fixed_and_inside_the_vocabulary() {
        let a = token_ids(100, 50);
        assert_eq!(a, token_ids(100, 50));
        assert!(a.iter().all(|&t| t < 100));
    }
}
