//! Amazon S3 and S3-compatible servers, through the official SDK and the default credential
//! chain (environment, web identity, ECS/Lambda container credentials, IMDS, profile).

use super::{FailKind, ObjectInfo, SourceError};
use crate::StoreConfig;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

pub(crate) struct S3Source {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
}

/// Builds an S3 client the way the model store does: default chain, region fallback
/// `us-east-1`, path-style addressing whenever a custom endpoint is set, SDK retries off (the
/// store retries per part itself). Public so tests and tools can upload with the same set-up.
pub async fn s3_client(endpoint: Option<&str>, cfg: &StoreConfig) -> aws_sdk_s3::Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(RegionProviderChain::default_provider().or_else(Region::new("us-east-1")));
    if let Some(ep) = endpoint {
        loader = loader.endpoint_url(ep);
    }
    let sdk = loader.load().await;
    let path_style = endpoint.is_some() || sdk.endpoint_url().is_some();
    let conf = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(path_style)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(cfg.connect_timeout)
                .read_timeout(cfg.read_timeout)
                .build(),
        )
        // Ranged GETs carry no whole-object checksum; the store verifies sha256 itself.
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

impl S3Source {
    pub async fn new(bucket: &str, key: &str, cfg: &StoreConfig) -> Self {
        let client = s3_client(cfg.s3_endpoint.as_deref(), cfg).await;
        S3Source {
            client,
            bucket: bucket.into(),
            key: key.into(),
        }
    }

    pub async fn head(&self) -> Result<ObjectInfo, SourceError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
            .map_err(|e| sdk_err("HEAD", e))?;
        let size = out
            .content_length()
            .filter(|n| *n >= 0)
            .ok_or_else(|| SourceError::fatal("HEAD returned no Content-Length"))?
            as u64;
        let sha256 = out.metadata().and_then(|m| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("sha256"))
                .and_then(|(_, v)| super::normalise_sha256(v))
        });
        Ok(ObjectInfo {
            size,
            etag: out.e_tag().map(str::to_string),
            sha256,
            ranges: true,
        })
    }

    pub async fn get_range(
        &self,
        start: u64,
        end: u64,
        etag: Option<&str>,
    ) -> Result<ByteStream, SourceError> {
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!("bytes={start}-{}", end - 1));
        if let Some(tag) = etag {
            req = req.if_match(tag);
        }
        let out = req.send().await.map_err(|e| sdk_err("GET", e))?;
        if let (Some(want), Some(got)) = (etag, out.e_tag())
            && want != got
        {
            return Err(SourceError {
                kind: FailKind::Changed {
                    got: got.to_string(),
                },
                message: "ETag differs".into(),
            });
        }
        Ok(out.body)
    }

    pub async fn sidecar_text(&self) -> Result<Option<String>, SourceError> {
        let key = format!("{}.sha256", self.key);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| sdk_err("GET <key>.sha256", e))?;
        if out.content_length().unwrap_or(0) > 4096 {
            return Ok(None);
        }
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| SourceError::transient(e.to_string()))?;
        Ok(Some(
            String::from_utf8_lossy(&bytes.into_bytes()).into_owned(),
        ))
    }
}

fn sdk_err<E, R>(op: &str, e: SdkError<E, R>) -> SourceError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus,
{
    let msg = format!("{op}: {}", DisplayErrorContext(&e));
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status_u16();
            let code = se
                .err()
                .code()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            let text = se
                .err()
                .message()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            SourceError::from_status(status, format!("{op} answered HTTP {status}{code}{text}"))
        }
        SdkError::ResponseError(re) => {
            let s = re.raw().status_u16();
            if s >= 400 {
                SourceError::from_status(s, msg)
            } else {
                SourceError::transient(msg)
            }
        }
        SdkError::TimeoutError(_) => SourceError::transient(msg),
        SdkError::DispatchFailure(df) if df.is_io() || df.is_timeout() => {
            SourceError::transient(msg)
        }
        // Credentials that cannot be loaded, a bad endpoint, …
        _ => SourceError::fatal(msg),
    }
}

/// Status of the raw HTTP response inside an SDK error.
pub(crate) trait HasStatus {
    fn status_u16(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_u16(&self) -> u16 {
        self.status().as_u16()
    }
}
