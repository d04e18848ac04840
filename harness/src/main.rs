//! `parity`: runs the subject (by default our engine) beside its references and judges every checkpoint.
//!
//! Exit codes: 0 everything passed; 1 a checkpoint failed; 2 usage or input error; 3 a reference
//! could not run (and nothing failed).

mod cli;

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "parity", version, about = "A checkpoint oracle for LLM inference engines")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Compare the subject (the engine, or --subject) with the references at every checkpoint and
    /// write a proof bundle (with no options: the engine on the embedded default suite against its
    /// committed dumps).
    Run(cli::run::RunArgs),
    /// One checkpoint in depth: every metric, the worst elements, a histogram, made here or inherited (by replay).
    Diff(cli::diff::DiffArgs),
    /// Every layer run on each reference's own input to it: each layer's own error, apart from the inherited.
    Replay(cli::replay::ReplayArgs),
    /// A failing case cut to its smallest reproducer (fewest layers, shortest prompt, its tokens
    /// only), written as a self-contained proof bundle that fails the same checkpoint.
    Reduce(cli::reduce::ReduceArgs),
    /// One case along axes of conditions (positions, thread counts, prefill modes): worst margin
    /// per point, and where checks first fail.
    Sweep(cli::sweep::SweepArgs),
    /// The first checkpoint, in forward order, that fails, and the last that passes.
    Bisect(cli::bisect::BisectArgs),
    /// Check an outside engine's dumper against the dump contract on the fixture models (exit 0
    /// conforms, 1 a finding, 2 bad input, 3 the dumper could not run).
    Conform(cli::conform::ConformArgs),
    /// Make a suite's reference dumps (the truth first) into its dumps folder, reusing the dump cache.
    Dumps(cli::dumps::DumpsArgs),
    /// Measure the spread between the references and propose tolerances from it.
    Calibrate(cli::calibrate::CalibrateArgs),
    /// Re-hash a proof bundle and say whether it is intact (and, given a public key, who signed it).
    Verify {
        /// The bundle folder (.proof_bundle/run/<run id>).
        bundle: PathBuf,
        /// A public key (`parity keygen`'s FILE.pub): exit 1 unless the bundle is signed by it.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// Make a key pair to sign proof bundles with (LLORCH_SIGNING_KEY=FILE).
    Keygen(cli::keygen::KeygenArgs),
    /// Join the results of several shard bundles into one bundle and report.
    Merge(cli::merge::MergeArgs),
    /// Run the engine alone and stream generated text to stdout.
    Generate(cli::generate::GenerateArgs),
    /// Print a model file's architecture, hyperparameters and tensors.
    Inspect {
        /// A .gguf file or an HF folder.
        path: PathBuf,
    },
    /// Engine speed beside llama.cpp's on the same files, ids and threads.
    Bench(cli::bench::BenchArgs),
    /// Serve one model over HTTP, OpenAI-compatible (completions and chat, streaming or not).
    Serve(cli::serve::ServeArgs),
}

/// glibc hands a block over 128 KB back to the kernel when it is freed, and the next one of that
/// size is zeroed by page faults again: the engine's per-product buffers (a packed prefill panel,
/// a vocabulary of logits) paid that on every product, and at 2 threads each unmap also stopped
/// the pool's worker to flush its TLB. Blocks up to 32 MiB (glibc's ceiling) now stay in the heap
/// for reuse (docs/performance.md measures what it bought); larger ones, KV caches of long contexts, are
/// still mapped on their own.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Usage or input error (bad arguments, unreadable or corrupt files).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // `parity run`'s timing line counts from here: loading the hash store and the suite are the
    // harness's time too.
    let started = std::time::Instant::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let root = project_root();
    // No subcommand: the embedded default suite, exactly as `parity run`.
    let command = match cli.command {
        Some(c) => c,
        None => match Cli::parse_from(["parity", "run"]).command {
            Some(c) => c,
            None => unreachable!("`parity run` always parses to the run command"),
        },
    };
    // Output piped into `head` and closed early ends the process quietly, as other tools do,
    // instead of a panic in println!; the server keeps Rust's default (it writes to sockets).
    #[cfg(unix)]
    if !matches!(command, Command::Serve(_)) {
        // SAFETY: called before any thread is started; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    keep_freed_memory();
    // Input hashes are remembered between runs while the files stay unchanged (reports::hashes).
    if let Err(e) = reports::hashes::keep_in(harness::suite::parity_cache().join("sha256.tsv")) {
        eprintln!("parity: warning: input hashes are not remembered between runs: {e}");
    }
    let result = match command {
        Command::Run(args) => cli::run::run(args, &root, started),
        Command::Diff(args) => cli::diff::run(args, &root),
        Command::Bisect(args) => cli::bisect::run(args, &root),
        Command::Replay(args) => cli::replay::run(args, &root),
        Command::Reduce(args) => cli::reduce::run(args, &root),
        Command::Sweep(args) => cli::sweep::run(args, &root),
        Command::Calibrate(args) => cli::calibrate::run(args, &root),
        Command::Dumps(args) => cli::dumps::run(args, &root),
        Command::Conform(args) => cli::conform::run(args, &root),
        Command::Verify { bundle, public_key } => cli::merge::verify(&bundle, public_key.as_deref()),
        Command::Keygen(args) => cli::keygen::run(args).map(|()| 0),
        Command::Merge(args) => cli::merge::run(args, &root),
        Command::Generate(args) => cli::generate::run(args).map(|()| 0),
        Command::Inspect { path } => cli::inspect::run(&path).map(|()| 0),
        Command::Serve(args) => cli::serve::run(args).map(|()| 0),
        Command::Bench(args) => {
            let python = harness::live::Dumpers::from_env(&root, std::time::Duration::from_secs(600)).python;
            cli::bench::run(args, &python, &root).map(|()| 0)
        }
    };
    if let Err(e) = reports::hashes::cache().save() {
        eprintln!("parity: warning: the input hashes of this run were not remembered: {e}");
    }
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("parity: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The project folder (holding `checkpoints/catalog.toml`): the current folder or one above it,
/// else the one this binary was built from.
fn project_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    cwd.ancestors()
        .find(|d| d.join("checkpoints/catalog.toml").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}
