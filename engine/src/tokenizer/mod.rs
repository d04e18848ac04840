//! Text to token ids and back, matching llama.cpp's tokenizer id for id.
//!
//! Two families, named after GGUF's `tokenizer.ggml.model`:
//! - `gpt2`: byte-level BPE. Text is cut into words by the model's pre-tokenizer
//!   ([`pretokenize`]), each word's bytes become GPT-2's printable characters, and ranked merges
//!   join them ([`bpe`]).
//! - `llama`: SentencePiece-style. Spaces become U+2581 (with one prepended when
//!   `add_space_prefix`), and adjacent pieces join by highest token score, with `<0xXX>` byte
//!   tokens for what is left ([`spm`]).
//!
//! Special tokens: [`Tokenizer::encode`] treats text like `<|im_start|>` as plain text, as
//! llama.cpp's `tokenize(..., parse_special=false)` does; [`Tokenizer::encode_with_special`]
//! turns control-token texts into their ids (as HF tokenizers always do). User-defined tokens are
//! matched in both, as in llama.cpp and HF.
//!
//! A tokenizer is built from plain data ([`TokenizerSpec`], filled from GGUF metadata by the
//! caller) or from an HF `tokenizer.json` ([`Tokenizer::from_hf_json`]).

pub mod bpe;
mod hf;
pub mod pretokenize;
mod spm;

#[cfg(test)]
mod fixture_tests;

use std::collections::HashMap;
use std::path::Path;

use crate::gguf::GgufFile;
use crate::{Error, Result};
use pretokenize::PreTokenizer;

/// Everything a tokenizer is made of, as GGUF stores it under `tokenizer.ggml.*`.
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece-style).
    pub model: String,
    /// `tokenizer.ggml.pre`: "smollm", "gpt-2", "default", ... (BPE only).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SPM; the merge priority of each token).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`, each "left right" (BPE).
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; when the key is absent use [`TokenizerSpec::default_add_bos`].
    pub add_bos: bool,
    /// `tokenizer.ggml.add_space_prefix`; when absent use [`TokenizerSpec::default_add_space_prefix`].
    pub add_space_prefix: bool,
}

impl TokenizerSpec {
    /// llama.cpp's `add_bos` when the GGUF has no `tokenizer.ggml.add_bos_token`: true for
    /// SentencePiece models and for the BPE pre-tokenizers of the Llama 3 family, Tekken and
    /// Chameleon; false for every other BPE model (GPT-2, SmolLM, ...).
    pub fn default_add_bos(model: &str, pre: Option<&str>) -> bool {
        match model {
            "llama" => true,
            "gpt2" => matches!(
                pre,
                Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "tekken" | "chameleon")
            ),
            _ => false,
        }
    }

    /// llama.cpp's `add_space_prefix` when the GGUF has no `tokenizer.ggml.add_space_prefix`:
    /// true for SentencePiece models, false for BPE.
    pub fn default_add_space_prefix(model: &str) -> bool {
        model == "llama"
    }
}

/// What a token is, from `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_gguf(code: i32) -> Option<TokenType> {
        Some(match code {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
}

enum Model {
    Bpe {
        pre: PreTokenizer,
        merges: bpe::Merges,
        /// Id of the single byte-level character for each byte, if it is in the vocabulary.
        byte_ids: [Option<u32>; 256],
    },
    Spm {
        scores: Vec<f32>,
        byte_tokens: [Option<u32>; 256],
        add_space_prefix: bool,
    },
}

/// Token bytes in, whole UTF-8 text out, for streaming: a token may end inside a character, whose
/// bytes are held until the token that completes it.
#[derive(Debug, Default)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// The text `bytes` complete; bytes that can never be valid UTF-8 become U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        text
    }

    /// What is still held (an unfinished character at the end of the stream), as U+FFFD.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// A piece of input text after special tokens have been cut out.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

pub struct Tokenizer {
    model: Model,
    tokens: Vec<String>,
    types: Vec<TokenType>,
    token_to_id: HashMap<String, u32>,
    /// Control, user-defined and unknown tokens, longest text first: matched in input text.
    specials: Vec<u32>,
    /// The bytes each token stands for.
    pieces: Vec<Vec<u8>>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    unk_id: Option<u32>,
    add_bos: bool,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

impl Tokenizer {
    pub fn from_spec(spec: TokenizerSpec) -> Result<Tokenizer> {
        let n = spec.tokens.len();
        if n == 0 {
            return Err(err("the vocabulary is empty (tokenizer.ggml.tokens has no entries)"));
        }
        if u32::try_from(n).is_err() {
            return Err(err(format!("the vocabulary has {n} tokens, more than token ids can number")));
        }
        let types: Vec<TokenType> = match &spec.token_types {
            None => vec![TokenType::Normal; n],
            Some(codes) if codes.len() != n => {
                return Err(err(format!("{} token types for {n} tokens; the two lists must have equal length", codes.len())))
            }
            Some(codes) => codes
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    TokenType::from_gguf(c).ok_or_else(|| err(format!("token {i} '{}' has type {c}; known types are 0 to 6", spec.tokens[i])))
                })
                .collect::<Result<_>>()?,
        };
        for (what, id) in [("BOS", spec.bos_id), ("EOS", spec.eos_id), ("unknown", spec.unk_id)] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(err(format!("the {what} token id {id} is outside the vocabulary of {n} tokens")));
            }
        }
        if spec.add_bos && spec.bos_id.is_none() {
            return Err(err("add_bos is set but the tokenizer has no BOS token id"));
        }

        // Later duplicates win, as in llama.cpp; empty texts cannot be typed, so they get no entry.
        let token_to_id: HashMap<String, u32> =
            spec.tokens.iter().enumerate().filter(|(_, t)| !t.is_empty()).map(|(i, t)| (t.clone(), i as u32)).collect();

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(types[i as usize], TokenType::Control | TokenType::UserDefined | TokenType::Unknown) && !spec.tokens[i as usize].is_empty()
            })
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(spec.tokens[i as usize].len()));

        let model = match spec.model.as_str() {
            "gpt2" => {
                let pre = PreTokenizer::from_gguf_name(spec.pre.as_deref()).ok_or_else(|| {
                    err(format!(
                        "pre-tokenizer '{}' is not supported (supported: default, gpt-2, smollm, llama-bpe, qwen2 and their aliases)",
                        spec.pre.as_deref().unwrap_or("")
                    ))
                })?;
                let merges = build_merges(&spec.merges, &token_to_id)?;
                let table = bpe::byte_to_char_table();
                let mut byte_ids = [None; 256];
                for (b, slot) in byte_ids.iter_mut().enumerate() {
                    *slot = token_to_id.get(table[b].to_string().as_str()).copied();
                }
                Model::Bpe { pre, merges, byte_ids }
            }
            "llama" => {
                let scores = match spec.scores {
                    Some(s) if s.len() != n => return Err(err(format!("{} scores for {n} tokens; the two lists must have equal length", s.len()))),
                    Some(s) => s,
                    None => vec![0.0; n],
                };
                let mut byte_tokens = [None; 256];
                for (b, slot) in byte_tokens.iter_mut().enumerate() {
                    let hex = format!("<0x{b:02X}>");
                    *slot = token_to_id.get(&hex).copied().or_else(|| {
                        // llama.cpp falls back to the bare byte as a token (only ASCII can be one)
                        char::from_u32(b as u32).filter(|c| c.is_ascii()).and_then(|c| token_to_id.get(c.to_string().as_str()).copied())
                    });
                }
                Model::Spm { scores, byte_tokens, add_space_prefix: spec.add_space_prefix }
            }
            other => {
                return Err(err(format!("tokenizer model '{other}' is not supported (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)")))
            }
        };

        let pieces = token_pieces(&model, &spec.tokens, &types);
        Ok(Tokenizer {
            model,
            tokens: spec.tokens,
            types,
            token_to_id,
            specials,
            pieces,
            bos_id: spec.bos_id,
            eos_id: spec.eos_id,
            unk_id: spec.unk_id,
            add_bos: spec.add_bos,
        })
    }

    /// Reads an HF `tokenizer.json` (byte-level BPE), with `tokenizer_config.json` beside it (if
    /// present) for `add_bos_token`, `bos_token` and `eos_token`.
    pub fn from_hf_json(path: &Path) -> Result<Tokenizer> {
        Tokenizer::from_spec(hf::spec_from_hf_json(path)?)
    }

    /// Token ids for `text`, with BOS first when the model adds one. Special-token texts in
    /// `text` stay plain text (llama.cpp's default, `parse_special = false`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_impl(text, false)
    }

    /// Like [`Tokenizer::encode`], but control-token texts in `text` (e.g. `<|im_start|>`)
    /// become their token ids, as for a chat template.
    pub fn encode_with_special(&self, text: &str) -> Vec<u32> {
        self.encode_impl(text, true)
    }

    /// The text of `ids`. Control and unknown tokens carry no text and are skipped (llama.cpp's
    /// default detokenize); for SentencePiece models with a space prefix, the space the encoder
    /// added before the first word is removed. Invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let strip_first_space = matches!(self.model, Model::Spm { add_space_prefix: true, .. });
        let mut bytes = Vec::new();
        let mut first = true;
        for &id in ids.iter().filter(|&&id| !self.is_textless(id)) {
            let piece = self.text_bytes(id);
            let piece = if first && strip_first_space { piece.strip_prefix(b" ").unwrap_or(piece) } else { piece };
            first = false;
            bytes.extend_from_slice(piece);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The exact bytes token `id` stands for, for streaming output: a token may end inside a
    /// UTF-8 character. Control, unknown and user-defined tokens give their text; an id outside
    /// the vocabulary gives nothing.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.pieces.get(id as usize).cloned().unwrap_or_default()
    }

    /// The bytes `id` adds to decoded text as [`Tokenizer::decode`] sees it: nothing for
    /// control and unknown tokens (an end-of-sequence token is not text), else its piece.
    pub fn text_bytes(&self, id: u32) -> &[u8] {
        if self.is_textless(id) {
            return &[];
        }
        self.pieces.get(id as usize).map_or(&[][..], |p| p.as_slice())
    }

    fn is_textless(&self, id: u32) -> bool {
        matches!(self.token_type(id), Some(TokenType::Control | TokenType::Unknown))
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    /// Whether [`Tokenizer::encode`] puts BOS first.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The vocabulary entry of `id` as stored (byte-level characters, U+2581 for spaces).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The id of a vocabulary entry, looked up by its stored text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    fn encode_impl(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if self.add_bos {
            out.extend(self.bos_id);
        }
        let fragments = if text.is_empty() { Vec::new() } else { self.partition(text, parse_special) };
        match &self.model {
            Model::Bpe { pre, merges, byte_ids } => {
                let whole_words = pre.ignores_merges().then(bpe::byte_to_char_table);
                for fragment in fragments {
                    match fragment {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(text) => {
                            for word in pre.split(text) {
                                // Llama 3 takes a word that is a token as it is, merges or not.
                                let whole =
                                    whole_words.and_then(|table| self.token_to_id.get(&word.bytes().map(|b| table[b as usize]).collect::<String>()));
                                if let Some(&id) = whole {
                                    out.push(id);
                                    continue;
                                }
                                let symbols: Vec<Option<u32>> = word.bytes().map(|b| byte_ids[b as usize]).collect();
                                // A byte whose character is missing from the vocabulary is dropped, as in llama.cpp.
                                out.extend(merges.apply(&symbols).into_iter().flatten());
                            }
                        }
                    }
                }
            }
            Model::Spm { scores, byte_tokens, add_space_prefix } => {
                let vocab = spm::SpmVocab { token_to_id: &self.token_to_id, scores, byte_tokens, unk_id: self.unk_id };
                // llama.cpp puts the space prefix before the first text and after every special token.
                let mut after_special = true;
                for fragment in fragments {
                    match fragment {
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                        Fragment::Text(text) => {
                            let prefix = if *add_space_prefix && after_special { " " } else { "" };
                            let escaped = format!("{prefix}{text}").replace(' ', "\u{2581}");
                            spm::encode(&vocab, &escaped, &mut out);
                            after_special = false;
                        }
                    }
                }
            }
        }
        out
    }

    /// Cuts special-token texts out of `text`, longest tokens first, each occurrence left to
    /// right. Control and unknown tokens only count when `parse_special`.
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut fragments = vec![Fragment::Text(text)];
        for &id in &self.specials {
            let ty = self.types[id as usize];
            if !parse_special && ty != TokenType::UserDefined {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            let mut next = Vec::with_capacity(fragments.len());
            for fragment in fragments {
                let Fragment::Text(t) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut rest = 0;
                for (at, _) in t.match_indices(needle) {
                    if at > rest {
                        next.push(Fragment::Text(&t[rest..at]));
                    }
                    next.push(Fragment::Token(id));
                    rest = at + needle.len();
                }
                if rest < t.len() {
                    next.push(Fragment::Text(&t[rest..]));
                }
            }
            fragments = next;
        }
        fragments
    }
}

/// Checks every merge and indexes it by the ids of its two sides.
fn build_merges(merges: &[String], token_to_id: &HashMap<String, u32>) -> Result<bpe::Merges> {
    let mut pairs = HashMap::with_capacity(merges.len());
    for (rank, merge) in merges.iter().enumerate() {
        // The separator is the first space after the first character (llama.cpp's rule).
        let sep = merge.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
        let Some(sep) = sep else {
            return Err(err(format!("merge {rank} '{merge}' has no space between its two sides")));
        };
        let (left, right) = (&merge[..sep], &merge[sep + 1..]);
        let id_of = |text: &str| {
            token_to_id.get(text).copied().ok_or_else(|| err(format!("merge {rank} '{merge}' names a token not in the vocabulary: '{text}'")))
        };
        let (l, r) = (id_of(left)?, id_of(right)?);
        let joined = id_of(&format!("{left}{right}"))?;
        let rank = u32::try_from(rank).map_err(|_| err("more merges than token ids can number"))?;
        pairs.entry((l, r)).or_insert((rank, joined));
    }
    Ok(bpe::Merges::new(pairs))
}

/// The bytes each token stands for, following llama.cpp's `token_to_piece(special = true)`.
fn token_pieces(model: &Model, tokens: &[String], types: &[TokenType]) -> Vec<Vec<u8>> {
    let char_to_byte = bpe::char_to_byte_map();
    tokens
        .iter()
        .zip(types)
        .map(|(text, ty)| match (ty, model) {
            (TokenType::Control | TokenType::Unknown | TokenType::UserDefined, _) => text.as_bytes().to_vec(),
            (TokenType::Normal, Model::Bpe { .. }) => {
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match char_to_byte.get(&c) {
                        Some(&b) => out.push(b),
                        // not a byte-level character: keep it as written
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out
            }
            (TokenType::Normal, Model::Spm { .. }) => text.replace('\u{2581}', " ").into_bytes(),
            (TokenType::Byte, Model::Spm { .. }) => match parse_byte_token(text) {
                Some(b) => vec![b],
                None => text.as_bytes().to_vec(),
            },
            // llama.cpp renders unused and undefined tokens (and BPE byte tokens) as nothing.
            _ => Vec::new(),
        })
        .collect()
}

/// The byte of a `<0xXX>` token.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    /// The tokenizer described by a GGUF file's `tokenizer.ggml.*` keys.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        let opt_u32 = |k: &str| file.get(k).map(|_| file.get_u32(k)).transpose();
        let opt_bool = |k: &str| file.get(k).and_then(|v| v.as_bool());
        let model = file.get_str("tokenizer.ggml.model")?.to_string();
        let spec = TokenizerSpec {
            pre: file.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).map(str::to_string),
            tokens: file.get_str_array("tokenizer.ggml.tokens")?,
            scores: file.get("tokenizer.ggml.scores").map(|_| file.get_f32_array("tokenizer.ggml.scores")).transpose()?,
            token_types: file.get("tokenizer.ggml.token_type").map(|_| file.get_i32_array("tokenizer.ggml.token_type")).transpose()?,
            merges: file.get("tokenizer.ggml.merges").map(|_| file.get_str_array("tokenizer.ggml.merges")).transpose()?.unwrap_or_default(),
            bos_id: opt_u32("tokenizer.ggml.bos_token_id")?,
            eos_id: opt_u32("tokenizer.ggml.eos_token_id")?,
            unk_id: opt_u32("tokenizer.ggml.unknown_token_id")?,
            // llama.cpp's defaults when the key is absent: SentencePiece adds BOS, byte-level BPE does not.
            add_bos: opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama"),
            add_space_prefix: opt_bool("tokenizer.ggml.add_space_prefix").unwrap_or(model == "llama"),
            model,
        };
        Tokenizer::from_spec(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_bpe(pre: &str) -> TokenizerSpec {
        let table = bpe::byte_to_char_table();
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into()];
        tokens.extend(table.iter().map(|c| c.to_string()));
        tokens.extend(["he", "ll", "hell", "hello", "Ġw", "Ġwo"].map(String::from));
        let mut types = vec![1; tokens.len()];
        types[0] = 3;
        types[1] = 3;
        TokenizerSpec {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            tokens,
            token_types: Some(types),
            merges: ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"].map(String::from).to_vec(),
            bos_id: Some(0),
            eos_id: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn bpe_merges_words_and_keeps_special_text_plain_unless_asked() {
        let tok = Tokenizer::from_spec(tiny_bpe("gpt-2")).unwrap();
        let id = |t: &str| tok.token_id(t).unwrap();
        assert_eq!(tok.encode("hello wo"), vec![id("hello"), id("Ġwo")]);
        let plain = tok.encode("<|im_start|>hello");
        assert!(!plain.contains(&1));
        assert_eq!(tok.decode(&plain), "<|im_start|>hello");
        assert_eq!(tok.encode_with_special("<|im_start|>hello"), vec![1, id("hello")]);
        assert_eq!(tok.token_bytes(id("Ġwo")), b" wo");
        assert_eq!(tok.token_bytes(1), b"<|im_start|>");
        assert!(tok.token_bytes(100_000).is_empty());
    }

    #[test]
    fn text_stream_holds_a_split_character_until_its_last_byte() {
        // "é" is C3 A9, "€" is E2 82 AC.
        let mut s = TextStream::default();
        assert_eq!(s.push(b"a\xC3"), "a");
        assert_eq!(s.push(b"\xA9\xE2\x82"), "\u{e9}");
        assert_eq!(s.push(b"\xAC"), "\u{20ac}");
        assert_eq!(s.push(b"\xFFb"), "\u{fffd}b");
        assert_eq!(s.push(b"\xE2"), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn bos_is_added_only_when_asked() {
        let mut spec = tiny_bpe("gpt-2");
        assert!(Tokenizer::from_spec(spec.clone()).unwrap().encode("").is_empty());
        spec.add_bos = true;
        let tok = Tokenizer::from_spec(spec).unwrap();
        assert_eq!(tok.encode(""), vec![0]);
        assert_eq!(tok.encode("hello")[0], 0);
    }

    #[test]
    fn llama_cpp_defaults_for_add_bos_and_space_prefix() {
        assert!(TokenizerSpec::default_add_bos("llama", None));
        assert!(!TokenizerSpec::default_add_bos("gpt2", Some("smollm")));
        assert!(TokenizerSpec::default_add_bos("gpt2", Some("llama-bpe")));
        assert!(TokenizerSpec::default_add_space_prefix("llama"));
        assert!(!TokenizerSpec::default_add_space_prefix("gpt2"));
    }

    #[test]
    fn malformed_specs_are_errors_that_say_what_is_wrong() {
        let message = |spec: TokenizerSpec| match Tokenizer::from_spec(spec) {
            Err(Error::Tokenizer(m)) => m,
            Err(e) => panic!("wrong error kind: {e}"),
            Ok(_) => panic!("accepted a malformed spec"),
        };
        let mut s = tiny_bpe("gpt-2");
        s.merges.push("x yz".into());
        assert!(message(s).contains("merge 6 'x yz' names a token not in the vocabulary"));
        let mut s = tiny_bpe("gpt-2");
        s.merges.push("hello".into());
        assert!(message(s).contains("no space"));
        let mut s = tiny_bpe("gpt-2");
        s.bos_id = Some(9999);
        assert!(message(s).contains("BOS token id 9999"));
        let mut s = tiny_bpe("gpt-2");
        s.token_types = Some(vec![1]);
        assert!(message(s).contains("token types"));
        let mut s = tiny_bpe("gpt-2");
        s.token_types.as_mut().unwrap()[3] = 42;
        assert!(message(s).contains("type 42"));
        assert!(message(tiny_bpe("chatglm-bpe")).contains("pre-tokenizer 'chatglm-bpe'"));
        let mut s = tiny_bpe("gpt-2");
        s.model = "bert".into();
        assert!(message(s).contains("'bert'"));
        let mut s = tiny_bpe("gpt-2");
        s.bos_id = None;
        s.add_bos = true;
        assert!(message(s).contains("no BOS"));
        assert!(message(TokenizerSpec { model: "llama".into(), ..Default::default() }).contains("empty"));
        let mut s = tiny_bpe("gpt-2");
        s.model = "llama".into();
        s.scores = Some(vec![0.0]);
        assert!(message(s).contains("scores"));
    }

    #[test]
    fn byte_token_text_parses() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xff>"), Some(255));
        assert_eq!(parse_byte_token("<0x1>"), None);
        assert_eq!(parse_byte_token("0x41"), None);
    }
}
