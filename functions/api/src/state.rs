//! Application state, built once per process: the model source, the lazily loaded engine, and
//! the admission control that lets one generation run at a time with a small queue behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::ApiConfig;
use crate::engine::{Engine, Loader, ModelSource};
use crate::error::ApiError;

/// Where the engine is in its life.
#[derive(Clone)]
pub enum Phase {
    /// Nothing asked for the model yet.
    Idle,
    /// Waiting for the model file (download, verification, cache).
    Fetching,
    /// The file is mapped; the engine is parsing it.
    Loading {
        file_ms: u64,
    },
    Ready {
        engine: Arc<dyn Engine>,
        file_ms: u64,
        load_ms: u64,
    },
    Failed {
        error: String,
        at: Instant,
    },
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "not_started",
            Phase::Fetching => "fetching",
            Phase::Loading { .. } => "loading",
            Phase::Ready { .. } => "ready",
            Phase::Failed { .. } => "failed",
        }
    }
}

/// After a failure, a generation request starts a new attempt only this long after it.
const RETRY_BACKOFF: Duration = Duration::from_secs(10);

/// Shared, cheaply clonable application state.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: ApiConfig,
    source: Arc<dyn ModelSource>,
    loader: Loader,
    phase: watch::Sender<Phase>,
    /// One permit per request allowed in (running + waiting).
    admission: Arc<Semaphore>,
    /// One permit: the engine runs one generation at a time.
    exec: Arc<Semaphore>,
    started: Instant,
}

/// Permits a generation holds until it ends (moved into the blocking task).
pub struct GenerationPermit {
    _admission: OwnedSemaphorePermit,
    _exec: OwnedSemaphorePermit,
}

impl AppState {
    /// Builds the state. With `config.preload` the model starts loading in the background (this
    /// needs a Tokio runtime); nothing here blocks.
    pub fn new(config: ApiConfig, source: Arc<dyn ModelSource>, loader: Loader) -> Self {
        let preload = config.preload;
        let state = Self {
            inner: Arc::new(Inner {
                admission: Arc::new(Semaphore::new(config.max_queue + 1)),
                exec: Arc::new(Semaphore::new(1)),
                config,
                source,
                loader,
                phase: watch::channel(Phase::Idle).0,
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

    /// Starts fetching and loading the model in the background unless it is under way, ready,
    /// or failed less than `RETRY_BACKOFF` ago. Returns immediately.
    pub fn start_loading(&self) {
        let mut start = false;
        self.inner.phase.send_if_modified(|p| {
            let go = match p {
                Phase::Idle => true,
                Phase::Failed { at, .. } => at.elapsed() >= RETRY_BACKOFF,
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
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            tracing::info!(source = %inner.source.describe(), "fetching model");
            let map = match inner.source.fetch().await {
                Ok(map) => map,
                Err(error) => {
                    tracing::error!(%error, "model fetch failed");
                    inner.phase.send_replace(Phase::Failed {
                        error,
                        at: Instant::now(),
                    });
                    return;
                }
            };
            let file_ms = t0.elapsed().as_millis() as u64;
            inner.phase.send_replace(Phase::Loading { file_ms });
            tracing::info!(
                file_ms,
                bytes = map.len(),
                "model file ready; loading engine"
            );
            let loader = inner.loader.clone();
            let t1 = Instant::now();
            let result = tokio::task::spawn_blocking(move || loader(map)).await;
            let load_ms = t1.elapsed().as_millis() as u64;
            let phase = match result {
                Ok(Ok(engine)) => {
                    tracing::info!(load_ms, n_ctx = engine.n_ctx(), "model ready");
                    Phase::Ready {
                        engine,
                        file_ms,
                        load_ms,
                    }
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "model load failed");
                    Phase::Failed {
                        error,
                        at: Instant::now(),
                    }
                }
                Err(join) => {
                    let error = format!("engine panicked while loading: {}", panic_message(join));
                    tracing::error!(%error, "model load failed");
                    Phase::Failed {
                        error,
                        at: Instant::now(),
                    }
                }
            };
            inner.phase.send_replace(phase);
        });
    }

    /// The engine if it is ready.
    pub fn engine_now(&self) -> Option<Arc<dyn Engine>> {
        match &*self.inner.phase.borrow() {
            Phase::Ready { engine, .. } => Some(engine.clone()),
            _ => None,
        }
    }

    /// The engine, waiting up to `BITNET_WAIT_FOR_MODEL_SECS` for it; 503 with `Retry-After`
    /// otherwise.
    pub async fn engine(&self) -> Result<Arc<dyn Engine>, ApiError> {
        if let Some(e) = self.engine_now() {
            return Ok(e);
        }
        self.start_loading();
        let wait = self.inner.config.wait_for_model;
        if !wait.is_zero() {
            let mut rx = self.inner.phase.subscribe();
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
        let phase = self.inner.phase.borrow().clone();
        match phase {
            Phase::Ready { engine, .. } => Ok(engine),
            Phase::Failed { error, at } => {
                let left = RETRY_BACKOFF.saturating_sub(at.elapsed()).as_secs().max(1);
                Err(ApiError::model_failed(&error, left))
            }
            other => {
                let status = self.model_status();
                let state = status["state"].as_str().unwrap_or(other.name()).to_string();
                Err(ApiError::not_ready(&state, retry_after_estimate(&status)))
            }
        }
    }

    /// Takes a place in the queue (429 when it is full), then waits for the engine to be free.
    /// Cancel-safe: a client that leaves while waiting gives its place back.
    pub async fn acquire_generation(&self) -> Result<GenerationPermit, ApiError> {
        let admission = self
            .inner
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::queue_full(self.inner.config.max_queue))?;
        let exec = self
            .inner
            .exec
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("generation semaphore closed"))?;
        Ok(GenerationPermit {
            _admission: admission,
            _exec: exec,
        })
    }

    /// The model's status for `/health`: the source's file status while the file is not ready,
    /// then the engine's `loading` / `ready` / `failed`.
    pub fn model_status(&self) -> Value {
        let phase = self.inner.phase.borrow().clone();
        let mut file = self.inner.source.status();
        if !file.is_object() {
            file = json!({ "state": file });
        }
        let mut out = match phase {
            Phase::Idle | Phase::Fetching => {
                // The file status says downloading / verifying / ready / failed.
                let mut s = file.clone();
                if s["state"] == "ready" {
                    // File ready, engine about to load.
                    s["state"] = json!("loading");
                }
                s
            }
            Phase::Loading { file_ms } => json!({ "state": "loading", "file_ms": file_ms }),
            Phase::Ready {
                engine,
                file_ms,
                load_ms,
            } => json!({
                "state": "ready",
                "n_ctx": engine.n_ctx(),
                "n_vocab": engine.n_vocab(),
                "file_ms": file_ms,
                "load_ms": load_ms,
            }),
            Phase::Failed { error, .. } => json!({ "state": "failed", "error": error }),
        };
        let same_state = file.get("state") == out.get("state");
        if let Some(obj) = out.as_object_mut() {
            obj.insert("id".into(), json!(self.inner.config.model_id));
            obj.insert("source".into(), json!(self.inner.source.describe()));
            if !same_state {
                obj.insert("file".into(), file);
            }
        }
        out
    }

    pub fn is_ready(&self) -> bool {
        self.engine_now().is_some()
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Requests running or waiting.
    pub fn in_flight(&self) -> usize {
        self.inner.config.max_queue + 1 - self.inner.admission.available_permits()
    }
}

/// Seconds until a retry is worth it: the remaining download time when it is known, else 5.
pub fn retry_after_estimate(status: &Value) -> u64 {
    let done = status["bytes_done"].as_f64();
    let total = status["bytes_total"].as_f64();
    let rate = status["bytes_per_sec"].as_f64();
    match (done, total, rate) {
        (Some(d), Some(t), Some(r)) if r > 0.0 && t >= d => {
            (((t - d) / r).ceil() as u64).clamp(1, 60)
        }
        _ => 5,
    }
}

pub(crate) fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into()),
        Err(e) => e.to_string(),
    }
}
