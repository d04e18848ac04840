//! `parity serve`: the engine behind an OpenAI-compatible HTTP server (the `serve` crate), one
//! model per process, until Ctrl-C or SIGTERM.

use anyhow::{Context, Result};
use engine::Model;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A .gguf file, or an HF folder (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// 0 picks a free port (printed on the first line of stdout).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The engine's worker threads, shared by all requests (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Requests generating at once.
    #[arg(long, default_value_t = 1)]
    pub max_concurrent: usize,
    /// Requests waiting for a slot; past them a request gets 429.
    #[arg(long, default_value_t = 8)]
    pub max_queue: usize,
}

pub fn run(args: ServeArgs) -> Result<()> {
    super::threads::init(args.threads)?;
    let model = Model::load(&args.model).with_context(|| format!("loading {}", args.model.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let limits = serve::Limits { max_concurrent: args.max_concurrent, max_queue: args.max_queue };
        let server = serve::Server::bind(model, SocketAddr::new(args.host, args.port), limits).await?;
        println!("listening on http://{}", server.local_addr()?);
        eprintln!("parity serve: {} (Ctrl-C stops)", args.model.display());
        server.run(stopped()).await?;
        anyhow::Ok(())
    })
}

/// Ctrl-C or SIGTERM.
async fn stopped() {
    #[cfg(unix)]
    {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
