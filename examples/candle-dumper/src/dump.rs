//! The dump contract's output (docs/subjects.md): one `.npy` per tensor and `manifest.toml`,
//! written into `<out>.tmp-<pid>` and renamed to `<out>` only when complete.

use candle_core::{DType, Tensor};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub struct Dump {
    out: PathBuf,
    tmp: PathBuf,
    /// `[tensors."KEY"]` tables, in the order written.
    records: Vec<(String, String)>,
}

impl Dump {
    pub fn new(out: &Path) -> std::io::Result<Dump> {
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dump".into());
        let tmp = out.with_file_name(format!("{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        Ok(Dump { out: out.to_path_buf(), tmp, records: Vec::new() })
    }

    /// `t` as `KEY.npy`: f32 values, or i64 ids when `ids`.
    pub fn put(&mut self, key: &str, t: &Tensor, ids: bool) -> candle_core::Result<()> {
        let t = t.to_dtype(if ids { DType::I64 } else { DType::F32 })?.contiguous()?;
        let file = format!("{key}.npy");
        t.write_npy(self.tmp.join(&file))?;
        let shape: Vec<String> = t.dims().iter().map(usize::to_string).collect();
        let dtype = if ids { "i64" } else { "f32" };
        self.records.push((key.to_string(), format!("file = {}\nshape = [{}]\ndtype = \"{dtype}\"\n", quote(&file), shape.join(", "))));
        Ok(())
    }

    /// Writes the manifest (`head`: its top-level fields and tables, TOML) and renames into place.
    pub fn finish(self, head: &str) -> std::io::Result<()> {
        let mut text = head.to_string();
        for (key, record) in &self.records {
            let _ = write!(text, "\n[tensors.{}]\n{record}", quote(key));
        }
        std::fs::write(self.tmp.join("manifest.toml"), text)?;
        if self.out.exists() {
            std::fs::remove_dir_all(&self.out)?;
        }
        std::fs::rename(&self.tmp, &self.out)
    }
}

/// A TOML basic string (JSON's escapes are TOML's for everything serde_json emits).
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// sha256 of a file, or of every file under a folder concatenated in path order (the contract's
/// `model_sha256`).
pub fn model_sha256(path: &Path) -> std::io::Result<String> {
    let mut files = Vec::new();
    collect(path, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(std::fs::read(f)?);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        for item in std::fs::read_dir(path)? {
            collect(&item?.path(), out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// sha256 of little-endian f32 values (the contract's `sampler_logits_sha256`).
pub fn f32_sha256(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
