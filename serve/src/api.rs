//! The OpenAI wire format: request bodies parsed and checked field by field into [`Request`]
//! (every fault a 400 naming its field), and the JSON of responses and stream chunks.
//!
//! Fields this server does not know are ignored, as OpenAI's clients send several; known fields
//! of the wrong type or out of range are refused.

use crate::error::ApiError;
use crate::generation::{Finish, Outcome};
use engine::SamplerConfig;
use serde_json::{json, Map, Value};

/// OpenAI's legacy default for `/v1/completions`.
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;
/// For chat, an answer's room when `max_tokens` is not given.
pub const DEFAULT_CHAT_TOKENS: usize = 256;
/// OpenAI's limit on stop sequences.
pub const MAX_STOP: usize = 4;

/// The two generating endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// One chat message, as the template sees it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Prompt(String),
    Messages(Vec<Message>),
}

/// A checked request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub input: Input,
    pub max_tokens: usize,
    pub sampling: SamplerConfig,
    pub stop: Vec<String>,
    pub stream: bool,
}

/// Parses and checks a request body for `endpoint`. `fresh_seed` gives the seed of a request
/// without one (the same seed gives the same text; no seed, a new one each time).
pub fn parse(endpoint: Endpoint, body: &[u8], fresh_seed: impl FnOnce() -> u64) -> Result<Request, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::invalid(None, format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::invalid(None, format!("the body must be a JSON object, not {}", type_name(&value))));
    };
    let f = Fields(&map);
    f.string("model")?;
    let input = match endpoint {
        Endpoint::Completions => Input::Prompt(prompt(f.required("prompt")?)?),
        Endpoint::Chat => Input::Messages(messages(f.required("messages")?)?),
    };
    if let Some(n) = f.integer("n")? {
        if n != 1 {
            return Err(ApiError::invalid(Some("n"), format!("n is {n}; this server returns one choice per request (n = 1)")));
        }
    }
    let default_tokens = match endpoint {
        Endpoint::Completions => DEFAULT_COMPLETION_TOKENS,
        Endpoint::Chat => DEFAULT_CHAT_TOKENS,
    };
    let max_tokens = match f.integer("max_tokens")?.or(f.integer("max_completion_tokens")?) {
        None => default_tokens,
        Some(n) if n <= 0 => return Err(ApiError::invalid(Some("max_tokens"), format!("max_tokens is {n}; it must be at least 1"))),
        Some(n) => usize::try_from(n).map_err(|_| ApiError::invalid(Some("max_tokens"), format!("max_tokens {n} is too large")))?,
    };
    let temperature = f.number("temperature", 0.0, 2.0)?.unwrap_or(1.0);
    let top_p = f.number("top_p", 0.0, 1.0)?.unwrap_or(1.0);
    if top_p <= 0.0 {
        return Err(ApiError::invalid(Some("top_p"), "top_p is 0; it must be above 0 and at most 1"));
    }
    let top_k = match f.integer("top_k")? {
        None => 0,
        Some(k) if k < 0 => return Err(ApiError::invalid(Some("top_k"), format!("top_k is {k}; it must be 0 (all tokens) or more"))),
        Some(k) => usize::try_from(k).unwrap_or(usize::MAX),
    };
    let seed = match map.get("seed") {
        None | Some(Value::Null) => fresh_seed(),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_i64().map(|s| s as u64))
            .ok_or_else(|| ApiError::invalid(Some("seed"), format!("seed must be an integer, not {}", type_name(v))))?,
    };
    Ok(Request {
        input,
        max_tokens,
        sampling: SamplerConfig { temperature: temperature as f32, top_k, top_p: top_p as f32, seed },
        stop: stop(map.get("stop"))?,
        stream: f.boolean("stream")?.unwrap_or(false),
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to a body's fields; null counts as absent.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &'static str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn required(&self, name: &'static str) -> Result<&Value, ApiError> {
        self.get(name).ok_or_else(|| ApiError::invalid(Some(name), format!("{name} is required")))
    }

    fn wrong(name: &'static str, expected: &str, v: &Value) -> ApiError {
        ApiError::invalid(Some(name), format!("{name} must be {expected}, not {}", type_name(v)))
    }

    fn string(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        self.get(name).map(|v| v.as_str().ok_or_else(|| Self::wrong(name, "a string", v))).transpose()
    }

    fn boolean(&self, name: &'static str) -> Result<Option<bool>, ApiError> {
        self.get(name).map(|v| v.as_bool().ok_or_else(|| Self::wrong(name, "a boolean", v))).transpose()
    }

    fn integer(&self, name: &'static str) -> Result<Option<i64>, ApiError> {
        self.get(name).map(|v| v.as_i64().ok_or_else(|| Self::wrong(name, "an integer", v))).transpose()
    }

    /// A number in `[lo, hi]`.
    fn number(&self, name: &'static str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let x = v.as_f64().ok_or_else(|| Self::wrong(name, "a number", v))?;
        if !(lo..=hi).contains(&x) {
            return Err(ApiError::invalid(Some(name), format!("{name} is {x}; it must be between {lo} and {hi}")));
        }
        Ok(Some(x))
    }
}

/// A completion prompt: a string, or an array holding one string.
fn prompt(v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(items) => match items.as_slice() {
            [Value::String(s)] => Ok(s.clone()),
            _ => Err(ApiError::invalid(Some("prompt"), "prompt must be a string or an array of one string (one prompt per request)")),
        },
        other => Err(Fields::wrong("prompt", "a string", other)),
    }
}

/// Chat messages: a non-empty array of `{role, content}` with string content (or text parts).
fn messages(v: &Value) -> Result<Vec<Message>, ApiError> {
    let items = v.as_array().ok_or_else(|| Fields::wrong("messages", "an array", v))?;
    if items.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "messages is empty; give at least one message"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let bad = |what: String| ApiError::invalid(Some("messages"), format!("messages[{i}]: {what}"));
            let m = m.as_object().ok_or_else(|| bad(format!("must be an object, not {}", type_name(m))))?;
            let role = match m.get("role") {
                Some(Value::String(r)) if !r.is_empty() => r.clone(),
                Some(other) => return Err(bad(format!("role must be a non-empty string, not {}", type_name(other)))),
                None => return Err(bad("role is required".into())),
            };
            let content = match m.get("content") {
                Some(Value::String(c)) => c.clone(),
                Some(Value::Array(parts)) => {
                    text_parts(parts).ok_or_else(|| bad("content parts must all be {\"type\": \"text\", \"text\": ...}".into()))?
                }
                Some(other) => return Err(bad(format!("content must be a string, not {}", type_name(other)))),
                None => return Err(bad("content is required".into())),
            };
            Ok(Message { role, content })
        })
        .collect()
}

/// The text of content given as parts, if every part is text.
fn text_parts(parts: &[Value]) -> Option<String> {
    parts.iter().map(|p| (p.get("type")?.as_str()? == "text").then(|| p.get("text")?.as_str()).flatten()).collect()
}

fn stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(|| Fields::wrong("stop", "a string or an array of strings", s)))
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(Fields::wrong("stop", "a string or an array of strings", other)),
    };
    if list.len() > MAX_STOP {
        return Err(ApiError::invalid(Some("stop"), format!("{} stop sequences; at most {MAX_STOP}", list.len())));
    }
    if list.iter().any(String::is_empty) {
        return Err(ApiError::invalid(Some("stop"), "a stop sequence is empty"));
    }
    Ok(list)
}

/// What every response and chunk of one request shares.
pub struct Envelope {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Envelope {
    fn object(&self, stream: bool) -> &'static str {
        match (self.endpoint, stream) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    fn wrap(&self, stream: bool, choice: Value, usage: Option<&Outcome>) -> Value {
        let mut v = json!({ "id": self.id, "object": self.object(stream), "created": self.created, "model": self.model, "choices": [choice] });
        if let Some(o) = usage {
            v["usage"] = usage_json(o);
        }
        v
    }

    /// The whole answer of a request with `stream: false`. `token_ids` (not OpenAI's) lists
    /// every generated token, so a client can check them against `parity run`.
    pub fn response(&self, text: &str, token_ids: &[u32], outcome: &Outcome) -> Value {
        let choice = match self.endpoint {
            Endpoint::Completions => {
                json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": outcome.finish.as_str(), "token_ids": token_ids })
            }
            Endpoint::Chat => json!({
                "index": 0, "message": { "role": "assistant", "content": text }, "logprobs": null,
                "finish_reason": outcome.finish.as_str(), "token_ids": token_ids,
            }),
        };
        self.wrap(false, choice, Some(outcome))
    }

    /// The stream event of one generated token; `first` carries the chat role.
    pub fn token_chunk(&self, text: &str, token_id: u32, first: bool) -> Value {
        let choice = match self.endpoint {
            Endpoint::Completions => json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": null, "token_ids": [token_id] }),
            Endpoint::Chat => {
                let delta = if first { json!({ "role": "assistant", "content": text }) } else { json!({ "content": text }) };
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": null, "token_ids": [token_id] })
            }
        };
        self.wrap(true, choice, None)
    }

    /// The last event before `[DONE]`: text held back until the end (a partial stop sequence or
    /// character), the finish reason and the usage.
    pub fn final_chunk(&self, tail: &str, outcome: &Outcome) -> Value {
        let finish = outcome.finish.as_str();
        let choice = match self.endpoint {
            Endpoint::Completions => json!({ "index": 0, "text": tail, "logprobs": null, "finish_reason": finish, "token_ids": [] }),
            Endpoint::Chat => {
                let delta = if tail.is_empty() { json!({}) } else { json!({ "content": tail }) };
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish, "token_ids": [] })
            }
        };
        self.wrap(true, choice, Some(outcome))
    }
}

fn usage_json(o: &Outcome) -> Value {
    json!({ "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens, "total_tokens": o.prompt_tokens + o.completion_tokens })
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}
