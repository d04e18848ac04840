//! The engine as a worker: one model per process behind an OpenAI-compatible HTTP server
//! (`parity serve`), streaming tokens as server-sent events.
//!
//! Reading order: [`api`] (the wire format: requests checked into [`api::Request`], responses and
//! stream chunks), [`chat`] (the model's chat template, rendered with minijinja), [`stop`] (stop
//! sequences on streamed text), [`generation`] (admission, the bounded queue, generation on
//! blocking threads with cancellation), [`server`] (routes and events), [`error`].

pub mod api;
pub mod chat;
pub mod error;
pub mod generation;
pub mod server;
pub mod stop;

pub use error::{ApiError, ServeError};
pub use server::{Limits, Server};
