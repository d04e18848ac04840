//! The engine's typed errors: each says what went wrong, where, and what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },

    #[error("{path}: not a valid {format} file: {reason}")]
    Format { path: PathBuf, format: &'static str, reason: String },

    #[error("tensor {tensor}: type {dtype} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")]
    UnsupportedType { tensor: String, dtype: String },

    #[error("tensor {tensor} is missing from {path}; is this a {arch} model?")]
    MissingTensor { tensor: String, path: PathBuf, arch: String },

    #[error("tensor {tensor}: shape {found:?} but the model config needs {expected:?}")]
    Shape { tensor: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("model config: {0}")]
    Config(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("prompt has {tokens} tokens and {generate} more were asked for, but the context holds {context}")]
    ContextOverflow { tokens: usize, generate: usize, context: usize },

    #[error("the prompt is empty after tokenization and the model adds no BOS token; give a non-empty prompt")]
    EmptyPrompt,
}

pub type Result<T> = std::result::Result<T, Error>;
