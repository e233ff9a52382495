//! What the API needs from a model and from the place the model comes from, as two small
//! traits: the real `bitnet_engine::Model` and `model_store::ModelStore` implement them, and
//! the router's tests use fakes.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;

use bitnet_engine::{
    ChatMessage, EngineError, GenerateOutput, GenerateParams, Interrupt, LoadOptions, Model, Piece,
};
use model_store::ModelStatus;

/// A loaded model the API can generate with. `generate` blocks: call it off the async runtime.
pub trait Engine: Send + Sync + 'static {
    fn n_ctx(&self) -> usize;
    fn n_vocab(&self) -> usize;
    /// KV cache bytes per token of one sequence.
    fn kv_bytes_per_token(&self) -> usize;
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32>;
    fn encode_chat(&self, messages: &[ChatMessage]) -> Vec<u32>;
    fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        interrupt: &Interrupt,
        on_piece: &mut dyn FnMut(Piece<'_>) -> ControlFlow<()>,
    ) -> Result<GenerateOutput, EngineError>;
}

impl Engine for Model {
    fn n_ctx(&self) -> usize {
        Model::n_ctx(self)
    }
    fn n_vocab(&self) -> usize {
        Model::n_vocab(self)
    }
    fn kv_bytes_per_token(&self) -> usize {
        Model::kv_bytes_per_token(self)
    }
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.tokenizer().encode(text, add_bos)
    }
    fn encode_chat(&self, messages: &[ChatMessage]) -> Vec<u32> {
        self.tokenizer().encode_chat(messages)
    }
    fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        interrupt: &Interrupt,
        on_piece: &mut dyn FnMut(Piece<'_>) -> ControlFlow<()>,
    ) -> Result<GenerateOutput, EngineError> {
        Model::generate(self, prompt, params, interrupt, on_piece)
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the model could not be had.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchError {
    pub message: String,
    /// Trying again soon gives the same answer (the file failed verification, the engine
    /// refused it): the next attempt waits the whole back-off.
    pub permanent: bool,
}

/// Where the model file comes from (the model store in production).
pub trait ModelSource: Send + Sync + 'static {
    /// The model file's status.
    fn status(&self) -> ModelStatus;
    /// Fetches (or finds in the cache) and maps the file. Concurrent calls share one fetch.
    fn fetch(&self) -> BoxFuture<'_, Result<Arc<memmap2::Mmap>, FetchError>>;
    /// Where the model comes from, for logs and `/health`.
    fn describe(&self) -> String;
}

/// Builds an engine from a mapped model file. Blocking: called on a blocking thread.
pub type Loader = Arc<dyn Fn(Arc<memmap2::Mmap>) -> Result<Arc<dyn Engine>, String> + Send + Sync>;

/// The real loader: `bitnet_engine::Model::from_mmap`.
pub fn engine_loader(opts: LoadOptions) -> Loader {
    Arc::new(move |map| {
        Model::from_mmap(map, &opts)
            .map(|m| Arc::new(m) as Arc<dyn Engine>)
            .map_err(|e| e.to_string())
    })
}
