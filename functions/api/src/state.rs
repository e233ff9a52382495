//! Application state, built once per process: the model source, the lazily loaded engine with
//! its one typed lifecycle, and the admission control that lets one generation run at a time
//! with a small queue behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use model_store::ModelStatus;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::ApiConfig;
use crate::engine::{Engine, FetchError, Loader, ModelSource};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Where the engine is in its life (the one state machine; the model store's file status
/// fills in the detail while the file is on its way).
#[derive(Clone)]
enum Phase {
    /// Nothing asked for the model yet.
    Idle,
    /// Waiting for the model file (download, verification, cache).
    Fetching,
    /// The file is mapped; the engine is parsing and checking it.
    Loading { file_ms: u64 },
    Ready {
        engine: Arc<dyn Engine>,
        file_ms: u64,
        load_ms: u64,
    },
    Failed {
        error: String,
        /// Failures in a row.
        attempts: u32,
        /// No new attempt before this.
        retry_at: Instant,
    },
}

/// The model's state as `/health` and `/ready` report it, serialised with a `state` tag.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ModelState {
    NotStarted,
    Downloading {
        bytes_done: u64,
        bytes_total: u64,
        bytes_per_sec: f64,
    },
    Verifying,
    Loading {
        #[serde(skip_serializing_if = "Option::is_none")]
        file_ms: Option<u64>,
    },
    Ready {
        n_ctx: usize,
        n_vocab: usize,
        /// KV cache of one full-length sequence.
        kv_bytes_per_sequence: usize,
        /// An embedding model's vector length (`/v1/embeddings`); absent for a generative
        /// model.
        #[serde(skip_serializing_if = "Option::is_none")]
        embedding_dim: Option<usize>,
        file_ms: u64,
        load_ms: u64,
    },
    Failed {
        error: String,
        attempts: u32,
        /// Seconds until the next attempt may start.
        retry_in_s: u64,
    },
}

/// [`ModelState`] with the model's id and source, for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub id: String,
    pub source: String,
    #[serde(flatten)]
    pub state: ModelState,
}

/// The first retry after a failure waits this long; each further failure doubles it, up to
/// `ApiConfig::load_retry_max`.
const FIRST_RETRY: Duration = Duration::from_secs(10);

fn backoff(attempts: u32, permanent: bool, max: Duration) -> Duration {
    if permanent {
        return max;
    }
    let doubled = FIRST_RETRY.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    doubled.min(max)
}

/// Shared, cheaply clonable application state.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: ApiConfig,
    /// The model of `/v1/chat/completions` and `/v1/completions` (the one model, unless an
    /// embedding model is served beside it).
    chat: Arc<Slot>,
    /// An embedding model served beside it (`BITNET_EMBEDDING_MODEL`), for `/v1/embeddings`.
    embedding: Option<Arc<Slot>>,
    /// One permit per request allowed in (generating + waiting): `parallel + max_queue`.
    admission: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    started: Instant,
}

/// One model's lifecycle: its id, where it comes from, how it loads, and where it is.
struct Slot {
    id: String,
    source: Arc<dyn ModelSource>,
    loader: Loader,
    phase: watch::Sender<Phase>,
    /// Failed attempts in a row (the back-off's exponent).
    failures: AtomicU32,
    load_retry_max: Duration,
}

/// What a front door gives for one model: its id, source and loader.
pub struct ModelSpec {
    pub id: String,
    pub source: Arc<dyn ModelSource>,
    pub loader: Loader,
}

/// A place among the requests let in (generating or waiting), taken before a request's body
/// is read: the work a request may cause (reading, parsing, tokenizing) is only done for
/// requests that will be served. Held until the engine is done with the request.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

impl AppState {
    /// Builds the state for one model. With `config.preload` the model starts loading in the
    /// background (this needs a Tokio runtime); nothing here blocks.
    pub fn new(config: ApiConfig, source: Arc<dyn ModelSource>, loader: Loader) -> Self {
        let chat = ModelSpec {
            id: config.model_id.clone(),
            source,
            loader,
        };
        Self::with_models(config, chat, None)
    }

    /// [`AppState::new`] with an embedding model served beside the chat model.
    pub fn with_models(config: ApiConfig, chat: ModelSpec, embedding: Option<ModelSpec>) -> Self {
        let preload = config.preload;
        let slot = |m: ModelSpec| {
            Arc::new(Slot {
                id: m.id,
                source: m.source,
                loader: m.loader,
                phase: watch::channel(Phase::Idle).0,
                failures: AtomicU32::new(0),
                load_retry_max: config.load_retry_max,
            })
        };
        let state = Self {
            inner: Arc::new(Inner {
                admission: Arc::new(Semaphore::new(config.parallel + config.max_queue)),
                chat: slot(chat),
                embedding: embedding.map(slot),
                config,
                metrics: Arc::new(Metrics::new()),
                started: Instant::now(),
            }),
        };
        if preload {
            state.start_loading();
        }
        state
    }

    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    fn slots(&self) -> impl Iterator<Item = &Arc<Slot>> {
        std::iter::once(&self.inner.chat).chain(self.inner.embedding.as_ref())
    }

    /// The slot `/v1/embeddings` uses: the embedding model served beside, else the one model.
    fn embedding_slot(&self) -> &Arc<Slot> {
        self.inner.embedding.as_ref().unwrap_or(&self.inner.chat)
    }

    /// Starts fetching and loading every model in the background unless under way, ready, or
    /// failed with its back-off not passed. Returns immediately.
    pub fn start_loading(&self) {
        for s in self.slots() {
            s.start_loading();
        }
    }

    /// The chat model's engine if it is ready.
    pub fn engine_now(&self) -> Option<Arc<dyn Engine>> {
        self.inner.chat.engine_now()
    }

    /// Resolves once every model is loaded (at once if they are), however many attempts that
    /// takes, with the chat model's engine; never if the state is dropped first.
    pub async fn ready(&self) -> Arc<dyn Engine> {
        if let Some(e) = &self.inner.embedding {
            e.ready().await;
        }
        self.inner.chat.ready().await
    }

    /// Resolves once this attempt has settled for every model: the chat engine when all
    /// loaded, or the first error. Never if the state is dropped first.
    pub async fn settled(&self) -> Result<Arc<dyn Engine>, String> {
        if let Some(e) = &self.inner.embedding {
            e.settled().await?;
        }
        self.inner.chat.settled().await
    }

    /// The chat model's engine, waiting up to `BITNET_WAIT_FOR_MODEL_SECS` for it; 503 with
    /// `Retry-After` otherwise.
    pub async fn engine(&self) -> Result<Arc<dyn Engine>, ApiError> {
        self.inner
            .chat
            .engine(self.inner.config.wait_for_model)
            .await
    }

    /// The engine `/v1/embeddings` uses and its model id: the embedding model served
    /// beside the chat model, else the one model.
    pub async fn embedding_engine(&self) -> Result<(Arc<dyn Engine>, String), ApiError> {
        let slot = self.embedding_slot();
        let engine = slot.engine(self.inner.config.wait_for_model).await?;
        Ok((engine, slot.id.clone()))
    }

    /// Takes a place among the requests let in, or 429 when every slot and queue place is
    /// taken. Call before doing any work for a request.
    pub fn admit(&self) -> Result<Admission, ApiError> {
        let c = &self.inner.config;
        let permit = self
            .inner
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::queue_full(c.parallel, c.max_queue))?;
        Ok(Admission { _permit: permit })
    }

    /// Where the chat model is.
    pub fn model_state(&self) -> ModelState {
        self.inner.chat.model_state()
    }

    /// [`AppState::model_state`] with the model's id and source.
    pub fn model_report(&self) -> ModelReport {
        self.inner.chat.report()
    }

    /// The embedding model served beside the chat model, if any.
    pub fn embedding_report(&self) -> Option<ModelReport> {
        self.inner.embedding.as_ref().map(|s| s.report())
    }

    /// Whether `name` is the id of an embedding model served beside the chat model (a chat
    /// request naming it is refused rather than answered by the chat model).
    pub fn is_embedding_model_name(&self, name: &str) -> bool {
        self.inner
            .embedding
            .as_ref()
            .is_some_and(|s| s.id.eq_ignore_ascii_case(name))
    }

    /// Whether `name` is the chat model's id while an embedding model is served beside it (an
    /// embeddings request naming it is refused).
    pub fn is_chat_model_name_beside_an_embedding_model(&self, name: &str) -> bool {
        self.inner.embedding.is_some() && self.inner.chat.id.eq_ignore_ascii_case(name)
    }

    /// The ids of the models served (`/v1/models`).
    pub fn model_ids(&self) -> Vec<String> {
        self.slots().map(|s| s.id.clone()).collect()
    }

    /// Whether every model is ready.
    pub fn is_ready(&self) -> bool {
        self.slots().all(|s| s.engine_now().is_some())
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Requests generating or waiting.
    pub fn in_flight(&self) -> usize {
        let c = &self.inner.config;
        c.parallel + c.max_queue - self.inner.admission.available_permits()
    }
}

impl Slot {
    /// Starts fetching and loading the model in the background unless it is under way, ready,
    /// or failed and its back-off has not passed. Returns immediately.
    fn start_loading(self: &Arc<Self>) {
        let mut start = false;
        self.phase.send_if_modified(|p| {
            let go = match p {
                Phase::Idle => true,
                Phase::Failed { retry_at, .. } => Instant::now() >= *retry_at,
                _ => false,
            };
            if go {
                *p = Phase::Fetching;
                start = true;
            }
            go
        });
        if !start {
            return;
        }
        let slot = self.clone();
        tokio::spawn(async move {
            let result = slot.fetch_and_load().await;
            let attempts = match &result {
                Ok(_) => {
                    slot.failures.store(0, Ordering::Relaxed);
                    0
                }
                Err(_) => slot.failures.fetch_add(1, Ordering::Relaxed) + 1,
            };
            slot.phase.send_modify(|p| {
                *p = match result {
                    Ok(ready) => ready,
                    Err(FetchError { message, permanent }) => {
                        let wait = backoff(attempts, permanent, slot.load_retry_max);
                        tracing::error!(
                            model = %slot.id,
                            error = %message,
                            attempts,
                            retry_in_s = wait.as_secs(),
                            "model unavailable"
                        );
                        Phase::Failed {
                            error: message,
                            attempts,
                            retry_at: Instant::now() + wait,
                        }
                    }
                }
            });
        });
    }

    fn engine_now(&self) -> Option<Arc<dyn Engine>> {
        match &*self.phase.borrow() {
            Phase::Ready { engine, .. } => Some(engine.clone()),
            _ => None,
        }
    }

    async fn ready(&self) -> Arc<dyn Engine> {
        let mut phase = self.phase.subscribe();
        loop {
            if let Phase::Ready { engine, .. } = &*phase.borrow_and_update() {
                return engine.clone();
            }
            if phase.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    async fn settled(&self) -> Result<Arc<dyn Engine>, String> {
        let mut phase = self.phase.subscribe();
        loop {
            match &*phase.borrow_and_update() {
                Phase::Ready { engine, .. } => return Ok(engine.clone()),
                Phase::Failed { error, .. } => return Err(error.clone()),
                _ => {}
            }
            if phase.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    async fn engine(self: &Arc<Self>, wait: Duration) -> Result<Arc<dyn Engine>, ApiError> {
        if let Some(e) = self.engine_now() {
            return Ok(e);
        }
        self.start_loading();
        if !wait.is_zero() {
            let mut rx = self.phase.subscribe();
            let done = tokio::time::timeout(
                wait,
                rx.wait_for(|p| matches!(p, Phase::Ready { .. } | Phase::Failed { .. })),
            )
            .await;
            if let Ok(Ok(p)) = done
                && let Phase::Ready { engine, .. } = &*p
            {
                return Ok(engine.clone());
            }
        }
        if let Some(e) = self.engine_now() {
            return Ok(e);
        }
        let state = self.model_state();
        let retry = retry_after_estimate(&state);
        Err(match state {
            ModelState::Failed { error, .. } => ApiError::model_failed(&error, retry),
            other => ApiError::not_ready(state_name(&other), retry),
        })
    }

    /// Where the model is: the engine's phase, with the file's status while it is on its way.
    fn model_state(&self) -> ModelState {
        let phase = self.phase.borrow().clone();
        match phase {
            Phase::Idle | Phase::Fetching => match self.source.status() {
                ModelStatus::NotStarted if matches!(phase, Phase::Idle) => ModelState::NotStarted,
                ModelStatus::NotStarted => ModelState::Loading { file_ms: None },
                ModelStatus::Downloading {
                    bytes_done,
                    bytes_total,
                    bytes_per_sec,
                } => ModelState::Downloading {
                    bytes_done,
                    bytes_total,
                    bytes_per_sec,
                },
                ModelStatus::Verifying => ModelState::Verifying,
                // The file is there (or failed before this attempt): the engine is next.
                ModelStatus::Ready { .. } | ModelStatus::Failed { .. } => {
                    ModelState::Loading { file_ms: None }
                }
            },
            Phase::Loading { file_ms } => ModelState::Loading {
                file_ms: Some(file_ms),
            },
            Phase::Ready {
                engine,
                file_ms,
                load_ms,
            } => ModelState::Ready {
                n_ctx: engine.n_ctx(),
                n_vocab: engine.n_vocab(),
                kv_bytes_per_sequence: engine.kv_bytes_per_token() * engine.n_ctx(),
                embedding_dim: engine.embedding_dim(),
                file_ms,
                load_ms,
            },
            Phase::Failed {
                error,
                attempts,
                retry_at,
            } => ModelState::Failed {
                error,
                attempts,
                retry_in_s: retry_at
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
                    .ceil() as u64,
            },
        }
    }

    fn report(&self) -> ModelReport {
        ModelReport {
            id: self.id.clone(),
            source: self.source.describe(),
            state: self.model_state(),
        }
    }

    /// One attempt: the file from the source, then the engine from the file.
    async fn fetch_and_load(&self) -> Result<Phase, FetchError> {
        let t0 = Instant::now();
        tracing::info!(model = %self.id, source = %self.source.describe(), "fetching model");
        let map = self.source.fetch().await?;
        let file_ms = t0.elapsed().as_millis() as u64;
        self.phase.send_replace(Phase::Loading { file_ms });
        tracing::info!(
            model = %self.id,
            file_ms,
            bytes = map.len(),
            "model file ready; loading engine"
        );
        let loader = self.loader.clone();
        let t1 = Instant::now();
        let engine = tokio::task::spawn_blocking(move || loader(map))
            .await
            .map_err(|join| FetchError {
                message: format!("engine panicked while loading: {}", panic_message(join)),
                permanent: true,
            })?
            .map_err(|message| FetchError {
                message,
                // The same file loads the same way: wait the whole back-off.
                permanent: true,
            })?;
        let load_ms = t1.elapsed().as_millis() as u64;
        tracing::info!(
            model = %self.id,
            load_ms,
            n_ctx = engine.n_ctx(),
            kv_bytes_per_sequence = engine.kv_bytes_per_token() * engine.n_ctx(),
            "model ready"
        );
        Ok(Phase::Ready {
            engine,
            file_ms,
            load_ms,
        })
    }
}

/// The `state` tag of a [`ModelState`].
pub fn state_name(s: &ModelState) -> &'static str {
    match s {
        ModelState::NotStarted => "not_started",
        ModelState::Downloading { .. } => "downloading",
        ModelState::Verifying => "verifying",
        ModelState::Loading { .. } => "loading",
        ModelState::Ready { .. } => "ready",
        ModelState::Failed { .. } => "failed",
    }
}

/// Seconds until a retry is worth it: the back-off left after a failure, the remaining
/// download time when it is known, else 5.
pub fn retry_after_estimate(state: &ModelState) -> u64 {
    match *state {
        ModelState::Failed { retry_in_s, .. } => retry_in_s.max(1),
        ModelState::Downloading {
            bytes_done,
            bytes_total,
            bytes_per_sec,
        } if bytes_per_sec > 0.0 && bytes_total >= bytes_done => {
            (((bytes_total - bytes_done) as f64 / bytes_per_sec).ceil() as u64).clamp(1, 60)
        }
        _ => 5,
    }
}

pub(crate) fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(p) => payload_message(p.as_ref()),
        Err(e) => e.to_string(),
    }
}

/// The message of a panic payload (`&str` or `String`).
pub(crate) fn payload_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_permanent_failures_wait_the_cap() {
        let max = Duration::from_secs(600);
        let waits: Vec<u64> = (1..=8).map(|a| backoff(a, false, max).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(backoff(1, true, max), max);
        assert_eq!(backoff(u32::MAX, false, max), max);
    }
}
