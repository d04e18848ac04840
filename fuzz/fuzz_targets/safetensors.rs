//! Any byte string given to the safetensors reader is either a file it can describe, or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(st) = engine::safetensors::SafeTensors::from_bytes("fuzz.safetensors", data.to_vec()) {
        for name in st.names() {
            if let Ok(t) = st.tensor(&name) {
                if t.shape.iter().product::<usize>() <= 1 << 16 {
                    let _ = t.to_f32();
                }
            }
        }
    }
});
