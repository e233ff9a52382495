//! Model store: turns a model URI into a verified, memory-mapped GGUF, once per process, and
//! hands the same mapping to every later caller.
//!
//! - Sources: `s3://bucket/key` (AWS SDK, default credential chain, custom endpoints with
//!   path-style addressing), Azure Blob (`az://account/container/blob`,
//!   `https://ACCOUNT.blob.core.windows.net/…`, `azblob+http(s)://host/account/container/blob`
//!   for Azurite or private endpoints; managed/workload identity, connection string or SAS),
//!   plain `https://` with Range support, `hf://org/repo/file` for Hugging Face, and local
//!   paths / `file://` (mapped in place, never copied).
//! - Lazy and shared: nothing happens before the first [`ModelStore::get`]; concurrent callers
//!   share one download; a verified file plus a sidecar JSON in the cache directory lets a warm
//!   start (same process or a restarted one in the same sandbox) map the file with no request
//!   (and no re-hashing unless a sha256 is configured). Processes sharing a cache directory
//!   take a per-entry `flock`, so one downloads and the others wait and then map its file.
//! - Safe cache: the directory is private to the user (0700); entries owned by another user or
//!   writable by group or others are never served.
//! - Fast: HEAD, then parallel ranged GETs pinned to the ETag (`If-Match`), written at their
//!   offsets into a pre-sized temporary file or an anonymous mapping, hashed while they arrive.
//! - Verified: sha256 from configuration, object metadata or a `<object>.sha256` sidecar, a
//!   GGUF header check, then fsync and rename. Nothing partial or unverified is ever published.
//!
//! See `docs/model-store.md` for the full description.

mod cache;
mod config;
mod download;
mod error;
pub mod gguf;
pub mod sas;
mod sink;
mod source;
mod space;
mod status;
pub mod uri;

pub use cache::Sidecar;
pub use config::{
    CacheFsync, DEFAULT_CACHE_DIR, DEFAULT_CONCURRENCY, DEFAULT_DOWNLOAD_TIMEOUT, DEFAULT_HEADROOM,
    DEFAULT_MODEL_URI, DEFAULT_PART_SIZE, StorageMode, StoreConfig, parse_bytes,
};
pub use error::StoreError;
pub use memmap2;
pub use source::s3_client;
pub use space::memory_available;
pub use status::ModelStatus;

use cache::{CacheAccess, Entry, EntryLock, LockError};
use memmap2::Mmap;
use sink::Sink;
use source::{Backend, ObjectInfo};
use status::StatusCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;
use uri::SourceSpec;

/// A verified model, mapped read-only. Cheap to clone through `Arc`.
#[derive(Debug)]
pub struct ModelFile {
    /// The bytes: a file mapping (disk, local path) or a sealed anonymous mapping (memory).
    pub map: Arc<Mmap>,
    /// The file behind the mapping; `None` when the model is held in memory.
    pub path: Option<PathBuf>,
    pub size: u64,
    /// Hex sha256 of the bytes; `None` only for a local file with no expected sha256 (a local
    /// file is not read in full just to hash it).
    pub sha256: Option<String>,
    /// The source URI, without secrets.
    pub source: String,
}

impl ModelFile {
    pub fn bytes(&self) -> &[u8] {
        &self.map[..]
    }
}

/// Lazily downloads, verifies and maps one model; `Send + Sync`, share it in an `Arc`.
///
/// [`get`](Self::get) must be called within a Tokio runtime (it spawns the download so that a
/// caller that gives up does not cancel it for the others).
pub struct ModelStore {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: StoreConfig,
    status: Arc<StatusCell>,
    slot: Mutex<Slot>,
}

type Shared = Option<Result<Arc<ModelFile>, StoreError>>;

enum Slot {
    Idle,
    Running(watch::Receiver<Shared>),
    Ready(Arc<ModelFile>),
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore")
            .field("source", &uri::redact(&self.inner.cfg.uri))
            .field("status", &self.status())
            .finish()
    }
}

impl ModelStore {
    /// Does nothing yet: the first [`get`](Self::get) starts the work.
    pub fn new(cfg: StoreConfig) -> Self {
        ModelStore {
            inner: Arc::new(Inner {
                cfg,
                status: Arc::new(StatusCell::new()),
                slot: Mutex::new(Slot::Idle),
            }),
        }
    }

    /// The configuration this store was made with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    /// The mapped model: at once when it is ready; otherwise joins (or starts) the one load in
    /// progress. A failure is reported to every caller that waited for that attempt; the next
    /// call starts a fresh attempt.
    pub async fn get(&self) -> Result<Arc<ModelFile>, StoreError> {
        let mut rx = {
            let mut slot = self.inner.lock_slot();
            match &*slot {
                Slot::Ready(f) => return Ok(Arc::clone(f)),
                Slot::Running(rx) => rx.clone(),
                Slot::Idle => {
                    let (tx, rx) = watch::channel(None);
                    *slot = Slot::Running(rx.clone());
                    let inner = Arc::clone(&self.inner);
                    tokio::spawn(async move {
                        // Resets the slot if this task dies without a result (panic, runtime
                        // shutdown), so that a later call can try again.
                        let mut guard = ResetOnDrop {
                            inner: Arc::clone(&inner),
                            armed: true,
                        };
                        let res = inner.load().await;
                        *inner.lock_slot() = match &res {
                            Ok(f) => Slot::Ready(Arc::clone(f)),
                            Err(_) => Slot::Idle,
                        };
                        guard.armed = false;
                        let _ = tx.send(Some(res));
                    });
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().expect("waited for Some"),
            Err(_) => Err(StoreError::Internal(
                "the download task stopped without a result".into(),
            )),
        }
    }

    /// What the health endpoint reports.
    pub fn status(&self) -> ModelStatus {
        self.inner.status.get()
    }
}

struct ResetOnDrop {
    inner: Arc<Inner>,
    armed: bool,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut slot = self.inner.lock_slot();
        if matches!(*slot, Slot::Running(_)) {
            *slot = Slot::Idle;
        }
        self.inner.status.set(ModelStatus::Failed {
            error: "model download task ended unexpectedly".into(),
        });
    }
}

impl Inner {
    fn lock_slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn load(&self) -> Result<Arc<ModelFile>, StoreError> {
        let t0 = Instant::now();
        let res = self.load_inner().await;
        match &res {
            Ok(f) => {
                let seconds = t0.elapsed().as_secs_f64();
                tracing::info!(source = %f.source, path = ?f.path, size = f.size, seconds, "model ready");
                self.status.set(ModelStatus::Ready {
                    path: f
                        .path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "(memory)".into()),
                    size: f.size,
                    sha256: f.sha256.clone(),
                    seconds,
                    source: f.source.clone(),
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "model load failed");
                self.status.set(ModelStatus::Failed {
                    error: e.to_string(),
                });
            }
        }
        res.map(Arc::new)
    }

    async fn load_inner(&self) -> Result<ModelFile, StoreError> {
        let cfg = &self.cfg;
        let spec = uri::parse(&cfg.uri)?;
        let shown = uri::redact(&cfg.uri);
        let configured_sha = match &cfg.sha256 {
            Some(s) => Some(
                source::normalise_sha256(s).ok_or_else(|| StoreError::Setup {
                    uri: shown.clone(),
                    message: format!("expected sha256 {s:?} is not 64 hex digits"),
                })?,
            ),
            None => None,
        };
        if let SourceSpec::Local(path) = &spec {
            return self.load_local(path, &shown, configured_sha).await;
        }

        let entry = Entry::new(
            &cfg.cache_dir,
            &uri::file_name(&spec),
            &uri::cache_identity(&cfg.uri),
        );
        // From here to the return, this process holds the entry's lock (when the disk cache is
        // usable): the look-up, the download and the publish are one step for every process
        // sharing the directory.
        let disk = if cfg.storage == StorageMode::Memory {
            None
        } else {
            Some(self.open_cache(&entry).await?)
        };
        if cfg.storage == StorageMode::Disk
            && let Some(CacheAccess::Unusable(e)) = &disk
        {
            // Nowhere to put the model: say so before any request.
            return Err(e.clone());
        }
        let cached = match &disk {
            Some(CacheAccess::Locked(_) | CacheAccess::ReadOnly(_)) => {
                self.try_cached(&entry, &shown, configured_sha.as_deref())
                    .await
            }
            _ => None,
        };
        if let Some((file, _)) = &cached {
            if !cfg.revalidate {
                tracing::info!(path = %entry.file().display(), "using the verified cached file");
                let (file, _) = cached.expect("checked");
                return Ok(file);
            }
            let _ = file;
        }

        // The download's deadline covers everything from here: client set-up, HEAD, the
        // `.sha256` look-up and both attempts.
        let deadline = tokio::time::Instant::now() + cfg.download_timeout;
        let within = Within {
            deadline,
            cfg,
            uri: &shown,
        };
        let backend = Arc::new(within.run(Backend::new(&spec, cfg)).await?);
        let mut info = within.run(head(cfg, &backend, &shown)).await?;
        tracing::info!(source = %shown, size = info.size, etag = ?info.etag, ranges = info.ranges, "source found");

        if let Some((file, sidecar)) = cached {
            if sidecar.size == info.size && sidecar.etag == info.etag {
                tracing::info!(path = %entry.file().display(), "cached file still current (ETag and size match)");
                return Ok(file);
            }
            tracing::info!(cached_etag = ?sidecar.etag, etag = ?info.etag, "the source changed since it was cached; downloading again");
        }

        if info.size < gguf::HEADER_LEN as u64 {
            return Err(StoreError::NotGguf {
                uri: shown.clone(),
                reason: format!("only {} bytes", info.size),
            });
        }
        let on_disk = self.choose_storage(disk.as_ref(), &entry, info.size, &shown)?;
        // Memory: the lock is released now (dropped), other processes need not wait for a
        // download that will not be cached.
        let mut lock = match disk {
            Some(CacheAccess::Locked(lock)) if on_disk => Some(lock),
            _ => None,
        };

        let mut last_err = None;
        for attempt in 1..=2u32 {
            let (expected, origin) = within
                .run(self.expected_sha(&backend, &info, configured_sha.as_deref(), &shown))
                .await?;
            match self
                .download_once(
                    &backend,
                    &entry,
                    &mut lock,
                    &info,
                    expected.as_deref(),
                    &origin,
                    &shown,
                    deadline,
                )
                .await
            {
                Ok(f) => return Ok(f),
                Err(
                    e @ (StoreError::ChecksumMismatch { .. } | StoreError::ObjectChanged { .. }),
                ) if attempt == 1 => {
                    tracing::warn!(error = %e, "verification failed; discarding the download and trying once more");
                    if matches!(e, StoreError::ObjectChanged { .. }) {
                        info = within.run(head(cfg, &backend, &shown)).await?;
                    }
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("two attempts failed"))
    }

    /// Prepares the cache directory (private, this user's) and takes the entry's lock,
    /// waiting up to `download_timeout` for another process that holds it. A directory that
    /// cannot be used is not an error here (`auto` then holds the model in memory); a lock
    /// that stays taken is.
    async fn open_cache(&self, entry: &Entry) -> Result<CacheAccess, StoreError> {
        let dir = &self.cfg.cache_dir;
        if let Err(problem) = cache::prepare_dir(dir) {
            let e = problem.into_error(dir);
            tracing::warn!(error = %e, "the disk cache cannot be used");
            return Ok(CacheAccess::Unusable(e));
        }
        let lock_path = entry.lock_path();
        let waiting = || {
            tracing::info!(lock = %lock_path.display(), "another process is loading this model into the cache; waiting for it");
        };
        match EntryLock::acquire(&lock_path, self.cfg.download_timeout, waiting).await {
            Ok(lock) => {
                entry.remove_stale_temps(&lock);
                Ok(CacheAccess::Locked(lock))
            }
            Err(LockError::Io(e)) => {
                let read_only = e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error());
                let e = StoreError::io("lock", &lock_path, e);
                if read_only {
                    // Nobody writes there (a cache baked into an image): look, never write.
                    tracing::info!(error = %e, "the cache directory is read-only; a cached file can be used, a download is not cached");
                    Ok(CacheAccess::ReadOnly(e))
                } else {
                    tracing::warn!(error = %e, "the disk cache cannot be used");
                    Ok(CacheAccess::Unusable(e))
                }
            }
            Err(LockError::Timeout(waited)) => Err(StoreError::Io {
                op: "wait for the lock",
                path: lock_path.display().to_string(),
                message: format!(
                    "another process has been loading this model for {waited:?} (BITNET_DOWNLOAD_TIMEOUT)"
                ),
            }),
        }
    }

    /// The expected sha256 and where it came from.
    async fn expected_sha(
        &self,
        backend: &Backend,
        info: &ObjectInfo,
        configured: Option<&str>,
        shown: &str,
    ) -> Result<(Option<String>, String), StoreError> {
        if let Some(s) = configured {
            return Ok((Some(s.to_string()), "configuration".into()));
        }
        if let Some(s) = &info.sha256 {
            return Ok((Some(s.clone()), "object metadata".into()));
        }
        let text = download::with_retries(
            &self.cfg,
            "GET <object>.sha256",
            &format!("{shown}.sha256"),
            || backend.sidecar_text(),
        )
        .await?;
        match text.as_deref().map(source::parse_sha256) {
            Some(Some(s)) => Ok((Some(s), format!("{shown}.sha256"))),
            Some(None) => {
                tracing::warn!(source = %shown, "<object>.sha256 exists but holds no sha256; ignoring it");
                Ok((None, "none".into()))
            }
            None => {
                tracing::info!(source = %shown, "no expected sha256 (configuration, metadata or .sha256 sidecar); the size and GGUF header are still checked");
                Ok((None, "none".into()))
            }
        }
    }

    /// One download into the cache entry (when `lock`, the entry's lock, is given) or into
    /// memory, verified and published.
    #[allow(clippy::too_many_arguments)]
    async fn download_once(
        &self,
        backend: &Arc<Backend>,
        entry: &Entry,
        lock: &mut Option<EntryLock>,
        info: &ObjectInfo,
        expected: Option<&str>,
        origin: &str,
        shown: &str,
        deadline: tokio::time::Instant,
    ) -> Result<ModelFile, StoreError> {
        let cfg = &self.cfg;
        let on_disk = lock.is_some();
        let sink = Arc::new(if on_disk {
            // Under the lock nothing else writes this name; a leftover is stale.
            let _ = std::fs::remove_file(entry.part());
            Sink::disk(entry.part(), info.size)?
        } else {
            Sink::memory(info.size)?
        });
        let actual = download::download(
            Arc::clone(backend),
            Arc::clone(&sink),
            info,
            cfg,
            shown,
            Arc::clone(&self.status),
            deadline,
        )
        .await?;
        let sink = Arc::try_unwrap(sink)
            .map_err(|_| StoreError::Internal("sink still shared after the download".into()))?;

        // SAFETY: the download is complete; nothing writes to the sink any more.
        let head = unsafe { sink.completed(0, gguf::HEADER_LEN) };
        gguf::check_header(head, info.size).map_err(|reason| StoreError::NotGguf {
            uri: shown.into(),
            reason,
        })?;
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(StoreError::ChecksumMismatch {
                uri: shown.into(),
                expected: expected.into(),
                actual,
                origin: origin.into(),
            });
        }
        let path = on_disk.then(|| entry.file());
        let published = sink.publish(path.as_deref(), cfg.fsync == CacheFsync::BeforeServing)?;
        let map = published.map;
        if map.len() as u64 != info.size {
            entry.remove();
            return Err(StoreError::SizeMismatch {
                uri: shown.into(),
                expected: info.size,
                actual: map.len() as u64,
            });
        }
        if on_disk {
            let sidecar = Sidecar {
                size: info.size,
                etag: info.etag.clone(),
                sha256: actual.clone(),
                source: shown.into(),
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            match (cfg.fsync, published.file) {
                (CacheFsync::InBackground, Some(file)) => {
                    // Served now; the sidecar, which makes this copy a cache hit for later
                    // starts, is written once the bytes are on disk. The entry's lock is held
                    // until then, so another process waits for a complete entry.
                    let (entry, lock) = (entry.clone(), lock.take());
                    tokio::task::spawn_blocking(move || {
                        let t0 = Instant::now();
                        let durable = file
                            .sync_all()
                            .map_err(|e| StoreError::io("fsync", &entry.file(), e))
                            .and_then(|()| entry.write_sidecar(&sidecar, true));
                        match durable {
                            Ok(()) => tracing::info!(
                                ms = t0.elapsed().as_millis() as u64,
                                "cached model written to disk (fsync) and recorded"
                            ),
                            // The mapped bytes stay valid; the next start downloads again.
                            Err(e) => {
                                tracing::warn!(error = %e, "cached model not recorded");
                                entry.remove();
                            }
                        }
                        drop(lock);
                    });
                }
                (fsync, _) => {
                    if let Err(e) =
                        entry.write_sidecar(&sidecar, fsync == CacheFsync::BeforeServing)
                    {
                        entry.remove();
                        return Err(e);
                    }
                }
            }
        }
        Ok(ModelFile {
            map: Arc::new(map),
            path,
            size: info.size,
            sha256: Some(actual),
            source: shown.into(),
        })
    }

    /// `true` for disk, `false` for memory; an error naming sizes when neither fits. `disk` is
    /// `None` in memory mode.
    fn choose_storage(
        &self,
        disk: Option<&CacheAccess>,
        entry: &Entry,
        size: u64,
        shown: &str,
    ) -> Result<bool, StoreError> {
        let cfg = &self.cfg;
        let needed = size.saturating_add(cfg.headroom);
        let dir = &cfg.cache_dir;
        let disk = disk.map(|access| match access {
            CacheAccess::Locked(_) => {
                // A previous, now stale or unverified copy is removed before space is counted.
                entry.remove();
                space::disk_available(dir)
                    .map(|a| cfg.max_disk_bytes.map_or(a, |m| a.min(m)))
                    .map_err(|e| StoreError::io("statvfs", dir, e))
            }
            CacheAccess::ReadOnly(e) | CacheAccess::Unusable(e) => Err(e.clone()),
        });
        let disk_text = match &disk {
            Some(Ok(a)) => format!("{} available for {}", space::human(*a), dir.display()),
            Some(Err(e)) => format!("cache directory {} unusable: {e}", dir.display()),
            None => String::new(),
        };
        if let Some(Ok(a)) = disk
            && a >= needed
        {
            return Ok(true);
        }
        if cfg.storage == StorageMode::Disk {
            if let Some(Err(e)) = disk {
                return Err(e);
            }
            return Err(StoreError::NoSpace {
                uri: shown.into(),
                needed,
                detail: format!("disk: {disk_text} (BITNET_MODEL_STORAGE=disk)"),
            });
        }
        let mem = space::memory_available()
            .map(|m| cfg.max_memory_bytes.map_or(m, |x| m.min(x)))
            .or(cfg.max_memory_bytes);
        let mem_text = match mem {
            Some(m) => format!("{} of memory available", space::human(m)),
            None => "memory limit unknown".into(),
        };
        if mem.is_none_or(|m| m >= needed) {
            if cfg.storage == StorageMode::Auto {
                tracing::info!(
                    needed,
                    "{disk_text}; holding the model in memory instead ({mem_text})"
                );
            }
            return Ok(false);
        }
        let detail = if cfg.storage == StorageMode::Auto {
            format!("disk: {disk_text}; memory: {mem_text}")
        } else {
            format!("memory: {mem_text} (BITNET_MODEL_STORAGE=memory)")
        };
        Err(StoreError::NoSpace {
            uri: shown.into(),
            needed,
            detail,
        })
    }

    /// The cached file, when its entry is private to this user and its sidecar is valid for
    /// this source. No request. No hashing unless a sha256 is configured: then the file is
    /// hashed, because the configured value must hold for the bytes served, whatever a sidecar
    /// says. An entry that fails a check is removed (never served, never left looking valid).
    async fn try_cached(
        &self,
        entry: &Entry,
        shown: &str,
        configured_sha: Option<&str>,
    ) -> Option<(ModelFile, Sidecar)> {
        let path = entry.file();
        let refuse = |why: &str| {
            tracing::warn!(path = %path.display(), "cached copy refused and removed: {why}");
            entry.remove();
            None
        };
        let stale = |why: &str| {
            tracing::info!(path = %path.display(), "cached copy not used: {why}");
            None
        };
        let sc = match entry.read_sidecar() {
            Ok(Some(sc)) => sc,
            Ok(None) => return None,
            Err(why) => return refuse(&why),
        };
        if sc.source != shown {
            return stale("sidecar names another source");
        }
        if configured_sha.is_some_and(|s| s != sc.sha256) {
            return stale("configured sha256 differs from the cached one");
        }
        let file = match entry.open_file() {
            Ok(f) => f,
            Err(why) => return refuse(&why),
        };
        let len = file.metadata().ok()?.len();
        if len != sc.size {
            return stale(&format!(
                "size {len} differs from the sidecar's {}",
                sc.size
            ));
        }
        // SAFETY: published cache files are replaced only by rename, never written in place.
        let map = Arc::new(unsafe { Mmap::map(&file) }.ok()?);
        if gguf::check_header(&map[..map.len().min(gguf::HEADER_LEN)], len).is_err() {
            return refuse("GGUF header check failed");
        }
        if let Some(expected) = configured_sha {
            self.status.set(ModelStatus::Verifying);
            let m = Arc::clone(&map);
            let actual = tokio::task::spawn_blocking(move || {
                use sha2::Digest as _;
                hex(&sha2::Sha256::digest(&m[..]))
            })
            .await
            .ok()?;
            if actual != expected {
                return refuse(&format!(
                    "its bytes hash to {actual}, not to the configured sha256 {expected}"
                ));
            }
            tracing::info!(path = %path.display(), "cached file hashed: matches the configured sha256");
        } else {
            prefault(&map);
        }
        let file = ModelFile {
            map,
            path: Some(path.clone()),
            size: len,
            sha256: Some(sc.sha256.clone()),
            source: shown.into(),
        };
        Some((file, sc))
    }

    async fn load_local(
        &self,
        path: &Path,
        shown: &str,
        expected: Option<String>,
    ) -> Result<ModelFile, StoreError> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound {
                uri: shown.into(),
                detail: "no such file".into(),
            },
            std::io::ErrorKind::PermissionDenied => StoreError::Forbidden {
                uri: shown.into(),
                detail: "permission denied".into(),
            },
            _ => StoreError::io("open", path, e),
        })?;
        let size = file
            .metadata()
            .map_err(|e| StoreError::io("stat", path, e))?
            .len();
        if size < gguf::HEADER_LEN as u64 {
            return Err(StoreError::NotGguf {
                uri: shown.into(),
                reason: format!("only {size} bytes"),
            });
        }
        // SAFETY: a model file on a mounted volume is treated as immutable while in use.
        let map =
            Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| StoreError::io("map", path, e))?);
        gguf::check_header(&map[..gguf::HEADER_LEN], size).map_err(|reason| {
            StoreError::NotGguf {
                uri: shown.into(),
                reason,
            }
        })?;
        let sha256 = match expected {
            None => {
                prefault(&map);
                None
            }
            Some(expected) => {
                self.status.set(ModelStatus::Verifying);
                let m = Arc::clone(&map);
                let actual = tokio::task::spawn_blocking(move || {
                    use sha2::Digest as _;
                    hex(&sha2::Sha256::digest(&m[..]))
                })
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?;
                if actual != expected {
                    return Err(StoreError::ChecksumMismatch {
                        uri: shown.into(),
                        expected,
                        actual,
                        origin: "configuration".into(),
                    });
                }
                Some(actual)
            }
        };
        Ok(ModelFile {
            map,
            path: Some(path.to_path_buf()),
            size,
            sha256,
            source: shown.into(),
        })
    }
}

/// Runs steps of a download under its deadline.
struct Within<'a> {
    deadline: tokio::time::Instant,
    cfg: &'a StoreConfig,
    uri: &'a str,
}

impl Within<'_> {
    async fn run<T>(
        &self,
        step: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout_at(self.deadline, step)
            .await
            .map_err(|_| download::deadline_error(self.cfg, self.uri, None))?
    }
}

async fn head(cfg: &StoreConfig, backend: &Backend, shown: &str) -> Result<ObjectInfo, StoreError> {
    download::with_retries(cfg, "HEAD", shown, || backend.head()).await
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Reads ahead a mapped file that nothing has read yet at this start (a cached or local file,
/// not hashed) when its pages are not in the page cache (a volume after a reboot, a freshly
/// attached disk): a background thread fills the mapping's page tables
/// (`madvise(MADV_POPULATE_READ)`), reading the file meanwhile, so that the first forward
/// pass does not wait on a gigabyte of faults from disk. When the pages are cached (a restart
/// of the process) faults are cheap and a prefault only competes with the first request for
/// the CPU (measured on 2B4T here: first token 0.25 s without, 0.30 s with; from a cold page
/// cache 1.07 s without, 0.98 s with), so nothing is done.
fn prefault(map: &Arc<Mmap>) {
    let resident = resident_fraction(map);
    if resident >= 0.9 {
        tracing::debug!(resident, "model pages in the page cache; no prefault");
        return;
    }
    let map = Arc::clone(map);
    let spawned = std::thread::Builder::new()
        .name("bitnet-prefault".into())
        .spawn(move || {
            let t0 = Instant::now();
            let how = match map.advise(memmap2::Advice::PopulateRead) {
                Ok(()) => "madvise(MADV_POPULATE_READ)",
                // Before Linux 5.14: touch a byte per page.
                Err(_) => {
                    let mut sum = 0u8;
                    for i in (0..map.len()).step_by(4096) {
                        sum = sum.wrapping_add(map[i]);
                    }
                    std::hint::black_box(sum);
                    "a read per page"
                }
            };
            tracing::info!(
                bytes = map.len(),
                resident,
                ms = t0.elapsed().as_millis() as u64,
                how,
                "model pages prefaulted"
            );
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the prefault thread; pages fault in on first use");
    }
}

/// The fraction of 256 pages, spread over the mapping, that are in the page cache.
fn resident_fraction(map: &Mmap) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let pages = map.len() / page;
    if pages == 0 {
        return 1.0;
    }
    let samples = pages.min(256);
    let mut resident = 0usize;
    for k in 0..samples {
        let offset = k * pages / samples * page;
        let mut status = 0u8;
        // SAFETY: the mapping's base is page-aligned and `offset` is a multiple of the page
        // size below `pages * page <= map.len()`, so the range is one whole page inside the
        // mapping, which `map` keeps alive; `status` holds the one byte mincore writes for
        // one page.
        let rc = unsafe {
            libc::mincore(
                map.as_ptr().add(offset).cast_mut().cast(),
                page,
                &mut status,
            )
        };
        if rc == 0 && status & 1 == 1 {
            resident += 1;
        }
    }
    resident as f64 / samples as f64
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_sync() {
        assert_send_sync::<super::ModelStore>();
        assert_send_sync::<super::ModelFile>();
        assert_eq!(super::hex(&[0, 0xab, 0xff]), "00abff");
    }
}
