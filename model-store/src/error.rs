//! Errors of the model store: structured, cloneable (every caller of one shared download gets
//! the same error), and free of secrets: every URI in them has been through [`crate::uri::redact`].

/// Why a model could not be made available.
#[derive(thiserror::Error, Debug, Clone)]
pub enum StoreError {
    /// The model URI could not be understood.
    #[error("invalid model URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },

    /// The source answered 404 (or the local file does not exist). Never retried.
    #[error("{uri}: not found ({detail})")]
    NotFound { uri: String, detail: String },

    /// The source answered 401/403: missing or wrong credentials, expired SAS, no permission.
    /// Never retried.
    #[error("{uri}: access denied ({detail}); check the credentials or SAS for this source")]
    Forbidden { uri: String, detail: String },

    /// The object changed while it was being downloaded (ETag differs or If-Match failed).
    #[error("{uri}: the object changed during the download (ETag {expected} at start, now {got})")]
    ObjectChanged {
        uri: String,
        expected: String,
        got: String,
    },

    /// The downloaded bytes do not hash to the expected sha256.
    #[error(
        "{uri}: sha256 mismatch: expected {expected}, got {actual} (expected value from {origin})"
    )]
    ChecksumMismatch {
        uri: String,
        expected: String,
        actual: String,
        origin: String,
    },

    /// The downloaded size differs from the size announced or configured.
    #[error("{uri}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        uri: String,
        expected: u64,
        actual: u64,
    },

    /// The bytes are not a GGUF file (bad magic, unknown version, absurd counts).
    #[error("{uri}: not a usable GGUF file: {reason}")]
    NotGguf { uri: String, reason: String },

    /// Not enough disk (or memory) for the model.
    #[error("not enough space for {uri}: need {} (model plus headroom); {detail}", crate::space::human(*needed))]
    NoSpace {
        uri: String,
        needed: u64,
        detail: String,
    },

    /// A network transfer failed; `retryable` says whether trying later may help.
    #[error("{uri}: download failed after {attempts} attempt(s): {message}")]
    Transfer {
        uri: String,
        message: String,
        attempts: u32,
        retryable: bool,
    },

    /// The cache directory is not private to this user (owned by another user, or writable by
    /// group or others), so nothing in it can be trusted. Never retried.
    #[error(
        "cache directory {path} is unsafe: {reason}; fix its ownership and mode or choose another BITNET_CACHE_DIR"
    )]
    UnsafeCache { path: String, reason: String },

    /// A local file-system operation failed.
    #[error("{op} {path}: {message}")]
    Io {
        op: &'static str,
        path: String,
        message: String,
    },

    /// Credentials or client set-up failed before any transfer.
    #[error("{uri}: {message}")]
    Setup { uri: String, message: String },

    /// The download task ended without a result (panicked or was cancelled).
    #[error("model download task ended unexpectedly: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether trying again later may succeed (network trouble, a replaced object, a failed
    /// task). Missing objects, bad credentials, bad URIs, corrupt content and lack of space are
    /// not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Transfer { retryable, .. } => *retryable,
            StoreError::ObjectChanged { .. } | StoreError::Internal(_) | StoreError::Io { .. } => {
                true
            }
            StoreError::InvalidUri { .. }
            | StoreError::NotFound { .. }
            | StoreError::Forbidden { .. }
            | StoreError::ChecksumMismatch { .. }
            | StoreError::SizeMismatch { .. }
            | StoreError::NotGguf { .. }
            | StoreError::NoSpace { .. }
            | StoreError::UnsafeCache { .. }
            | StoreError::Setup { .. } => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: &std::path::Path, err: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.display().to_string(),
            message: err.to_string(),
        }
    }
}
