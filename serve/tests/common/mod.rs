//! A server on an ephemeral loopback port, driven by a real HTTP client (reqwest).

#![allow(dead_code)] // each test file uses its own part of this

use engine::Model;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const TINY: &str = "fixtures/models/tiny-llama/model-f32.gguf";

/// A chat template of SmolLM2's shape, for the tiny model, which has none of its own.
pub const TEMPLATE: &str =
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn load(rel: &str) -> Model {
    Model::load(&root().join(rel)).unwrap_or_else(|e| panic!("loading {rel}: {e}"))
}

/// SmolLM2-135M-Instruct Q4_1 from the parity cache (scripts/make-real-models.sh), whose 8192
/// positions and real speed make a generation long enough to disconnect from or queue behind.
/// None (the test skips, saying so) when absent, unless `PARITY_REQUIRE_REFERENCES` is set.
pub fn smollm2() -> Option<Model> {
    let cache = std::env::var_os("PARITY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/parity"));
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        assert!(
            std::env::var_os("PARITY_REQUIRE_REFERENCES").is_none(),
            "PARITY_REQUIRE_REFERENCES is set but {} is absent; run scripts/make-real-models.sh",
            path.display()
        );
        println!("skipped: no {}; run scripts/make-real-models.sh", path.display());
        return None;
    }
    Some(Model::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display())))
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(model: Model, max_concurrent: usize, max_queue: usize) -> TestServer {
        let limits = serve::Limits { max_concurrent, max_queue };
        let server = serve::Server::bind(model, "127.0.0.1:0".parse().unwrap(), limits).await.expect("bind");
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestServer { addr, client: reqwest::Client::new(), stop: Some(stop) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` (raw, so malformed bodies can be sent): (status, JSON answer).
    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self.client.post(self.url(path)).header("content-type", "application/json").body(body.to_string()).send().await.expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.expect("a JSON answer"))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.expect("a JSON answer"))
    }

    /// A whole streamed answer: the JSON of every `data:` event before `[DONE]`; panics if the
    /// stream does not end with `[DONE]`.
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let r = self.client.post(self.url(path)).json(body).send().await.expect("send");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let text = r.text().await.unwrap();
        let data: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").expect("a data event")).collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect()
    }

    pub async fn counts(&self) -> Value {
        self.get("/health").await.1["requests"].clone()
    }

    /// Polls `/health` until `done` holds of its counts, for at most `secs` seconds.
    pub async fn wait_for(&self, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let counts = self.counts().await;
            if done(&counts) || std::time::Instant::now() > deadline {
                return counts;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The text a run of token ids adds, piece by piece, as the server streams it.
pub fn text_of(model: &Model, ids: &[u32]) -> String {
    String::from_utf8_lossy(&ids.iter().flat_map(|&id| model.tokenizer.text_bytes(id).to_vec()).collect::<Vec<u8>>()).into_owned()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("token_ids").iter().map(|i| i.as_u64().unwrap() as u32).collect()
}
