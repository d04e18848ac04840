//! A GGUF model cut down to what one failing case needs (`parity reduce`): its first `layers`
//! blocks with every tensor outside the blocks (final norm, output, position embeddings), and, for
//! a byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`), only the tokens the prompt can
//! reach, renumbered in their original order in `token_embd` (and `output`, when not tied) and in
//! the tokenizer's metadata. Tensor bytes are copied unchanged.
//!
//! The tokens kept: every token that is not a plain one (control, user-defined, unknown, byte,
//! unused) and every `tokenizer.ggml.*_token_id`; the 256 byte characters, so any text still
//! tokenizes (llama.cpp looks up the newline's); and the prompt's tokens with, recursively, both
//! halves of every merge that makes one of them. The merges kept are those whose halves and
//! result are all kept, in their original order. BPE applies, at each step, the lowest-ranked
//! merge among the adjacent pairs; every merge the prompt's words used is kept, and a kept merge
//! is one of the original list, so the lowest-ranked applicable one is the same at every step and
//! every tokenizer that runs BPE on these tables gives the prompt the same (renumbered) ids.
//! [`shrink`] checks that on its own file before it returns. Other vocabularies are kept whole.

use engine::gguf::write::{self, TensorOut};
use engine::gguf::{GgufFile, TensorInfo, Value};
use engine::tokenizer::Tokenizer;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ShrinkError {
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error("{}: {reason}", path.display())]
    Model { path: PathBuf, reason: String },
    #[error("{}: the cut-down model tokenizes the prompt as {got:?}, not {want:?} (the original's ids renumbered); report this as a parity bug", path.display())]
    Tokens { path: PathBuf, got: Vec<u32>, want: Vec<u32> },
}

/// What [`shrink`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Shrunk {
    pub layers: usize,
    pub original_layers: usize,
    pub vocab: usize,
    pub original_vocab: usize,
    /// The prompt's ids in the new file (BOS first when the model adds one).
    pub prompt_ids: Vec<u32>,
    pub bytes: u64,
}

/// Writes `out`: `src` with its first `layers` blocks and the vocabulary `prompt` needs.
pub fn shrink(src: &Path, layers: usize, prompt: &str, out: &Path) -> Result<Shrunk, ShrinkError> {
    let bad = |reason: String| ShrinkError::Model { path: src.to_path_buf(), reason };
    let file = GgufFile::open(src)?;
    let arch = file.architecture()?.to_string();
    let block_count = format!("{arch}.block_count");
    let original_layers = file.get_u32(&block_count)? as usize;
    if layers == 0 || layers > original_layers {
        return Err(bad(format!("cannot keep {layers} layers of {original_layers}")));
    }
    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let prompt_ids = tokenizer.encode(prompt);
    let kept: Vec<u32> = match file.get_str("tokenizer.ggml.model")? {
        "gpt2" => kept_tokens(&file, &tokens, &prompt_ids)?,
        _ => (0..tokens.len() as u32).collect(),
    };
    let new_id: HashMap<u32, u32> = kept.iter().enumerate().map(|(new, &old)| (old, new as u32)).collect();
    let kept_text: BTreeSet<&str> = kept.iter().map(|&id| tokens[id as usize].as_str()).collect();
    let mut metadata = Vec::new();
    for (key, value) in file.metadata() {
        let value = if *key == block_count {
            with_number(value, layers as u64)
        } else if *key == format!("{arch}.vocab_size") {
            with_number(value, kept.len() as u64)
        } else if matches!(key.as_str(), "tokenizer.ggml.tokens" | "tokenizer.ggml.token_type" | "tokenizer.ggml.scores") {
            match value {
                Value::Array(items) if items.len() == tokens.len() => Value::Array(kept.iter().map(|&id| items[id as usize].clone()).collect()),
                _ => return Err(bad(format!("metadata {key} does not have one entry per token"))),
            }
        } else if key == "tokenizer.ggml.merges" {
            let Value::Array(items) = value else { return Err(bad(format!("metadata {key} is not an array"))) };
            Value::Array(
                items.iter().filter(|m| m.as_str().and_then(split_merge).is_some_and(|(l, r)| merge_kept(&kept_text, l, r))).cloned().collect(),
            )
        } else if key.starts_with("tokenizer.ggml.") && key.ends_with("_token_id") {
            let id = value.as_u64().and_then(|id| u32::try_from(id).ok()).and_then(|id| new_id.get(&id));
            match id {
                Some(&id) => with_number(value, u64::from(id)),
                None => return Err(bad(format!("metadata {key} = {value:?} names no token"))),
            }
        } else {
            value.clone()
        };
        metadata.push((key.clone(), value));
    }
    let mut tensors = Vec::new();
    for info in file.tensor_infos() {
        if block_of(&info.name).is_some_and(|b| b >= layers) {
            continue;
        }
        let data = file.tensor_bytes(info);
        let out_tensor = if matches!(info.name.as_str(), "token_embd.weight" | "output.weight") {
            rows(info, data, &kept, tokens.len()).map_err(bad)?
        } else {
            TensorOut { name: info.name.clone(), shape: info.shape.clone(), type_id: info.type_id, data: data.into() }
        };
        tensors.push(out_tensor);
    }
    write::write(out, &metadata, &tensors)?;
    let want: Vec<u32> = prompt_ids.iter().map(|id| new_id[id]).collect();
    let written = GgufFile::open(out)?;
    let got = Tokenizer::from_gguf(&written)?.encode(prompt);
    if got != want {
        return Err(ShrinkError::Tokens { path: out.to_path_buf(), got, want });
    }
    let bytes = std::fs::metadata(out).map_err(|source| engine::Error::Io { path: out.to_path_buf(), source })?.len();
    Ok(Shrunk { layers, original_layers, vocab: kept.len(), original_vocab: tokens.len(), prompt_ids: want, bytes })
}

/// The ids kept from a byte-level BPE vocabulary for a prompt of `prompt_ids`, ascending.
fn kept_tokens(file: &GgufFile, tokens: &[String], prompt_ids: &[u32]) -> Result<Vec<u32>, ShrinkError> {
    let types = match file.get("tokenizer.ggml.token_type") {
        Some(_) => file.get_i32_array("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    let by_text: HashMap<&str, u32> = tokens.iter().enumerate().map(|(id, t)| (t.as_str(), id as u32)).collect();
    let merges = match file.get("tokenizer.ggml.merges") {
        Some(_) => file.get_str_array("tokenizer.ggml.merges")?,
        None => Vec::new(),
    };
    // Each token's text to the merges that make it.
    let mut made_by: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for m in &merges {
        if let Some((l, r)) = split_merge(m) {
            made_by.entry(format!("{l}{r}")).or_default().push((l.to_string(), r.to_string()));
        }
    }
    let mut kept: BTreeSet<u32> = (0..tokens.len() as u32).filter(|&id| types.get(id as usize).is_some_and(|&t| t != 1)).collect();
    for (key, value) in file.metadata() {
        if key.starts_with("tokenizer.ggml.") && key.ends_with("_token_id") {
            kept.extend(value.as_u64().and_then(|id| u32::try_from(id).ok()).filter(|&id| (id as usize) < tokens.len()));
        }
    }
    for c in engine::tokenizer::bpe::byte_to_char_table() {
        kept.extend(by_text.get(c.to_string().as_str()));
    }
    let mut todo: Vec<u32> = prompt_ids.to_vec();
    let mut seen = BTreeSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        kept.insert(id);
        for (l, r) in made_by.get(tokens[id as usize].as_str()).into_iter().flatten() {
            todo.extend([l, r].into_iter().filter_map(|half| by_text.get(half.as_str())));
        }
    }
    Ok(kept.into_iter().collect())
}

/// `"Ġ t"` as its two halves.
fn split_merge(merge: &str) -> Option<(&str, &str)> {
    merge.split_once(' ')
}

fn merge_kept(kept: &BTreeSet<&str>, l: &str, r: &str) -> bool {
    kept.contains(l) && kept.contains(r) && kept.contains(format!("{l}{r}").as_str())
}

/// `blk.N.…`'s N.
fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The same metadata number type holding `n`.
fn with_number(value: &Value, n: u64) -> Value {
    match value {
        Value::U8(_) => Value::U8(n as u8),
        Value::U16(_) => Value::U16(n as u16),
        Value::I16(_) => Value::I16(n as i16),
        Value::I32(_) => Value::I32(n as i32),
        Value::U64(_) => Value::U64(n),
        Value::I64(_) => Value::I64(n as i64),
        _ => Value::U32(n as u32),
    }
}

/// A `[vocab, d]` tensor's rows of the `kept` ids, its stored bytes copied row by row.
fn rows<'a>(info: &TensorInfo, data: &'a [u8], kept: &[u32], vocab: usize) -> Result<TensorOut<'a>, String> {
    if info.shape.len() != 2 || info.shape[0] != vocab || !data.len().is_multiple_of(vocab) {
        return Err(format!("{} has shape {:?}, not one row per token of {vocab}", info.name, info.shape));
    }
    let row = data.len() / vocab;
    let mut bytes = Vec::with_capacity(row * kept.len());
    for &id in kept {
        bytes.extend_from_slice(&data[id as usize * row..(id as usize + 1) * row]);
    }
    Ok(TensorOut { name: info.name.clone(), shape: vec![kept.len(), info.shape[1]], type_id: info.type_id, data: bytes.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;
    use std::collections::BTreeMap;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models").join(name)
    }

    fn traced(model: &Path, prompt: &str) -> BTreeMap<String, Tensor> {
        let model = engine::Model::load(model).unwrap();
        crate::engine_run::trace(&model, prompt, 0, 1.0, engine::Shared::default()).unwrap().tensors
    }

    /// The cut model's first layer and embeddings are bit for bit the whole model's.
    fn assert_layer0_unchanged(src: &Path, out: &Path, prompt: &str) {
        let (whole, cut) = (traced(src, prompt), traced(out, prompt));
        let keys: Vec<&String> = cut.keys().filter(|k| k.starts_with("blk.0.") || *k == "embed").collect();
        assert!(keys.len() > 5, "{keys:?}");
        for key in keys {
            assert!(cut[key].bit_identical(&whole[key]), "{key} differs");
        }
        assert!(!cut.keys().any(|k| k.starts_with("blk.1.")), "one layer only");
    }

    #[test]
    fn a_bpe_model_keeps_one_layer_and_the_prompts_tokens_with_the_same_embeddings() {
        let src = fixture("tiny-gpt2/model-f32.gguf");
        let out = std::env::temp_dir().join(format!("parity-shrink-gpt2-{}.gguf", std::process::id()));
        let prompt = "The theory of the other";
        let shrunk = shrink(&src, 1, prompt, &out).unwrap();
        assert_eq!((shrunk.layers, shrunk.original_layers, shrunk.original_vocab), (1, 2, 407));
        assert!(shrunk.vocab < 407, "{}", shrunk.vocab);
        let (a, b) = (GgufFile::open(&src).unwrap(), GgufFile::open(&out).unwrap());
        assert_eq!(b.get_u32("gpt2.block_count").unwrap(), 1);
        let (old_tokens, new_tokens) = (a.get_str_array("tokenizer.ggml.tokens").unwrap(), b.get_str_array("tokenizer.ggml.tokens").unwrap());
        let whole_ids = Tokenizer::from_gguf(&a).unwrap().encode(prompt);
        let cut_ids = Tokenizer::from_gguf(&b).unwrap().encode(prompt);
        // The same tokens, by text, under new numbers.
        let texts = |tokens: &[String], ids: &[u32]| ids.iter().map(|&i| tokens[i as usize].clone()).collect::<Vec<_>>();
        assert_eq!(texts(&new_tokens, &cut_ids), texts(&old_tokens, &whole_ids));
        assert_eq!(cut_ids, shrunk.prompt_ids);
        // Every byte character is kept; the merges kept are the original's, in order.
        assert!(engine::tokenizer::bpe::byte_to_char_table().iter().all(|c| new_tokens.contains(&c.to_string())));
        let (old_merges, new_merges) = (a.get_str_array("tokenizer.ggml.merges").unwrap(), b.get_str_array("tokenizer.ggml.merges").unwrap());
        let mut at = old_merges.iter();
        assert!(new_merges.iter().all(|m| at.any(|o| o == m)), "kept merges are a subsequence of the original's");
        assert_layer0_unchanged(&src, &out, prompt);
        std::fs::remove_file(&out).unwrap();
    }

    #[test]
    fn a_sentencepiece_model_keeps_its_vocabulary_and_loses_its_later_layers() {
        let src = fixture("tiny-llama/model-q8_0.gguf");
        let out = std::env::temp_dir().join(format!("parity-shrink-llama-{}.gguf", std::process::id()));
        let shrunk = shrink(&src, 1, "Hello world", &out).unwrap();
        assert_eq!((shrunk.layers, shrunk.vocab), (1, shrunk.original_vocab));
        assert!(shrunk.bytes < std::fs::metadata(&src).unwrap().len());
        assert_layer0_unchanged(&src, &out, "Hello world");
        std::fs::remove_file(&out).unwrap();
    }

    #[test]
    fn keeping_no_layer_or_more_than_there_are_is_refused() {
        let src = fixture("tiny-llama/model-f32.gguf");
        let out = std::env::temp_dir().join(format!("parity-shrink-none-{}.gguf", std::process::id()));
        for layers in [0, 3] {
            let e = shrink(&src, layers, "Hi", &out).unwrap_err().to_string();
            assert!(e.contains(&format!("cannot keep {layers} layers of 2")), "{e}");
        }
        assert!(!out.exists());
    }
}
