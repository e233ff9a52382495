//! The model source the binaries use: a thin wrapper over `model_store::ModelStore`
//! (download from S3 / Azure Blob / HTTPS / Hugging Face or a local path, verified, cached,
//! mapped; shared by concurrent callers).

use std::sync::Arc;

pub use model_store::StoreConfig;
use model_store::{ModelStatus, ModelStore, StoreError};

use crate::FrontDoor;
use crate::engine::{BoxFuture, FetchError, ModelSource};

pub struct StoreSource {
    store: ModelStore,
}

impl StoreSource {
    /// `model_store::StoreConfig::from_env()` (`BITNET_MODEL`, `BITNET_MODEL_SHA256`,
    /// `BITNET_CACHE_DIR`, `BITNET_MODEL_STORAGE`, ...), with the model URI replaced when `uri`
    /// is given (`bitnet serve --model`) and the front door's default for
    /// `BITNET_CACHE_FSYNC` ([`FrontDoor::cache_fsync`]).
    pub fn from_env(front_door: FrontDoor, uri: Option<&str>) -> Self {
        let mut cfg = StoreConfig::from_env_with_fsync_default(front_door.cache_fsync());
        if let Some(u) = uri {
            cfg.uri = u.to_string();
        }
        Self::new(cfg)
    }

    /// The embedding model served beside the chat model: the same store settings (cache,
    /// storage, credentials) with its own URI and `BITNET_EMBEDDING_MODEL_SHA256`.
    pub fn for_embedding_model(front_door: FrontDoor, uri: &str) -> Self {
        let mut cfg = StoreConfig::from_env_with_fsync_default(front_door.cache_fsync());
        cfg.uri = uri.to_string();
        cfg.sha256 = std::env::var("BITNET_EMBEDDING_MODEL_SHA256")
            .ok()
            .filter(|s| !s.trim().is_empty());
        Self::new(cfg)
    }

    pub fn new(cfg: StoreConfig) -> Self {
        Self {
            store: ModelStore::new(cfg),
        }
    }
}

/// Failures that the same source gives again on the next try.
fn is_permanent(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::ChecksumMismatch { .. }
            | StoreError::SizeMismatch { .. }
            | StoreError::NotGguf { .. }
            | StoreError::InvalidUri { .. }
            | StoreError::UnsafeCache { .. }
    )
}

impl ModelSource for StoreSource {
    fn status(&self) -> ModelStatus {
        self.store.status()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Arc<memmap2::Mmap>, FetchError>> {
        Box::pin(async move {
            let file = self.store.get().await.map_err(|e| FetchError {
                message: e.to_string(),
                permanent: is_permanent(&e),
            })?;
            tracing::info!(source = %file.source, size = file.size, sha256 = ?file.sha256, path = ?file.path, "model file ready");
            Ok(file.map.clone())
        })
    }

    fn describe(&self) -> String {
        model_store::uri::redact(&self.store.config().uri)
    }
}
