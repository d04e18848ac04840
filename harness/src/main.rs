//! `parity`: runs the engine beside its references and judges every checkpoint.
//!
//! Exit codes: 0 everything passed; 1 a checkpoint failed; 2 usage or input error; 3 a reference
//! could not run.

mod bench;
mod generate;
mod inspect;
mod live;
mod suite;
mod threads;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "parity", version, about = "A checkpoint oracle for LLM inference engines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine alone and stream generated text to stdout.
    Generate(generate::GenerateArgs),
    /// Print a model file's architecture, hyperparameters and tensors.
    /// Engine speed beside llama.cpp's on the same files, ids and threads.
    Bench(bench::BenchArgs),
    Inspect {
        /// A .gguf file or an HF folder.
        path: std::path::PathBuf,
    },
}

/// Usage or input error (bad arguments, unreadable or corrupt files).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Inspect { path } => inspect::run(&path),
        Command::Bench(args) => {
            let root = project_root();
            bench::run(args, &live::Dumpers::from_env(&root, std::time::Duration::from_secs(600)).python, &root)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parity: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The project folder (holding `checkpoints/catalog.toml`): the current folder or one above it,
/// else the one this binary was built from.
fn project_root() -> std::path::PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    cwd.ancestors()
        .find(|d| d.join("checkpoints/catalog.toml").is_file())
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}
