//! The HTTP side: routes, request handling, server-sent events, startup and shutdown.

use crate::api::{self, Endpoint, Envelope, Input};
use crate::chat::ChatTemplate;
use crate::error::{ApiError, ServeError};
use crate::generation::{Event, Gate, Job};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, Uri};
use axum::response::sse::{self, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::Model;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Events buffered between generation and a slow client; past it generation waits.
const EVENT_BUFFER: usize = 16;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests generating at once (they share the engine's worker threads).
    pub max_concurrent: usize,
    /// Requests waiting for a slot; one more is refused with 429.
    pub max_queue: usize,
}

struct AppState {
    model: Arc<Model>,
    model_id: String,
    template: Option<ChatTemplate>,
    gate: Arc<Gate>,
    next_id: AtomicU64,
}

/// A bound server, not yet serving: [`Server::local_addr`] tells the port when bound to port 0.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl Server {
    pub async fn bind(model: Model, addr: SocketAddr, limits: Limits) -> Result<Server, ServeError> {
        if limits.max_concurrent == 0 {
            return Err(ServeError::Limit { what: "--max-concurrent" });
        }
        let template = ChatTemplate::from_model(&model)?;
        let model_id = model.path.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
        let state = Arc::new(AppState {
            model: Arc::new(model),
            model_id,
            template,
            gate: Arc::new(Gate::new(limits.max_concurrent, limits.max_queue)),
            next_id: AtomicU64::new(1),
        });
        let router = Router::new()
            .route("/health", get(health))
            .route("/v1/models", get(models))
            .route("/v1/completions", post(|s: State<Arc<AppState>>, body: Bytes| completion(s, Endpoint::Completions, body)))
            .route("/v1/chat/completions", post(|s: State<Arc<AppState>>, body: Bytes| completion(s, Endpoint::Chat, body)))
            .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
            .method_not_allowed_fallback(|method: Method, uri: Uri| async move { ApiError::method_not_allowed(method.as_str(), uri.path()) })
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Server { listener, router })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` completes, then lets open requests finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        axum::serve(self.listener, self.router).with_graceful_shutdown(shutdown).await?;
        Ok(())
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "status": "ok", "model": state.model_id, "requests": state.gate.counts() }))
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [{ "id": state.model_id, "object": "model", "created": 0, "owned_by": "parity" }] }))
}

fn fresh_seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64))
}

async fn completion(State(state): State<Arc<AppState>>, endpoint: Endpoint, body: Bytes) -> Response {
    match start(&state, endpoint, &body) {
        Ok((request_stream, envelope, rx)) if request_stream => stream(envelope, rx).into_response(),
        Ok((_, envelope, rx)) => collect(envelope, rx).await.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Checks the request, admits it and starts its generation: (stream?, envelope, its events).
fn start(state: &Arc<AppState>, endpoint: Endpoint, body: &[u8]) -> Result<(bool, Envelope, mpsc::Receiver<Event>), ApiError> {
    let request = api::parse(endpoint, body, fresh_seed)?;
    let tokenizer = &state.model.tokenizer;
    let prompt = match &request.input {
        Input::Prompt(text) => tokenizer.encode(text),
        Input::Messages(messages) => {
            let template = state.template.as_ref().ok_or_else(|| {
                ApiError::invalid(Some("messages"), "this model has no chat template (tokenizer.chat_template); use /v1/completions")
            })?;
            template.prompt(tokenizer, messages)?.1
        }
    };
    state.model.check_fits(&prompt, request.max_tokens).map_err(ApiError::from_engine)?;
    let ticket = state.gate.admit().ok_or_else(|| ApiError::queue_full(state.gate.limit()))?;
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let job = Job { prompt, max_tokens: request.max_tokens, sampling: request.sampling, stop: request.stop };
    state.gate.start(ticket, Arc::clone(&state.model), job, tx);
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let id = match endpoint {
        Endpoint::Completions => format!("cmpl-{n}"),
        Endpoint::Chat => format!("chatcmpl-{n}"),
    };
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok((request.stream, Envelope { endpoint, id, created, model: state.model_id.clone() }, rx))
}

/// `stream: false`: the whole answer once generation is done.
async fn collect(envelope: Envelope, mut rx: mpsc::Receiver<Event>) -> Result<Json<Value>, ApiError> {
    let (mut text, mut ids) = (String::new(), Vec::new());
    while let Some(event) = rx.recv().await {
        match event {
            Event::Token { id, text: piece } => {
                ids.push(id);
                text.push_str(&piece);
            }
            Event::Done(outcome) => {
                text.push_str(&outcome.tail);
                return Ok(Json(envelope.response(&text, &ids, &outcome)));
            }
            Event::Failed(message) => return Err(ApiError::server(message)),
        }
    }
    Err(ApiError::server("generation ended without an answer"))
}

/// `stream: true`: one event per token, a final event with the finish reason and usage, then
/// `[DONE]`. When the client goes away the stream is dropped, and with it the receiver that
/// generation checks at every token.
fn stream(envelope: Envelope, rx: mpsc::Receiver<Event>) -> Sse<impl futures_util::Stream<Item = Result<sse::Event, Infallible>>> {
    let mut first = true;
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |event| {
        let data = match event {
            Event::Token { id, text } => envelope.token_chunk(&text, id, std::mem::take(&mut first)),
            Event::Done(outcome) => envelope.final_chunk(&outcome.tail, &outcome),
            Event::Failed(message) => ApiError::server(message).body(),
        };
        Ok(sse::Event::default().data(data.to_string()))
    });
    Sse::new(events.chain(futures_util::stream::once(async { Ok(sse::Event::default().data("[DONE]")) })))
}
