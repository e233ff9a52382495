//! Parallel ranged download into a [`Sink`], with per-part retries and a sha256 computed while
//! the parts arrive (the hasher follows the completed prefix in a blocking thread).
//!
//! Time limits: every read waits at most `read_timeout` for a byte (a stalled connection is a
//! transient error: the part is retried from its last byte), and the whole download ends at a
//! deadline (`download_timeout`, fixed by the caller), which also stops a slow drip that keeps
//! every read under `read_timeout`. On the deadline the workers and the hasher are stopped
//! before this returns, so the caller's sink (and its temporary file) is dropped at once.

use crate::sink::Sink;
use crate::source::{Backend, ObjectInfo, Served, SourceError};
use crate::status::StatusCell;
use crate::{StoreConfig, StoreError};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Flush buffered chunks to the sink once this many bytes are pending.
const WRITE_BATCH: usize = 1 << 20;

/// Which parts are complete; the hasher waits on it.
struct Tracker {
    done: Mutex<Vec<bool>>,
    cv: Condvar,
    abort: AtomicBool,
}

impl Tracker {
    fn mark(&self, i: usize) {
        self.done.lock().unwrap_or_else(|p| p.into_inner())[i] = true;
        self.cv.notify_all();
    }
    fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        let _guard = self.done.lock().unwrap_or_else(|p| p.into_inner());
        self.cv.notify_all();
    }
    /// Blocks until part `i` is complete (true) or the download was abandoned (false).
    fn wait(&self, i: usize) -> bool {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.abort.load(Ordering::SeqCst) {
                return false;
            }
            if done[i] {
                return true;
            }
            done = self.cv.wait(done).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Everything a part worker needs.
struct Ctx {
    backend: Arc<Backend>,
    sink: Arc<Sink>,
    status: Arc<StatusCell>,
    uri: String,
    etag: Option<String>,
    size: u64,
    part_size: u64,
    attempts: u32,
    base_delay: Duration,
    read_timeout: Duration,
    request_timeout: Duration,
}

/// The error for a download that passed its deadline.
pub(crate) fn deadline_error(cfg: &StoreConfig, uri: &str, done: Option<(u64, u64)>) -> StoreError {
    let progress = match done {
        Some((done, total)) => format!("; {done} of {total} bytes received"),
        None => String::new(),
    };
    StoreError::Transfer {
        uri: uri.into(),
        message: format!(
            "not finished within {:?} (BITNET_DOWNLOAD_TIMEOUT){progress}",
            cfg.download_timeout
        ),
        attempts: 1,
        retryable: true,
    }
}

/// Downloads the whole object into `sink` by `deadline` and returns its sha256 (hex).
pub(crate) async fn download(
    backend: Arc<Backend>,
    sink: Arc<Sink>,
    info: &ObjectInfo,
    cfg: &StoreConfig,
    uri: &str,
    status: Arc<StatusCell>,
    deadline: tokio::time::Instant,
) -> Result<String, StoreError> {
    let size = info.size;
    let part_size = if info.ranges {
        cfg.part_size.max(64 * 1024)
    } else {
        size.max(1)
    };
    let parts = size.div_ceil(part_size).max(1) as usize;
    let workers = cfg.concurrency.clamp(1, parts);
    let started = Instant::now();
    tracing::info!(source = %uri, size, parts, part_size, workers, storage = if sink.is_disk() { "disk" } else { "memory" }, "download started");
    status.start_download(size);

    let tracker = Arc::new(Tracker {
        done: Mutex::new(vec![false; parts]),
        cv: Condvar::new(),
        abort: AtomicBool::new(false),
    });
    let hasher = {
        let (tracker, sink) = (Arc::clone(&tracker), Arc::clone(&sink));
        tokio::task::spawn_blocking(move || {
            let mut h = Sha256::new();
            for i in 0..parts {
                if !tracker.wait(i) {
                    return None;
                }
                let start = i as u64 * part_size;
                let len = (size - start).min(part_size) as usize;
                // SAFETY: part i is complete (tracker.wait) and no part is written twice.
                h.update(unsafe { sink.completed(start, len) });
            }
            Some(crate::hex(&h.finalize()))
        })
    };

    let ctx = Arc::new(Ctx {
        backend,
        sink,
        status: Arc::clone(&status),
        uri: uri.to_string(),
        etag: info.etag.clone(),
        size,
        part_size,
        attempts: cfg.part_attempts.max(1),
        base_delay: cfg.retry_base_delay,
        read_timeout: cfg.read_timeout,
        request_timeout: cfg.connect_timeout + cfg.read_timeout,
    });
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let (ctx, next, tracker) = (Arc::clone(&ctx), Arc::clone(&next), Arc::clone(&tracker));
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= parts || tracker.abort.load(Ordering::Relaxed) {
                    return Ok(());
                }
                fetch_part(&ctx, i).await?;
                tracker.mark(i);
            }
        });
    }
    let mut failure = None;
    let mut last_log = Instant::now();
    loop {
        let res = match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(res)) => res,
            Ok(None) => break,
            Err(_) => {
                let done = status.bytes_done.load(Ordering::Relaxed);
                failure.get_or_insert(deadline_error(cfg, uri, Some((done, size))));
                tracker.abort();
                set.abort_all();
                // Wait for the aborted workers so that nothing holds the sink after return.
                while set.join_next().await.is_some() {}
                break;
            }
        };
        let err = match res {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) if e.is_cancelled() => None,
            Err(e) => Some(StoreError::Internal(format!("download worker: {e}"))),
        };
        if let Some(e) = err {
            failure.get_or_insert(e);
            tracker.abort();
            set.abort_all();
        }
        if last_log.elapsed() > Duration::from_secs(2) {
            last_log = Instant::now();
            log_progress(&status, size, started);
        }
    }
    if let Some(e) = failure {
        tracker.abort();
        let _ = hasher.await;
        return Err(e);
    }
    status.set(crate::ModelStatus::Verifying);
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(source = %uri, size, seconds = secs, mb_per_sec = size as f64 / 1e6 / secs.max(1e-9), "download complete");
    hasher
        .await
        .map_err(|e| StoreError::Internal(format!("hasher: {e}")))?
        .ok_or_else(|| StoreError::Internal("hasher abandoned".into()))
}

fn log_progress(status: &StatusCell, size: u64, started: Instant) {
    let done = status.bytes_done.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        bytes_done = done,
        bytes_total = size,
        mb_per_sec = done as f64 / 1e6 / secs.max(1e-9),
        "downloading"
    );
}

/// Fetches part `i`, resuming after the last byte received when a transient error interrupts
/// it, up to `ctx.attempts` requests.
async fn fetch_part(ctx: &Ctx, i: usize) -> Result<(), StoreError> {
    let start = i as u64 * ctx.part_size;
    let end = (start + ctx.part_size).min(ctx.size);
    let mut pos = start;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let err = match tokio::time::timeout(
            ctx.request_timeout,
            ctx.backend
                .get_range(pos, end, ctx.size, ctx.etag.as_deref()),
        )
        .await
        {
            Err(_) => SourceError::transient(format!(
                "no response within {:?} (connect timeout + BITNET_DOWNLOAD_IDLE_TIMEOUT)",
                ctx.request_timeout
            )),
            Ok(Err(e)) => e,
            Ok(Ok((_, Served::Whole))) if !(start == 0 && end == ctx.size) => {
                // The whole object for one part of several: refuse rather than read (and
                // throw away) everything before the part.
                SourceError::fatal(format!(
                    "the server ignored the Range header (HTTP 200 for bytes {pos}-{})",
                    end - 1
                ))
            }
            Ok(Ok((mut body, served))) => {
                if served == Served::Whole && pos != start {
                    // A resumed single stream answered with the whole object: start over
                    // cleanly from byte 0 (the hasher has read nothing of this part yet).
                    tracing::info!(source = %ctx.uri, resume_at = pos, "the server answered a resumed request with the whole object; starting the stream over");
                    ctx.status
                        .bytes_done
                        .fetch_sub(pos - start, Ordering::Relaxed);
                    pos = start;
                }
                let mut pending: Vec<Bytes> = Vec::new();
                let mut pending_len = 0usize;
                let mut pending_off = pos;
                let outcome = loop {
                    match tokio::time::timeout(ctx.read_timeout, body.next_chunk()).await {
                        Err(_) => {
                            break Err(SourceError::transient(format!(
                                "no data for {:?} (BITNET_DOWNLOAD_IDLE_TIMEOUT)",
                                ctx.read_timeout
                            )));
                        }
                        Ok(Err(e)) => break Err(e),
                        Ok(Ok(None)) => break Ok(()),
                        Ok(Ok(Some(mut chunk))) => {
                            if chunk.is_empty() {
                                continue;
                            }
                            let room = (end - pos) as usize;
                            if chunk.len() > room {
                                // More than asked for: keep what belongs to the part.
                                chunk.truncate(room);
                            }
                            pos += chunk.len() as u64;
                            pending_len += chunk.len();
                            ctx.status
                                .bytes_done
                                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            pending.push(chunk);
                            if pending_len >= WRITE_BATCH {
                                ctx.sink
                                    .write_chunks(pending_off, std::mem::take(&mut pending))
                                    .await?;
                                pending_off = pos;
                                pending_len = 0;
                            }
                            if pos == end {
                                break Ok(());
                            }
                        }
                    }
                };
                // Bytes received before an interruption are good (the ETag pins the version):
                // keep them and resume after them.
                if !pending.is_empty() {
                    ctx.sink.write_chunks(pending_off, pending).await?;
                }
                match outcome {
                    Ok(()) if pos == end => return Ok(()),
                    Ok(()) => SourceError::transient(format!(
                        "response ended early: {} of {} bytes of part {i}",
                        pos - start,
                        end - start
                    )),
                    Err(e) => e,
                }
            }
        };
        if !err.is_transient() {
            return Err(err.into_store_error(&ctx.uri, ctx.etag.as_deref(), attempt));
        }
        if attempt >= ctx.attempts {
            return Err(err.into_store_error(&ctx.uri, ctx.etag.as_deref(), attempt));
        }
        let delay = backoff(ctx.base_delay, attempt);
        tracing::warn!(source = %ctx.uri, part = i, attempt, error = %err.message, delay_ms = delay.as_millis() as u64, "part failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// `base * 2^(attempt-1)`, at most 5 s, with ±25 % jitter so parts do not retry in lockstep.
pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1 << attempt.saturating_sub(1).min(10))
        .min(Duration::from_secs(5));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = (nanos % 500) as f64 / 1000.0 + 0.75; // 0.75 ..= 1.25
    exp.mul_f64(jitter)
}

/// Runs `f` with the same retry policy as a part (for HEAD and the `.sha256` sidecar).
pub(crate) async fn with_retries<T, F, Fut>(
    cfg: &StoreConfig,
    what: &str,
    uri: &str,
    mut f: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SourceError>>,
{
    let timeout = cfg.connect_timeout + cfg.read_timeout;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match tokio::time::timeout(timeout, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => SourceError::transient(format!("{what}: no response within {timeout:?}")),
        };
        if !err.is_transient() || attempt >= cfg.part_attempts.max(1) {
            return Err(err.into_store_error(uri, None, attempt));
        }
        let delay = backoff(cfg.retry_base_delay, attempt);
        tracing::warn!(source = %uri, attempt, error = %err.message, "{what} failed; retrying");
        tokio::time::sleep(delay).await;
    }
}
