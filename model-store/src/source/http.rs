//! Plain HTTP(S) sources with Range support, including Hugging Face (`hf://`).
//!
//! Redirects are followed by hand for the HEAD so that headers of every hop are seen (Hugging
//! Face puts the LFS sha256 in `X-Linked-Etag` on its 302) and so that the token is sent only
//! to the host it belongs to. The parts are then fetched from the final URL (a signed CDN URL
//! on Hugging Face), saving a redirect per part.

use super::{ObjectInfo, SourceError};
use crate::StoreConfig;
use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use std::sync::Mutex;

pub(crate) struct HttpSource {
    client: reqwest::Client,
    url: String,
    /// The URL after redirects, found by `head()`.
    resolved: Mutex<Option<String>>,
    token: Option<String>,
    token_host: Option<String>,
    /// Send `If-Match` on ranged GETs (not for Hugging Face's CDN, which may not honour it;
    /// the ETag of every part response is compared instead).
    if_match: bool,
}

pub(crate) struct HttpBody(reqwest::Response);

impl HttpBody {
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        self.0
            .chunk()
            .await
            .map_err(|e| SourceError::transient(format!("reading body: {}", describe(e))))
    }
}

/// The error and its causes ("connection reset", "timed out"), without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

impl HttpSource {
    pub fn new(url: &str, hf: bool, cfg: &StoreConfig) -> Result<Self, crate::StoreError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .pool_max_idle_per_host(cfg.concurrency.max(1))
            .tcp_nodelay(true)
            .user_agent(concat!("bitnet-model-store/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| crate::StoreError::Setup {
                uri: crate::uri::redact(url),
                message: e.without_url().to_string(),
            })?;
        let token = if hf { cfg.hf_token.clone() } else { None };
        let token_host = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string));
        Ok(HttpSource {
            client,
            url: url.to_string(),
            resolved: Mutex::new(None),
            token,
            token_host,
            if_match: !hf,
        })
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let mut req = self.client.request(method, url);
        if let Some(token) = &self.token {
            let host = url::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string));
            if host.is_some() && host == self.token_host {
                req = req.bearer_auth(token);
            }
        }
        req
    }

    fn resolved(&self) -> String {
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| self.url.clone())
    }

    pub async fn head(&self) -> Result<ObjectInfo, SourceError> {
        let mut url = self.url.clone();
        let mut sha256 = None;
        for _hop in 0..10 {
            let resp = self
                .request(reqwest::Method::HEAD, &url)
                .send()
                .await
                .map_err(net_err)?;
            let status = resp.status().as_u16();
            let headers = resp.headers();
            sha256 = sha256.or_else(|| meta_sha256(headers));
            if (300..400).contains(&status) {
                let loc = header_str(headers, header::LOCATION.as_str())
                    .ok_or_else(|| SourceError::fatal(format!("HTTP {status} without Location")))?;
                url = url::Url::parse(&url)
                    .and_then(|base| base.join(&loc))
                    .map_err(|e| SourceError::fatal(format!("bad redirect: {e}")))?
                    .to_string();
                continue;
            }
            if status == 405 || status == 501 {
                // No HEAD: ask for the first byte instead.
                return self.probe_with_get(url, sha256).await;
            }
            if !(200..300).contains(&status) {
                return Err(SourceError::from_status(
                    status,
                    format!("HEAD answered HTTP {status}"),
                ));
            }
            let size = header_str(headers, header::CONTENT_LENGTH.as_str())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| SourceError::fatal("the server sent no Content-Length"))?;
            let etag = header_str(headers, header::ETAG.as_str());
            let ranges = header_str(headers, header::ACCEPT_RANGES.as_str())
                .is_some_and(|v| v.contains("bytes"));
            *self.resolved.lock().unwrap_or_else(|p| p.into_inner()) = Some(url);
            return Ok(ObjectInfo {
                size,
                etag,
                sha256,
                ranges,
            });
        }
        Err(SourceError::fatal("too many redirects"))
    }

    async fn probe_with_get(
        &self,
        url: String,
        sha256: Option<String>,
    ) -> Result<ObjectInfo, SourceError> {
        let resp = self
            .request(reqwest::Method::GET, &url)
            .header(header::RANGE, "bytes=0-0")
            .send()
            .await
            .map_err(net_err)?;
        let status = resp.status().as_u16();
        let headers = resp.headers();
        let sha256 = sha256.or_else(|| meta_sha256(headers));
        let etag = header_str(headers, header::ETAG.as_str());
        let info = match status {
            206 => {
                let total = header_str(headers, header::CONTENT_RANGE.as_str())
                    .and_then(|v| v.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()))
                    .ok_or_else(|| SourceError::fatal("206 without a usable Content-Range"))?;
                ObjectInfo {
                    size: total,
                    etag,
                    sha256,
                    ranges: true,
                }
            }
            200 => {
                let size = header_str(headers, header::CONTENT_LENGTH.as_str())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| SourceError::fatal("the server sent no Content-Length"))?;
                ObjectInfo {
                    size,
                    etag,
                    sha256,
                    ranges: false,
                }
            }
            s => {
                return Err(SourceError::from_status(
                    s,
                    format!("GET answered HTTP {s}"),
                ));
            }
        };
        *self.resolved.lock().unwrap_or_else(|p| p.into_inner()) = Some(url);
        Ok(info)
    }

    pub async fn get_range(
        &self,
        start: u64,
        end: u64,
        size: u64,
        etag: Option<&str>,
    ) -> Result<HttpBody, SourceError> {
        let url = self.resolved();
        let whole = start == 0 && end == size;
        let mut req = self.request(reqwest::Method::GET, &url);
        if !whole || size == 0 {
            req = req.header(header::RANGE, format!("bytes={start}-{}", end - 1));
        }
        if let Some(tag) = etag.filter(|t| self.if_match && !t.starts_with("W/")) {
            req = req.header(header::IF_MATCH, tag);
        }
        let resp = req.send().await.map_err(net_err)?;
        let status = resp.status().as_u16();
        match status {
            206 => {
                let cr =
                    header_str(resp.headers(), header::CONTENT_RANGE.as_str()).unwrap_or_default();
                let expect = format!("bytes {start}-{}/", end - 1);
                if !cr.starts_with(&expect) {
                    return Err(SourceError::fatal(format!(
                        "asked for bytes {start}-{}, got Content-Range {cr:?}",
                        end - 1
                    )));
                }
            }
            200 if whole => {}
            200 => {
                return Err(SourceError::fatal(
                    "the server ignored the Range header (HTTP 200 for a part)",
                ));
            }
            s => {
                return Err(SourceError::from_status(
                    s,
                    format!("GET bytes {start}-{} answered HTTP {s}", end - 1),
                ));
            }
        }
        if let (Some(want), Some(got)) = (etag, header_str(resp.headers(), header::ETAG.as_str()))
            && strip_weak(want) != strip_weak(&got)
        {
            return Err(SourceError {
                kind: super::FailKind::Changed { got },
                message: "ETag differs".into(),
            });
        }
        Ok(HttpBody(resp))
    }

    pub async fn sidecar_text(&self) -> Result<Option<String>, SourceError> {
        let url = match self.url.split_once('?') {
            Some((path, query)) => format!("{path}.sha256?{query}"),
            None => format!("{}.sha256", self.url),
        };
        let mut url = url;
        for _hop in 0..10 {
            let resp = self
                .request(reqwest::Method::GET, &url)
                .send()
                .await
                .map_err(net_err)?;
            let status = resp.status().as_u16();
            if (300..400).contains(&status) {
                let Some(loc) = header_str(resp.headers(), header::LOCATION.as_str()) else {
                    return Ok(None);
                };
                url = match url::Url::parse(&url).and_then(|b| b.join(&loc)) {
                    Ok(u) => u.to_string(),
                    Err(_) => return Ok(None),
                };
                continue;
            }
            if !(200..300).contains(&status) {
                return Err(SourceError::from_status(
                    status,
                    format!("GET <object>.sha256 answered HTTP {status}"),
                ));
            }
            // A checksum file is tiny; refuse to read something large by mistake.
            if resp.content_length().unwrap_or(0) > 4096 {
                return Ok(None);
            }
            let text = resp.text().await.map_err(net_err)?;
            return Ok(Some(text));
        }
        Ok(None)
    }
}

fn strip_weak(t: &str) -> &str {
    t.trim().trim_start_matches("W/")
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn meta_sha256(h: &HeaderMap) -> Option<String> {
    [
        "x-amz-meta-sha256",
        "x-ms-meta-sha256",
        "x-goog-meta-sha256",
        "x-linked-etag",
    ]
    .iter()
    .find_map(|n| header_str(h, n).and_then(|v| super::normalise_sha256(&v)))
}

fn net_err(e: reqwest::Error) -> SourceError {
    SourceError::transient(describe(e))
}
