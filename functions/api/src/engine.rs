//! What the API needs from a model and from the place the model comes from, as two small
//! traits: the real `bitnet_engine::Model` and `model_store::ModelStore` implement them, and
//! the router's tests use fakes.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;

use bitnet_engine::{
    ChatMessage, EngineError, GenerateOutput, GenerateParams, LoadOptions, Model, Piece,
};

/// A loaded model the API can generate with. `generate` blocks: call it off the async runtime.
pub trait Engine: Send + Sync + 'static {
    fn n_ctx(&self) -> usize;
    fn n_vocab(&self) -> usize;
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32>;
    fn encode_chat(&self, messages: &[ChatMessage]) -> Vec<u32>;
    fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
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
        on_piece: &mut dyn FnMut(Piece<'_>) -> ControlFlow<()>,
    ) -> Result<GenerateOutput, EngineError> {
        Model::generate(self, prompt, params, on_piece)
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the model file comes from (the model store in production).
pub trait ModelSource: Send + Sync + 'static {
    /// The model file's status as a JSON object with at least `"state"` (`not_started`,
    /// `downloading`, `verifying`, `ready`, `failed`) and whatever progress fields apply.
    fn status(&self) -> serde_json::Value;
    /// Fetches (or finds in the cache) and maps the file. Concurrent calls share one fetch.
    fn fetch(&self) -> BoxFuture<'_, Result<Arc<memmap2::Mmap>, String>>;
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
