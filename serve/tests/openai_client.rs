//! The server driven by OpenAI's own Python client (serve/tests/openai_client.py, run with
//! $PARITY_CACHE/venv-client's python from scripts/setup-references.sh): skipped without that
//! environment unless `PARITY_REQUIRE_REFERENCES` is set. The expected texts are the engine's
//! own greedy generations on the same prompts.

mod common;

use common::{load, root, text_of, TestServer, TEMPLATE, TINY};
use engine::SamplerConfig;
use std::path::PathBuf;

fn client_python() -> Option<PathBuf> {
    let cache = std::env::var_os("PARITY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/parity"));
    let py = cache.join("venv-client/bin/python");
    if py.exists() {
        return Some(py);
    }
    assert!(
        std::env::var_os("PARITY_REQUIRE_REFERENCES").is_none(),
        "PARITY_REQUIRE_REFERENCES is set but {} is absent; run scripts/setup-references.sh",
        py.display()
    );
    println!("skipped: no {}; run scripts/setup-references.sh", py.display());
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_streams_and_gets_errors_as_it_expects() {
    let Some(py) = client_python() else { return };
    let mut model = load(TINY);
    model.chat_template = Some(TEMPLATE.into());
    let completion = model.generate("The quick brown fox", 12, SamplerConfig::default(), |_| {}).unwrap();
    let chat_prompt = model.tokenizer.encode_with_special("<|system|>\nBe brief.\n<|user|>\nHello\n<|assistant|>\n");
    let chat = model.generate_from(&chat_prompt, 10, SamplerConfig::default(), |_| true).unwrap();
    let expect = serde_json::json!({ "model": "model-f32", "completion": text_of(&model, &completion), "chat": text_of(&model, &chat) });
    let s = TestServer::start(model, 1, 4).await;
    let out = tokio::process::Command::new(&py)
        .arg(root().join("serve/tests/openai_client.py"))
        .args(["--url", &s.url(""), "--expect", &expect.to_string()])
        .output()
        .await
        .expect("running openai_client.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openai_client.py failed:\n{text}");
    assert!(text.contains("7 checks passed"), "{text}");
}
