//! The serving path judged by the oracle: a served greedy completion is, token for token, the
//! continuation `parity run` validated (the default suite's f64 truth dump), and the chat prompt
//! the server renders from SmolLM2-135M-Instruct's own template is, text and ids, what
//! transformers' `apply_chat_template` and llama.cpp's template handling give
//! (references/chat_template/render.py, run with the reference environment's python; skipped
//! without it unless `PARITY_REQUIRE_REFERENCES` is set).

use engine::Model;
use harness::dumps::{Dump, Lookup};
use harness::suite::{parity_cache, Suite};
use harness::tensor::{Tensor, Values};
use serde_json::{json, Value};
use serve::api::Message;
use serve::chat::ChatTemplate;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Serves `model` on an ephemeral loopback port for the life of the returned sender.
async fn start(model: Model) -> (String, tokio::sync::oneshot::Sender<()>) {
    let limits = serve::Limits { max_concurrent: 1, max_queue: 4 };
    let server = serve::Server::bind(model, "127.0.0.1:0".parse().unwrap(), limits).await.expect("bind");
    let url = format!("http://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

async fn post(url: &str, body: Value) -> Value {
    let r = reqwest::Client::new().post(url).json(&body).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_greedy_completion_is_the_continuation_parity_run_validated() {
    let root = root();
    let suite = Suite::load(&root.join("checkpoints/suite.toml")).unwrap();
    let truth = suite.truth.clone().expect("the default suite names its truth");
    let mut compared = 0;
    for case in suite.cases() {
        let label = format!("{}/{}", case.model.id, case.prompt.id);
        let dump = Dump::open(&suite.dump_dir(&root, &case, &truth)).unwrap();
        let generated: Vec<u32> = match dump.get("generated") {
            Ok(Lookup::Tensor(Tensor { values: Values::Ids(v), .. })) => v.iter().map(|&i| i as u32).collect(),
            other => panic!("{label}: no generated ids in the truth dump: {other:?}"),
        };
        let model = Model::load(&root.join(&case.model.path)).unwrap();
        // The truth runs all n steps; the server stops after an end-of-sequence token.
        let eos = model.tokenizer.eos_id();
        let end = generated.iter().position(|&t| Some(t) == eos).map_or(generated.len(), |i| i + 1);
        let (url, _stop) = start(model).await;
        let body = json!({ "prompt": case.prompt.text, "max_tokens": suite.n_generate, "temperature": 0 });
        let r = post(&format!("{url}/v1/completions"), body).await;
        let served: Vec<u32> = r["choices"][0]["token_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        assert_eq!(served, generated[..end], "{label}");
        compared += 1;
    }
    assert!(compared >= 12, "compared only {compared} cases");
}

fn smollm2() -> PathBuf {
    parity_cache().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The reference environment's python and SmolLM2, or None (the test skips, saying so) when
/// either is missing and `PARITY_REQUIRE_REFERENCES` is not set.
fn references_or_skip() -> Option<PathBuf> {
    let py = parity_cache().join("venv/bin/python");
    let missing = [&py, &smollm2()].into_iter().find(|p| !p.exists()).cloned();
    let Some(missing) = missing else { return Some(py) };
    assert!(
        std::env::var_os("PARITY_REQUIRE_REFERENCES").is_none(),
        "PARITY_REQUIRE_REFERENCES is set but {} is absent; run scripts/setup-references.sh and scripts/make-real-models.sh",
        missing.display()
    );
    println!("skipped: no {}; run scripts/setup-references.sh and scripts/make-real-models.sh", missing.display());
    None
}

fn conversation(turns: &[(&str, &str)]) -> Vec<Message> {
    turns.iter().map(|(role, content)| Message { role: role.to_string(), content: content.to_string() }).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_chat_prompts_match_transformers_and_llama_cpp_text_and_ids() {
    let Some(py) = references_or_skip() else { return };
    let conversations = [
        conversation(&[("user", "What is 2+2?")]),
        conversation(&[("system", "Be brief."), ("user", "What is 2+2?")]),
        conversation(&[("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", "4"), ("user", "And 3+3?")]),
        conversation(&[("system", "Réponds en français."), ("user", "Привет 👋\n  <b>tags</b>  ")]),
    ];
    let out = Command::new(&py)
        .arg(root().join("references/chat_template/render.py"))
        .arg("--model")
        .arg(smollm2())
        .arg("--conversations")
        .arg(serde_json::to_string(&conversations).unwrap())
        .output()
        .expect("running render.py");
    assert!(out.status.success(), "render.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let references: Vec<Value> = serde_json::from_slice(&out.stdout).expect("render.py's JSON");
    assert_eq!(references.len(), conversations.len());

    let model = Model::load(&smollm2()).unwrap();
    let template = ChatTemplate::from_model(&model).unwrap().expect("SmolLM2 has a chat template");
    // Without a system message the template writes its own; llama.cpp's built-in ChatML
    // handling (it matches the template, it does not run it) leaves that turn out.
    let default_system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    for (messages, reference) in conversations.iter().zip(&references) {
        let (text, prompt) = template.prompt(&model.tokenizer, messages).unwrap();
        let label = format!("{messages:?}");
        assert_eq!(text, reference["transformers"]["text"].as_str().unwrap(), "{label}: text against transformers");
        assert_eq!(prompt, ids(&reference["transformers"]["ids"]), "{label}: ids against transformers");
        let llamacpp = reference["llamacpp"]["text"].as_str().unwrap();
        if messages[0].role == "system" {
            assert_eq!(text, llamacpp, "{label}: text against llama.cpp");
            assert_eq!(prompt, ids(&reference["llamacpp"]["ids"]), "{label}: ids against llama.cpp");
        } else {
            assert_eq!(text.strip_prefix(default_system), Some(llamacpp), "{label}: llama.cpp leaves out only the default system turn");
            let ours_without = model.tokenizer.encode_with_special(llamacpp);
            assert_eq!(ours_without, ids(&reference["llamacpp"]["ids"]), "{label}: ids of llama.cpp's text");
        }
    }

    // The server renders the same prompt: its usage counts exactly those ids.
    let expected = ids(&references[2]["transformers"]["ids"]).len();
    let (url, _stop) = start(model).await;
    let r = post(&format!("{url}/v1/chat/completions"), json!({ "messages": conversations[2], "max_tokens": 1, "temperature": 0 })).await;
    assert_eq!(r["usage"]["prompt_tokens"], expected);
}

/// `parity serve` with `args`, its stdout and stderr piped, in a scratch PARITY_CACHE.
fn parity_serve(args: &[&str], cache: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_parity"))
        .arg("serve")
        .args(args)
        .current_dir(root())
        .env("PARITY_CACHE", cache)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting parity serve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_serve_answers_on_the_port_it_prints_and_exits_0_on_sigterm() {
    use std::io::BufRead;
    let cache = tempfile::tempdir().unwrap();
    let mut child = parity_serve(&["--model", "fixtures/models/tiny-llama/model-f32.gguf", "--port", "0", "--threads", "1"], cache.path());
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("first line {line:?}")).to_string();
    let r = post(&format!("{url}/v1/completions"), json!({ "prompt": "The quick brown fox", "max_tokens": 3, "temperature": 0 })).await;
    assert_eq!(r["model"], "model-f32");
    let health: Value = reqwest::get(format!("{url}/health")).await.unwrap().json().await.unwrap();
    assert_eq!(health["requests"]["completed"], 1);
    // SIGTERM: a clean stop, exit 0.
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn parity_serve_refuses_bad_input_with_a_one_line_error_and_exit_2() {
    let cache = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let tiny = "fixtures/models/tiny-llama/model-f32.gguf";
    let cases: [(&[&str], &str); 4] = [
        (&["--model", "no/such/model.gguf"], "loading no/such/model.gguf"),
        (&["--model", tiny, "--port", "0", "--max-concurrent", "0"], "--max-concurrent must be at least 1"),
        (&["--model", tiny, "--port", &port], "cannot listen on 127.0.0.1:"),
        (&["--model", tiny, "--host", "not-an-ip"], "invalid value 'not-an-ip'"),
    ];
    for (args, mentions) in cases {
        let out = parity_serve(args, cache.path()).wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked") && err.contains(mentions), "{args:?}: {err}");
        if !mentions.starts_with("invalid value") {
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        }
    }
}
