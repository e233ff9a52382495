//! Engine errors.

/// Errors from loading a model or generating with it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("invalid model: {0}")]
    InvalidModel(String),
    #[error(
        "prompt of {prompt} tokens plus max_tokens {max_tokens} exceeds the context length {n_ctx}"
    )]
    ContextOverflow {
        prompt: usize,
        max_tokens: usize,
        n_ctx: usize,
    },
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    TokenOutOfRange { id: u32, n_vocab: usize },
    /// A request parameter the engine cannot compute with; `param` is its API name.
    #[error("invalid '{param}': {message}")]
    InvalidParam {
        param: &'static str,
        message: String,
    },
    /// The forward pass stopped between layers: the [`crate::generate::Interrupt`] fired.
    #[error("interrupted ({0:?})")]
    Interrupted(crate::StopReason),
    /// The scheduler's engine thread has stopped (the process is shutting down).
    #[error("the engine has stopped")]
    Stopped,
}

impl EngineError {
    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidParam {
            param,
            message: message.into(),
        }
    }
}
