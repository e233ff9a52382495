//! Shared test helpers: synthetic GGUF payloads, service endpoints from `.ci/services.sh`, and
//! an in-process HTTP/1.1 server with Range, ETag/If-Match, request counting and injectable
//! faults (status codes, bodies cut short, connections reset mid-part, objects replaced, bodies
//! that drip or stall).
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Random-looking bytes behind a valid GGUF v3 header (3 tensors, 2 keys).
/// A disk-cached store over `url` in `dir`, `part`-byte parts, four in flight, quick retries.
pub fn disk_config(url: &str, dir: &Path, part: u64) -> model_store::StoreConfig {
    let mut cfg = model_store::StoreConfig::new(url);
    cfg.cache_dir = dir.to_path_buf();
    cfg.part_size = part;
    cfg.concurrency = 4;
    cfg.storage = model_store::StorageMode::Disk;
    cfg.retry_base_delay = Duration::from_millis(5);
    cfg.read_timeout = Duration::from_secs(5);
    cfg
}

pub fn gguf_payload(len: usize, seed: u64) -> Vec<u8> {
    assert!(len >= 24);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(b"GGUF");
    v.extend_from_slice(&3u32.to_le_bytes());
    v.extend_from_slice(&3u64.to_le_bytes());
    v.extend_from_slice(&2u64.to_le_bytes());
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Asserts equal bytes without printing megabytes when they differ.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: got {} bytes with sha256 {}, expected {} bytes with sha256 {}",
        got.len(),
        sha256_hex(got),
        want.len(),
        sha256_hex(want)
    );
}

/// An endpoint exported by `.ci/services.sh`. Fails when it is missing and `CI` is set (CI
/// always runs the services); otherwise returns `None` so the caller skips, saying why.
pub fn service_endpoint(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            let msg = format!(
                "{var} is not set: run `source .ci/services.sh` first (it starts moto and Azurite)"
            );
            if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

/// A fresh, empty cache directory under the target dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir().join(format!("model-store-tests-{}", std::process::id()));
    let dir = base.join(format!("{tag}-{}", N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Names in `dir` (hidden temporaries included).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Asserts that a failed load left nothing behind: no model, no sidecar, no temporary.
pub fn assert_nothing_cached(dir: &Path) {
    let l = listing(dir);
    assert!(
        l.is_empty(),
        "cache dir {} should be empty after a failure, holds {l:?}",
        dir.display()
    );
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and an empty body.
    Status(u16),
    /// Send the headers for the full range, then only this many body bytes, then close.
    CutShort(usize),
    /// Send this many body bytes, then reset the connection (RST).
    Reset(usize),
    /// Replace the object (new bytes, new ETag) before handling the request.
    Replace(Arc<Vec<u8>>),
    /// Send the body 64 bytes at a time, one write per interval: never idle long enough for a
    /// read timeout, far too slow to finish.
    Drip(Duration),
    /// Send this many body bytes, then nothing more (the connection stays open for a minute).
    Stall(usize),
}

#[derive(Clone, Debug)]
pub struct Rule {
    /// "HEAD", "GET" (ranged or not) or "*".
    pub method: &'static str,
    /// Only requests whose path ends with this.
    pub path_suffix: String,
    /// How many matching requests to affect.
    pub times: usize,
    pub fault: Fault,
}

#[derive(Clone, Debug)]
pub struct Object {
    pub data: Arc<Vec<u8>>,
    pub etag: String,
    /// Sent as `x-amz-meta-sha256` when set.
    pub meta_sha256: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub if_match: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Object>,
    rules: Vec<Rule>,
    log: Vec<Logged>,
    version: u64,
    accept_ranges: bool,
    /// Send `Accept-Ranges: bytes` (when ranges are accepted at all).
    advertise_ranges: bool,
    /// Per-connection bandwidth cap in bytes/s (0 = none), like a cloud object store's
    /// per-stream limit.
    rate_limit: u64,
}

pub struct FaultServer {
    pub addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            accept_ranges: true,
            advertise_ranges: true,
            ..Default::default()
        }));
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let _ = serve_conn(sock, st).await;
                });
            }
        });
        FaultServer { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn put(&self, path: &str, data: Vec<u8>, meta_sha256: Option<String>) {
        let mut st = self.state.lock().unwrap();
        st.version += 1;
        let etag = format!("\"v{}-{}\"", st.version, data.len());
        st.objects.insert(
            path.to_string(),
            Object {
                data: Arc::new(data),
                etag,
                meta_sha256,
            },
        );
    }

    pub fn set_rate_limit(&self, bytes_per_sec_per_connection: u64) {
        self.state.lock().unwrap().rate_limit = bytes_per_sec_per_connection;
    }

    /// Honour (and advertise) Range requests, or answer every GET with the whole object.
    pub fn set_accept_ranges(&self, on: bool) {
        self.state.lock().unwrap().accept_ranges = on;
    }

    /// Whether `Accept-Ranges: bytes` is sent; Range requests are still honoured without it,
    /// as many servers do.
    pub fn set_advertise_ranges(&self, on: bool) {
        self.state.lock().unwrap().advertise_ranges = on;
    }

    pub fn rule(&self, method: &'static str, path_suffix: &str, times: usize, fault: Fault) {
        self.state.lock().unwrap().rules.push(Rule {
            method,
            path_suffix: path_suffix.into(),
            times,
            fault,
        });
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().log.len()
    }

    pub fn count(&self, method: &str, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|l| l.method == method && l.path == path)
            .count()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

async fn serve_conn(mut sock: TcpStream, st: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut tmp = [0u8; 4096];
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split_whitespace();
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("/").to_string();
        let path = target.split('?').next().unwrap_or("/").to_string();
        let mut headers = HashMap::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let range = headers.get("range").cloned();
        let if_match = headers.get("if-match").cloned();

        // Decide what to do under the lock, act outside it.
        let (fault, obj, accept_ranges, advertise_ranges, rate_limit) = {
            let mut s = st.lock().unwrap();
            let mut fault = None;
            if let Some(r) = s.rules.iter_mut().find(|r| {
                r.times > 0
                    && (r.method == "*" || r.method == method)
                    && path.ends_with(&r.path_suffix)
            }) {
                r.times -= 1;
                fault = Some(r.fault.clone());
            }
            if let Some(Fault::Replace(data)) = &fault {
                s.version += 1;
                let etag = format!("\"v{}-{}\"", s.version, data.len());
                let meta = None;
                s.objects.insert(
                    path.clone(),
                    Object {
                        data: Arc::clone(data),
                        etag,
                        meta_sha256: meta,
                    },
                );
                fault = None;
            }
            (
                fault,
                s.objects.get(&path).cloned(),
                s.accept_ranges,
                s.advertise_ranges,
                s.rate_limit,
            )
        };
        let log = |status: u16| {
            st.lock().unwrap().log.push(Logged {
                method: method.clone(),
                path: path.clone(),
                range: range.clone(),
                if_match: if_match.clone(),
                status,
            });
        };

        if let Some(Fault::Status(code)) = fault {
            log(code);
            write_head(&mut sock, code, &[("Content-Length", "0".into())]).await?;
            continue;
        }
        let Some(obj) = obj else {
            log(404);
            write_head(&mut sock, 404, &[("Content-Length", "0".into())]).await?;
            continue;
        };
        if let Some(tag) = &if_match
            && tag != &obj.etag
            && tag != "*"
        {
            log(412);
            write_head(
                &mut sock,
                412,
                &[("Content-Length", "0".into()), ("ETag", obj.etag.clone())],
            )
            .await?;
            continue;
        }
        let total = obj.data.len() as u64;
        let mut hdrs = vec![("ETag", obj.etag.clone())];
        if accept_ranges && advertise_ranges {
            hdrs.push(("Accept-Ranges", "bytes".into()));
        }
        if let Some(s) = &obj.meta_sha256 {
            hdrs.push(("x-amz-meta-sha256", s.clone()));
        }
        let (status, start, end) = match range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .filter(|_| accept_ranges)
        {
            Some(r) => {
                let (a, b) = r.split_once('-').unwrap_or((r, ""));
                let a: u64 = a.parse().unwrap_or(0);
                let b: u64 = if b.is_empty() {
                    total - 1
                } else {
                    b.parse::<u64>().unwrap_or(total - 1).min(total - 1)
                };
                if a >= total || a > b {
                    log(416);
                    write_head(
                        &mut sock,
                        416,
                        &[
                            ("Content-Length", "0".into()),
                            ("Content-Range", format!("bytes */{total}")),
                        ],
                    )
                    .await?;
                    continue;
                }
                hdrs.push(("Content-Range", format!("bytes {a}-{b}/{total}")));
                (206, a, b + 1)
            }
            None => (200, 0, total),
        };
        hdrs.push(("Content-Length", (end - start).to_string()));
        log(status);
        write_head(&mut sock, status, &hdrs).await?;
        if method == "HEAD" {
            continue;
        }
        let body = &obj.data[start as usize..end as usize];
        match fault {
            Some(Fault::CutShort(n)) => {
                sock.write_all(&body[..n.min(body.len())]).await?;
                sock.flush().await?;
                let _ = sock.shutdown().await;
                return Ok(());
            }
            Some(Fault::Reset(n)) => {
                sock.write_all(&body[..n.min(body.len())]).await?;
                sock.flush().await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                // Linger 0 makes the close a reset (RST), as a dropped connection looks.
                #[allow(deprecated)]
                let _ = sock.set_linger(Some(Duration::ZERO));
                drop(sock);
                return Ok(());
            }
            Some(Fault::Drip(every)) => {
                for chunk in body.chunks(64) {
                    sock.write_all(chunk).await?;
                    sock.flush().await?;
                    tokio::time::sleep(every).await;
                }
            }
            Some(Fault::Stall(n)) => {
                sock.write_all(&body[..n.min(body.len())]).await?;
                sock.flush().await?;
                tokio::time::sleep(Duration::from_secs(60)).await;
                return Ok(());
            }
            _ if rate_limit > 0 => {
                let t0 = std::time::Instant::now();
                let mut sent = 0usize;
                for chunk in body.chunks(64 * 1024) {
                    sock.write_all(chunk).await?;
                    sent += chunk.len();
                    let due = Duration::from_secs_f64(sent as f64 / rate_limit as f64);
                    if let Some(wait) = due.checked_sub(t0.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            _ => sock.write_all(body).await?,
        }
    }
}

async fn write_head(
    sock: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        403 => "Forbidden",
        404 => "Not Found",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut s = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    sock.write_all(s.as_bytes()).await
}
