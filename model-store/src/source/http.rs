//! Plain HTTP(S) sources with Range support, including Hugging Face (`hf://`).
//!
//! Redirects are followed by hand for the HEAD so that headers of every hop are seen (Hugging
//! Face puts the LFS sha256 in `X-Linked-Etag` on its 302) and so that the token is sent only
//! to the host it belongs to. The parts are then fetched from the final URL (a signed CDN URL
//! on Hugging Face), saving a redirect per part.
//!
//! Every hop is checked by [`redirect_allowed`]: a redirect from https to anything but https
//! (a downgrade to plain http, or another scheme) is refused. The client itself follows no
//! redirect (`Policy::none`), so a part GET that is redirected fails instead of being followed.
//!
//! The client has no read timeout of its own: the download loop times every read
//! (`read_timeout`) and the whole download (`download_timeout`), with errors that name them.

use super::{ObjectInfo, Served, SourceError};
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
                url = follow(&url, &loc)?;
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

    /// Bytes `start..end`. A server that ignores the Range header and answers 200 gives the
    /// whole object: [`Served::Whole`], and the caller decides whether it can start over.
    pub async fn get_range(
        &self,
        start: u64,
        end: u64,
        size: u64,
        etag: Option<&str>,
    ) -> Result<(HttpBody, Served), SourceError> {
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
        let served = match status {
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
                Served::Range
            }
            200 if whole => Served::Range,
            200 => Served::Whole,
            s => {
                return Err(SourceError::from_status(
                    s,
                    format!("GET bytes {start}-{} answered HTTP {s}", end - 1),
                ));
            }
        };
        if let (Some(want), Some(got)) = (etag, header_str(resp.headers(), header::ETAG.as_str()))
            && strip_weak(want) != strip_weak(&got)
        {
            return Err(SourceError {
                kind: super::FailKind::Changed { got },
                message: "ETag differs".into(),
            });
        }
        Ok((HttpBody(resp), served))
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
                // A refused downgrade is an error, not "no checksum file": the expected sha256
                // may be what an attacker on the plain-http path would want to replace.
                url = follow(&url, &loc)?;
                continue;
            }
            if !(200..300).contains(&status) {
                return Err(SourceError::from_status(
                    status,
                    format!("GET <object>.sha256 answered HTTP {status}"),
                ));
            }
            // A checksum file is tiny; refuse to read something large by mistake (with or
            // without a Content-Length).
            if resp.content_length().unwrap_or(0) > 4096 {
                return Ok(None);
            }
            let mut body = HttpBody(resp);
            let mut text = Vec::new();
            while let Some(chunk) = body.next_chunk().await? {
                text.extend_from_slice(&chunk);
                if text.len() > 4096 {
                    return Ok(None);
                }
            }
            return Ok(Some(String::from_utf8_lossy(&text).into_owned()));
        }
        Ok(None)
    }
}

/// `location` resolved against `from`, if [`redirect_allowed`].
fn follow(from: &str, location: &str) -> Result<String, SourceError> {
    let from = url::Url::parse(from).map_err(|e| SourceError::fatal(format!("bad URL: {e}")))?;
    let to = from
        .join(location)
        .map_err(|e| SourceError::fatal(format!("bad redirect: {e}")))?;
    redirect_allowed(&from, &to).map_err(SourceError::fatal)?;
    Ok(to.to_string())
}

/// The redirect policy: only to http or https, and never from https to anything but https
/// (a downgrade would let anyone on the path replace the model, or read a token).
pub(crate) fn redirect_allowed(from: &url::Url, to: &url::Url) -> Result<(), String> {
    let shown = |u: &url::Url| crate::uri::redact(u.as_str());
    match (from.scheme(), to.scheme()) {
        (_, "https") | ("http", "http") => Ok(()),
        ("https", "http") => Err(format!(
            "refusing a redirect from https to plain http ({} -> {})",
            shown(from),
            shown(to)
        )),
        (_, other) => Err(format!(
            "refusing a redirect to a {other}: URL ({} -> {})",
            shown(from),
            shown(to)
        )),
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

#[cfg(test)]
mod tests {
    use super::redirect_allowed;

    fn check(from: &str, to: &str) -> Result<(), String> {
        redirect_allowed(
            &url::Url::parse(from).unwrap(),
            &url::Url::parse(to).unwrap(),
        )
    }

    #[test]
    fn redirects_never_downgrade() {
        // Allowed: same scheme, or an upgrade; other hosts too (Hugging Face's CDN).
        check(
            "https://huggingface.co/o/r/resolve/main/m.gguf",
            "https://cdn-lfs.hf.co/x?sig=1",
        )
        .unwrap();
        check("http://127.0.0.1:1/m.gguf", "http://127.0.0.1:2/m.gguf").unwrap();
        check("http://h/m.gguf", "https://h/m.gguf").unwrap();
        // Refused: https to http (other host or same), and schemes that are not http(s).
        let err = check(
            "https://h/m.gguf?sig=SECRET",
            "http://evil/m.gguf?sig=SECRET",
        )
        .unwrap_err();
        assert!(
            err.contains("https to plain http") && err.contains("http://evil/m.gguf"),
            "{err}"
        );
        assert!(!err.contains("SECRET"), "{err}");
        assert!(check("https://h/m.gguf", "http://h/m.gguf").is_err());
        assert!(check("https://h/m.gguf", "file:///etc/passwd").is_err());
        assert!(check("http://h/m.gguf", "ftp://h/m.gguf").is_err());
    }

    #[test]
    fn relative_locations_keep_the_scheme() {
        let to = super::follow("https://h/a/m.gguf", "/b/m.gguf").unwrap();
        assert_eq!(to, "https://h/b/m.gguf");
        let err = super::follow("https://h/a/m.gguf", "http://h/b/m.gguf").unwrap_err();
        assert!(err.message.contains("plain http"), "{}", err.message);
        let err = super::follow("https://h/a/m.gguf", "//other/m.gguf");
        assert_eq!(
            err.unwrap(),
            "https://other/m.gguf",
            "scheme-relative stays https"
        );
    }
}
