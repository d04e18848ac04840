//! What goes wrong: [`ApiError`], a request the server refuses (OpenAI's error shape, a 4xx or
//! 5xx status), and [`ServeError`], a server that cannot start.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;

/// OpenAI's `error.type` values that this server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or asks for what the model cannot do (400).
    InvalidRequest,
    /// The queue is full (429): retry later.
    RateLimited,
    /// No such route (404).
    NotFound,
    /// A route used with another method than its own (405).
    MethodNotAllowed,
    /// The engine failed on a well-formed request (500).
    Server,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::MethodNotAllowed => "invalid_request_error",
            ErrorKind::Server => "server_error",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Server => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A refused request: `{"error": {"message", "type", "param", "code"}}` with the kind's status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
    /// A machine-readable reason, e.g. `context_length_exceeded`.
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError { kind: ErrorKind::InvalidRequest, message: message.into(), param, code: None }
    }

    pub fn with_code(self, code: &'static str) -> ApiError {
        ApiError { code: Some(code), ..self }
    }

    pub fn queue_full(limit: usize) -> ApiError {
        let message = format!("the server is busy: {limit} requests are running or queued; retry later");
        ApiError { kind: ErrorKind::RateLimited, message, param: None, code: Some("queue_full") }
    }

    pub fn not_found(path: &str) -> ApiError {
        let message = format!("no route {path}; try POST /v1/completions, POST /v1/chat/completions, GET /v1/models or GET /health");
        ApiError { kind: ErrorKind::NotFound, message, param: None, code: None }
    }

    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        let message = format!("{path} does not take {method}; the generating routes take POST, /health and /v1/models GET");
        ApiError { kind: ErrorKind::MethodNotAllowed, message, param: None, code: None }
    }

    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError { kind: ErrorKind::Server, message: message.into(), param: None, code: None }
    }

    /// An engine error on a request: the prompt's own faults are the client's (400), the rest 500.
    pub fn from_engine(e: engine::Error) -> ApiError {
        match e {
            engine::Error::ContextOverflow { .. } => ApiError::invalid(Some("max_tokens"), e.to_string()).with_code("context_length_exceeded"),
            engine::Error::EmptyPrompt => ApiError::invalid(Some("prompt"), e.to_string()),
            other => ApiError::server(other.to_string()),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "message": self.message, "type": self.kind.as_str(), "param": self.param, "code": self.code }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.kind.status(), axum::Json(self.body())).into_response()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}; is the port in use, or the host not this machine's?")]
    Bind { addr: SocketAddr, source: std::io::Error },

    #[error("the model's chat template (tokenizer.chat_template) does not parse: {0}")]
    Template(String),

    #[error("{what} must be at least 1")]
    Limit { what: &'static str },

    #[error("serving stopped: {0}")]
    Io(#[from] std::io::Error),
}
