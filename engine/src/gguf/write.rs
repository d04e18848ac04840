//! A GGUF (v3) writer: metadata as [`Value`]s, tensors as stored bytes copied unchanged (quantized
//! blocks stay as they are), each tensor's data aligned to `general.alignment` (32 by default).
//! The file appears under its name only when complete: it is written beside it and renamed.

use super::{ggml_type, Value, DEFAULT_ALIGNMENT};
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// One tensor to write: its name, shape in row-major (numpy) order as [`super::TensorInfo`] has
/// it, ggml type id, and its stored bytes.
pub struct TensorOut<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub type_id: u32,
    pub data: std::borrow::Cow<'a, [u8]>,
}

/// Writes a GGUF v3 file at `path` holding `metadata` (in order) and `tensors` (in order).
/// An empty metadata array is written with item type string.
pub fn write(path: &Path, metadata: &[(String, Value)], tensors: &[TensorOut]) -> Result<()> {
    let fail = |reason: String| Error::Write { path: path.to_path_buf(), reason };
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => v.as_u64().filter(|a| *a > 0 && a.is_power_of_two()).ok_or_else(|| fail(format!("general.alignment = {v:?}")))?,
    };
    let mut head = Vec::new();
    head.extend_from_slice(super::MAGIC);
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut head, key);
        head.extend_from_slice(&type_of(value).to_le_bytes());
        put_value(&mut head, value);
    }
    // Offsets are from the start of the data section, each aligned.
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        let (type_name, block, block_bytes) =
            ggml_type(t.type_id).ok_or_else(|| fail(format!("tensor {}: unknown type id {}", t.name, t.type_id)))?;
        let elements: usize = t.shape.iter().product();
        let row = t.shape.last().copied().unwrap_or(0);
        if t.shape.is_empty() || !row.is_multiple_of(block) || elements / block * block_bytes != t.data.len() {
            return Err(fail(format!("tensor {}: {} bytes do not hold a {type_name} tensor of shape {:?}", t.name, t.data.len(), t.shape)));
        }
        put_str(&mut head, &t.name);
        head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            head.extend_from_slice(&(d as u64).to_le_bytes());
        }
        head.extend_from_slice(&t.type_id.to_le_bytes());
        offset = super::align(offset, alignment).ok_or_else(|| fail("offsets overflow".into()))?;
        head.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset += t.data.len() as u64;
    }
    let tmp = path.with_extension("gguf.partial");
    let io = |e: std::io::Error| fail(e.to_string());
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    let data_start = super::align(head.len() as u64, alignment).ok_or_else(|| fail("header overflows".into()))?;
    head.resize(data_start as usize, 0);
    out.write_all(&head).map_err(io)?;
    let mut at = 0u64;
    for (t, &offset) in tensors.iter().zip(&offsets) {
        out.write_all(&vec![0u8; (offset - at) as usize]).map_err(io)?;
        out.write_all(&t.data).map_err(io)?;
        at = offset + t.data.len() as u64;
    }
    out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGUF's value type id of `value` (the reader's numbering).
fn type_of(value: &Value) -> u32 {
    match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::Str(s) => put_str(out, s),
        Value::Array(items) => {
            out.extend_from_slice(&items.first().map_or(8, type_of).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn a_copied_file_reads_back_with_the_same_metadata_tensors_and_bytes() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gguf/types.gguf");
        let file = GgufFile::open(&src).unwrap();
        let tensors: Vec<TensorOut> = file
            .tensor_infos()
            .iter()
            .map(|t| TensorOut { name: t.name.clone(), shape: t.shape.clone(), type_id: t.type_id, data: file.tensor_bytes(t).into() })
            .collect();
        let out = std::env::temp_dir().join(format!("parity-gguf-write-{}.gguf", std::process::id()));
        write(&out, file.metadata(), &tensors).unwrap();
        let back = GgufFile::open(&out).unwrap();
        assert_eq!(back.metadata(), file.metadata());
        assert_eq!(back.tensor_infos().len(), file.tensor_infos().len());
        for (a, b) in file.tensor_infos().iter().zip(back.tensor_infos()) {
            assert_eq!((&a.name, &a.shape, a.type_id), (&b.name, &b.shape, b.type_id));
            assert_eq!(file.tensor_bytes(a), back.tensor_bytes(b), "{}", a.name);
            assert_eq!(b.offset % 32, 0, "{} is aligned", b.name);
        }
        assert!(!out.with_extension("gguf.partial").exists(), "no partial file is left");
        std::fs::remove_file(&out).unwrap();
    }

    #[test]
    fn bytes_that_do_not_fit_the_shape_are_refused_and_nothing_is_written() {
        let out = std::env::temp_dir().join(format!("parity-gguf-write-bad-{}.gguf", std::process::id()));
        let bad = TensorOut { name: "x".into(), shape: vec![2, 32], type_id: 3, data: vec![0u8; 39].into() };
        let e = write(&out, &[], &[bad]).unwrap_err().to_string();
        assert!(e.contains("39 bytes do not hold a Q4_1 tensor of shape [2, 32]"), "{e}");
        assert!(!out.exists());
    }
}
