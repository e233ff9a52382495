//! Local paths and file:// URIs: mapped in place, never copied.

mod common;

use common::*;
use model_store::{ModelStore, StoreConfig, StoreError};

#[tokio::test]
async fn local_files_are_mapped_in_place() {
    let dir = temp_dir("local");
    let data = gguf_payload(100_000, 1);
    let path = dir.join("m.gguf");
    std::fs::write(&path, &data).unwrap();
    let cache = temp_dir("local-cache");

    for uri in [
        path.display().to_string(),
        format!("file://{}", path.display()),
    ] {
        let mut cfg = StoreConfig::new(uri);
        cfg.cache_dir = cache.clone();
        let f = ModelStore::new(cfg).get().await.unwrap();
        assert_eq!(f.path.as_deref(), Some(path.as_path()));
        assert_eq!(f.bytes(), &data[..]);
        assert_eq!(f.sha256, None, "not hashed unless asked");
    }
    assert_nothing_cached(&cache);

    // With an expected sha256 it is checked.
    let mut cfg = StoreConfig::new(path.display().to_string());
    cfg.sha256 = Some(sha256_hex(&data).to_uppercase());
    let f = ModelStore::new(cfg).get().await.unwrap();
    assert_eq!(f.sha256, Some(sha256_hex(&data)));
    let mut cfg = StoreConfig::new(path.display().to_string());
    cfg.sha256 = Some("11".repeat(32));
    let err = ModelStore::new(cfg).get().await.unwrap_err();
    assert!(
        matches!(err, StoreError::ChecksumMismatch { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn local_errors() {
    let dir = temp_dir("local-err");
    let err = ModelStore::new(StoreConfig::new(
        dir.join("nope.gguf").display().to_string(),
    ))
    .get()
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    std::fs::write(
        dir.join("bad.gguf"),
        b"GGUF\x01\0\0\0 this is version one, padded......",
    )
    .unwrap();
    let err = ModelStore::new(StoreConfig::new(dir.join("bad.gguf").display().to_string()))
        .get()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("version 1"), "{err}");
    let err = ModelStore::new(StoreConfig::new("gopher://x/y"))
        .get()
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidUri { .. }), "{err:?}");
    let mut cfg = StoreConfig::new(dir.join("bad.gguf").display().to_string());
    cfg.sha256 = Some("xyz".into());
    assert!(
        ModelStore::new(cfg)
            .get()
            .await
            .unwrap_err()
            .to_string()
            .contains("64 hex")
    );
}

#[test]
fn from_env_defaults_to_the_bitnet_model() {
    // Only reads; the defaults apply when the variables are unset in the test environment.
    if std::env::var("BITNET_MODEL").is_err() {
        let cfg = StoreConfig::from_env();
        assert_eq!(cfg.uri, model_store::DEFAULT_MODEL_URI);
        if std::env::var("BITNET_CACHE_DIR").is_err() {
            assert_eq!(
                cfg.cache_dir,
                std::path::PathBuf::from("/tmp/bitnet-models")
            );
        }
        assert_eq!(cfg.part_size, 16 << 20);
        assert_eq!(cfg.concurrency, 8);
        if std::env::var("BITNET_DOWNLOAD_TIMEOUT").is_err() {
            assert_eq!(cfg.download_timeout, model_store::DEFAULT_DOWNLOAD_TIMEOUT);
            assert_eq!(cfg.download_timeout, std::time::Duration::from_secs(1800));
        }
        if std::env::var("BITNET_DOWNLOAD_IDLE_TIMEOUT").is_err() {
            assert_eq!(cfg.read_timeout, std::time::Duration::from_secs(30));
        }
    }
}
