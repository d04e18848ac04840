//! Any text given as a dump's manifest.toml parses or is an error, and looking up every tensor it
//! lists never panics and never reads outside the dump folder.
#![no_main]
use harness::dumps::{Dump, Manifest};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A dump folder holding one real tensor file, `a.npy`, for the manifest under test to point at.
fn folder() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("parity-fuzz-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp folder");
        let t = harness::tensor::Tensor { shape: vec![2], values: harness::tensor::Values::F32(vec![1.0, 2.0]) };
        std::fs::write(dir.join("a.npy"), harness::npy::encode(&t)).expect("seed tensor");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(manifest) = Manifest::parse(text) else { return };
    let keys: Vec<String> = manifest.tensors.keys().cloned().collect();
    let dump = Dump { dir: folder().clone(), manifest };
    for key in keys {
        let _ = dump.get(&key);
    }
});
