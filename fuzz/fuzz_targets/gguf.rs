//! Any byte string given to the GGUF reader is either a file it can describe, or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = engine::gguf::GgufFile::from_bytes("fuzz.gguf", data.to_vec()) {
        for info in file.tensor_infos() {
            // Reading a tensor touches exactly the bytes its header claims: must stay in bounds.
            if let Ok(t) = file.tensor(&info.name) {
                if t.shape.iter().product::<usize>() <= 1 << 16 {
                    let _ = t.to_f32();
                }
            }
        }
        let _ = file.architecture();
    }
});
