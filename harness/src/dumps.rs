//! A reference's dump folder: `manifest.toml` plus one .npy per tensor, read lazily by key.
//!
//! The manifest is outside input: its `file` entries are plain file names that must resolve to a
//! regular file inside the dump folder (no separators, no `..`, no symlinks), so a crafted manifest
//! cannot make the harness read anything else.

use crate::npy;
use crate::tensor::Tensor;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{}: no dump folder there", dir.display())]
    NoFolder { dir: PathBuf },
    #[error("{}: a half-written dump (its dumper did not finish, or is still running); rerun the dumper", dir.display())]
    HalfWritten { dir: PathBuf },
    #[error("{}: no manifest.toml; this is not a finished dump (rerun the dumper)", dir.display())]
    NoManifest { dir: PathBuf },
    #[error("{}: cannot read: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a valid dump manifest: {source}", path.display())]
    Manifest { path: PathBuf, source: toml::de::Error },
    #[error("{}: tensor {key}: {problem}", dir.display())]
    Entry { dir: PathBuf, key: String, problem: String },
    #[error(transparent)]
    Npy(#[from] npy::NpyError),
}

/// What `manifest.toml` says about the run. Unknown top-level fields are tolerated so a dumper
/// can add provenance without breaking older harnesses; tensor records are strict.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    pub reference: String,
    pub version: String,
    pub arch: String,
    pub n_layers: usize,
    pub model: String,
    pub model_sha256: String,
    pub prompt: String,
    pub token_ids: Vec<i64>,
    pub dtype: String,
    pub threads: usize,
    pub n_generate: usize,
    pub temperature: f64,
    pub wall_time_s: f64,
    pub command: String,
    /// The decode history the dumper was fed (`--force-tokens`), if forced.
    #[serde(default)]
    pub force_tokens: Option<Vec<i64>>,
    /// sha256 of the little-endian f32 logits its samplers sampled (the `sampling` checkpoint):
    /// its own last logits, or those it was given (`--sampler-logits`).
    #[serde(default)]
    pub sampler_logits_sha256: Option<String>,
    /// An outside engine's word on whose code computed each checkpoint (checkpoints/provenance.toml's
    /// table format); checked by [`crate::provenance::declared`].
    #[serde(default)]
    pub provenance: Option<toml::Table>,
    #[serde(default)]
    pub tensors: BTreeMap<String, TensorRecord>,
}

/// One `[tensors."key"]` table: a file with its shape and dtype, or the reason it is unavailable.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRecord {
    pub file: Option<String>,
    pub shape: Option<Vec<usize>>,
    pub dtype: Option<String>,
    pub unavailable: Option<String>,
}

/// What a dump holds for one key.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    Tensor(Tensor),
    /// The dumper said it could not produce it, and why.
    Unavailable(String),
    /// The manifest does not mention the key at all.
    NotListed,
}

#[derive(Clone, Debug)]
pub struct Dump {
    /// Its folder; for a dump made in memory, a label naming where it came from.
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The tensors of a dump made in-process (the engine as a reference), by key: read from here
    /// instead of files, through the same manifest records and checks.
    pub memory: Option<std::sync::Arc<BTreeMap<String, Tensor>>>,
}

impl Manifest {
    /// A manifest from the text of `manifest.toml`.
    pub fn parse(text: &str) -> Result<Manifest, toml::de::Error> {
        toml::from_str(text)
    }
}

impl Dump {
    pub fn open(dir: &Path) -> Result<Dump, DumpError> {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // dumpkit writes into `<out>.tmp-<pid>` and renames when done.
        if name.contains(".tmp-") {
            return Err(DumpError::HalfWritten { dir: dir.to_path_buf() });
        }
        if !dir.is_dir() {
            return Err(DumpError::NoFolder { dir: dir.to_path_buf() });
        }
        let path = dir.join("manifest.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(DumpError::NoManifest { dir: dir.to_path_buf() }),
            Err(source) => return Err(DumpError::Io { path, source }),
        };
        let manifest = Manifest::parse(&text).map_err(|source| DumpError::Manifest { path: path.clone(), source })?;
        Ok(Dump { dir: dir.to_path_buf(), manifest, memory: None })
    }

    /// A dump held in memory: `manifest`'s tensor records are made from `tensors` (file = key).
    pub fn in_memory(label: &str, mut manifest: Manifest, tensors: BTreeMap<String, Tensor>) -> Dump {
        manifest.tensors = tensors
            .iter()
            .map(|(key, t)| {
                let record =
                    TensorRecord { file: Some(key.clone()), shape: Some(t.shape.clone()), dtype: Some(t.dtype_name().into()), unavailable: None };
                (key.clone(), record)
            })
            .collect();
        Dump { dir: PathBuf::from(label), manifest, memory: Some(std::sync::Arc::new(tensors)) }
    }

    /// Every tensor the manifest lists with a file, read now, by key; the first unreadable one is
    /// the error (a subject's dump is judged whole, or not at all).
    pub fn read_all(&self) -> Result<BTreeMap<String, Tensor>, DumpError> {
        let mut out = BTreeMap::new();
        for key in self.manifest.tensors.keys() {
            if let Lookup::Tensor(t) = self.get(key)? {
                out.insert(key.clone(), t);
            }
        }
        Ok(out)
    }

    /// Reads the tensor for `key` (nothing is cached: each comparison reads a tensor once). The
    /// loaded shape and dtype must agree with the manifest.
    pub fn get(&self, key: &str) -> Result<Lookup, DumpError> {
        let Some(record) = self.manifest.tensors.get(key) else {
            return Ok(Lookup::NotListed);
        };
        let problem = |problem: String| DumpError::Entry { dir: self.dir.clone(), key: key.to_string(), problem };
        match (&record.file, &record.unavailable) {
            (Some(_), Some(_)) => Err(problem("has both a file and an unavailable reason".into())),
            (None, Some(reason)) => Ok(Lookup::Unavailable(reason.clone())),
            (None, None) => Err(problem("has neither a file nor an unavailable reason".into())),
            (Some(file), None) => {
                let tensor = match &self.memory {
                    Some(memory) => memory.get(key).cloned().ok_or_else(|| problem("listed but not held in memory".into()))?,
                    None => {
                        let (opened, len, path) = self.open_tensor(key, file)?;
                        npy::read_from(opened, len, &path)?
                    }
                };
                if let Some(shape) = &record.shape {
                    if *shape != tensor.shape {
                        return Err(problem(format!("manifest says shape {shape:?}, {file} holds {:?}", tensor.shape)));
                    }
                }
                if let Some(dtype) = &record.dtype {
                    if dtype != tensor.dtype_name() {
                        return Err(problem(format!("manifest says dtype {dtype}, {file} holds {}", tensor.dtype_name())));
                    }
                }
                Ok(Lookup::Tensor(tensor))
            }
        }
    }

    /// Opens a manifest `file`, if it is a plain regular file inside the dump folder, with its
    /// length (from the same fstat).
    fn open_tensor(&self, key: &str, file: &str) -> Result<(std::fs::File, u64, PathBuf), DumpError> {
        let problem = |why: &str| DumpError::Entry { dir: self.dir.clone(), key: key.to_string(), problem: format!("file {file:?} refused: {why}") };
        if file.is_empty() || file == "." || file == ".." || file.contains(['/', '\\', '\0']) || file.contains("..") || Path::new(file).is_absolute()
        {
            return Err(problem("must be a plain file name inside the dump folder"));
        }
        // A plain name that is not a symlink is an entry of the folder itself. The open refuses a
        // symlink itself (no window between a check and the open) and does not wait on a FIFO.
        let path = self.dir.join(file);
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW | libc::O_NONBLOCK);
        #[cfg(not(unix))]
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(problem("is a symlink"));
        }
        let opened = match options.open(&path) {
            #[cfg(unix)]
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(problem("is a symlink")),
            other => other.map_err(|source| DumpError::Io { path: path.clone(), source })?,
        };
        let meta = opened.metadata().map_err(|source| DumpError::Io { path: path.clone(), source })?;
        if !meta.is_file() {
            return Err(problem("is not a regular file"));
        }
        Ok((opened, meta.len(), path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const HEAD: &str = r#"reference = "pytorch"
version = "2.5.1"
arch = "llama"
n_layers = 1
model = "/m/model.gguf"
model_sha256 = "00"
prompt = "hi"
token_ids = [1, 2]
dtype = "float32"
threads = 2
n_generate = 2
temperature = 1.0
wall_time_s = 0.5
command = "python dump.py"
"#;

    /// A fresh folder under the system temp dir holding `manifest` and the given tensors.
    fn dump_dir(name: &str, manifest: &str, files: &[(&str, Tensor)]) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::temp_dir().join(format!("parity-dumps-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("manifest.toml"), format!("{HEAD}{manifest}")).unwrap();
        for (f, t) in files {
            npy::write(&dir.join(f), t).unwrap();
        }
        dir
    }

    #[test]
    fn reads_tensors_and_unavailable_reasons_by_key() {
        let m = "[tensors.\"embed\"]\nfile = \"embed.npy\"\nshape = [2, 1]\ndtype = \"f32\"\n\n\
                 [tensors.\"blk.0.q_rope\"]\nunavailable = \"not part of gpt2\"\n";
        let dir = dump_dir("ok", m, &[("embed.npy", Tensor::f32(vec![2, 1], vec![0.5, 1.5]))]);
        let dump = Dump::open(&dir).unwrap();
        assert_eq!(dump.manifest.token_ids, vec![1, 2]);
        assert_eq!(dump.get("embed").unwrap(), Lookup::Tensor(Tensor::f32(vec![2, 1], vec![0.5, 1.5])));
        assert_eq!(dump.get("blk.0.q_rope").unwrap(), Lookup::Unavailable("not part of gpt2".into()));
        assert_eq!(dump.get("logits").unwrap(), Lookup::NotListed);
    }

    #[test]
    fn the_forced_decode_history_is_read_when_the_manifest_has_one() {
        let forced = Dump::open(&dump_dir("forced", "force_tokens = [5, 0, 448]\n", &[])).unwrap();
        assert_eq!(forced.manifest.force_tokens, Some(vec![5, 0, 448]));
        assert_eq!(Dump::open(&dump_dir("greedy", "", &[])).unwrap().manifest.force_tokens, None);
    }

    #[test]
    fn a_missing_manifest_or_half_written_folder_is_a_clear_error() {
        let dir = dump_dir("x", "", &[]);
        std::fs::remove_file(dir.join("manifest.toml")).unwrap();
        assert!(matches!(Dump::open(&dir), Err(DumpError::NoManifest { .. })));
        let tmp = dump_dir("pytorch.tmp-1234", "", &[]);
        assert!(matches!(Dump::open(&tmp), Err(DumpError::HalfWritten { .. })));
        assert!(matches!(Dump::open(&dir.join("nope")), Err(DumpError::NoFolder { .. })));
    }

    #[test]
    fn refuses_file_names_that_leave_the_folder() {
        for file in ["../secret.npy", "/etc/passwd", "sub/x.npy", "..\\\\x.npy", "..", ""] {
            let m = format!("[tensors.\"embed\"]\nfile = \"{file}\"\n");
            let dump = Dump::open(&dump_dir("d", &m, &[])).unwrap();
            match dump.get("embed") {
                Err(DumpError::Entry { problem, .. }) => {
                    assert!(problem.contains("refused"), "{file}: {problem}")
                }
                other => panic!("{file}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_a_symlinked_tensor_file() {
        let m = "[tensors.\"embed\"]\nfile = \"embed.npy\"\n";
        let dir = dump_dir("s", m, &[("real.npy", Tensor::f32(vec![1], vec![1.0]))]);
        std::os::unix::fs::symlink(dir.join("real.npy"), dir.join("embed.npy")).unwrap();
        let e = Dump::open(&dir).unwrap().get("embed").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn refuses_a_fifo_or_folder_as_a_tensor_file_without_waiting_on_it() {
        let m = "[tensors.\"embed\"]\nfile = \"embed.npy\"\n[tensors.\"q\"]\nfile = \"q.npy\"\n";
        let dir = dump_dir("f", m, &[]);
        let fifo = std::ffi::CString::new(dir.join("embed.npy").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::fs::create_dir(dir.join("q.npy")).unwrap();
        let dump = Dump::open(&dir).unwrap();
        for key in ["embed", "q"] {
            let e = dump.get(key).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{key}: {e}");
        }
    }

    #[test]
    fn a_dump_in_memory_lists_and_reads_its_tensors_like_a_folder() {
        let manifest = Manifest::parse(HEAD).unwrap();
        let tensors = BTreeMap::from([
            ("embed".to_string(), Tensor::f32(vec![2, 1], vec![0.5, 1.5])),
            ("tokens".to_string(), Tensor::ids(vec![2], vec![1, 2])),
        ]);
        let dump = Dump::in_memory("(engine)", manifest, tensors.clone());
        let record = &dump.manifest.tensors["embed"];
        assert_eq!((record.shape.clone(), record.dtype.as_deref()), (Some(vec![2, 1]), Some("f32")));
        assert_eq!(dump.manifest.tensors["tokens"].dtype.as_deref(), Some("i64"));
        assert_eq!(dump.get("embed").unwrap(), Lookup::Tensor(tensors["embed"].clone()));
        assert_eq!(dump.get("logits").unwrap(), Lookup::NotListed);
        assert_eq!(dump.read_all().unwrap(), tensors);
    }

    #[test]
    fn a_file_disagreeing_with_its_manifest_entry_is_refused() {
        let m = "[tensors.\"embed\"]\nfile = \"embed.npy\"\nshape = [1, 2]\ndtype = \"f32\"\n";
        let dir = dump_dir("m", m, &[("embed.npy", Tensor::f32(vec![2, 1], vec![0.5, 1.5]))]);
        let e = Dump::open(&dir).unwrap().get("embed").unwrap_err();
        assert!(e.to_string().contains("shape"), "{e}");
    }
}
