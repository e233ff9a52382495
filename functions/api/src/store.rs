//! The model source used by the binaries.
//!
//! TEMPORARY stand-in until `model_store` lands: serves a local file (`BITNET_MODEL`, a path or
//! `file://` URI) with the same status shape (`not_started` / `verifying` / `ready` /
//! `failed`). Replaced by a thin wrapper over `model_store::ModelStore`.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::engine::{BoxFuture, ModelSource};

pub struct StoreSource {
    uri: String,
    status: Arc<Mutex<Value>>,
    map: tokio::sync::OnceCell<Arc<memmap2::Mmap>>,
}

impl StoreSource {
    pub fn from_env() -> Result<Self, String> {
        Self::from_env_with_uri(None)
    }

    /// Like `from_env`, with the model URI replaced when `uri` is given (`bitnet serve --model`).
    pub fn from_env_with_uri(uri: Option<&str>) -> Result<Self, String> {
        let uri = match uri {
            Some(u) => u.to_string(),
            None => std::env::var("BITNET_MODEL").unwrap_or_else(|_| {
                "hf://microsoft/BitNet-b1.58-2B-4T-gguf/ggml-model-i2_s.gguf".to_string()
            }),
        };
        Ok(Self::from_uri(&uri))
    }

    pub fn from_uri(uri: &str) -> Self {
        Self {
            uri: uri.to_string(),
            status: Arc::new(Mutex::new(json!({ "state": "not_started" }))),
            map: tokio::sync::OnceCell::new(),
        }
    }

    fn set(&self, v: Value) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

impl ModelSource for StoreSource {
    fn status(&self) -> Value {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Arc<memmap2::Mmap>, String>> {
        Box::pin(async move {
            let r = self
                .map
                .get_or_try_init(|| async {
                    self.set(json!({ "state": "verifying" }));
                    let path = self
                        .uri
                        .strip_prefix("file://")
                        .unwrap_or(&self.uri)
                        .to_string();
                    let t0 = std::time::Instant::now();
                    let p = path.clone();
                    let map =
                        tokio::task::spawn_blocking(move || -> Result<memmap2::Mmap, String> {
                            let f =
                                std::fs::File::open(&p).map_err(|e| format!("open {p}: {e}"))?;
                            // SAFETY: the file is opened read-only and model files are never
                            // modified in place while served.
                            unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("mmap {p}: {e}"))
                        })
                        .await
                        .map_err(|e| e.to_string())??;
                    self.set(json!({ "state": "ready", "path": path, "size": map.len(),
                        "seconds": t0.elapsed().as_secs_f64(), "source": self.uri }));
                    Ok::<_, String>(Arc::new(map))
                })
                .await
                .cloned();
            if let Err(e) = &r {
                self.set(json!({ "state": "failed", "error": e }));
            }
            r
        })
    }

    fn describe(&self) -> String {
        self.uri.clone()
    }
}
