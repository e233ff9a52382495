//! Azure Blob Storage through the official `azure_storage_blob` 1.x SDK.
//!
//! Authentication, in order: a SAS already in the URL; `AZURE_STORAGE_CONNECTION_STRING`
//! (its SAS, or a short-lived read-only account SAS made from its key, see [`crate::sas`]);
//! otherwise an Entra ID token: workload identity when `AZURE_FEDERATED_TOKEN_FILE` is set, a
//! client secret when `AZURE_CLIENT_SECRET` is, else managed identity (user-assigned when
//! `AZURE_CLIENT_ID` is set), which is what Azure Functions provide.

use super::{FailKind, ObjectInfo, SourceError};
use crate::sas::{ConnectionString, account_sas};
use crate::{StoreConfig, StoreError};
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, Etag, RetryOptions};
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders, HttpRange,
};
use azure_storage_blob::{BlobClient, BlobClientOptions};
use bytes::Bytes;
use futures_util::StreamExt as _;
use std::num::NonZero;
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct AzureSource {
    client: BlobClient,
    sidecar: BlobClient,
}

pub(crate) struct AzureBody(azure_core::http::AsyncResponseBody);

impl AzureBody {
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        match self.0.next().await {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(SourceError::transient(format!("reading blob body: {e}"))),
        }
    }
}

impl AzureSource {
    pub fn new(
        account: &str,
        container: &str,
        blob: &str,
        url: Option<&str>,
        cfg: &StoreConfig,
    ) -> Result<Self, StoreError> {
        let shown =
            crate::uri::redact(url.unwrap_or(&format!("az://{account}/{container}/{blob}")));
        let setup = |message: String| StoreError::Setup {
            uri: shown.clone(),
            message: crate::uri::redact(&message),
        };
        let conn = match cfg.azure_connection_string.as_deref() {
            Some(s) => Some(
                ConnectionString::parse(s)
                    .map_err(|e| setup(format!("AZURE_STORAGE_CONNECTION_STRING: {e}")))?,
            ),
            None => None,
        };

        // The blob URL without a query, and the SAS to use with it, if any.
        let (base, mut sas) = match url {
            Some(u) => {
                let parsed = url::Url::parse(u).map_err(|e| setup(e.to_string()))?;
                let sas = parsed
                    .query()
                    .filter(|q| q.contains("sig="))
                    .map(str::to_string);
                let mut base = parsed.clone();
                base.set_query(None);
                (base, sas)
            }
            None => {
                let endpoint = conn
                    .as_ref()
                    .and_then(|c| c.blob_endpoint.clone())
                    .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
                let mut base =
                    url::Url::parse(&endpoint).map_err(|e| setup(format!("blob endpoint: {e}")))?;
                {
                    let mut segs = base
                        .path_segments_mut()
                        .map_err(|_| setup("blob endpoint cannot be a base URL".into()))?;
                    segs.pop_if_empty();
                    segs.push(container);
                    segs.extend(blob.split('/'));
                }
                (base, None)
            }
        };
        if sas.is_none()
            && let Some(c) = &conn
        {
            sas = match (&c.sas, &c.account_key) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(key)) => {
                    let name = c.account_name.as_deref().unwrap_or(account);
                    Some(
                        account_sas(name, key, "r", "o", Duration::from_secs(6 * 3600))
                            .map_err(setup)?,
                    )
                }
                (None, None) => None,
            };
        }
        let credential = if sas.is_some() {
            None
        } else {
            Some(token_credential().map_err(setup)?)
        };

        let with_query = |mut u: url::Url| {
            if let Some(s) = &sas {
                u.set_query(Some(s));
            }
            u
        };
        let mut sidecar_url = base.clone();
        sidecar_url.set_path(&format!("{}.sha256", base.path()));
        let options = || {
            Some(BlobClientOptions {
                client_options: ClientOptions {
                    retry: RetryOptions::none(),
                    ..Default::default()
                },
                ..Default::default()
            })
        };
        let client = BlobClient::new(with_query(base), credential.clone(), options())
            .map_err(|e| setup(e.to_string()))?;
        let sidecar = BlobClient::new(with_query(sidecar_url), credential, options())
            .map_err(|e| setup(e.to_string()))?;
        Ok(AzureSource { client, sidecar })
    }

    pub async fn head(&self) -> Result<ObjectInfo, SourceError> {
        let resp = self
            .client
            .get_properties(None)
            .await
            .map_err(|e| az_err("HEAD", e))?;
        let size = resp
            .content_length()
            .ok()
            .flatten()
            .ok_or_else(|| SourceError::fatal("blob properties without Content-Length"))?;
        let etag = resp.etag().ok().flatten().map(|e| e.to_string());
        let sha256 = resp.metadata().ok().and_then(|m| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("sha256"))
                .and_then(|(_, v)| super::normalise_sha256(v))
        });
        Ok(ObjectInfo {
            size,
            etag,
            sha256,
            ranges: true,
        })
    }

    pub async fn get_range(
        &self,
        start: u64,
        end: u64,
        etag: Option<&str>,
    ) -> Result<AzureBody, SourceError> {
        let len = end - start;
        let one = NonZero::new(1usize).expect("1 is not zero");
        let options = BlobClientDownloadOptions {
            range: Some(HttpRange::new(start, len)),
            if_match: etag.map(Etag::from),
            // One request for the whole part: the store does its own partitioning.
            parallel: Some(one),
            partition_size: NonZero::new(len as usize),
            ..Default::default()
        };
        let res = self
            .client
            .download(Some(options))
            .await
            .map_err(|e| az_err("GET", e))?;
        if let (Some(want), Some(got)) = (etag, res.properties.etag.as_ref().map(|e| e.to_string()))
            && want != got
        {
            return Err(SourceError {
                kind: FailKind::Changed { got },
                message: "ETag differs".into(),
            });
        }
        Ok(AzureBody(res.body))
    }

    pub async fn sidecar_text(&self) -> Result<Option<String>, SourceError> {
        let res = self
            .sidecar
            .download(None)
            .await
            .map_err(|e| az_err("GET <blob>.sha256", e))?;
        if res.properties.content_length.unwrap_or(0) > 4096 {
            return Ok(None);
        }
        let mut body = AzureBody(res.body);
        let mut text = Vec::new();
        while let Some(chunk) = body.next_chunk().await? {
            text.extend_from_slice(&chunk);
            if text.len() > 4096 {
                return Ok(None);
            }
        }
        Ok(Some(String::from_utf8_lossy(&text).into_owned()))
    }
}

fn token_credential() -> Result<Arc<dyn TokenCredential>, String> {
    use azure_identity::{
        ClientSecretCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
        UserAssignedId, WorkloadIdentityCredential,
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        return WorkloadIdentityCredential::new(None)
            .map(|c| c as Arc<dyn TokenCredential>)
            .map_err(|e| format!("workload identity: {e}"));
    }
    if let (Some(tenant), Some(client), Some(secret)) = (
        env("AZURE_TENANT_ID"),
        env("AZURE_CLIENT_ID"),
        env("AZURE_CLIENT_SECRET"),
    ) {
        return ClientSecretCredential::new(&tenant, client, secret.into(), None)
            .map(|c| c as Arc<dyn TokenCredential>)
            .map_err(|e| format!("client secret credential: {e}"));
    }
    let options = ManagedIdentityCredentialOptions {
        user_assigned_id: env("AZURE_CLIENT_ID").map(UserAssignedId::ClientId),
        ..Default::default()
    };
    ManagedIdentityCredential::new(Some(options))
        .map(|c| c as Arc<dyn TokenCredential>)
        .map_err(|e| format!("managed identity: {e}"))
}

fn az_err(op: &str, e: azure_core::Error) -> SourceError {
    use azure_core::error::ErrorKind;
    let mut msg = format!("{op}: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    match e.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            let code = u16::from(*status);
            let detail = match error_code {
                Some(c) => format!("{op} answered HTTP {code} ({c})"),
                None => format!("{op} answered HTTP {code}"),
            };
            SourceError::from_status(code, detail)
        }
        ErrorKind::Connection | ErrorKind::Io => SourceError::transient(msg),
        ErrorKind::Credential => {
            SourceError::fatal(format!("{op}: cannot get an Entra ID token: {e}"))
        }
        _ => SourceError::fatal(msg),
    }
}
