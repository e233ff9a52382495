//! Backends: each answers "how big is it, what is its ETag and checksum" and "give me bytes
//! `start..end` of that version".

mod azure;
mod http;
pub(crate) mod s3;

pub use s3::s3_client;

use crate::uri::SourceSpec;
use crate::{StoreConfig, StoreError};
use bytes::Bytes;

/// What a HEAD (or its equivalent) tells about the object.
#[derive(Debug, Clone)]
pub(crate) struct ObjectInfo {
    pub size: u64,
    pub etag: Option<String>,
    /// sha256 from object metadata (S3 user metadata, Azure metadata, `x-*-meta-sha256`,
    /// Hugging Face's `X-Linked-Etag` for LFS files).
    pub sha256: Option<String>,
    /// Whether ranged GETs may be used.
    pub ranges: bool,
}

/// How a request failed, as far as retrying is concerned.
#[derive(Debug, Clone)]
pub(crate) enum FailKind {
    /// Network trouble, timeouts, 5xx, 429: retry with back-off.
    Transient,
    NotFound,
    Forbidden,
    /// 412 or a different ETag: the object was replaced.
    Changed {
        got: String,
    },
    /// Anything else: give up at once.
    Fatal,
}

#[derive(Debug, Clone)]
pub(crate) struct SourceError {
    pub kind: FailKind,
    /// Already free of secrets.
    pub message: String,
}

impl SourceError {
    pub fn transient(message: impl Into<String>) -> Self {
        SourceError {
            kind: FailKind::Transient,
            message: crate::uri::redact(&message.into()),
        }
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        SourceError {
            kind: FailKind::Fatal,
            message: crate::uri::redact(&message.into()),
        }
    }
    pub fn from_status(status: u16, message: impl Into<String>) -> Self {
        let message = crate::uri::redact(&message.into());
        let kind = match status {
            404 | 410 => FailKind::NotFound,
            401 | 403 => FailKind::Forbidden,
            412 | 416 => FailKind::Changed {
                got: format!("(HTTP {status})"),
            },
            408 | 429 | 500..=599 => FailKind::Transient,
            _ => FailKind::Fatal,
        };
        SourceError { kind, message }
    }
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, FailKind::Transient)
    }

    /// The public error, naming the source.
    pub fn into_store_error(
        self,
        uri: &str,
        expected_etag: Option<&str>,
        attempts: u32,
    ) -> StoreError {
        let uri = uri.to_string();
        match self.kind {
            FailKind::NotFound => StoreError::NotFound {
                uri,
                detail: self.message,
            },
            FailKind::Forbidden => StoreError::Forbidden {
                uri,
                detail: self.message,
            },
            FailKind::Changed { got } => StoreError::ObjectChanged {
                uri,
                expected: expected_etag.unwrap_or("(none)").to_string(),
                got,
            },
            FailKind::Transient => StoreError::Transfer {
                uri,
                message: self.message,
                attempts,
                retryable: true,
            },
            FailKind::Fatal => StoreError::Transfer {
                uri,
                message: self.message,
                attempts,
                retryable: false,
            },
        }
    }
}

/// Where a response body starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// At the requested offset (206, or 200 for a request of the whole object).
    Range,
    /// At byte 0 of the whole object: an HTTP server answered 200 to a ranged request.
    Whole,
}

/// A response body being read.
pub(crate) enum Body {
    Http(http::HttpBody),
    S3(aws_sdk_s3::primitives::ByteStream),
    Azure(azure::AzureBody),
}

impl Body {
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        match self {
            Body::Http(b) => b.next_chunk().await,
            Body::S3(b) => b.try_next().await.map_err(|e| {
                SourceError::transient(format!(
                    "reading S3 body: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ))
            }),
            Body::Azure(b) => b.next_chunk().await,
        }
    }
}

pub(crate) enum Backend {
    Http(http::HttpSource),
    S3(s3::S3Source),
    Azure(azure::AzureSource),
}

impl Backend {
    pub async fn new(spec: &SourceSpec, cfg: &StoreConfig) -> Result<Self, StoreError> {
        Ok(match spec {
            SourceSpec::Http { url, hf } => Backend::Http(http::HttpSource::new(url, *hf, cfg)?),
            SourceSpec::S3 { bucket, key } => {
                Backend::S3(s3::S3Source::new(bucket, key, cfg).await)
            }
            SourceSpec::Azure {
                account,
                container,
                blob,
                url,
            } => Backend::Azure(azure::AzureSource::new(
                account,
                container,
                blob,
                url.as_deref(),
                cfg,
            )?),
            SourceSpec::Local(_) => unreachable!("local files are not downloaded"),
        })
    }

    pub async fn head(&self) -> Result<ObjectInfo, SourceError> {
        match self {
            Backend::Http(s) => s.head().await,
            Backend::S3(s) => s.head().await,
            Backend::Azure(s) => s.head().await,
        }
    }

    /// Bytes `start..end` of the version whose ETag is `etag`, or (plain HTTP only, see
    /// [`Served::Whole`]) the whole object when the server ignores the Range header.
    pub async fn get_range(
        &self,
        start: u64,
        end: u64,
        size: u64,
        etag: Option<&str>,
    ) -> Result<(Body, Served), SourceError> {
        match self {
            Backend::Http(s) => s
                .get_range(start, end, size, etag)
                .await
                .map(|(b, served)| (Body::Http(b), served)),
            Backend::S3(s) => s
                .get_range(start, end, etag)
                .await
                .map(|b| (Body::S3(b), Served::Range)),
            Backend::Azure(s) => s
                .get_range(start, end, etag)
                .await
                .map(|b| (Body::Azure(b), Served::Range)),
        }
    }

    /// The contents of `<object>.sha256`, or `None` when there is no such object.
    pub async fn sidecar_text(&self) -> Result<Option<String>, SourceError> {
        let res = match self {
            Backend::Http(s) => s.sidecar_text().await,
            Backend::S3(s) => s.sidecar_text().await,
            Backend::Azure(s) => s.sidecar_text().await,
        };
        match res {
            // A missing object can read as 403 on S3 without s3:ListBucket.
            Err(SourceError {
                kind: FailKind::NotFound | FailKind::Forbidden,
                ..
            }) => Ok(None),
            other => other,
        }
    }
}

/// The first word of a `.sha256` file (`sha256sum` output or a bare digest), if it is one.
pub(crate) fn parse_sha256(text: &str) -> Option<String> {
    let word = text.split_whitespace().next()?;
    normalise_sha256(word)
}

/// Lower-case 64-hex-digit sha256, or `None`. Accepts quotes (ETag style) around it.
pub(crate) fn normalise_sha256(s: &str) -> Option<String> {
    let s = s.trim().trim_start_matches("W/").trim_matches('"').trim();
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_forms() {
        let h = "A".repeat(64);
        assert_eq!(
            super::parse_sha256(&format!("{h}  model.gguf\n")),
            Some("a".repeat(64))
        );
        assert_eq!(
            super::normalise_sha256(&format!("\"{h}\"")),
            Some("a".repeat(64))
        );
        assert_eq!(super::normalise_sha256("abc"), None);
    }
}
