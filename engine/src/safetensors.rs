//! A safetensors reader: one file, an HF folder holding `model.safetensors`, or a sharded folder
//! with `model.safetensors.index.json`.
//!
//! Like the GGUF reader it treats the file as hostile: the JSON header's size, every dtype, shape
//! and offset are checked against the file before a tensor is handed out, and tensors are views
//! into a memory map.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Bytes, QTensor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Headers larger than this are refused (real ones are a few hundred KiB at most).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

struct Located {
    file: usize,
    dtype: String,
    shape: Vec<usize>,
    start: usize,
    len: usize,
}

/// Where a file's bytes are: mapped (models) or in memory (fuzzing, tests).
enum Backing {
    Map(Arc<memmap2::Mmap>),
    Memory(Arc<Vec<u8>>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Memory(v) => v,
        }
    }
}

/// The tensors of one or more safetensors files.
pub struct SafeTensors {
    maps: Vec<(PathBuf, Backing)>,
    tensors: BTreeMap<String, Located>,
}

#[derive(Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

impl SafeTensors {
    /// A `.safetensors` file, or a folder with `model.safetensors.index.json` or `model.safetensors`.
    pub fn open(path: &Path) -> Result<SafeTensors> {
        let files = if path.is_dir() { shard_files(path)? } else { vec![path.to_path_buf()] };
        let mut st = SafeTensors { maps: Vec::new(), tensors: BTreeMap::new() };
        for file in files {
            st.add(&file)?;
        }
        Ok(st)
    }

    /// One safetensors image already in memory; `name` stands for its path in messages.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<SafeTensors> {
        let mut st = SafeTensors { maps: Vec::new(), tensors: BTreeMap::new() };
        st.add_backing(Path::new(name), Backing::Memory(Arc::new(bytes)))?;
        Ok(st)
    }

    fn add(&mut self, path: &Path) -> Result<()> {
        let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        // SAFETY: read-only map; see GgufFile::open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        self.add_backing(path, Backing::Map(Arc::new(map)))
    }

    fn add_backing(&mut self, path: &Path, backing: Backing) -> Result<()> {
        let bad = |reason: String| Error::Format { path: path.to_path_buf(), format: "safetensors", reason };
        let map = backing.bytes();
        if map.len() < 8 {
            return Err(bad("shorter than its 8-byte header length; the file is truncated".into()));
        }
        let header_len = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
        if header_len > MAX_HEADER || header_len > map.len() as u64 - 8 {
            return Err(bad(format!("header claims {header_len} bytes but the file has {}", map.len())));
        }
        let data_start = 8 + header_len as usize;
        let header: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&map[8..data_start]).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
        let data_len = (map.len() - data_start) as u64;
        let index = self.maps.len();
        let mut spans = Vec::new();
        for (name, value) in header {
            if name == "__metadata__" {
                continue;
            }
            let entry: Entry = serde_json::from_value(value).map_err(|e| bad(format!("tensor {name}: {e}")))?;
            let [begin, end] = entry.data_offsets;
            if begin > end || end > data_len {
                return Err(bad(format!("tensor {name}: data [{begin}, {end}) is outside the data section ({data_len} bytes)")));
            }
            if let Some(size) = element_size(&entry.dtype) {
                let elements = entry.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
                if elements.and_then(|n| n.checked_mul(size)) != Some(end - begin) {
                    return Err(bad(format!("tensor {name}: {} {:?} does not take {} bytes", entry.dtype, entry.shape, end - begin)));
                }
            }
            if self.tensors.contains_key(&name) {
                return Err(bad(format!("tensor {name} appears in more than one file")));
            }
            spans.push((begin, end, name.clone()));
            self.tensors.insert(
                name,
                Located { file: index, dtype: entry.dtype, shape: entry.shape, start: data_start + begin as usize, len: (end - begin) as usize },
            );
        }
        spans.sort();
        for pair in spans.windows(2) {
            if pair[0].1 > pair[1].0 {
                return Err(bad(format!("tensors {} and {} overlap", pair[0].2, pair[1].2)));
            }
        }
        self.maps.push((path.to_path_buf(), backing));
        Ok(())
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A view of tensor `name` in its stored type.
    pub fn tensor(&self, name: &str) -> Result<QTensor> {
        let (first, _) = &self.maps.first().ok_or_else(|| Error::Config("no safetensors files were opened".into()))?;
        let t = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            tensor: name.to_string(),
            path: first.clone(),
            arch: "safetensors".into(),
        })?;
        let dtype = match t.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            other => return Err(Error::UnsupportedType { tensor: name.to_string(), dtype: other.to_string() }),
        };
        // A scalar is stored as one value; the kernels treat it as a 1-vector.
        let shape = if t.shape.is_empty() { vec![1] } else { t.shape.clone() };
        let bytes = match &self.maps[t.file].1 {
            Backing::Map(map) => Bytes::Mapped { map: map.clone(), start: t.start, len: t.len },
            Backing::Memory(v) => Bytes::Owned(Arc::new(v[t.start..t.start + t.len].to_vec())),
        };
        QTensor::new(name, dtype, shape, bytes)
    }
}

fn element_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// The files of an HF folder: the shards its index names (each once, in order), or
/// `model.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| Error::Io { path: index.clone(), source })?;
        let parsed: Index =
            serde_json::from_str(&text).map_err(|e| Error::Format { path: index.clone(), format: "safetensors index", reason: e.to_string() })?;
        let mut names: Vec<String> = parsed.weight_map.into_values().collect();
        names.sort();
        names.dedup();
        return names
            .into_iter()
            .map(|n| {
                let plain = Path::new(&n).file_name().is_some_and(|f| f == n.as_str());
                match plain {
                    true => Ok(dir.join(n)),
                    false => Err(Error::Format {
                        path: index.clone(),
                        format: "safetensors index",
                        reason: format!("shard {n:?} is not a file name in the folder"),
                    }),
                }
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::Format {
        path: dir.to_path_buf(),
        format: "HF checkpoint folder",
        reason: "neither model.safetensors nor model.safetensors.index.json is there".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, header: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        f.write_all(data).unwrap();
        path
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("parity-st-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn a_sharded_folder_reads_every_shard_through_its_index() {
        let dir = temp_dir("sharded");
        write(&dir, "a.safetensors", r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &f32_bytes(&[1.0, 2.0]));
        write(
            &dir,
            "b.safetensors",
            r#"{"__metadata__":{"format":"pt"},"y":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]}}"#,
            &f32_bytes(&[3.5]),
        );
        std::fs::write(dir.join("model.safetensors.index.json"), r#"{"weight_map":{"x":"a.safetensors","y":"b.safetensors"}}"#).unwrap();
        let st = SafeTensors::open(&dir).unwrap();
        assert_eq!(st.names(), ["x", "y"]);
        assert_eq!(st.tensor("x").unwrap().to_f32(), [1.0, 2.0]);
        assert_eq!(st.tensor("y").unwrap().to_f32(), [3.5]);
    }

    #[test]
    fn hostile_headers_are_refused_with_a_reason() {
        let dir = temp_dir("hostile");
        let cases = [
            ("offsets", r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}"#, "outside the data section"),
            ("size", r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, "does not take 8 bytes"),
            ("overlap", r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, "overlap"),
            ("json", r#"{"x": nope}"#, "not valid JSON"),
        ];
        for (tag, header, want) in cases {
            let path = write(&dir, &format!("{tag}.safetensors"), header, &[0; 8]);
            let err = SafeTensors::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(want), "{tag}: {err}");
        }
        let mut huge = std::fs::File::create(dir.join("huge.safetensors")).unwrap();
        huge.write_all(&(1u64 << 60).to_le_bytes()).unwrap();
        drop(huge);
        assert!(SafeTensors::open(&dir.join("huge.safetensors")).is_err());
    }

    #[test]
    fn an_unsupported_dtype_is_an_error_naming_the_tensor() {
        let dir = temp_dir("dtype");
        let path = write(&dir, "m.safetensors", r#"{"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, &[0; 8]);
        let err = SafeTensors::open(&path).unwrap().tensor("ids").unwrap_err().to_string();
        assert!(err.contains("ids") && err.contains("I64"), "{err}");
    }

    #[test]
    fn an_index_naming_a_shard_outside_the_folder_is_refused() {
        let dir = temp_dir("escape");
        std::fs::write(dir.join("model.safetensors.index.json"), r#"{"weight_map":{"x":"../x.safetensors"}}"#).unwrap();
        assert!(SafeTensors::open(&dir).err().unwrap().to_string().contains("not a file name"));
    }
}
