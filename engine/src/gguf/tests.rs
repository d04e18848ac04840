use super::*;
use std::io::Write;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gguf").join(name)
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("types.expected.json")).expect("fixture written by scripts/make-gguf-types-fixture.py");
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn every_supported_type_reads_as_gguf_py_dequantizes_it() {
    let file = GgufFile::open(&fixture("types.gguf")).unwrap();
    let expected = expected();
    for (name, want) in expected.as_object().unwrap() {
        let t = file.tensor(name).unwrap();
        assert_eq!(t.dtype.name(), want["type"].as_str().unwrap(), "{name}");
        assert_eq!(t.shape, [3, 64], "{name}");
        let want: Vec<f32> = want["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        for (i, (g, w)) in t.to_f32().iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}[{i}]: {g} vs {w}");
        }
    }
}

#[test]
fn quantized_matmul_equals_the_product_with_independently_dequantized_weights() {
    let file = GgufFile::open(&fixture("types.gguf")).unwrap();
    let x: Vec<f32> = (0..128).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
    for (name, want) in expected().as_object().unwrap() {
        let w: Vec<f64> = want["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let t = file.tensor(name).unwrap();
        let mut out = vec![0.0f32; 6];
        t.matmul(&x, 2, &mut out);
        for tok in 0..2 {
            for r in 0..3 {
                let reference: f64 = (0..64).map(|c| w[r * 64 + c] * x[tok * 64 + c] as f64).sum();
                let got = out[tok * 3 + r] as f64;
                assert!((got - reference).abs() < 1e-4, "{name} token {tok} row {r}: {got} vs {reference}");
            }
        }
    }
}

#[test]
fn metadata_values_of_each_kind_read_back() {
    let file = GgufFile::open(&fixture("types.gguf")).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.architecture().unwrap(), "llama");
    assert_eq!(file.get_i32_array("parity.ints").unwrap(), [1, -2, 3]);
    assert_eq!(file.get_f32("parity.pi").unwrap(), 3.140625);
    assert_eq!(file.get("parity.flag").and_then(Value::as_bool), Some(true));
    assert!(file.get_u32("parity.absent").unwrap_err().to_string().contains("parity.absent is missing"));
}

fn temp_file(tag: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("parity-gguf-{}-{tag}.gguf", std::process::id()));
    std::fs::File::create(&path).and_then(|mut f| f.write_all(bytes)).unwrap();
    path
}

fn open_bytes(tag: &str, bytes: &[u8]) -> Result<GgufFile> {
    let path = temp_file(tag, bytes);
    let r = GgufFile::open(&path);
    let _ = std::fs::remove_file(&path);
    r
}

fn reason(tag: &str, bytes: &[u8]) -> String {
    match open_bytes(tag, bytes) {
        Ok(_) => panic!("{tag}: a hostile file was accepted"),
        Err(e) => e.to_string(),
    }
}

/// A hand-assembled GGUF v3 file: metadata as (key, type id, raw value bytes), tensors as
/// (name, ne, type id, offset), then `data`.
struct Builder {
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    data: Vec<u8>,
    n_kv_claim: Option<u64>,
}

impl Builder {
    fn new() -> Builder {
        Builder { kv: vec![], tensors: vec![], data: vec![], n_kv_claim: None }
    }

    fn tensor(mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> Builder {
        self.tensors.push((name.into(), ne.to_vec(), ty, offset));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend(self.n_kv_claim.unwrap_or(self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            b.extend((k.len() as u64).to_le_bytes());
            b.extend(k.as_bytes());
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        for (name, ne, ty, offset) in &self.tensors {
            b.extend((name.len() as u64).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend((ne.len() as u32).to_le_bytes());
            for d in ne {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(&self.data);
        b
    }
}

#[test]
fn a_well_formed_hand_built_file_opens() {
    let mut b = Builder::new().tensor("a", &[4], 0, 0).tensor("b", &[4], 0, 32);
    b.data = vec![0; 48];
    let file = open_bytes("ok", &b.bytes()).unwrap();
    assert_eq!(file.tensor("b").unwrap().shape, [4]);
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error_not_a_panic() {
    let bytes = std::fs::read(fixture("types.gguf")).unwrap();
    let path = temp_file("truncated", &bytes);
    for len in 0..bytes.len() {
        std::fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(len as u64)).unwrap();
        assert!(GgufFile::open(&path).is_err(), "a file cut at byte {len} was accepted");
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn wrong_magic_and_unsupported_versions_are_refused() {
    assert!(reason("magic", b"GGML\x03\0\0\0").contains("wrong magic"));
    let mut v1 = Builder::new().bytes();
    v1[4] = 1;
    assert!(reason("v1", &v1).contains("version 1"));
}

#[test]
fn a_header_claiming_more_entries_than_the_file_holds_is_refused_before_allocating() {
    let mut b = Builder::new();
    b.n_kv_claim = Some(1 << 60);
    assert!(reason("count", &b.bytes()).contains("more than the file can hold"));
}

#[test]
fn absurd_dimensions_and_offsets_past_the_end_are_refused() {
    let overflow = Builder::new().tensor("huge", &[1 << 32, 1 << 32, 1 << 32], 0, 0);
    assert!(reason("overflow", &overflow.bytes()).contains("overflow"));
    let past_end = Builder::new().tensor("far", &[8], 0, 1 << 40);
    assert!(reason("past-end", &past_end.bytes()).contains("past the end"));
    let too_many_dims = Builder::new().tensor("dims", &[1, 1, 1, 1, 1], 0, 0);
    assert!(reason("dims", &too_many_dims.bytes()).contains("dimensions"));
}

#[test]
fn unknown_type_misalignment_duplicates_and_overlaps_are_refused() {
    let mut unknown = Builder::new().tensor("t", &[32], 99, 0);
    unknown.data = vec![0; 64];
    assert!(reason("unknown", &unknown.bytes()).contains("unknown tensor type id 99"));
    let mut misaligned = Builder::new().tensor("t", &[4], 0, 4);
    misaligned.data = vec![0; 64];
    assert!(reason("misaligned", &misaligned.bytes()).contains("not aligned"));
    let mut dup = Builder::new().tensor("t", &[4], 0, 0).tensor("t", &[4], 0, 32);
    dup.data = vec![0; 64];
    assert!(reason("dup", &dup.bytes()).contains("appears twice"));
    let mut overlap = Builder::new().tensor("a", &[16], 0, 0).tensor("b", &[16], 0, 32);
    overlap.data = vec![0; 128];
    assert!(reason("overlap", &overlap.bytes()).contains("overlap"));
}

#[test]
fn a_type_the_engine_cannot_compute_with_is_an_error_naming_tensor_and_type() {
    let mut b = Builder::new().tensor("blk.0.attn_q.weight", &[256], 12, 0);
    b.data = vec![0; 160];
    let file = open_bytes("q4k", &b.bytes()).unwrap();
    let err = file.tensor("blk.0.attn_q.weight").unwrap_err().to_string();
    assert!(err.contains("blk.0.attn_q.weight") && err.contains("Q4_K"), "{err}");
}

#[test]
fn hostile_metadata_is_refused() {
    let mut bad_bool = Builder::new();
    bad_bool.kv.push(("flag".into(), 7, vec![2]));
    assert!(reason("bool", &bad_bool.bytes()).contains("neither 0 nor 1"));
    let mut long_string = Builder::new();
    long_string.kv.push(("s".into(), 8, (u64::MAX).to_le_bytes().to_vec()));
    assert!(reason("string", &long_string.bytes()).contains("more than the file can hold"));
    let mut huge_array = Builder::new();
    let mut v = 4u32.to_le_bytes().to_vec();
    v.extend((1u64 << 62).to_le_bytes());
    huge_array.kv.push(("a".into(), 9, v));
    assert!(reason("array", &huge_array.bytes()).contains("more than the file can hold"));
    let mut bad_utf8 = Builder::new();
    let mut v = 2u64.to_le_bytes().to_vec();
    v.extend([0xff, 0xfe]);
    bad_utf8.kv.push(("u".into(), 8, v));
    assert!(reason("utf8", &bad_utf8.bytes()).contains("UTF-8"));
}
