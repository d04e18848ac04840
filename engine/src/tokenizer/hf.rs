//! Reading an HF `tokenizer.json` (plus `tokenizer_config.json` beside it) into a
//! [`TokenizerSpec`], the way llama.cpp's converter would have written it to GGUF.
//!
//! Supported: byte-level BPE with the GPT-2 pre-tokenizer (`ByteLevel`) or with individual
//! digits first (`Sequence[Digits(individual_digits), ByteLevel]`, SmolLM's). Anything else is
//! refused with a message naming what was found, rather than tokenized differently.

use std::path::Path;

use serde_json::Value;

use super::{err, TokenizerSpec};
use crate::{Error, Result};

pub fn spec_from_hf_json(path: &Path) -> Result<TokenizerSpec> {
    let json = read_json(path)?;
    let bad = |reason: String| Error::Format { path: path.to_path_buf(), format: "HF tokenizer.json", reason };

    let model = json.get("model").ok_or_else(|| bad("no \"model\" object".into()))?;
    let model_type = model.get("type").and_then(Value::as_str).unwrap_or("");
    if model_type != "BPE" {
        return Err(err(format!("{}: model type '{model_type}' is not supported (only byte-level BPE)", path.display())));
    }
    // SentencePiece models converted to tokenizer.json (Llama, TinyLlama) replace spaces with
    // U+2581 in a normalizer, or (newer conversions: Gemma, Phi-3) in a Metaspace pre-tokenizer,
    // and fall back to byte tokens; byte-level BPE has neither.
    let byte_fallback = model.get("byte_fallback").and_then(Value::as_bool).unwrap_or(false);
    let metaspace = metaspace_prefix(json.get("pre_tokenizer").unwrap_or(&Value::Null));
    let normalizer = json.get("normalizer").unwrap_or(&Value::Null);
    let sentencepiece = byte_fallback && (is_sentencepiece_normalizer(normalizer) || (normalizer.is_null() && metaspace.is_some()));
    if !sentencepiece && !json.get("normalizer").is_none_or(Value::is_null) {
        return Err(err(format!(
            "{}: normalizer {} is not supported (none for byte-level BPE, Prepend+Replace of U+2581 for SentencePiece)",
            path.display(),
            json["normalizer"].get("type").and_then(Value::as_str).unwrap_or("?")
        )));
    }
    let pre = match sentencepiece {
        true => None,
        false => Some(pre_tokenizer_name(json.get("pre_tokenizer").unwrap_or(&Value::Null)).map_err(|found| {
            err(format!(
                "{}: pre_tokenizer {found} is not supported (ByteLevel, Digits then ByteLevel, or the Llama 3 or Qwen2 Split then ByteLevel)",
                path.display()
            ))
        })?),
    };

    // Ids come from the model vocabulary and the added tokens; together they must be 0..n.
    let vocab = model.get("vocab").and_then(Value::as_object).ok_or_else(|| bad("model has no \"vocab\" object".into()))?;
    let mut entries: Vec<(u64, String, i32)> = Vec::with_capacity(vocab.len());
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| bad(format!("vocab entry '{text}' has a non-integer id")))?;
        entries.push((id, text.clone(), 1));
    }
    for added in json.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
        let id = added.get("id").and_then(Value::as_u64).ok_or_else(|| bad("an added token has no integer id".into()))?;
        let text = added.get("content").and_then(Value::as_str).ok_or_else(|| bad(format!("added token {id} has no content")))?;
        let special = added.get("special").and_then(Value::as_bool).unwrap_or(false);
        // llama.cpp's converter: special added tokens are control tokens, others user-defined.
        entries.push((id, text.to_string(), if special { 3 } else { 4 }));
    }
    entries.sort_by_key(|e| e.0);
    entries.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same && later.2 != 1 {
            earlier.2 = later.2; // an added token overrides the type of its vocab entry
        }
        same
    });
    let mut tokens = Vec::with_capacity(entries.len());
    let mut types = Vec::with_capacity(entries.len());
    for (expected, (id, text, ty)) in entries.into_iter().enumerate() {
        if id != expected as u64 {
            return Err(bad(format!("token ids are not contiguous: id {expected} is missing")));
        }
        tokens.push(text);
        types.push(ty);
    }

    let mut merges = Vec::new();
    for (i, m) in model.get("merges").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let merge = match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => match (pair.first().and_then(Value::as_str), pair.get(1).and_then(Value::as_str), pair.len()) {
                (Some(a), Some(b), 2) => format!("{a} {b}"),
                _ => return Err(bad(format!("merge {i} is not a pair of strings"))),
            },
            _ => return Err(bad(format!("merge {i} is neither a string nor a pair"))),
        };
        merges.push(merge);
    }

    let id_of = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
    let config = match path.parent().map(|dir| dir.join("tokenizer_config.json")) {
        Some(p) if p.exists() => Some(read_json(&p)?),
        _ => None,
    };
    let config_token = |key: &str| {
        let v = config.as_ref()?.get(key)?;
        let text = v.as_str().or_else(|| v.get("content").and_then(Value::as_str))?;
        id_of(text)
    };
    let template_bos = template_first_special(json.get("post_processor").unwrap_or(&Value::Null)).and_then(|t| id_of(&t));
    let bos_id = config_token("bos_token").or(template_bos);
    let eos_id = config_token("eos_token");
    let unk_id = model.get("unk_token").and_then(Value::as_str).and_then(id_of);
    let add_bos = config.as_ref().and_then(|c| c.get("add_bos_token")).and_then(Value::as_bool).unwrap_or_else(|| {
        let model = if sentencepiece { "llama" } else { "gpt2" };
        template_bos.is_some() || TokenizerSpec::default_add_bos(model, pre)
    });

    if sentencepiece {
        return Ok(TokenizerSpec {
            model: "llama".into(),
            pre: None,
            scores: Some(scores_from_merge_ranks(&tokens, &merges)),
            token_types: Some(sentencepiece_types(&tokens, &types, unk_id)),
            tokens,
            merges: Vec::new(),
            bos_id,
            eos_id,
            unk_id,
            add_bos,
            add_space_prefix: metaspace.unwrap_or(true),
        });
    }
    Ok(TokenizerSpec {
        model: "gpt2".into(),
        pre: pre.map(str::to_string),
        tokens,
        scores: None,
        token_types: Some(types),
        merges,
        bos_id,
        eos_id,
        unk_id,
        add_bos,
        add_space_prefix: false,
    })
}

/// `Sequence[Prepend("\u{2581}"), Replace(" ", "\u{2581}")]`, the SentencePiece normalizer.
fn is_sentencepiece_normalizer(n: &Value) -> bool {
    let parts = n.get("normalizers").and_then(Value::as_array);
    let Some([prepend, replace]) = parts.map(Vec::as_slice) else { return false };
    prepend.get("type").and_then(Value::as_str) == Some("Prepend")
        && prepend.get("prepend").and_then(Value::as_str) == Some("\u{2581}")
        && replace.get("type").and_then(Value::as_str) == Some("Replace")
        && replace.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str) == Some(" ")
        && replace.get("content").and_then(Value::as_str) == Some("\u{2581}")
}

/// A `Metaspace` pre-tokenizer that only turns spaces into U+2581 (no splitting): whether it
/// prepends one (SentencePiece's dummy prefix; Gemma's has none).
fn metaspace_prefix(pre: &Value) -> Option<bool> {
    let is = |k: &str, v: &str| pre.get(k).and_then(Value::as_str) == Some(v);
    if !(is("type", "Metaspace") && is("replacement", "\u{2581}") && pre.get("split").and_then(Value::as_bool) == Some(false)) {
        return None;
    }
    match pre.get("prepend_scheme").and_then(Value::as_str) {
        Some("never") => Some(false),
        Some("first" | "always") => Some(true),
        _ => None,
    }
}

/// SentencePiece merges the adjacent pair whose joined piece scores highest; HF's BPE the pair
/// with the lowest merge rank. Scoring each piece by minus the rank of the merge that makes it
/// gives the same order; pieces no merge makes rank below every merge.
fn scores_from_merge_ranks(tokens: &[String], merges: &[String]) -> Vec<f32> {
    let mut scores = vec![-(merges.len() as f32) - 1.0; tokens.len()];
    let index: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    for (rank, m) in merges.iter().enumerate() {
        if let Some(&id) = index.get(m.replacen(' ', "", 1).as_str()) {
            if scores[id] < -(rank as f32) {
                scores[id] = -(rank as f32);
            }
        }
    }
    scores
}

/// llama.cpp's token types for a SentencePiece vocabulary: `<0xHH>` pieces are bytes (6), the
/// unknown piece is 2, added tokens keep their type.
fn sentencepiece_types(tokens: &[String], types: &[i32], unk_id: Option<u32>) -> Vec<i32> {
    let is_byte = |t: &str| t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && u8::from_str_radix(&t[3..5], 16).is_ok();
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .map(|(id, (t, &ty))| match () {
            _ if Some(id as u32) == unk_id => 2,
            _ if ty != 1 => ty,
            _ if is_byte(t) => 6,
            _ => 1,
        })
        .collect()
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| Error::Format { path: path.to_path_buf(), format: "JSON", reason: e.to_string() })
}

/// Llama 3's pre-tokenizer regex as its tokenizer.json spells it; Qwen2's differs only in `\p{N}`.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The GGUF pre-tokenizer name for an HF pre_tokenizer, or a description of what was found.
fn pre_tokenizer_name(pre: &Value) -> std::result::Result<&'static str, String> {
    let kind = |v: &Value| v.get("type").and_then(Value::as_str).unwrap_or("?").to_string();
    let is_plain_byte_level = |v: &Value| {
        kind(v) == "ByteLevel"
            && !v.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false)
            && v.get("use_regex").and_then(Value::as_bool).unwrap_or(true)
    };
    if is_plain_byte_level(pre) {
        return Ok("gpt-2");
    }
    if kind(pre) == "Sequence" {
        let parts: Vec<&Value> = pre.get("pretokenizers").and_then(Value::as_array).into_iter().flatten().collect();
        if let [first, byte_level] = parts[..] {
            let individual = first.get("individual_digits").and_then(Value::as_bool).unwrap_or(false);
            if kind(first) == "Digits" && individual && is_plain_byte_level(byte_level) {
                return Ok("smollm");
            }
            let regex_free = kind(byte_level) == "ByteLevel" && !byte_level.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
            let pattern = first.get("pattern").and_then(|p| p.get("Regex")).and_then(Value::as_str);
            if kind(first) == "Split" && regex_free {
                match pattern {
                    Some(LLAMA3_PATTERN) => return Ok("llama-bpe"),
                    Some(p) if p == LLAMA3_PATTERN.replace("\\p{N}{1,3}", "\\p{N}") => return Ok("qwen2"),
                    _ => {}
                }
            }
        }
        return Err(format!("Sequence[{}]", parts.iter().map(|p| kind(p)).collect::<Vec<_>>().join(", ")));
    }
    Err(if pre.is_null() { "null".into() } else { pre.to_string().chars().take(120).collect() })
}

/// The first special token of a TemplateProcessing `single` template (a BOS the template adds).
fn template_first_special(post: &Value) -> Option<String> {
    let single = match post.get("type").and_then(Value::as_str)? {
        "TemplateProcessing" => post.get("single")?,
        "Sequence" => {
            return post.get("processors")?.as_array()?.iter().find_map(template_first_special);
        }
        _ => return None,
    };
    let first = single.as_array()?.first()?;
    Some(first.get("SpecialToken")?.get("id")?.as_str()?.to_string())
}
