//! The server end to end on loopback: answers checked against the engine's own `generate` on the
//! same prompt and settings, streaming and not, every malformed request refused with a 4xx in
//! OpenAI's error shape, cancellation on disconnect and the bounded queue.

mod common;

use common::{ids, load, smollm2, text_of, TestServer, TEMPLATE, TINY};
use engine::SamplerConfig;
use serde_json::json;

const PROMPT: &str = "The quick brown fox";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_models_name_the_model_file() {
    let s = TestServer::start(load(TINY), 1, 1).await;
    let (status, health) = s.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"], "model-f32");
    assert_eq!(health["requests"], json!({ "running": 0, "waiting": 0, "completed": 0, "cancelled": 0, "rejected": 0 }));
    let (status, models) = s.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "model-f32");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greedy_completion_is_the_engines_generate_token_for_token() {
    let model = load(TINY);
    let expected = model.generate(PROMPT, 20, SamplerConfig::default(), |_| {}).unwrap();
    let expected_text = text_of(&model, &expected);
    let prompt_len = model.prompt_tokens(PROMPT, 0).unwrap().len();
    let s = TestServer::start(load(TINY), 1, 1).await;
    let (status, r) = s.post("/v1/completions", &json!({ "prompt": PROMPT, "max_tokens": 20, "temperature": 0 })).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    assert_eq!(ids(&r["choices"][0]["token_ids"]), expected);
    assert_eq!(r["choices"][0]["text"], expected_text);
    let finish = if expected.len() < 20 { "stop" } else { "length" };
    assert_eq!(r["choices"][0]["finish_reason"], finish);
    assert_eq!(r["usage"], json!({ "prompt_tokens": prompt_len, "completion_tokens": expected.len(), "total_tokens": prompt_len + expected.len() }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_one_event_per_token_then_finish_and_usage_then_done() {
    let s = TestServer::start(load(TINY), 1, 1).await;
    let body = json!({ "prompt": PROMPT, "max_tokens": 12, "temperature": 0 });
    let (_, whole) = s.post("/v1/completions", &body).await;
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = s.stream("/v1/completions", &streamed).await;
    let (last, tokens) = events.split_last().unwrap();
    let token_ids: Vec<u32> = tokens.iter().flat_map(|e| ids(&e["choices"][0]["token_ids"])).collect();
    assert_eq!(tokens.len(), token_ids.len(), "one token per event");
    assert_eq!(token_ids, ids(&whole["choices"][0]["token_ids"]));
    assert!(tokens.iter().all(|e| e["choices"][0]["finish_reason"].is_null() && e.get("usage").is_none()));
    let text: String = events.iter().map(|e| e["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, whole["choices"][0]["text"]);
    assert_eq!(last["choices"][0]["finish_reason"], whole["choices"][0]["finish_reason"]);
    assert_eq!(last["usage"], whole["usage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_gives_the_engines_sampled_tokens_every_time() {
    let model = load(TINY);
    let sampling = SamplerConfig { temperature: 0.9, top_k: 40, top_p: 0.95, seed: 7 };
    let expected = model.generate(PROMPT, 16, sampling, |_| {}).unwrap();
    let s = TestServer::start(load(TINY), 1, 1).await;
    let body = json!({ "prompt": PROMPT, "max_tokens": 16, "temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 7 });
    for _ in 0..2 {
        let (status, r) = s.post("/v1/completions", &body).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(ids(&r["choices"][0]["token_ids"]), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_sequence_ends_the_text_just_before_it() {
    let s = TestServer::start(load(TINY), 1, 1).await;
    // Sampled (the tiny model's greedy text ends after 5 tokens), seeded, so every run is the same.
    let (_, free) = s.post("/v1/completions", &json!({ "prompt": PROMPT, "max_tokens": 24, "temperature": 1, "seed": 3 })).await;
    let text = free["choices"][0]["text"].as_str().unwrap().to_string();
    // A stop made of two characters from the middle of the free text: cut at its first occurrence.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 8, "too little text to cut: {text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let expected = &text[..text.find(&stop).unwrap()];
    for stream in [false, true] {
        let body = json!({ "prompt": PROMPT, "max_tokens": 24, "temperature": 1, "seed": 3, "stop": [stop], "stream": stream });
        let (got, finish) = if stream {
            let events = s.stream("/v1/completions", &body).await;
            let text: String = events.iter().map(|e| e["choices"][0]["text"].as_str().unwrap()).collect();
            (text, events.last().unwrap()["choices"][0]["finish_reason"].clone())
        } else {
            let (_, r) = s.post("/v1/completions", &body).await;
            (r["choices"][0]["text"].as_str().unwrap().to_string(), r["choices"][0]["finish_reason"].clone())
        };
        assert_eq!(got, expected, "stream {stream}, stop {stop:?}");
        assert_eq!(finish, "stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_renders_the_models_template_and_answers_stream_or_not() {
    let mut model = load(TINY);
    model.chat_template = Some(TEMPLATE.into());
    let rendered = "<|system|>\nBe brief.\n<|user|>\nHello\n<|assistant|>\n";
    let prompt = model.tokenizer.encode_with_special(rendered);
    let expected = model.generate_from(&prompt, 10, SamplerConfig::default(), |_| true).unwrap();
    let expected_text = text_of(&model, &expected);
    let s = TestServer::start(model, 1, 1).await;
    let messages = json!([{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "Hello" }]);
    let body = json!({ "messages": messages, "max_tokens": 10, "temperature": 0 });
    let (status, r) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"], json!({ "role": "assistant", "content": expected_text }));
    assert_eq!(ids(&r["choices"][0]["token_ids"]), expected);
    assert_eq!(r["usage"]["prompt_tokens"], prompt.len());

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = s.stream("/v1/chat/completions", &streamed).await;
    assert!(events.iter().all(|e| e["object"] == "chat.completion.chunk"));
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, expected_text);
    assert_eq!(events.last().unwrap()["usage"], r["usage"]);
}

#[test]
fn a_template_that_writes_bos_gets_one_bos_on_a_model_that_adds_it() {
    let model = load(TINY);
    let bos = model.tokenizer.bos_id().unwrap();
    assert!(model.tokenizer.add_bos(), "the tiny Llama fixture adds BOS");
    let template = serve::chat::ChatTemplate::new("{{ bos_token }}{{ messages[0].content }}".into(), "<s>".into(), "</s>".into()).unwrap();
    let messages = [serve::api::Message { role: "user".into(), content: "fox".into() }];
    let (text, ids) = template.prompt(&model.tokenizer, &messages).unwrap();
    assert_eq!(text, "<s>fox");
    assert_eq!(ids[0], bos);
    assert_ne!(ids[1], bos, "{ids:?}");
    assert_eq!(ids[1..], model.tokenizer.encode("fox")[1..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_is_a_400_naming_its_field() {
    let s = TestServer::start(load(TINY), 1, 1).await;
    let long = "fox ".repeat(200); // over the tiny model's 128 positions
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        ("/v1/completions", "{not json", None, "not valid JSON"),
        ("/v1/completions", "[1, 2]", None, "must be a JSON object"),
        ("/v1/completions", "{}", Some("prompt"), "prompt is required"),
        ("/v1/completions", r#"{"prompt": 5}"#, Some("prompt"), "must be a string"),
        ("/v1/completions", r#"{"prompt": ["a", "b"]}"#, Some("prompt"), "one prompt per request"),
        ("/v1/completions", r#"{"prompt": "a", "max_tokens": 0}"#, Some("max_tokens"), "at least 1"),
        ("/v1/completions", r#"{"prompt": "a", "max_tokens": -3}"#, Some("max_tokens"), "at least 1"),
        ("/v1/completions", r#"{"prompt": "a", "max_tokens": "8"}"#, Some("max_tokens"), "must be an integer"),
        ("/v1/completions", r#"{"prompt": "a", "max_tokens": 1.5}"#, Some("max_tokens"), "must be an integer"),
        ("/v1/completions", r#"{"prompt": "a", "temperature": "hot"}"#, Some("temperature"), "must be a number"),
        ("/v1/completions", r#"{"prompt": "a", "temperature": 2.5}"#, Some("temperature"), "between 0 and 2"),
        ("/v1/completions", r#"{"prompt": "a", "top_p": 0}"#, Some("top_p"), "above 0"),
        ("/v1/completions", r#"{"prompt": "a", "top_k": -1}"#, Some("top_k"), "0 (all tokens) or more"),
        ("/v1/completions", r#"{"prompt": "a", "seed": "x"}"#, Some("seed"), "must be an integer"),
        ("/v1/completions", r#"{"prompt": "a", "stop": 5}"#, Some("stop"), "a string or an array of strings"),
        ("/v1/completions", r#"{"prompt": "a", "stop": ["a","b","c","d","e"]}"#, Some("stop"), "at most 4"),
        ("/v1/completions", r#"{"prompt": "a", "stop": [""]}"#, Some("stop"), "empty"),
        ("/v1/completions", r#"{"prompt": "a", "stream": "yes"}"#, Some("stream"), "must be a boolean"),
        ("/v1/completions", r#"{"prompt": "a", "n": 2}"#, Some("n"), "one choice"),
        ("/v1/completions", r#"{"prompt": "a", "model": 3}"#, Some("model"), "must be a string"),
        ("/v1/completions", r#"{"prompt": "a", "max_tokens": 200}"#, Some("max_tokens"), "the context holds 128"),
        ("/v1/chat/completions", r#"{"messages": "hi"}"#, Some("messages"), "must be an array"),
        ("/v1/chat/completions", r#"{"messages": []}"#, Some("messages"), "empty"),
        ("/v1/chat/completions", r#"{"messages": [{"content": "x"}]}"#, Some("messages"), "role is required"),
        ("/v1/chat/completions", r#"{"messages": [{"role": "user", "content": 1}]}"#, Some("messages"), "content must be a string"),
        ("/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "x"}]}"#, Some("messages"), "no chat template"),
    ];
    for &(path, body, param, says) in cases {
        let (status, r) = s.post_raw(path, body).await;
        assert_eq!(status, 400, "{body}: {r}");
        assert_eq!(r["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(r["error"]["param"], json!(param), "{body}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message:?} does not say {says:?}");
    }
    let (status, r) = s.post("/v1/completions", &json!({ "prompt": long })).await;
    assert_eq!((status, &r["error"]["code"]), (400, &json!("context_length_exceeded")), "{r}");
    let (status, r) = s.get("/v1/nowhere").await;
    assert_eq!((status, r["error"]["type"].as_str()), (404, Some("not_found_error")));
    let (status, r) = s.get("/v1/completions").await;
    assert_eq!((status, r["error"]["type"].as_str()), (405, Some("invalid_request_error")));
    // Still serving, and none of these reached the engine.
    assert_eq!(s.counts().await, json!({ "running": 0, "waiting": 0, "completed": 0, "cancelled": 0, "rejected": 0 }));
    let (status, _) = s.post("/v1/completions", &json!({ "prompt": PROMPT, "max_tokens": 2 })).await;
    assert_eq!(status, 200);
}

/// A long streamed generation on SmolLM2 (thousands of tokens), read up to its first token.
async fn start_long_stream(s: &TestServer) -> reqwest::Response {
    let body = json!({ "prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0, "stream": true });
    let mut r = s.client.post(s.url("/v1/completions")).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let first = r.chunk().await.unwrap().expect("a first event");
    assert!(first.starts_with(b"data: {"), "{first:?}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_stops_its_generation() {
    let Some(model) = smollm2() else { return };
    let s = TestServer::start(model, 1, 1).await;
    let r = start_long_stream(&s).await;
    assert_eq!(s.counts().await["running"], 1);
    drop(r);
    // 4000 tokens take minutes; a stop at the next token takes well under a second.
    let counts = s.wait_for(20, |c| c["running"] == 0).await;
    assert_eq!(counts, json!({ "running": 0, "waiting": 0, "completed": 0, "cancelled": 1, "rejected": 0 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_queue_a_request_gets_429_and_a_queued_one_can_leave() {
    let Some(model) = smollm2() else { return };
    let s = TestServer::start(model, 1, 1).await;
    let running = start_long_stream(&s).await;
    // The second waits for the only slot; its client leaves before it gets one.
    let waiting_body = json!({ "prompt": "Hello", "max_tokens": 4, "stream": true });
    let waiting = tokio::spawn({
        let (client, url) = (s.client.clone(), s.url("/v1/completions"));
        async move { client.post(url).json(&waiting_body).send().await.unwrap() }
    });
    // A queued stream is answered at once; its events come when it runs.
    let waiting = waiting.await.unwrap();
    assert_eq!(waiting.status().as_u16(), 200);
    let counts = s.wait_for(20, |c| c["waiting"] == 1).await;
    assert_eq!(counts["waiting"], 1, "{counts}");
    let (status, r) = s.post("/v1/completions", &json!({ "prompt": "Hello", "max_tokens": 4 })).await;
    assert_eq!(status, 429, "{r}");
    assert_eq!(r["error"]["type"], "rate_limit_error");
    assert_eq!(r["error"]["code"], "queue_full");
    drop((running, waiting));
    let counts = s.wait_for(20, |c| c["running"] == 0 && c["waiting"] == 0).await;
    assert_eq!(counts["rejected"], 1, "{counts}");
    assert_eq!(counts["cancelled"], 2, "the running and the queued one: {counts}");
    // Room again.
    let (status, _) = s.post("/v1/completions", &json!({ "prompt": "Hello", "max_tokens": 2 })).await;
    assert_eq!(status, 200);
}
