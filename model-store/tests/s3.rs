//! S3 source against moto (`source .ci/services.sh` starts it and sets BITNET_TEST_S3_ENDPOINT).

mod common;

use aws_sdk_s3::primitives::ByteStream;
use common::*;
use model_store::{ModelStatus, ModelStore, StorageMode, StoreConfig, StoreError};
use std::time::{Duration, Instant};

const SIZE: usize = 4 * 1024 * 1024 + 777;

async fn setup(bucket: &str) -> Option<(String, aws_sdk_s3::Client)> {
    let ep = service_endpoint("BITNET_TEST_S3_ENDPOINT")?;
    let client = model_store::s3_client(Some(&ep), &StoreConfig::new("s3://x/y")).await;
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("create bucket in moto");
    Some((ep, client))
}

async fn put(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    data: &[u8],
    sha_meta: Option<&str>,
) {
    let mut req = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data.to_vec()));
    if let Some(s) = sha_meta {
        req = req.metadata("sha256", s);
    }
    req.send().await.expect("put object in moto");
}

fn config(uri: &str, ep: &str, dir: &std::path::Path) -> StoreConfig {
    let mut cfg = StoreConfig::new(uri);
    cfg.s3_endpoint = Some(ep.to_string());
    cfg.cache_dir = dir.to_path_buf();
    cfg.part_size = 512 * 1024;
    cfg.concurrency = 4;
    cfg.storage = StorageMode::Disk;
    cfg.retry_base_delay = Duration::from_millis(10);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_download_with_metadata_sha256_then_warm_start_offline() {
    let Some((ep, client)) = setup("models-a").await else {
        return;
    };
    let data = gguf_payload(SIZE, 31);
    put(
        &client,
        "models-a",
        "bitnet/model.gguf",
        &data,
        Some(&sha256_hex(&data)),
    )
    .await;
    let dir = temp_dir("s3");
    let store = ModelStore::new(config("s3://models-a/bitnet/model.gguf", &ep, &dir));
    let f = store.get().await.unwrap();
    assert_eq!(f.bytes(), &data[..]);
    assert_eq!(f.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert!(
        matches!(store.status(), ModelStatus::Ready { ref source, .. } if source == "s3://models-a/bitnet/model.gguf")
    );

    // Warm start in a "new process" whose endpoint leads nowhere: no network needed.
    let cfg = config(
        "s3://models-a/bitnet/model.gguf",
        "http://127.0.0.1:9",
        &dir,
    );
    let t0 = Instant::now();
    let f2 = ModelStore::new(cfg).get().await.unwrap();
    eprintln!("s3 warm path: {:?}", t0.elapsed());
    assert_eq!(f2.path, f.path);
    assert_eq!(f2.bytes(), &data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_sidecar_object_and_mismatch() {
    let Some((ep, client)) = setup("models-b").await else {
        return;
    };
    let data = gguf_payload(SIZE, 32);
    put(&client, "models-b", "m.gguf", &data, None).await;
    put(
        &client,
        "models-b",
        "m.gguf.sha256",
        format!("{}  m.gguf\n", sha256_hex(&data)).as_bytes(),
        None,
    )
    .await;
    let dir = temp_dir("s3-side");
    let f = ModelStore::new(config("s3://models-b/m.gguf", &ep, &dir))
        .get()
        .await
        .unwrap();
    assert_eq!(f.sha256.as_deref(), Some(sha256_hex(&data).as_str()));

    // Metadata that disagrees with the bytes: retried once, then named.
    put(
        &client,
        "models-b",
        "bad.gguf",
        &data,
        Some(&"cd".repeat(32)),
    )
    .await;
    let dir = temp_dir("s3-bad");
    let err = ModelStore::new(config("s3://models-b/bad.gguf", &ep, &dir))
        .get()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert!(
        msg.contains(&"cd".repeat(32))
            && msg.contains(&sha256_hex(&data))
            && msg.contains("object metadata"),
        "{msg}"
    );
    assert_nothing_cached(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_object_and_bucket() {
    let Some((ep, _client)) = setup("models-c").await else {
        return;
    };
    let dir = temp_dir("s3-404");
    let err = ModelStore::new(config("s3://models-c/nope.gguf", &ep, &dir))
        .get()
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("s3://models-c/nope.gguf"), "{err}");
    let err = ModelStore::new(config("s3://no-such-bucket-x/m.gguf", &ep, &dir))
        .get()
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_nothing_cached(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_if_match_pins_the_version() {
    // A part request with a stale ETag must fail as "changed", not stitch two versions.
    let Some((ep, client)) = setup("models-d").await else {
        return;
    };
    let v1 = gguf_payload(SIZE, 33);
    put(&client, "models-d", "m.gguf", &v1, None).await;
    let stale = client
        .head_object()
        .bucket("models-d")
        .key("m.gguf")
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_string();
    put(&client, "models-d", "m.gguf", &gguf_payload(SIZE, 34), None).await;
    let r = client
        .get_object()
        .bucket("models-d")
        .key("m.gguf")
        .range("bytes=0-99")
        .if_match(&stale)
        .send()
        .await;
    let status = r
        .err()
        .and_then(|e| e.raw_response().map(|r| r.status().as_u16()));
    assert_eq!(status, Some(412), "moto honours If-Match");

    // And the store, from scratch, gets the current version whole.
    let dir = temp_dir("s3-ifmatch");
    let f = ModelStore::new(config("s3://models-d/m.gguf", &ep, &dir))
        .get()
        .await
        .unwrap();
    assert_eq!(f.bytes(), &gguf_payload(SIZE, 34)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_into_memory() {
    let Some((ep, client)) = setup("models-e").await else {
        return;
    };
    let data = gguf_payload(SIZE, 35);
    put(&client, "models-e", "m.gguf", &data, None).await;
    let dir = temp_dir("s3-mem");
    let mut cfg = config("s3://models-e/m.gguf", &ep, &dir);
    cfg.storage = StorageMode::Memory;
    let f = ModelStore::new(cfg).get().await.unwrap();
    assert_eq!(f.path, None);
    assert_eq!(f.bytes(), &data[..]);
    assert_nothing_cached(&dir);
}
