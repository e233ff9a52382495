//! What the API needs from a model and from the place the model comes from, as two small
//! traits: the real `bitnet_engine::Model` and `model_store::ModelStore` implement them, and
//! the router's tests use fakes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bitnet_engine::model::EmbedError;
use bitnet_engine::{
    ChatMessage, EngineError, EventSink, GenerateParams, Interrupt, Model, Scheduler,
    SchedulerStats,
};
use model_store::ModelStatus;

use crate::config::ApiConfig;

/// A loaded model the API can generate with: the engine's scheduler in production.
pub trait Engine: Send + Sync + 'static {
    fn n_ctx(&self) -> usize;
    fn n_vocab(&self) -> usize;
    /// KV cache bytes per token of one sequence.
    fn kv_bytes_per_token(&self) -> usize;
    /// Kernel threads of the forward pass.
    fn threads(&self) -> usize;
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32>;
    fn encode_chat(&self, messages: &[ChatMessage]) -> Vec<u32>;
    /// Bytes of one token, control tokens' text included; `None` outside the vocabulary.
    fn piece(&self, id: u32) -> Option<Vec<u8>>;
    /// A control token (BOS, end of turn): not text, whatever its piece spells.
    fn is_control(&self, id: u32) -> bool;
    /// Checks the request and queues it; choice i's events go to `sinks[i]` (one sink per
    /// choice, OpenAI's `n`; the prompt is read once). Never blocks. An error means the
    /// request was refused and the sinks see nothing.
    fn submit(
        &self,
        prompt: Vec<u32>,
        params: GenerateParams,
        interrupt: Interrupt,
        sinks: Vec<Box<dyn EventSink>>,
    ) -> Result<(), EngineError>;
    /// The scheduler's counters (`/metrics`).
    fn stats(&self) -> SchedulerStats;
    /// Length of the model's embeddings; `None` for a generative model.
    fn embedding_dim(&self) -> Option<usize>;
    /// The ids an embedding of `text` is made from (with the end-of-text token).
    fn embedding_input(&self, text: &str) -> Vec<u32>;
    /// Embeddings of `inputs`, in order (blocking: the forward passes run here).
    fn embed(
        &self,
        inputs: &[Vec<u32>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Vec<f32>>, EmbedError>;
}

impl Engine for Scheduler {
    fn n_ctx(&self) -> usize {
        self.model().n_ctx()
    }
    fn n_vocab(&self) -> usize {
        self.model().n_vocab()
    }
    fn kv_bytes_per_token(&self) -> usize {
        self.model().kv_bytes_per_token()
    }
    fn threads(&self) -> usize {
        self.model().threads()
    }
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.model().tokenizer().encode(text, add_bos)
    }
    fn encode_chat(&self, messages: &[ChatMessage]) -> Vec<u32> {
        self.model().tokenizer().encode_chat(messages)
    }
    fn piece(&self, id: u32) -> Option<Vec<u8>> {
        self.model().tokenizer().piece(id).map(<[u8]>::to_vec)
    }
    fn is_control(&self, id: u32) -> bool {
        self.model().tokenizer().is_control(id)
    }
    fn submit(
        &self,
        prompt: Vec<u32>,
        params: GenerateParams,
        interrupt: Interrupt,
        sinks: Vec<Box<dyn EventSink>>,
    ) -> Result<(), EngineError> {
        Scheduler::submit_choices(self, prompt, params, interrupt, sinks)
    }
    fn stats(&self) -> SchedulerStats {
        Scheduler::stats(self)
    }
    fn embedding_dim(&self) -> Option<usize> {
        self.model().embedding_dim()
    }
    fn embedding_input(&self, text: &str) -> Vec<u32> {
        self.model().embedding_input(text)
    }
    fn embed(
        &self,
        inputs: &[Vec<u32>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.model().embed(inputs, interrupt)
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

/// The real loader: `bitnet_engine::Model::from_mmap`, then the scheduler sized from the
/// configuration and the memory left once the model is in.
pub fn engine_loader(config: &ApiConfig) -> Loader {
    let config = config.clone();
    Arc::new(move |map| {
        let model_bytes = map.len() as u64;
        let model = Model::from_mmap(map, &config.load_options()).map_err(|e| e.to_string())?;
        let sched = config.scheduler_config(model_store::memory_available(), model_bytes);
        tracing::info!(
            parallel = sched.parallel,
            prefill_chunk = sched.prefill_chunk,
            kv_budget_mb = sched.kv_budget_bytes >> 20,
            prefix_cache_mb = sched.prefix_cache_bytes >> 20,
            "scheduler ready"
        );
        Ok(Arc::new(Scheduler::new(Arc::new(model), sched)) as Arc<dyn Engine>)
    })
}
