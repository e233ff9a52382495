//! HTTP(S) source against an in-process Range server with injected faults. Needs no services.

mod common;

use common::*;
use model_store::{ModelStatus, ModelStore, StorageMode, StoreConfig, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZE: usize = 3 * 1024 * 1024 + 12_345;
const PART: u64 = 256 * 1024;
const PARTS: usize = SIZE.div_ceil(PART as usize);

fn config(url: &str, dir: &std::path::Path) -> StoreConfig {
    disk_config(url, dir, PART)
}

async fn server_with(path: &str, data: &[u8], meta: bool) -> FaultServer {
    let srv = FaultServer::start().await;
    srv.put(path, data.to_vec(), meta.then(|| sha256_hex(data)));
    srv
}

fn gets(srv: &FaultServer, path: &str) -> usize {
    srv.count("GET", path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_download_verifies_publishes_and_reports_status() {
    let data = gguf_payload(SIZE, 1);
    let srv = server_with("/m/model.gguf", &data, true).await;
    let dir = temp_dir("basic");
    let store = ModelStore::new(config(&srv.url("/m/model.gguf"), &dir));
    assert_eq!(store.status(), ModelStatus::NotStarted);
    assert_eq!(srv.requests(), 0, "nothing happens before the first get()");

    let f = store.get().await.unwrap();
    assert_eq!(f.bytes(), &data[..]);
    assert_eq!(f.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    let path = f.path.clone().unwrap();
    assert!(path.starts_with(&dir));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    // HEAD once, one ranged GET per part, each pinned with If-Match; no sidecar fetch because
    // metadata carried the sha256.
    assert_eq!(srv.count("HEAD", "/m/model.gguf"), 1);
    assert_eq!(gets(&srv, "/m/model.gguf"), PARTS);
    assert!(
        srv.log()
            .iter()
            .filter(|l| l.method == "GET")
            .all(|l| l.range.is_some() && l.if_match.is_some())
    );
    assert_eq!(srv.count("GET", "/m/model.gguf.sha256"), 0);

    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}.json", path.display())).unwrap())
            .unwrap();
    assert_eq!(sidecar["size"], SIZE as u64);
    assert_eq!(sidecar["sha256"], sha256_hex(&data));
    assert!(sidecar["etag"].as_str().unwrap().starts_with("\"v"));

    match store.status() {
        ModelStatus::Ready {
            size,
            sha256,
            path: p,
            source,
            ..
        } => {
            assert_eq!(size, SIZE as u64);
            assert_eq!(sha256, Some(sha256_hex(&data)));
            assert_eq!(p, path.display().to_string());
            assert_eq!(source, srv.url("/m/model.gguf"));
        }
        other => panic!("status {other:?}"),
    }
    let json = serde_json::to_value(store.status()).unwrap();
    assert_eq!(json["state"], "ready");
    // Listing: the model and its sidecar only.
    assert_eq!(listing(&dir).len(), 2, "{:?}", listing(&dir));

    // The same store again: the same mapping, no request.
    let before = srv.requests();
    let g = store.get().await.unwrap();
    assert!(Arc::ptr_eq(&f, &g));
    assert_eq!(srv.requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_start_in_a_new_store_makes_no_request_and_no_hash() {
    let data = gguf_payload(SIZE, 2);
    let srv = server_with("/warm.gguf", &data, true).await;
    let dir = temp_dir("warm");
    ModelStore::new(config(&srv.url("/warm.gguf"), &dir))
        .get()
        .await
        .unwrap();
    srv.clear_log();

    // A "restarted process": a new store with the same cache dir.
    let store = ModelStore::new(config(&srv.url("/warm.gguf"), &dir));
    let t0 = Instant::now();
    let f = store.get().await.unwrap();
    let warm = t0.elapsed();
    eprintln!(
        "warm path: {warm:?} from get() to mapped file ({} bytes)",
        f.size
    );
    assert_eq!(
        srv.requests(),
        0,
        "warm start must not touch the network: {:?}",
        srv.log()
    );
    assert_eq!(f.bytes(), &data[..]);
    assert!(warm < Duration::from_millis(200), "warm path took {warm:?}");

    // Even with the server gone the warm path works.
    drop(srv);
    let f2 = ModelStore::new(config("http://127.0.0.1:9/warm.gguf", &dir))
        .get()
        .await;
    assert!(f2.is_err(), "a different URI is a different cache entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_download() {
    let data = gguf_payload(SIZE, 3);
    let srv = server_with("/c.gguf", &data, true).await;
    let dir = temp_dir("concurrent");
    let store = Arc::new(ModelStore::new(config(&srv.url("/c.gguf"), &dir)));
    let mut handles = Vec::new();
    for _ in 0..8 {
        let s = Arc::clone(&store);
        handles.push(tokio::spawn(async move { s.get().await }));
    }
    let files: Vec<_> = futures_join(handles).await;
    for f in &files {
        assert!(
            Arc::ptr_eq(f, &files[0]),
            "all callers get the same mapping"
        );
    }
    assert_eq!(srv.count("HEAD", "/c.gguf"), 1);
    assert_eq!(gets(&srv, "/c.gguf"), PARTS, "one download for all callers");
}

async fn futures_join(
    handles: Vec<tokio::task::JoinHandle<Result<Arc<model_store::ModelFile>, StoreError>>>,
) -> Vec<Arc<model_store::ModelFile>> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_sidecar_size_triggers_a_new_download() {
    let data = gguf_payload(SIZE, 4);
    let srv = server_with("/s.gguf", &data, true).await;
    let dir = temp_dir("stale");
    let f = ModelStore::new(config(&srv.url("/s.gguf"), &dir))
        .get()
        .await
        .unwrap();
    let sidecar = format!("{}.json", f.path.as_ref().unwrap().display());
    drop(f);
    let mut sc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    sc["size"] = serde_json::json!(SIZE as u64 + 1);
    std::fs::write(&sidecar, serde_json::to_vec(&sc).unwrap()).unwrap();
    srv.clear_log();

    let f = ModelStore::new(config(&srv.url("/s.gguf"), &dir))
        .get()
        .await
        .unwrap();
    assert_eq!(f.bytes(), &data[..]);
    assert_eq!(
        gets(&srv, "/s.gguf"),
        PARTS,
        "a stale sidecar means a fresh download"
    );
    let sc: serde_json::Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    assert_eq!(sc["size"], SIZE as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_notices_a_replaced_object() {
    let old = gguf_payload(SIZE, 5);
    let new = gguf_payload(SIZE, 6);
    let srv = server_with("/r.gguf", &old, false).await;
    let dir = temp_dir("revalidate");
    ModelStore::new(config(&srv.url("/r.gguf"), &dir))
        .get()
        .await
        .unwrap();

    // Same ETag: only a HEAD.
    let mut cfg = config(&srv.url("/r.gguf"), &dir);
    cfg.revalidate = true;
    srv.clear_log();
    let f = ModelStore::new(cfg.clone()).get().await.unwrap();
    assert_eq!(f.bytes(), &old[..]);
    assert_eq!(srv.requests(), 1, "{:?}", srv.log());
    drop(f);

    // New ETag: downloaded again.
    srv.put("/r.gguf", new.clone(), None);
    let f = ModelStore::new(cfg).get().await.unwrap();
    assert_eq!(f.bytes(), &new[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_that_recover_are_retried_per_part() {
    let data = gguf_payload(SIZE, 7);
    let srv = server_with("/e.gguf", &data, true).await;
    srv.rule("HEAD", "/e.gguf", 1, Fault::Status(503));
    srv.rule("GET", "/e.gguf", 3, Fault::Status(500));
    let dir = temp_dir("5xx");
    let f = ModelStore::new(config(&srv.url("/e.gguf"), &dir))
        .get()
        .await
        .unwrap();
    assert_eq!(f.bytes(), &data[..]);
    assert_eq!(srv.count("HEAD", "/e.gguf"), 2);
    assert_eq!(gets(&srv, "/e.gguf"), PARTS + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_server_errors_fail_cleanly() {
    let data = gguf_payload(SIZE, 8);
    let srv = server_with("/p.gguf", &data, true).await;
    srv.rule("GET", "/p.gguf", 1000, Fault::Status(503));
    let dir = temp_dir("5xx-fail");
    let mut cfg = config(&srv.url("/p.gguf"), &dir);
    cfg.part_attempts = 3;
    let store = ModelStore::new(cfg);
    let err = store.get().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            StoreError::Transfer {
                retryable: true,
                attempts: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("503") && msg.contains("/p.gguf"), "{msg}");
    assert!(err.is_retryable());
    assert_nothing_cached(&dir);
    assert!(matches!(store.status(), ModelStatus::Failed { .. }));
    // Bounded: at most attempts × workers requests (the first failing part stops the rest).
    assert!(gets(&srv, "/p.gguf") <= 3 * 4, "{}", gets(&srv, "/p.gguf"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_cut_short_are_resumed() {
    let data = gguf_payload(SIZE, 9);
    let srv = server_with("/cut.gguf", &data, true).await;
    srv.rule("GET", "/cut.gguf", 3, Fault::CutShort(10_000));
    let dir = temp_dir("cut");
    let f = ModelStore::new(config(&srv.url("/cut.gguf"), &dir))
        .get()
        .await
        .unwrap();
    assert_eq!(f.bytes(), &data[..]);
    // The retries asked only for what was missing.
    let resumed: Vec<_> = srv
        .log()
        .into_iter()
        .filter(|l| l.method == "GET")
        .filter_map(|l| l.range)
        .filter(|r| {
            let start: u64 = r
                .trim_start_matches("bytes=")
                .split('-')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            !start.is_multiple_of(PART)
        })
        .collect();
    assert_eq!(resumed.len(), 3, "{resumed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_mid_part_are_resumed() {
    let data = gguf_payload(SIZE, 10);
    let srv = server_with("/rst.gguf", &data, true).await;
    srv.rule("GET", "/rst.gguf", 2, Fault::Reset(50_000));
    let dir = temp_dir("reset");
    let f = ModelStore::new(config(&srv.url("/rst.gguf"), &dir))
        .get()
        .await
        .unwrap();
    assert_eq!(f.bytes(), &data[..]);
    assert_eq!(gets(&srv, "/rst.gguf"), PARTS + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_keeps_dropping_fails_without_caching() {
    let data = gguf_payload(SIZE, 11);
    let srv = server_with("/drop.gguf", &data, true).await;
    srv.rule("GET", "/drop.gguf", 1000, Fault::CutShort(1000));
    let dir = temp_dir("cut-fail");
    let mut cfg = config(&srv.url("/drop.gguf"), &dir);
    cfg.part_attempts = 2;
    let err = ModelStore::new(cfg).get().await.unwrap_err();
    assert!(matches!(err, StoreError::Transfer { .. }), "{err:?}");
    assert!(err.to_string().contains("/drop.gguf"), "{err}");
    assert_nothing_cached(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_sha256_is_retried_once_then_named() {
    let data = gguf_payload(SIZE, 12);
    let srv = server_with("/sha.gguf", &data, false).await;
    let dir = temp_dir("sha");
    let mut cfg = config(&srv.url("/sha.gguf"), &dir);
    let wrong = "ab".repeat(32);
    cfg.sha256 = Some(wrong.clone());
    let err = ModelStore::new(cfg).get().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert!(
        msg.contains(&wrong) && msg.contains(&sha256_hex(&data)),
        "{msg}"
    );
    assert_eq!(
        gets(&srv, "/sha.gguf"),
        2 * PARTS,
        "downloaded twice (one retry)"
    );
    assert!(!err.is_retryable());
    assert_nothing_cached(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha256_sidecar_object_is_used_and_checked() {
    let data = gguf_payload(SIZE, 13);
    let srv = server_with("/side.gguf", &data, false).await;
    srv.put(
        "/side.gguf.sha256",
        format!("{}  side.gguf\n", sha256_hex(&data)).into_bytes(),
        None,
    );
    let dir = temp_dir("sidecar-ok");
    let f = ModelStore::new(config(&srv.url("/side.gguf"), &dir))
        .get()
        .await
        .unwrap();
    assert_eq!(f.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert_eq!(srv.count("GET", "/side.gguf.sha256"), 1);

    // A wrong sidecar fails the download.
    srv.put("/side.gguf.sha256", "00".repeat(32).into_bytes(), None);
    let dir = temp_dir("sidecar-bad");
    let err = ModelStore::new(config(&srv.url("/side.gguf"), &dir))
        .get()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&"00".repeat(32)) && err.to_string().contains(".sha256"),
        "{err}"
    );
    assert_nothing_cached(&dir);

    // No sidecar (404) and no metadata: accepted on size and header alone.
    let srv2 = server_with("/none.gguf", &data, false).await;
    let dir = temp_dir("sidecar-none");
    let f = ModelStore::new(config(&srv2.url("/none.gguf"), &dir))
        .get()
        .await
        .unwrap();
    assert_eq!(f.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert_eq!(srv2.count("GET", "/none.gguf.sha256"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_replaced_between_parts_restarts_once_then_fails_clearly() {
    let old = gguf_payload(SIZE, 14);
    let new = gguf_payload(SIZE, 15);
    let srv = server_with("/chg.gguf", &old, false).await;
    // Replaced once, mid-download: the If-Match GETs get 412, the store starts over on the new
    // version and succeeds.
    srv.rule("GET", "/chg.gguf", 1, Fault::Replace(Arc::new(new.clone())));
    let dir = temp_dir("changed");
    let mut cfg = config(&srv.url("/chg.gguf"), &dir);
    cfg.concurrency = 1;
    let f = ModelStore::new(cfg.clone()).get().await.unwrap();
    assert_eq!(f.bytes(), &new[..], "never a mix of two versions");
    assert!(srv.log().iter().any(|l| l.status == 412));
    drop(f);

    // Replaced on every GET: a clear error and nothing cached.
    let srv = server_with("/chg2.gguf", &old, false).await;
    srv.rule(
        "GET",
        "/chg2.gguf",
        1000,
        Fault::Replace(Arc::new(new.clone())),
    );
    let dir = temp_dir("changed-fail");
    let mut cfg = config(&srv.url("/chg2.gguf"), &dir);
    cfg.concurrency = 1;
    let err = ModelStore::new(cfg).get().await.unwrap_err();
    assert!(matches!(err, StoreError::ObjectChanged { .. }), "{err:?}");
    assert!(
        err.to_string().contains("changed during the download"),
        "{err}"
    );
    assert_nothing_cached(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_fails_at_once_naming_the_source_without_secrets() {
    let data = gguf_payload(SIZE, 16);
    let srv = server_with("/f.gguf", &data, true).await;
    srv.rule("*", "/f.gguf", 1000, Fault::Status(403));
    let dir = temp_dir("403");
    let url = format!("{}?sig=SECRET-TOKEN&se=2030", srv.url("/f.gguf"));
    let err = ModelStore::new(config(&url, &dir)).get().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Forbidden { .. }), "{err:?}");
    assert!(msg.contains(&srv.url("/f.gguf")), "{msg}");
    assert!(!msg.contains("SECRET"), "secrets leak: {msg}");
    assert_eq!(srv.requests(), 1, "no retry storm: {:?}", srv.log());
    assert_nothing_cached(&dir);

    // Part GETs that turn 403 also stop at once.
    let srv = server_with("/f2.gguf", &data, true).await;
    srv.rule("GET", "/f2.gguf", 1000, Fault::Status(403));
    let dir = temp_dir("403-get");
    let err = ModelStore::new(config(&srv.url("/f2.gguf"), &dir))
        .get()
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Forbidden { .. }), "{err:?}");
    assert!(
        gets(&srv, "/f2.gguf") <= 4,
        "one failed request per worker at most"
    );
    assert_nothing_cached(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_names_the_source() {
    let srv = FaultServer::start().await;
    let dir = temp_dir("404");
    let err = ModelStore::new(config(&srv.url("/missing.gguf"), &dir))
        .get()
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/missing.gguf") && err.to_string().contains("not found"),
        "{err}"
    );
    assert_eq!(srv.requests(), 1);
    assert_nothing_cached(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_a_gguf_is_refused() {
    let mut html = b"<!DOCTYPE html><html>login page</html>".to_vec();
    html.resize(4096, b' ');
    let srv = server_with("/page.gguf", &html, false).await;
    let dir = temp_dir("html");
    let err = ModelStore::new(config(&srv.url("/page.gguf"), &dir))
        .get()
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotGguf { .. }), "{err:?}");
    assert!(err.to_string().contains("bad magic"), "{err}");
    assert_nothing_cached(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_enough_space_is_refused_before_downloading() {
    let data = gguf_payload(SIZE, 17);
    let srv = server_with("/big.gguf", &data, true).await;

    // Disk: a real statvfs check with an impossible headroom.
    let dir = temp_dir("nospace-disk");
    let mut cfg = config(&srv.url("/big.gguf"), &dir);
    cfg.headroom = 1 << 60;
    let err = ModelStore::new(cfg).get().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err:?}");
    assert!(
        msg.contains("need")
            && msg.contains("available")
            && msg.contains(&dir.display().to_string()),
        "{msg}"
    );
    assert_eq!(gets(&srv, "/big.gguf"), 0, "nothing downloaded");
    assert_nothing_cached(&dir);

    // Auto with a capped disk and a capped memory: both named.
    let dir = temp_dir("nospace-auto");
    let mut cfg = config(&srv.url("/big.gguf"), &dir);
    cfg.storage = StorageMode::Auto;
    cfg.headroom = 0;
    cfg.max_disk_bytes = Some(1024);
    cfg.max_memory_bytes = Some(2048);
    let err = ModelStore::new(cfg).get().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("disk:")
            && msg.contains("memory:")
            && msg.contains("1024 bytes")
            && msg.contains("2048 bytes"),
        "{msg}"
    );
    assert_nothing_cached(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_memory_and_memory_mode_never_touches_disk() {
    let data = gguf_payload(SIZE, 18);
    let srv = server_with("/mem.gguf", &data, true).await;
    let dir = temp_dir("auto-mem");
    let mut cfg = config(&srv.url("/mem.gguf"), &dir);
    cfg.storage = StorageMode::Auto;
    cfg.max_disk_bytes = Some(1024);
    let store = ModelStore::new(cfg);
    let f = store.get().await.unwrap();
    assert_eq!(f.path, None);
    assert_eq!(f.bytes(), &data[..]);
    assert!(matches!(store.status(), ModelStatus::Ready { ref path, .. } if path == "(memory)"));
    assert_nothing_cached(&dir);

    let dir = temp_dir("mem");
    let mut cfg = config(&srv.url("/mem.gguf"), &dir);
    cfg.storage = StorageMode::Memory;
    let f = ModelStore::new(cfg).get().await.unwrap();
    assert_eq!(f.path, None);
    assert_eq!(f.bytes(), &data[..]);
    assert_nothing_cached(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_without_ranges_get_one_stream() {
    let data = gguf_payload(SIZE, 19);
    let srv = server_with("/nr.gguf", &data, true).await;
    srv.set_accept_ranges(false);
    let dir = temp_dir("noranges");
    let f = ModelStore::new(config(&srv.url("/nr.gguf"), &dir))
        .get()
        .await
        .unwrap();
    assert_eq!(f.bytes(), &data[..]);
    assert_eq!(gets(&srv, "/nr.gguf"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_get_can_be_retried_by_the_next_call() {
    let data = gguf_payload(SIZE, 20);
    let srv = server_with("/again.gguf", &data, true).await;
    srv.rule("HEAD", "/again.gguf", 1, Fault::Status(404));
    let dir = temp_dir("again");
    let store = ModelStore::new(config(&srv.url("/again.gguf"), &dir));
    assert!(matches!(
        store.get().await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(store.status(), ModelStatus::Failed { .. }));
    let f = store.get().await.unwrap();
    assert_eq!(f.bytes(), &data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_visible_while_downloading() {
    let data = gguf_payload(SIZE, 21);
    let srv = server_with("/slow.gguf", &data, true).await;
    // Slow the download down with recoverable errors so the state can be observed.
    srv.rule("GET", "/slow.gguf", 2, Fault::Status(500));
    let dir = temp_dir("progress");
    let mut cfg = config(&srv.url("/slow.gguf"), &dir);
    cfg.retry_base_delay = Duration::from_millis(300);
    cfg.concurrency = 1;
    let store = Arc::new(ModelStore::new(cfg));
    let s = Arc::clone(&store);
    let h = tokio::spawn(async move { s.get().await });
    let mut saw_downloading = false;
    for _ in 0..200 {
        if let ModelStatus::Downloading { bytes_total, .. } = store.status() {
            assert_eq!(bytes_total, SIZE as u64);
            saw_downloading = true;
            let json = serde_json::to_value(store.status()).unwrap();
            assert_eq!(json["state"], "downloading");
            assert!(json.get("bytes_per_sec").is_some());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.await.unwrap().unwrap();
    assert!(saw_downloading);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_drip_hits_the_download_deadline_and_leaves_nothing() {
    let data = gguf_payload(SIZE, 22);
    let srv = server_with("/drip.gguf", &data, true).await;
    // 64 bytes every 20 ms: never idle for the 5 s read timeout, hours to finish.
    srv.rule(
        "GET",
        "/drip.gguf",
        1000,
        Fault::Drip(Duration::from_millis(20)),
    );
    let dir = temp_dir("drip");
    let mut cfg = config(&srv.url("/drip.gguf"), &dir);
    cfg.download_timeout = Duration::from_secs(1);
    let store = ModelStore::new(cfg);
    let t0 = Instant::now();
    // Before the deadline existed this never returned; fail instead of hanging.
    let err = tokio::time::timeout(Duration::from_secs(30), store.get())
        .await
        .expect("the download deadline must end a slow drip")
        .unwrap_err();
    let took = t0.elapsed();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Transfer { .. }), "{err:?}");
    assert!(
        msg.contains("BITNET_DOWNLOAD_TIMEOUT") && msg.contains("/drip.gguf"),
        "{msg}"
    );
    assert!(msg.contains("bytes received"), "{msg}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(matches!(store.status(), ModelStatus::Failed { .. }));
    assert_nothing_cached(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_hits_the_idle_timeout_and_leaves_nothing() {
    let data = gguf_payload(SIZE, 23);
    let srv = server_with("/stall.gguf", &data, true).await;
    srv.rule("GET", "/stall.gguf", 1000, Fault::Stall(1000));
    let dir = temp_dir("stall");
    let mut cfg = config(&srv.url("/stall.gguf"), &dir);
    cfg.read_timeout = Duration::from_millis(300);
    cfg.part_attempts = 2;
    let t0 = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(30), ModelStore::new(cfg).get())
        .await
        .expect("the idle timeout must end a stalled connection")
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            StoreError::Transfer {
                retryable: true,
                attempts: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        msg.contains("no data for 300ms (BITNET_DOWNLOAD_IDLE_TIMEOUT)"),
        "{msg}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_nothing_cached(&dir);
}

/// The requested start of each GET's Range header (`None`: no Range).
fn range_starts(srv: &FaultServer, path: &str) -> Vec<(Option<u64>, u16)> {
    srv.log()
        .into_iter()
        .filter(|l| l.method == "GET" && l.path == path)
        .map(|l| {
            let start = l.range.map(|r| {
                r.trim_start_matches("bytes=")
                    .split('-')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            });
            (start, l.status)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_stream_is_resumed_with_a_range_request() {
    // The server honours Range but does not say so: one stream, and when it is cut, a ranged
    // request for the rest (206), not a new download.
    let data = gguf_payload(SIZE, 24);
    let srv = server_with("/resume.gguf", &data, false).await;
    srv.set_advertise_ranges(false);
    srv.rule("GET", "/resume.gguf", 1, Fault::CutShort(100_000));
    let dir = temp_dir("resume");
    let mut cfg = config(&srv.url("/resume.gguf"), &dir);
    cfg.sha256 = Some(sha256_hex(&data));
    let f = ModelStore::new(cfg).get().await.unwrap();
    assert_bytes(f.bytes(), &data, "model bytes");
    assert_bytes(
        &std::fs::read(f.path.as_ref().unwrap()).unwrap(),
        &data,
        "model bytes",
    );
    assert_eq!(
        range_starts(&srv, "/resume.gguf"),
        vec![(None, 200), (Some(100_000), 206)],
        "{:?}",
        srv.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_ranges_starts_the_stream_over_cleanly() {
    // No Range support at all: the resumed request is answered 200 with the whole object,
    // which is then read from byte 0 (not appended after the bytes already received).
    let data = gguf_payload(SIZE, 25);
    let srv = server_with("/norange-cut.gguf", &data, false).await;
    srv.set_accept_ranges(false);
    srv.rule("GET", "/norange-cut.gguf", 1, Fault::CutShort(100_000));
    let dir = temp_dir("norange-cut");
    let mut cfg = config(&srv.url("/norange-cut.gguf"), &dir);
    cfg.sha256 = Some(sha256_hex(&data));
    let store = ModelStore::new(cfg);
    let f = store.get().await.unwrap();
    assert_bytes(f.bytes(), &data, "model bytes");
    assert_eq!(
        range_starts(&srv, "/norange-cut.gguf"),
        vec![(None, 200), (Some(100_000), 200)],
        "{:?}",
        srv.log()
    );
    assert!(matches!(store.status(), ModelStatus::Ready { size, .. } if size == SIZE as u64));
    assert_eq!(listing(&dir).len(), 2, "{:?}", listing(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_is_part_of_the_cache_key() {
    // As `hf://org/repo/file?revision=A` and `?revision=B` are: one path, two objects.
    let a = gguf_payload(SIZE, 26);
    let b = gguf_payload(SIZE, 27);
    let srv = server_with("/rev.gguf", &a, false).await;
    let dir = temp_dir("query-key");
    let url = srv.url("/rev.gguf");
    let fa = ModelStore::new(config(&format!("{url}?revision=A"), &dir))
        .get()
        .await
        .unwrap();
    assert_bytes(fa.bytes(), &a, "revision A");

    srv.put("/rev.gguf", b.clone(), None);
    let fb = ModelStore::new(config(&format!("{url}?revision=B"), &dir))
        .get()
        .await
        .unwrap();
    assert_bytes(
        fb.bytes(),
        &b,
        "revision B must not be served revision A's file",
    );
    assert_ne!(fa.path, fb.path);

    // Revision A is still cached; a credential parameter (a re-signed URL) keeps its entry.
    srv.clear_log();
    let fa2 = ModelStore::new(config(&format!("{url}?sig=ROTATED&revision=A"), &dir))
        .get()
        .await
        .unwrap();
    assert_bytes(fa2.bytes(), &a, "revision A");
    assert_eq!(fa2.path, fa.path);
    assert_eq!(srv.requests(), 0, "{:?}", srv.log());
    assert_eq!(listing(&dir).len(), 4, "{:?}", listing(&dir));
}
