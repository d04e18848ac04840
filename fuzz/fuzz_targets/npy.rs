//! Any byte string given to the npy reader is a tensor whose length matches its shape, or an error.
#![no_main]
use harness::tensor::Values;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = harness::npy::parse(data) {
        let n = match &t.values {
            Values::F32(v) => v.len(),
            Values::Ids(v) => v.len(),
        };
        assert_eq!(n, t.shape.iter().product::<usize>());
    }
});
