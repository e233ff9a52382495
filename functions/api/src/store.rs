//! The model source the binaries use: a thin wrapper over `model_store::ModelStore`
//! (download from S3 / Azure Blob / HTTPS / Hugging Face or a local path, verified, cached,
//! mapped; shared by concurrent callers).

use std::sync::Arc;

use model_store::{ModelStore, StoreConfig};
use serde_json::{Value, json};

use crate::engine::{BoxFuture, ModelSource};

pub struct StoreSource {
    store: ModelStore,
}

impl StoreSource {
    /// `model_store::StoreConfig::from_env()`: `BITNET_MODEL`, `BITNET_MODEL_SHA256`,
    /// `BITNET_CACHE_DIR`, `BITNET_MODEL_STORAGE`, ...
    pub fn from_env() -> Result<Self, String> {
        Self::from_env_with_uri(None)
    }

    /// Like `from_env`, with the model URI replaced when `uri` is given (`bitnet serve --model`).
    pub fn from_env_with_uri(uri: Option<&str>) -> Result<Self, String> {
        let mut cfg = StoreConfig::from_env();
        if let Some(u) = uri {
            cfg.uri = u.to_string();
        }
        Ok(Self::new(cfg))
    }

    /// A store for one URI with every other setting at its default.
    pub fn from_uri(uri: &str) -> Self {
        Self::new(StoreConfig::new(uri))
    }

    pub fn new(cfg: StoreConfig) -> Self {
        Self {
            store: ModelStore::new(cfg),
        }
    }
}

impl ModelSource for StoreSource {
    fn status(&self) -> Value {
        serde_json::to_value(self.store.status())
            .unwrap_or_else(|e| json!({ "state": "unknown", "error": e.to_string() }))
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Arc<memmap2::Mmap>, String>> {
        Box::pin(async move {
            let file = self.store.get().await.map_err(|e| e.to_string())?;
            tracing::info!(source = %file.source, size = file.size, sha256 = ?file.sha256, path = ?file.path, "model file ready");
            Ok(file.map.clone())
        })
    }

    fn describe(&self) -> String {
        model_store::uri::redact(&self.store.config().uri)
    }
}
