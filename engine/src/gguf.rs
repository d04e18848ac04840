//! A GGUF (v2, v3) reader on a memory map: header, metadata of every value type, tensor infos.
//!
//! The file is treated as hostile: every count, length, dimension and offset is checked against
//! the bytes actually present before anything is allocated or sliced, so a corrupt or malicious
//! header is an [`Error::Format`], never a panic or a huge allocation. Tensor data is not copied:
//! [`GgufFile::tensor`] hands out views into the map.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Bytes, QTensor};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: usize = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Any integer type, if it is a non-negative value that fits.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file, as its header describes it.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major (numpy) order: GGUF's `ne` reversed, so a matrix is `[rows, cols]`.
    pub shape: Vec<usize>,
    pub type_id: u32,
    pub type_name: String,
    /// Offset from the start of the file.
    pub offset: usize,
    pub n_bytes: usize,
}

/// Where the file's bytes are: mapped (models) or in memory (fuzzing, tests).
enum Backing {
    Map(Arc<memmap2::Mmap>),
    Memory(Arc<Vec<u8>>),
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    backing: Backing,
    pub version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        // SAFETY: the map is read-only; a file truncated under us by another process is outside
        // what any mmap-based reader can defend against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        GgufFile::parse(path, Backing::Map(Arc::new(map)))
    }

    /// A GGUF image already in memory; `name` stands for its path in messages.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<GgufFile> {
        GgufFile::parse(Path::new(name), Backing::Memory(Arc::new(bytes)))
    }

    fn parse(path: &Path, backing: Backing) -> Result<GgufFile> {
        let bytes: &[u8] = match &backing {
            Backing::Map(m) => m,
            Backing::Memory(v) => v,
        };
        let mut r = Reader { bytes, at: 0 };
        let (version, metadata, tensors) = parse(&mut r).map_err(|reason| Error::Format { path: path.to_path_buf(), format: "GGUF", reason })?;
        Ok(GgufFile { path: path.to_path_buf(), backing, version, metadata, tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| self.bad(format!("metadata key {key} is missing")))
    }

    fn bad(&self, reason: String) -> Error {
        Error::Format { path: self.path.clone(), format: "GGUF", reason }
    }

    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.required(key)?;
        v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| self.bad(format!("metadata {key} = {v:?} is not an unsigned 32-bit integer")))
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.required(key)?;
        v.as_f64().map(|f| f as f32).ok_or_else(|| self.bad(format!("metadata {key} = {v:?} is not a float")))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.required(key)?;
        v.as_str().ok_or_else(|| self.bad(format!("metadata {key} is not a string")))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    fn array(&self, key: &str) -> Result<&[Value]> {
        match self.required(key)? {
            Value::Array(items) => Ok(items),
            _ => Err(self.bad(format!("metadata {key} is not an array"))),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<String>> {
        self.array(key)?
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| self.bad(format!("metadata {key} holds a non-string"))))
            .collect()
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.array(key)?.iter().map(|v| v.as_f64().map(|f| f as f32).ok_or_else(|| self.bad(format!("metadata {key} holds a non-float")))).collect()
    }

    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.array(key)?
            .iter()
            .map(|v| v.as_i64().and_then(|i| i32::try_from(i).ok()).ok_or_else(|| self.bad(format!("metadata {key} holds a non-i32"))))
            .collect()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.iter().any(|t| t.name == name)
    }

    /// The stored bytes of one of this file's tensors, whatever its type (for copying it unchanged).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let bytes: &[u8] = match &self.backing {
            Backing::Map(m) => m,
            Backing::Memory(v) => v,
        };
        &bytes[info.offset..info.offset + info.n_bytes]
    }

    /// A view of tensor `name` in its stored type.
    pub fn tensor(&self, name: &str) -> Result<QTensor> {
        let info = self.tensors.iter().find(|t| t.name == name).ok_or_else(|| Error::MissingTensor {
            tensor: name.to_string(),
            path: self.path.clone(),
            arch: self.architecture().unwrap_or("unknown").to_string(),
        })?;
        let dtype =
            supported_dtype(info.type_id).ok_or_else(|| Error::UnsupportedType { tensor: name.to_string(), dtype: info.type_name.clone() })?;
        let bytes = match &self.backing {
            Backing::Map(map) => Bytes::Mapped { map: map.clone(), start: info.offset, len: info.n_bytes },
            Backing::Memory(v) => Bytes::Owned(Arc::new(v[info.offset..info.offset + info.n_bytes].to_vec())),
        };
        QTensor::new(name, dtype, info.shape.clone(), bytes)
    }
}

fn supported_dtype(type_id: u32) -> Option<DType> {
    Some(match type_id {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        8 => DType::Q8_0,
        30 => DType::BF16,
        _ => return None,
    })
}

/// ggml's tensor types: name, values per block, bytes per block. Listed beyond what the engine
/// computes with so `inspect` can describe (and bounds-check) any llama.cpp file.
fn ggml_type(id: u32) -> Option<(&'static str, usize, usize)> {
    Some(match id {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        _ => return None,
    })
}

type Parsed = (u32, Vec<(String, Value)>, Vec<TensorInfo>);

fn parse(r: &mut Reader) -> std::result::Result<Parsed, String> {
    if r.bytes.len() < 4 || &r.bytes[..4] != MAGIC {
        return Err("wrong magic (expected \"GGUF\"): not a GGUF file".into());
    }
    r.at = 4;
    let version = r.u32()?;
    if version != 2 && version != 3 {
        return Err(format!("GGUF version {version} is not supported (2 or 3)"));
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    // Each entry takes at least 12 bytes, so a count larger than the file is a lie.
    r.check_count(n_kv, 12, "metadata entries")?;
    r.check_count(n_tensors, 24, "tensors")?;

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let type_id = r.u32()?;
        let value = r.value(type_id, &key, 0)?;
        if !keys.insert(key.clone()) {
            return Err(format!("metadata key {key} appears twice"));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return Err(format!("general.alignment = {v:?} is not a power of two")),
        },
    };

    let mut raw = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            ne.push(r.u64()?);
        }
        let type_id = r.u32()?;
        let offset = r.u64()?;
        if !names.insert(name.clone()) {
            return Err(format!("tensor {name} appears twice"));
        }
        raw.push((name, ne, type_id, offset));
    }

    let data_start = align(r.at as u64, alignment).ok_or("header size overflows")?;
    let file_len = r.bytes.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, ne, type_id, offset) in raw {
        let (type_name, block, block_bytes) = ggml_type(type_id).ok_or_else(|| format!("tensor {name}: unknown tensor type id {type_id}"))?;
        let elements = ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| format!("tensor {name}: dimensions {ne:?} overflow"))?;
        if ne[0] % block as u64 != 0 {
            return Err(format!("tensor {name}: row length {} is not a multiple of the {type_name} block size {block}", ne[0]));
        }
        let n_bytes = (elements / block as u64).checked_mul(block_bytes as u64).ok_or_else(|| format!("tensor {name}: size overflows"))?;
        if offset % alignment != 0 {
            return Err(format!("tensor {name}: data offset {offset} is not aligned to {alignment}"));
        }
        let start = data_start.checked_add(offset).ok_or_else(|| format!("tensor {name}: offset overflows"))?;
        let end = start.checked_add(n_bytes).ok_or_else(|| format!("tensor {name}: offset overflows"))?;
        if end > file_len {
            return Err(format!(
                "tensor {name}: data [{start}, {end}) runs past the end of the file ({file_len} bytes); the file is truncated or corrupt"
            ));
        }
        tensors.push(TensorInfo {
            name,
            shape: ne.iter().rev().map(|&d| d as usize).collect(),
            type_id,
            type_name: type_name.to_string(),
            offset: start as usize,
            n_bytes: n_bytes as usize,
        });
    }
    check_no_overlap(&tensors)?;
    Ok((version, metadata, tensors))
}

fn check_no_overlap(tensors: &[TensorInfo]) -> std::result::Result<(), String> {
    let mut spans: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    spans.sort_by_key(|t| t.offset);
    for pair in spans.windows(2) {
        if pair[0].offset + pair[0].n_bytes > pair[1].offset {
            return Err(format!("tensors {} and {} overlap in the file", pair[0].name, pair[1].name));
        }
    }
    Ok(())
}

fn align(at: u64, alignment: u64) -> Option<u64> {
    Some(at.checked_add(alignment - 1)? / alignment * alignment)
}

/// A bounds-checked cursor over the file.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// Arrays nested deeper than this are refused (GGUF writers never nest at all in practice).
const MAX_NESTING: usize = 2;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(format!("unexpected end of file at byte {} (needed {n} more); the file is truncated", self.at)),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn check_count(&self, n: u64, min_size: u64, what: &str) -> std::result::Result<(), String> {
        if n.saturating_mul(min_size) > self.remaining() as u64 {
            return Err(format!("header claims {n} {what}, more than the file can hold"));
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let len = self.u64()?;
        self.check_count(len, 1, "string bytes")?;
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("string at byte {} is not valid UTF-8", self.at - len as usize))
    }

    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> std::result::Result<Value, String> {
        Ok(match type_id {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("metadata {key}: bool byte {b} is neither 0 nor 1")),
            },
            8 => Value::Str(self.string()?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(format!("metadata {key}: arrays nested too deep"));
                }
                let item_type = self.u32()?;
                let n = self.u64()?;
                let min_size = match item_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(format!("metadata {key}: unknown array item type {t}")),
                };
                self.check_count(n, min_size, "array items")?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            t => return Err(format!("metadata {key}: unknown value type {t}")),
        })
    }
}

pub mod write;

#[cfg(test)]
mod tests;
