//! The disk cache as a shared, attackable place: a private directory, entries that are not
//! this user's (or that others could write) never served, a configured sha256 that holds for
//! the bytes served, and one download per entry for processes sharing the directory (a
//! per-entry `flock`). Real files, real processes, an in-process HTTP server; no services.

mod common;

use common::*;
use model_store::{ModelStore, StorageMode, StoreConfig, StoreError};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZE: usize = 3 * 1024 * 1024 + 999;
const PART: u64 = 256 * 1024;
const PARTS: usize = SIZE.div_ceil(PART as usize);

/// Variables that turn [`child_fetch`] into a child process of
/// [`two_processes_sharing_a_cache_dir_download_once`].
const CHILD_URI: &str = "MODEL_STORE_TEST_CHILD_URI";
const CHILD_DIR: &str = "MODEL_STORE_TEST_CHILD_DIR";

fn config(url: &str, dir: &Path) -> StoreConfig {
    disk_config(url, dir, PART)
}

async fn server_with(path: &str, data: &[u8]) -> FaultServer {
    let srv = FaultServer::start().await;
    srv.put(path, data.to_vec(), Some(sha256_hex(data)));
    srv
}

fn gets(srv: &FaultServer, path: &str) -> usize {
    srv.count("GET", path)
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn sidecar_of(model: &Path) -> PathBuf {
    PathBuf::from(format!("{}.json", model.display()))
}

/// Replaces a cached model with other bytes of the same size (a valid GGUF header), as someone
/// who can write to the cache would; with `sidecar_too`, the sidecar is rewritten to vouch for
/// them. Written by this user, mode 0600: only the configured sha256 can tell.
fn plant(model: &Path, seed: u64, sidecar_too: bool) -> Vec<u8> {
    let planted = gguf_payload(SIZE, seed);
    std::fs::write(model, &planted).unwrap();
    if sidecar_too {
        let path = sidecar_of(model);
        let mut sc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        sc["sha256"] = serde_json::json!(sha256_hex(&planted));
        std::fs::write(&path, serde_json::to_vec(&sc).unwrap()).unwrap();
    }
    planted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cache_directory_and_its_files_are_private() {
    let data = gguf_payload(SIZE, 1);
    let srv = server_with("/p.gguf", &data).await;
    let dir = temp_dir("private").join("not/yet");
    let f = ModelStore::new(config(&srv.url("/p.gguf"), &dir))
        .get()
        .await
        .unwrap();
    assert_bytes(f.bytes(), &data, "model bytes");
    assert_eq!(mode(&dir), 0o700, "the cache directory is created private");
    let path = f.path.clone().unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&sidecar_of(&path)), 0o600);
    assert_eq!(listing(&dir).len(), 2, "{:?}", listing(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_file_that_does_not_hash_to_the_configured_sha256_is_never_served() {
    let data = gguf_payload(SIZE, 2);
    let srv = server_with("/h.gguf", &data).await;
    let dir = temp_dir("rehash");
    let mut cfg = config(&srv.url("/h.gguf"), &dir);
    cfg.sha256 = Some(sha256_hex(&data));
    let path = ModelStore::new(cfg.clone())
        .get()
        .await
        .unwrap()
        .path
        .clone()
        .unwrap();

    // The sidecar still records the configured sha256; the bytes are someone else's.
    plant(&path, 99, false);
    srv.clear_log();
    let f = ModelStore::new(cfg.clone()).get().await.unwrap();
    assert_bytes(f.bytes(), &data, "the planted bytes were served");
    assert_eq!(gets(&srv, "/h.gguf"), PARTS, "downloaded again");
    assert_bytes(
        &std::fs::read(&path).unwrap(),
        &data,
        "the cache is repaired",
    );
    drop(f);

    // An intact entry: hashed, matches, no request.
    srv.clear_log();
    let f = ModelStore::new(cfg).get().await.unwrap();
    assert_bytes(f.bytes(), &data, "model bytes");
    assert_eq!(srv.requests(), 0, "{:?}", srv.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_served_from_a_directory_others_can_write() {
    let data = gguf_payload(SIZE, 3);
    let srv = server_with("/w.gguf", &data).await;
    let dir = temp_dir("shared-dir");
    let url = srv.url("/w.gguf");
    let path = ModelStore::new(config(&url, &dir))
        .get()
        .await
        .unwrap()
        .path
        .clone()
        .unwrap();
    // What anyone could do to a world-writable /tmp/bitnet-models: a model with a sidecar
    // that vouches for it.
    let planted = plant(&path, 98, true);
    chmod(&dir, 0o777);
    srv.clear_log();

    // Disk only: a clear error, before any request.
    let err = ModelStore::new(config(&url, &dir)).get().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::UnsafeCache { .. }), "{err:?}");
    assert!(
        msg.contains(&dir.display().to_string())
            && msg.contains("writable by group or others")
            && msg.contains("BITNET_CACHE_DIR"),
        "{msg}"
    );
    assert!(!err.is_retryable());
    assert_eq!(srv.requests(), 0, "{:?}", srv.log());

    // Auto: the model is downloaded into memory; the planted file is not used.
    let mut cfg = config(&url, &dir);
    cfg.storage = StorageMode::Auto;
    let f = ModelStore::new(cfg).get().await.unwrap();
    assert_bytes(f.bytes(), &data, "model bytes");
    assert!(
        f.bytes() != planted.as_slice(),
        "the planted bytes were served"
    );
    assert_eq!(f.path, None, "nothing is written into an unsafe directory");
    chmod(&dir, 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_others_could_have_written_are_removed_and_downloaded_again() {
    let data = gguf_payload(SIZE, 4);
    let srv = server_with("/e.gguf", &data).await;
    let dir = temp_dir("entries");
    let url = srv.url("/e.gguf");
    let path = ModelStore::new(config(&url, &dir))
        .get()
        .await
        .unwrap()
        .path
        .clone()
        .unwrap();
    let fetch_again = async || {
        srv.clear_log();
        let f = ModelStore::new(config(&url, &dir)).get().await.unwrap();
        assert_bytes(f.bytes(), &data, "model bytes");
        assert_eq!(gets(&srv, "/e.gguf"), PARTS, "downloaded again");
        assert_eq!(mode(&path), 0o600);
    };

    // A model file writable by group and others.
    plant(&path, 97, true);
    chmod(&path, 0o666);
    fetch_again().await;

    // A sidecar writable by others.
    plant(&path, 96, true);
    chmod(&sidecar_of(&path), 0o646);
    fetch_again().await;

    // A symbolic link in place of the model (to a file of this user's, with the right sha).
    let elsewhere = temp_dir("entries-elsewhere").join("planted.gguf");
    let planted = gguf_payload(SIZE, 95);
    std::fs::write(&elsewhere, &planted).unwrap();
    chmod(&elsewhere, 0o600);
    plant(&path, 95, true);
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    fetch_again().await;
    assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());

    if !is_root() {
        eprintln!("SKIPPED (not root): entries and directories owned by another user");
        return;
    }
    // Owned by another user (nobody), mode 0600: refused all the same.
    plant(&path, 94, true);
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(sidecar_of(&path), Some(65534), Some(65534)).unwrap();
    fetch_again().await;
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), 0);

    // A directory owned by another user.
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    srv.clear_log();
    let err = ModelStore::new(config(&url, &dir)).get().await.unwrap_err();
    assert!(matches!(err, StoreError::UnsafeCache { .. }), "{err:?}");
    assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    assert_eq!(srv.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_sharing_a_cache_dir_download_once() {
    let data = gguf_payload(SIZE, 5);
    let srv = server_with("/two.gguf", &data).await;
    // Slow enough (about 1.5 s) for the second store to find the first one's lock taken.
    srv.set_rate_limit(512 * 1024);
    let dir = temp_dir("two-stores");
    let url = srv.url("/two.gguf");
    let a = Arc::new(ModelStore::new(config(&url, &dir)));
    let b = Arc::new(ModelStore::new(config(&url, &dir)));
    let ha = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.get().await }
    });
    let hb = tokio::spawn({
        let b = Arc::clone(&b);
        async move { b.get().await }
    });
    let fa = ha.await.unwrap().unwrap();
    let fb = hb.await.unwrap().unwrap();
    assert_bytes(fa.bytes(), &data, "model bytes");
    assert_bytes(fb.bytes(), &data, "model bytes");
    assert_eq!(fa.path, fb.path);
    assert_eq!(srv.count("HEAD", "/two.gguf"), 1, "{:?}", srv.log());
    assert_eq!(gets(&srv, "/two.gguf"), PARTS, "one download for both");
    assert_eq!(listing(&dir).len(), 2, "{:?}", listing(&dir));
}

/// The body of a child process for [`two_processes_sharing_a_cache_dir_download_once`]; does
/// nothing (and passes) when run as an ordinary test.
#[test]
fn child_fetch() {
    let (Ok(uri), Ok(dir)) = (std::env::var(CHILD_URI), std::env::var(CHILD_DIR)) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(ModelStore::new(config(&uri, Path::new(&dir))).get()) {
        Ok(f) => println!(
            "CHILD-OK {} {}",
            f.path.as_ref().unwrap().display(),
            f.sha256.as_deref().unwrap_or("-")
        ),
        Err(e) => println!("CHILD-ERR {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sharing_a_cache_dir_download_once() {
    let data = gguf_payload(SIZE, 6);
    let srv = server_with("/proc.gguf", &data).await;
    srv.set_rate_limit(512 * 1024);
    let dir = temp_dir("two-processes");
    let url = srv.url("/proc.gguf");
    let spawn = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_fetch", "--nocapture", "--test-threads=1"])
            .env(CHILD_URI, &url)
            .env(CHILD_DIR, &dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn();
    // The second process starts while the first is downloading.
    let t0 = Instant::now();
    while gets(&srv, "/proc.gguf") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the first process never started its download"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = spawn();
    let outputs =
        tokio::task::spawn_blocking(move || [first, second].map(|c| c.wait_with_output().unwrap()))
            .await
            .unwrap();
    let mut paths = Vec::new();
    for out in &outputs {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            // The harness prints "test child_fetch ... " on the same line.
            .find_map(|l| l.split_once("CHILD-OK ").map(|(_, rest)| rest))
            .unwrap_or_else(|| {
                panic!(
                    "child failed: {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let (path, sha) = line.split_once(' ').unwrap();
        assert_eq!(sha, sha256_hex(&data));
        paths.push(path.to_string());
    }
    assert_eq!(paths[0], paths[1]);
    assert_bytes(&std::fs::read(&paths[0]).unwrap(), &data, "model bytes");
    assert_eq!(srv.count("HEAD", "/proc.gguf"), 1, "{:?}", srv.log());
    assert_eq!(gets(&srv, "/proc.gguf"), PARTS, "one download for both");
    assert_eq!(listing(&dir).len(), 2, "{:?}", listing(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_waited_for_and_a_stale_part_is_removed() {
    let data = gguf_payload(SIZE, 7);
    let srv = server_with("/lock.gguf", &data).await;
    let dir = temp_dir("lock");
    let url = srv.url("/lock.gguf");
    let path = ModelStore::new(config(&url, &dir))
        .get()
        .await
        .unwrap()
        .path
        .clone()
        .unwrap();
    let stem = path.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::remove_file(sidecar_of(&path)).unwrap();
    std::fs::remove_file(&path).unwrap();
    // Left by killed processes: this version's name, and an earlier version's PID-named one
    // whose PID (1) is alive in every container.
    let parts = [
        dir.join(format!(".{stem}.part")),
        dir.join(format!(".{stem}.1.5f3a.part")),
    ];
    for p in &parts {
        std::fs::write(p, b"half a download").unwrap();
    }

    // Another process (here: this test) holds the entry's lock.
    let lock = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(format!(".{stem}.lock")))
        .unwrap();
    lock.lock().unwrap();

    // A short wait ends with a clear error, having requested and deleted nothing.
    srv.clear_log();
    let mut cfg = config(&url, &dir);
    cfg.download_timeout = Duration::from_millis(300);
    let err = ModelStore::new(cfg).get().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("wait for the lock") && msg.contains("BITNET_DOWNLOAD_TIMEOUT"),
        "{msg}"
    );
    assert_eq!(srv.requests(), 0, "{:?}", srv.log());
    assert!(
        parts.iter().all(|p| p.exists()),
        "a locked entry's files were touched"
    );

    // A longer one waits, then downloads once the lock is released.
    let store = Arc::new(ModelStore::new(config(&url, &dir)));
    let h = tokio::spawn({
        let s = Arc::clone(&store);
        async move { s.get().await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(srv.requests(), 0, "started while the lock was held");
    assert!(parts.iter().all(|p| p.exists()));
    drop(lock);
    let f = h.await.unwrap().unwrap();
    assert_bytes(f.bytes(), &data, "model bytes");
    assert_eq!(gets(&srv, "/lock.gguf"), PARTS);
    // The stale parts (their lock was free) and the lock file are gone.
    assert_eq!(
        listing(&dir),
        {
            let mut v = vec![stem.clone(), format!("{stem}.json")];
            v.sort();
            v
        },
        "{:?}",
        listing(&dir)
    );
}

/// Bytes of the mapping that holds `p` that are in this process's page tables (`Rss` in
/// /proc/self/smaps): what the first forward pass will read without a page fault.
/// The fraction of a file's pages in the page cache (mincore over a mapping of it; looking
/// faults nothing in).
fn resident_fraction_of(file: &std::fs::File) -> f64 {
    // SAFETY: a read-only view of a file this test wrote and no one modifies while it looks.
    let map = unsafe { memmap2::Mmap::map(file) }.unwrap();
    let page = 4096;
    let pages = map.len().div_ceil(page);
    let mut status = vec![0u8; pages];
    // SAFETY: the mapping is page-aligned and `map.len()` bytes long, which mincore rounds up
    // to `pages` pages, one status byte each in `status`; `map` lives across the call.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr().cast_mut().cast(),
            map.len(),
            status.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    status.iter().filter(|s| *s & 1 == 1).count() as f64 / pages as f64
}

fn mapped_bytes(p: *const u8) -> u64 {
    let addr = p as u64;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((lo, hi)) = range.split_once('-')
            && let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
        {
            inside = (lo..hi).contains(&addr);
        } else if inside && let Some(kb) = line.strip_prefix("Rss:") {
            return kb
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .unwrap()
                * 1024;
        }
    }
    panic!("no mapping holds {addr:#x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fsync_a_download_is_still_verified_published_and_reused() {
    let data = gguf_payload(SIZE, 11);
    let srv = server_with("/nofsync.gguf", &data).await;
    let dir = temp_dir("nofsync");
    let url = srv.url("/nofsync.gguf");
    let mut cfg = config(&url, &dir);
    cfg.fsync = model_store::CacheFsync::Off;
    let f = ModelStore::new(cfg.clone()).get().await.unwrap();
    assert_bytes(f.bytes(), &data, "model bytes");
    assert_eq!(f.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    let path = f.path.clone().expect("on disk");
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sidecar_of(&path)).unwrap()).unwrap();
    assert_eq!(sidecar["sha256"], sha256_hex(&data));
    // The next start finds it: no second download.
    let again = ModelStore::new(cfg).get().await.unwrap();
    assert_bytes(again.bytes(), &data, "cached bytes");
    assert_eq!(gets(&srv, "/nofsync.gguf"), PARTS, "{:?}", srv.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_served_with_its_pages_already_mapped() {
    // Far larger than the readahead window (8 MiB on this machine's disk): the header check's
    // first fault must not bring the whole file back into the page cache, which (rightly)
    // skips the prefault and made a 3 MB file flaky here.
    let data = gguf_payload(64 << 20, 12);
    let srv = server_with("/mapped.gguf", &data).await;
    let dir = temp_dir("mapped");
    let cfg = config(&srv.url("/mapped.gguf"), &dir);

    // Downloaded: the mapping handed out is the one the hasher read every page through.
    let downloaded = ModelStore::new(cfg.clone()).get().await.unwrap();
    let size = downloaded.size;
    // All but 1 %: the kernel may take a few pages back meanwhile. This VM runs DAMON with a
    // `pageout` scheme (/sys/kernel/mm/damon/admin), which reclaimed 5 pages of the 16,384
    // once under CI's load. Without the prefault a cache hit maps only the pages the header
    // check touches (64 KiB of the 64 MiB, measured with the prefault disabled), far below.
    let nearly_all = size - size / 100;
    assert!(
        mapped_bytes(downloaded.bytes().as_ptr()) >= nearly_all,
        "{} of {size} bytes mapped after the download",
        mapped_bytes(downloaded.bytes().as_ptr())
    );

    // From the cache, unhashed at this start, its pages evicted from the page cache (a volume
    // after a reboot): a background thread reads it in and fills the tables.
    // (Pages still mapped are not evicted: the first mapping goes first.)
    let path = downloaded.path.clone().unwrap();
    drop(downloaded);
    let file = std::fs::File::open(&path).unwrap();
    // The kernel keeps pages that something still maps (a task of the first store finishing
    // with its mapping) or that are under writeback: evict until it has let them go, or the
    // premise (a cold page cache) does not hold. Seen once in CI under load.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        if resident_fraction_of(&file) < 0.1 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let resident = resident_fraction_of(&file);
    assert!(
        resident < 0.1,
        "{resident:.2} of the file still in the page cache after 10 s of eviction"
    );
    let cached = ModelStore::new(cfg).get().await.unwrap();
    let p = cached.bytes().as_ptr();
    let deadline = Instant::now() + Duration::from_secs(10);
    while mapped_bytes(p) < nearly_all && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        mapped_bytes(p) >= nearly_all,
        "{} of {size} bytes mapped 10 s after a cache hit from a cold page cache",
        mapped_bytes(p)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_fsync_serves_at_once_and_records_the_entry_once_durable() {
    let data = gguf_payload(SIZE, 13);
    let srv = server_with("/bg.gguf", &data).await;
    let dir = temp_dir("bgfsync");
    let mut cfg = config(&srv.url("/bg.gguf"), &dir);
    cfg.fsync = model_store::CacheFsync::InBackground;
    let f = ModelStore::new(cfg.clone()).get().await.unwrap();
    assert_bytes(f.bytes(), &data, "model bytes");
    // Another store sharing the directory waits for the entry's lock, which the background
    // fsync holds until the sidecar is written, then finds a complete entry: no download.
    let again = ModelStore::new(cfg).get().await.unwrap();
    assert_bytes(again.bytes(), &data, "cached bytes");
    assert_eq!(gets(&srv, "/bg.gguf"), PARTS, "{:?}", srv.log());
    let path = f.path.clone().expect("on disk");
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sidecar_of(&path)).unwrap()).unwrap();
    assert_eq!(sidecar["sha256"], sha256_hex(&data));
    assert_eq!(mode(&sidecar_of(&path)), 0o600);
}
