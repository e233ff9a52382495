//! What the health endpoint reports about the model.

use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The model's state, serialised with a `state` tag, e.g.
/// `{"state":"downloading","bytes_done":1048576,"bytes_total":1200000000,"bytes_per_sec":8.3e7}`.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ModelStatus {
    /// `get()` has not been called yet.
    NotStarted,
    /// Bytes are arriving.
    Downloading {
        bytes_done: u64,
        bytes_total: u64,
        bytes_per_sec: f64,
    },
    /// Hashing and header checks before the file is published.
    Verifying,
    /// Mapped and ready. `seconds` is the time the load took; `path` is `(memory)` for a
    /// model held in memory; `sha256` is null only for an unhashed local file.
    Ready {
        path: String,
        size: u64,
        sha256: Option<String>,
        seconds: f64,
        source: String,
    },
    /// The last attempt failed; the next `get()` tries again.
    Failed { error: String },
}

/// Shared, cheap progress tracking behind [`ModelStatus`].
#[derive(Debug)]
pub(crate) struct StatusCell {
    phase: Mutex<Phase>,
    pub(crate) bytes_done: AtomicU64,
    bytes_total: AtomicU64,
}

#[derive(Debug, Clone)]
enum Phase {
    NotStarted,
    Downloading { since: Instant },
    Fixed(ModelStatus),
}

impl StatusCell {
    pub(crate) fn new() -> Self {
        StatusCell {
            phase: Mutex::new(Phase::NotStarted),
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
        }
    }

    pub(crate) fn start_download(&self, total: u64) {
        self.bytes_done.store(0, Ordering::Relaxed);
        self.bytes_total.store(total, Ordering::Relaxed);
        *self.lock() = Phase::Downloading {
            since: Instant::now(),
        };
    }

    pub(crate) fn set(&self, status: ModelStatus) {
        *self.lock() = Phase::Fixed(status);
    }

    pub(crate) fn get(&self) -> ModelStatus {
        match self.lock().clone() {
            Phase::NotStarted => ModelStatus::NotStarted,
            Phase::Fixed(s) => s,
            Phase::Downloading { since } => {
                let done = self.bytes_done.load(Ordering::Relaxed);
                let secs = since.elapsed().as_secs_f64();
                ModelStatus::Downloading {
                    bytes_done: done,
                    bytes_total: self.bytes_total.load(Ordering::Relaxed),
                    bytes_per_sec: if secs > 0.0 { done as f64 / secs } else { 0.0 },
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_with_state_tag() {
        let s = serde_json::to_string(&ModelStatus::NotStarted).unwrap();
        assert_eq!(s, r#"{"state":"not_started"}"#);
        let s = serde_json::to_string(&ModelStatus::Downloading {
            bytes_done: 1,
            bytes_total: 2,
            bytes_per_sec: 0.5,
        })
        .unwrap();
        assert_eq!(
            s,
            r#"{"state":"downloading","bytes_done":1,"bytes_total":2,"bytes_per_sec":0.5}"#
        );
        let s = serde_json::to_string(&ModelStatus::Failed { error: "x".into() }).unwrap();
        assert_eq!(s, r#"{"state":"failed","error":"x"}"#);
        let s = serde_json::to_string(&ModelStatus::Verifying).unwrap();
        assert_eq!(s, r#"{"state":"verifying"}"#);
    }
}
