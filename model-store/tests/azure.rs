//! Azure Blob source against Azurite (`source .ci/services.sh` starts it and sets
//! BITNET_TEST_AZURITE_ENDPOINT=http://127.0.0.1:PORT/devstoreaccount1). Authentication with a
//! SAS built from the well-known devstoreaccount1 key, and with a connection string.

mod common;

use common::*;
use model_store::sas::{DEV_ACCOUNT, DEV_KEY, account_sas};
use model_store::{ModelStore, StorageMode, StoreConfig, StoreError};
use std::time::Duration;

const SIZE: usize = 3 * 1024 * 1024 + 4321;

fn admin_sas() -> String {
    account_sas(
        DEV_ACCOUNT,
        DEV_KEY,
        "rwdlac",
        "sco",
        Duration::from_secs(3600),
    )
    .unwrap()
}

async fn put_blob(ep: &str, container: &str, blob: &str, data: &[u8], sha_meta: Option<&str>) {
    let http = reqwest::Client::new();
    let sas = admin_sas();
    let r = http
        .put(format!("{ep}/{container}?restype=container&{sas}"))
        .header("x-ms-version", "2021-08-06")
        .header("content-length", "0")
        .send()
        .await
        .expect("azurite reachable");
    assert!(
        r.status().is_success() || r.status().as_u16() == 409,
        "create container: {}",
        r.status()
    );
    let mut req = http
        .put(format!("{ep}/{container}/{blob}?{sas}"))
        .header("x-ms-version", "2021-08-06")
        .header("x-ms-blob-type", "BlockBlob")
        .body(data.to_vec());
    if let Some(s) = sha_meta {
        req = req.header("x-ms-meta-sha256", s);
    }
    let r = req.send().await.unwrap();
    assert!(
        r.status().is_success(),
        "put blob: {} {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );
}

fn config(uri: &str, dir: &std::path::Path) -> StoreConfig {
    let mut cfg = StoreConfig::new(uri);
    cfg.cache_dir = dir.to_path_buf();
    cfg.part_size = 512 * 1024;
    cfg.concurrency = 4;
    cfg.storage = StorageMode::Disk;
    cfg.retry_base_delay = Duration::from_millis(10);
    cfg.azure_connection_string = None;
    cfg
}

fn blob_url(ep: &str, container: &str, blob: &str, sas: &str) -> String {
    let rest = ep.strip_prefix("http://").unwrap();
    format!("azblob+http://{rest}/{container}/{blob}?{sas}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_with_sas_and_metadata_sha256() {
    let Some(ep) = service_endpoint("BITNET_TEST_AZURITE_ENDPOINT") else {
        return;
    };
    let data = gguf_payload(SIZE, 41);
    put_blob(
        &ep,
        "models",
        "dir/model.gguf",
        &data,
        Some(&sha256_hex(&data)),
    )
    .await;
    let read_sas = account_sas(DEV_ACCOUNT, DEV_KEY, "r", "o", Duration::from_secs(600)).unwrap();
    let dir = temp_dir("az-sas");
    let store = ModelStore::new(config(
        &blob_url(&ep, "models", "dir/model.gguf", &read_sas),
        &dir,
    ));
    let f = store.get().await.unwrap();
    assert_eq!(f.bytes(), &data[..]);
    assert_eq!(f.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert!(
        !f.source.contains("sig="),
        "source is redacted: {}",
        f.source
    );
    let status = serde_json::to_string(&store.status()).unwrap();
    assert!(!status.contains("sig="), "{status}");
    let sidecar =
        std::fs::read_to_string(format!("{}.json", f.path.as_ref().unwrap().display())).unwrap();
    assert!(!sidecar.contains("sig="), "{sidecar}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_with_connection_string_and_sidecar() {
    let Some(ep) = service_endpoint("BITNET_TEST_AZURITE_ENDPOINT") else {
        return;
    };
    let data = gguf_payload(SIZE, 42);
    put_blob(&ep, "models2", "m.gguf", &data, None).await;
    put_blob(
        &ep,
        "models2",
        "m.gguf.sha256",
        sha256_hex(&data).as_bytes(),
        None,
    )
    .await;
    let dir = temp_dir("az-conn");
    let mut cfg = config("az://devstoreaccount1/models2/m.gguf", &dir);
    cfg.azure_connection_string = Some(format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};BlobEndpoint={ep};"
    ));
    let f = ModelStore::new(cfg.clone()).get().await.unwrap();
    assert_eq!(f.bytes(), &data[..]);
    assert_eq!(f.sha256.as_deref(), Some(sha256_hex(&data).as_str()));

    // Memory mode through the same path.
    let dir = temp_dir("az-mem");
    cfg.cache_dir = dir.clone();
    cfg.storage = StorageMode::Memory;
    let f = ModelStore::new(cfg).get().await.unwrap();
    assert_eq!(f.bytes(), &data[..]);
    assert_nothing_cached(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_missing_blob_and_bad_sas() {
    let Some(ep) = service_endpoint("BITNET_TEST_AZURITE_ENDPOINT") else {
        return;
    };
    put_blob(
        &ep,
        "models3",
        "present.gguf",
        &gguf_payload(SIZE, 43),
        None,
    )
    .await;
    let read_sas = account_sas(DEV_ACCOUNT, DEV_KEY, "r", "o", Duration::from_secs(600)).unwrap();
    let dir = temp_dir("az-404");
    let err = ModelStore::new(config(
        &blob_url(&ep, "models3", "absent.gguf", &read_sas),
        &dir,
    ))
    .get()
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("absent.gguf") && !err.to_string().contains("sig="),
        "{err}"
    );

    // A SAS signed with the wrong key: 403, at once, secret-free.
    let bad = account_sas(
        DEV_ACCOUNT,
        "d3Jvbmcta2V5LXdyb25nLWtleQ==",
        "r",
        "o",
        Duration::from_secs(600),
    )
    .unwrap();
    let err = ModelStore::new(config(
        &blob_url(&ep, "models3", "present.gguf", &bad),
        &dir,
    ))
    .get()
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Forbidden { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("present.gguf") && !msg.contains("sig=") && !msg.contains(&bad),
        "{msg}"
    );
    assert_nothing_cached(&dir);
}
