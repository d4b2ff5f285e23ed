//! The error type of the model crate: every variant names the file, tensor,
//! field or value at fault, so the binary can print it as one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid config: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: {reason}")]
    ConfigMismatch { path: PathBuf, reason: String },
    #[error("{path}: GGUF: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("cannot resolve model `{spec}`: {reason}")]
    Resolve { spec: String, reason: String },
    #[error("token id {id} is out of range for a vocabulary of {vocab_size}")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    #[error("sequence of {len} tokens does not fit the context of {n_ctx} positions")]
    ContextOverflow { len: usize, n_ctx: usize },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("input is not valid UTF-8: first invalid byte at offset {offset}")]
    InvalidUtf8 { offset: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
