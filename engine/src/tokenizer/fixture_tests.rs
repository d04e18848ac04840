//! The tokenizer against ids computed by llama.cpp, HF tokenizers and sentencepiece, recorded
//! in `fixtures/tokenizer/` by `scripts/make-tokenizer-fixture.py`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tokenizer")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn opt_u32(v: &Value) -> Option<u32> {
    v.as_u64().map(|x| x as u32)
}

/// One entry per line, as the fixture script writes them.
fn lines(path: &Path) -> Vec<String> {
    let text = read(path);
    let mut out: Vec<String> = text.split('\n').map(String::from).collect();
    assert_eq!(out.pop().as_deref(), Some(""), "{} must end with a newline", path.display());
    out
}

fn smollm2() -> Tokenizer {
    let dir = fixtures().join("smollm2");
    let meta = json(&dir.join("meta.json"));
    let tokens = lines(&dir.join("tokens.txt"));
    let mut types = vec![1; tokens.len()];
    for (id, ty) in meta["token_types"].as_object().unwrap() {
        types[id.parse::<usize>().unwrap()] = ty.as_i64().unwrap() as i32;
    }
    Tokenizer::from_spec(TokenizerSpec {
        model: meta["model"].as_str().unwrap().into(),
        pre: meta["pre"].as_str().map(String::from),
        tokens,
        scores: None,
        token_types: Some(types),
        merges: lines(&dir.join("merges.txt")),
        bos_id: opt_u32(&meta["bos_id"]),
        eos_id: opt_u32(&meta["eos_id"]),
        unk_id: opt_u32(&meta["unk_id"]),
        add_bos: meta["add_bos"].as_bool().unwrap(),
        add_space_prefix: meta["add_space_prefix"].as_bool().unwrap(),
    })
    .unwrap()
}

fn spm_tiny() -> Tokenizer {
    let v = json(&fixtures().join("spm-tiny/vocab.json"));
    let strings = |k: &str| v[k].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    Tokenizer::from_spec(TokenizerSpec {
        model: v["model"].as_str().unwrap().into(),
        pre: None,
        tokens: strings("tokens"),
        scores: Some(v["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap() as f32).collect()),
        token_types: Some(v["token_types"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap() as i32).collect()),
        merges: Vec::new(),
        bos_id: opt_u32(&v["bos_id"]),
        eos_id: opt_u32(&v["eos_id"]),
        unk_id: opt_u32(&v["unk_id"]),
        add_bos: v["add_bos"].as_bool().unwrap(),
        add_space_prefix: v["add_space_prefix"].as_bool().unwrap(),
    })
    .unwrap()
}

fn bpe_tiny() -> Tokenizer {
    Tokenizer::from_hf_json(&fixtures().join("bpe-tiny/tokenizer.json")).unwrap()
}

struct Case {
    text: String,
    llama_cpp: Vec<u32>,
    llama_cpp_special: Vec<u32>,
    hf: Vec<u32>,
}

fn cases(vocab: &str) -> Vec<Case> {
    let expected = json(&fixtures().join("expected.json"));
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let out: Vec<Case> = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["vocab"] == vocab)
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            llama_cpp: ids(&c["llama_cpp"]),
            llama_cpp_special: ids(&c["llama_cpp_special"]),
            hf: ids(&c["hf"]),
        })
        .collect();
    assert!(out.len() >= 18, "expected.json has only {} cases for {vocab}", out.len());
    out
}

fn assert_ids(tok: &Tokenizer, vocab: &str, what: &str, text: &str, got: &[u32], want: &[u32]) {
    let show = |ids: &[u32]| ids.iter().map(|&i| format!("{i}:{:?}", tok.token_text(i).unwrap_or("?"))).collect::<Vec<_>>().join(" ");
    assert_eq!(got, want, "{vocab} {what} for {text:?}\n  got:  {}\n  want: {}", show(got), show(want));
}

#[test]
fn smollm2_ids_equal_llama_cpp_and_hf() {
    let tok = smollm2();
    assert_eq!(tok.vocab_size(), 49152);
    for c in cases("smollm2") {
        assert_ids(&tok, "smollm2", "llama.cpp", &c.text, &tok.encode(&c.text), &c.llama_cpp);
        assert_ids(&tok, "smollm2", "llama.cpp special", &c.text, &tok.encode_with_special(&c.text), &c.llama_cpp_special);
        // HF always parses special-token text, so it is the encode_with_special reference.
        assert_ids(&tok, "smollm2", "HF", &c.text, &tok.encode_with_special(&c.text), &c.hf);
    }
}

#[test]
fn spm_ids_equal_llama_cpp_and_sentencepiece() {
    let tok = spm_tiny();
    for c in cases("spm-tiny") {
        assert_ids(&tok, "spm-tiny", "llama.cpp", &c.text, &tok.encode(&c.text), &c.llama_cpp);
        assert_ids(&tok, "spm-tiny", "llama.cpp special", &c.text, &tok.encode_with_special(&c.text), &c.llama_cpp_special);
        // sentencepiece never parses special-token text
        assert_ids(&tok, "spm-tiny", "sentencepiece", &c.text, &tok.encode(&c.text), &c.hf);
    }
}

#[test]
fn hf_json_bpe_ids_equal_llama_cpp_and_hf() {
    let tok = bpe_tiny();
    assert_eq!(tok.token_type(tok.token_id("<tool>").unwrap()), Some(TokenType::UserDefined));
    assert_eq!(tok.token_type(tok.token_id("<|im_start|>").unwrap()), Some(TokenType::Control));
    assert_eq!(tok.bos_id(), tok.token_id("<|endoftext|>"));
    assert!(!tok.add_bos());
    for c in cases("bpe-tiny") {
        assert_ids(&tok, "bpe-tiny", "llama.cpp", &c.text, &tok.encode(&c.text), &c.llama_cpp);
        assert_ids(&tok, "bpe-tiny", "llama.cpp special", &c.text, &tok.encode_with_special(&c.text), &c.llama_cpp_special);
        assert_ids(&tok, "bpe-tiny", "HF", &c.text, &tok.encode_with_special(&c.text), &c.hf);
    }
}

#[test]
fn decode_inverts_encode() {
    for (name, tok) in [("smollm2", smollm2()), ("spm-tiny", spm_tiny()), ("bpe-tiny", bpe_tiny())] {
        for c in cases(name) {
            let ids = tok.encode(&c.text);
            if name == "smollm2" && c.text.starts_with("ctrl") {
                assert_eq!(tok.decode(&ids), "ctrl bytes", "SmolLM2 has no tokens for these bytes");
                continue;
            }
            assert_eq!(tok.decode(&ids), c.text, "{name}");
            let bytes: Vec<u8> = tok.encode(&c.text).iter().flat_map(|&id| tok.token_bytes(id)).collect();
            let bos_text = tok.bos_id().filter(|_| tok.add_bos()).map(|b| tok.token_bytes(b)).unwrap_or_default();
            // the SentencePiece space prefix goes before any text
            let space = if name == "spm-tiny" && !c.text.is_empty() { " " } else { "" };
            assert_eq!(bytes, [bos_text, format!("{space}{}", c.text).into_bytes()].concat(), "{name} token bytes");
        }
    }
}

#[test]
fn spm_adds_bos_and_smollm2_does_not() {
    let spm = spm_tiny();
    assert_eq!(spm.encode(""), vec![1]);
    assert_eq!(spm.encode("x")[0], 1);
    let smol = smollm2();
    assert!(smol.encode("").is_empty());
    assert_eq!(smol.bos_id(), Some(1));
    assert_eq!(smol.eos_id(), Some(2));
    assert_eq!(smol.token_bytes(2), b"<|im_end|>");
}

/// A small deterministic generator (xorshift64*), so the test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn encode_never_panics_and_byte_level_bpe_is_lossless_on_arbitrary_input() {
    let (smol, spm, tiny) = (smollm2(), spm_tiny(), bpe_tiny());
    let pieces: &[&str] =
        &[" ", "  ", "\n", "\t", "'s", "'", "<|im_start|>", "<s>", "</s>", "<tool>", "1", "½", "é", "日", "🦀", "\u{2581}", "\u{0}", "\r\n"];
    let table = bpe::byte_to_char_table();
    let smol_has: Vec<bool> = table.iter().map(|c| smol.token_id(&c.to_string()).is_some()).collect();
    assert_eq!(smol_has.iter().filter(|&&h| !h).count(), 21);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..400 {
        let mut bytes = Vec::new();
        for _ in 0..rng.next() % 40 {
            match rng.next() % 3 {
                0 => bytes.push((rng.next() % 256) as u8),
                1 => bytes.extend_from_slice(pieces[(rng.next() % pieces.len() as u64) as usize].as_bytes()),
                _ => bytes.push(b'a' + (rng.next() % 26) as u8),
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        for tok in [&smol, &spm, &tiny] {
            let ids = tok.encode(&text);
            let special = tok.encode_with_special(&text);
            assert!(ids.iter().chain(&special).all(|&id| (id as usize) < tok.vocab_size()));
            let _ = tok.decode(&special);
        }
        // bpe-tiny has a token for every byte, so nothing is lost; SmolLM2 lacks 21 of them,
        // and those bytes are dropped (as llama.cpp and HF do), everything else kept
        assert_eq!(tiny.decode(&tiny.encode(&text)), text, "round {round}");
        let kept: Vec<u8> = text.bytes().filter(|&b| smol_has[b as usize]).collect();
        let smol_bytes: Vec<u8> = smol.encode(&text).iter().flat_map(|&id| smol.token_bytes(id)).collect();
        assert_eq!(smol_bytes, kept, "round {round}");
        // byte fallback covers every character, so SPM is lossless too, except that a U+2581
        // in the input reads back as the space it stands for
        if !text.contains('\u{2581}') {
            assert_eq!(spm.decode(&spm.encode(&text)), text, "round {round}");
        }
    }
    let _ = smol.decode(&[u32::MAX, 0, 49151]);
}

/// llama.cpp's own tokenizer test data for a vocabulary (`models/ggml-vocab-<name>.gguf` with its
/// `.inp` strings and the `.out` ids HF's tokenizer gave them, `add_special_tokens=False`), from
/// the llama-cpp-python source tree `scripts/make-family-models.py` unpacks into the parity cache.
/// `None` when that tree is absent, unless PARITY_REQUIRE_REFERENCES is set.
/// A text and the ids it should give.
type VocabCase = (String, Vec<u32>);

fn llama_cpp_vocab_test(name: &str) -> Option<(Tokenizer, Vec<VocabCase>)> {
    let cache =
        std::env::var_os("PARITY_CACHE").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/parity")))?;
    let models = std::fs::read_dir(cache.join("src"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("vendor/llama.cpp/models"))
        .find(|m| m.join(format!("ggml-vocab-{name}.gguf")).is_file());
    let Some(models) = models else {
        assert!(
            std::env::var_os("PARITY_REQUIRE_REFERENCES").is_none(),
            "no llama.cpp vocab tests in {}: run scripts/make-family-models.py",
            cache.display()
        );
        eprintln!("skipped: no llama.cpp vocab tests under {}", cache.display());
        return None;
    };
    let vocab = models.join(format!("ggml-vocab-{name}.gguf"));
    let file = crate::gguf::GgufFile::open(&vocab).unwrap_or_else(|e| panic!("{}: {e}", vocab.display()));
    let tok = Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{}: {e}", vocab.display()));
    let inputs = read(&models.join(format!("ggml-vocab-{name}.gguf.inp")));
    let outputs = read(&models.join(format!("ggml-vocab-{name}.gguf.out")));
    let texts: Vec<String> = inputs.split("\n__ggml_vocab_test__\n").map(String::from).collect();
    let ids: Vec<Vec<u32>> = outputs.lines().map(|l| l.split_whitespace().map(|i| i.parse().expect("an id")).collect()).collect();
    // The .inp file ends with a separator and an empty piece; the .out file has a line per string.
    assert!(texts.len() >= ids.len() && ids.len() > 20, "{name}: {} strings, {} id lines", texts.len(), ids.len());
    Some((tok, texts.into_iter().zip(ids).collect()))
}

#[test]
fn family_ids_equal_hf_on_llama_cpp_vocab_tests() {
    for name in ["llama-bpe", "qwen2", "gpt-2", "llama-spm", "phi-3"] {
        let Some((tok, cases)) = llama_cpp_vocab_test(name) else { return };
        for (text, want) in &cases {
            let mut got = tok.encode_with_special(text);
            if tok.add_bos() && got.first() == tok.bos_id().as_ref() {
                got.remove(0);
            }
            assert_ids(&tok, name, "HF (llama.cpp's vocab test)", text, &got, want);
        }
    }
}

/// The Gemma-2 and Phi-3 family models' HF tokenizer.json (a Metaspace pre-tokenizer, Gemma's
/// without the dummy prefix) gives the ids their GGUF gives, on llama.cpp's SentencePiece test
/// strings (scripts/make-family-models.py made both from llama.cpp's vocab files).
#[test]
fn family_hf_tokenizers_equal_their_gguf_on_sentencepiece_test_strings() {
    let Some((_, cases)) = llama_cpp_vocab_test("llama-spm") else { return };
    for family in ["gemma2", "phi3"] {
        let cache =
            std::env::var_os("PARITY_CACHE").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/parity")));
        let Some(dir) = cache.map(|c| c.join("models/families").join(family)).filter(|d| d.join("model-f32.gguf").is_file()) else {
            assert!(std::env::var_os("PARITY_REQUIRE_REFERENCES").is_none(), "no {family} family model: run scripts/make-family-models.py");
            return eprintln!("skipped: no {family} family model");
        };
        let file = crate::gguf::GgufFile::open(&dir.join("model-f32.gguf")).unwrap();
        let gguf = Tokenizer::from_gguf(&file).unwrap();
        let hf = Tokenizer::from_hf_json(&dir.join("hf/tokenizer.json")).unwrap();
        for (text, _) in &cases {
            assert_ids(&hf, family, "HF tokenizer.json against GGUF", text, &hf.encode_with_special(text), &gguf.encode_with_special(text));
        }
        let gemma = family == "gemma2";
        assert_eq!(gguf.encode_with_special("The").len(), 2, "{family}: BOS and one piece");
        assert_eq!(gguf.encode_with_special("The")[1], if gemma { 1576 } else { 450 }, "{family}: \"The\" or \"\u{2581}The\"");
    }
}
