//! The numbers the docs quote about the test suite are the suite's own, counted by
//! scripts/count-tests.py, so they cannot drift from the code.

use std::path::Path;
use std::process::Command;

#[test]
fn the_reliability_page_counts_match_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let Ok(out) = Command::new("python3").arg(root.join("scripts/count-tests.py")).arg("--check").current_dir(&root).output() else {
        return eprintln!("skipped: no python3 on this machine");
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "docs/reliability.md's test counts differ from the code: {err}");
}
