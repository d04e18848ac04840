//! Any text given as a tolerance spec parses and validates against the catalog, or is an error.
#![no_main]
use harness::catalog::Catalog;
use harness::spec::Spec;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| Catalog::parse(include_str!("../../checkpoints/catalog.toml"), "catalog").expect("the committed catalog parses"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(spec) = Spec::parse(text, "fuzz") {
        let _ = spec.validate(catalog(), "fuzz");
    }
});
