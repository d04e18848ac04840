//! The SmolLM2 and SentencePiece fixture tokenizers on arbitrary bytes: no panic, and byte-level
//! BPE decodes back to exactly the text it encoded.
#![no_main]
use engine::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn tokenizers() -> &'static Vec<(bool, engine::tokenizer::Tokenizer)> {
    static T: OnceLock<Vec<(bool, engine::tokenizer::Tokenizer)>> = OnceLock::new();
    T.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        let mut out = Vec::new();
        for (rel, lossless) in [("tokenizer/bpe-tiny/bpe-tiny.gguf", true), ("tokenizer/spm-tiny/spm-tiny.gguf", false), ("models/tiny-gpt2/model-f32.gguf", true)] {
            let file = GgufFile::open(&root.join(rel)).expect("committed fixture");
            out.push((lossless, engine::tokenizer::Tokenizer::from_gguf(&file).expect("fixture tokenizer")));
        }
        out
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for (lossless, tok) in tokenizers() {
        let ids = tok.encode(&text);
        let back = tok.decode(&ids);
        if *lossless {
            assert_eq!(back, text, "byte-level BPE must round-trip");
        }
    }
});
