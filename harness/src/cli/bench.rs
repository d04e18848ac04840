//! `parity bench`: the engine's prefill and decode speed beside llama.cpp's, on the same file, the
//! same token ids and the same thread counts, measured in one run; and both against what the
//! machine allows, measured in the same run: memory bandwidth for decode (every weight is read once
//! per token) and the cores' FMA peak for prefill.

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
    pub cost: Cost,
    pub host: Host,
}

/// What a token costs the model, counted from its weights and shape.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Cost {
    /// Bytes a decoded token reads: every weight matrix once, and the KV cache at the mean
    /// position of the generation.
    pub decode_bytes: f64,
    /// Floating-point operations of a prompt token: two per weight multiply-add, and attention's
    /// scores and weighted sum over the mean prompt position.
    pub prefill_flops: f64,
}

/// The machine's limits with this many threads, measured by [`measure_host`].
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Host {
    /// Reading a buffer far larger than the caches, summed: bytes per second.
    pub read_bandwidth: f64,
    /// Independent FMA chains of the widest vectors the CPU has (16 lanes with AVX-512, else 8) on
    /// every thread: flops per second (None without AVX2+FMA).
    pub fma_peak: Option<f64>,
    /// The lanes of those chains' vectors.
    pub fma_lanes: usize,
    /// The engine's kernels on this CPU (engine::kernels::isa).
    pub engine_kernels: &'static str,
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
        let cost = cost_of(&model, args.prompt_tokens, args.gen_tokens);
        for &threads in &args.threads {
            let host = measure_host(threads)?;
            let engine = Timings { load_s, ..measure_engine(&model, &ids, args.prompt_tokens, threads, args.runs)? };
            let (llamacpp, version) = match args.no_reference {
                true => (None, None),
                false => {
                    let (t, v) = measure_llamacpp(dumpers_python, root, path, &ids, args.prompt_tokens, threads, args.runs)?;
                    (Some(t), Some(v))
                }
            };
            let row = Row { model: path.display().to_string(), threads, engine, llamacpp, llamacpp_version: version, cost, host };
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

fn cost_of(model: &Model, n_prompt: usize, n_gen: usize) -> Cost {
    let (c, products) = (model.config(), model.product_cost());
    let kv_per_position = (2 * c.n_layers * c.n_kv_heads * c.head_dim * std::mem::size_of::<f32>()) as f64;
    let decode_position = n_prompt as f64 + n_gen as f64 / 2.0;
    // Scores (q.k) and the weighted sum of V: two multiply-adds per head dimension and position.
    let attention_flops = |positions: f64| 4.0 * (c.n_layers * c.n_heads * c.head_dim) as f64 * positions;
    Cost {
        decode_bytes: products.weight_bytes as f64 + kv_per_position * decode_position,
        prefill_flops: 2.0 * products.multiply_adds as f64 + attention_flops(n_prompt as f64 / 2.0),
    }
}

/// The machine's read bandwidth and FMA peak with `threads` threads, best of three each.
fn measure_host(threads: usize) -> Result<Host> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().context("building the thread pool")?;
    // 1 GiB, far past any cache; written once so every page is really there.
    let buffer: Vec<f32> = (0..(1usize << 28)).map(|i| (i & 0xff) as f32).collect();
    let chunk = buffer.len().div_ceil(threads);
    let best = |f: &dyn Fn() -> f64| (0..3).map(|_| f()).fold(0.0, f64::max);
    let read_bandwidth = pool.install(|| {
        use rayon::prelude::*;
        best(&|| {
            let start = Instant::now();
            let sum: f32 = buffer.par_chunks(chunk).map(sum_f32).sum();
            std::hint::black_box(sum);
            std::mem::size_of_val(buffer.as_slice()) as f64 / start.elapsed().as_secs_f64()
        })
    });
    drop(buffer);
    let fma_peak = fma::available().then(|| {
        pool.install(|| {
            use rayon::prelude::*;
            const ITERS: usize = 20_000_000;
            best(&|| {
                let start = Instant::now();
                let sum: f32 = (0..threads).into_par_iter().map(|_| fma::chains(ITERS)).sum();
                std::hint::black_box(sum);
                (threads * ITERS * fma::flops_per_iter()) as f64 / start.elapsed().as_secs_f64()
            })
        })
    });
    Ok(Host { read_bandwidth, fma_peak, fma_lanes: fma::lanes(), engine_kernels: engine::kernels::isa() })
}

/// Thirty-two running sums (four vectors of eight), so the loop is bound by memory, not by the
/// latency of one vector add: one chain read this host's bandwidth low (docs/performance.md).
fn sum_f32(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 32];
    let mut blocks = xs.chunks_exact(32);
    for b in &mut blocks {
        for (a, x) in acc.iter_mut().zip(b) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + blocks.remainder().iter().sum::<f32>()
}

/// Twelve independent chains of fused multiply-adds, 16 lanes wide with AVX-512 (whose FMA units
/// are 512 bits wide on some CPUs, this host's Zen 5 among them) and 8 with AVX2: more chains than
/// an FMA's latency times the units that run them, so the loop runs at the core's issue rate.
mod fma {
    const CHAINS: usize = 12;

    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    fn wide() -> bool {
        #[cfg(target_arch = "x86_64")]
        return is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The lanes the chains use: 16 with AVX-512, else 8.
    pub fn lanes() -> usize {
        if wide() {
            16
        } else {
            8
        }
    }

    /// Flops in one round of [`chains`].
    pub fn flops_per_iter() -> usize {
        CHAINS * lanes() * 2
    }

    /// Runs `iters` rounds; call only when [`available`].
    pub fn chains(iters: usize) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: the CPU has the features each function is compiled for (checked here).
            return unsafe {
                if wide() {
                    chains_avx512(iters)
                } else {
                    chains_avx2(iters)
                }
            };
        }
        let _ = iters;
        0.0
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn chains_avx2(iters: usize) -> f32 {
        use std::arch::x86_64::*;
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for r in &mut acc {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        let mut total = _mm256_setzero_ps();
        for r in acc {
            total = _mm256_add_ps(total, r);
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), total);
        lanes.iter().sum()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn chains_avx512(iters: usize) -> f32 {
        use std::arch::x86_64::*;
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for r in &mut acc {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        let mut total = _mm512_setzero_ps();
        for r in acc {
            total = _mm512_add_ps(total, r);
        }
        _mm512_reduce_add_ps(total)
    }
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
    print_limits(rows, n_prompt, n_gen);
    for row in rows.iter().filter(|r| r.threads == rows[0].threads) {
        let llamacpp = row.llamacpp.as_ref().map_or(String::new(), |t| format!(", llama.cpp {:.2} s", t.load_s));
        println!("load {}: engine {:.2} s{llamacpp}", row.model, row.engine.load_s);
    }
}

/// Each figure against the machine's limit: decode's bytes per second against the read bandwidth,
/// prefill's flops per second against the FMA peak.
fn print_limits(rows: &[Row], n_prompt: usize, n_gen: usize) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "model",
        "threads",
        "read GB/s",
        "MB / decoded token",
        "engine decode",
        "llama.cpp decode",
        "FMA peak GFLOP/s",
        "GFLOP / prompt token",
        "engine prefill",
        "llama.cpp prefill",
    ]);
    for row in rows {
        let name = Path::new(&row.model).file_name().map_or(row.model.clone(), |f| f.to_string_lossy().into_owned());
        let decode = |t: &Timings| {
            let rate = rates(n_gen, &t.decode_s).0 * row.cost.decode_bytes;
            format!("{:.1} GB/s ({:.0}%)", rate / 1e9, 100.0 * rate / row.host.read_bandwidth)
        };
        let prefill = |t: &Timings| {
            let rate = rates(n_prompt, &t.prefill_s).0 * row.cost.prefill_flops;
            match row.host.fma_peak {
                Some(peak) => format!("{:.1} GFLOP/s ({:.0}%)", rate / 1e9, 100.0 * rate / peak),
                None => format!("{:.1} GFLOP/s", rate / 1e9),
            }
        };
        table.add_row(vec![
            name,
            row.threads.to_string(),
            format!("{:.1}", row.host.read_bandwidth / 1e9),
            format!("{:.1}", row.cost.decode_bytes / 1e6),
            decode(&row.engine),
            row.llamacpp.as_ref().map_or("-".into(), decode),
            row.host.fma_peak.map_or("no AVX2+FMA".into(), |p| format!("{:.1}", p / 1e9)),
            format!("{:.3}", row.cost.prefill_flops / 1e9),
            prefill(&row.engine),
            row.llamacpp.as_ref().map_or("-".into(), prefill),
        ]);
    }
    println!("{table}");
    println!(
        "against the machine, measured in this run: decode reads every weight once per token (and the KV cache), so its bytes per \
         second are bounded by the read bandwidth; prefill is bounded by the FMA peak ({}-lane FMAs, every thread); the engine ran its {} kernels",
        fma::lanes(),
        engine::kernels::isa()
    );
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
    fn a_sum_in_32_running_sums_adds_every_element() {
        let xs: Vec<f32> = (1..=19).map(|i| i as f32).collect();
        assert_eq!(sum_f32(&xs), 190.0, "1 + ... + 19, all of it a tail shorter than one block");
        let xs: Vec<f32> = (1..=70).map(|i| i as f32).collect();
        assert_eq!(sum_f32(&xs), 2485.0, "1 + ... + 70: two blocks of 32 and a tail of 6");
        assert_eq!(sum_f32(&[]), 0.0);
    }

    #[test]
    fn a_token_costs_its_weights_and_its_cache() {
        // The tiny Llama fixture: the products' bytes and multiply-adds counted by hand from its shapes.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let model = Model::load(&root.join("fixtures/models/tiny-llama/model-f32.gguf")).unwrap();
        let c = model.config();
        let (d, kv, ffn, vocab) = (c.d_model, c.n_kv_heads * c.head_dim, c.ffn_dim, c.vocab_size);
        let per_layer = d * d * 2 + kv * d * 2 + ffn * d * 3;
        let multiply_adds = c.n_layers * per_layer + vocab * d;
        assert_eq!(model.product_cost().multiply_adds, multiply_adds);
        assert_eq!(model.product_cost().weight_bytes, 4 * multiply_adds, "f32 weights: four bytes each");
        let cost = cost_of(&model, 10, 4);
        let kv_bytes = (2 * c.n_layers * kv * 4) as f64 * 12.0;
        assert_eq!(cost.decode_bytes, (4 * multiply_adds) as f64 + kv_bytes);
        assert_eq!(cost.prefill_flops, 2.0 * multiply_adds as f64 + 4.0 * (c.n_layers * c.n_heads * c.head_dim) as f64 * 5.0);
    }

    #[test]
    fn bench_ids_are_fixed_and_inside_the_vocabulary() {
        let a = token_ids(100, 50);
        assert_eq!(a, token_ids(100, 50));
        assert!(a.iter().all(|&t| t < 100));
    }
}
