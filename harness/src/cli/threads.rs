//! The engine's worker pool size, set once per process.

use anyhow::{Context, Result};

/// Sizes rayon's global pool; `None` keeps rayon's default (all cores).
pub fn init(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("setting the thread count")?;
    }
    Ok(())
}
