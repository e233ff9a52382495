//! Parallel vs single-stream download of the same object from the same server, through the
//! model store (into memory; sha256 and header checks included).
//!
//!     source .ci/services.sh
//!     cargo run -p model-store --example fetch_bench --profile test -- s3 [SIZE_MB] [PART_MiB] [CONCURRENCY]
//!     cargo run -p model-store --example fetch_bench --profile test -- throttled [SIZE_MB] [PART_MiB] [CONCURRENCY] [MB_PER_S_PER_CONNECTION]
//!
//! `s3` uploads a GGUF-looking object to the moto server at BITNET_TEST_S3_ENDPOINT.
//! `throttled` serves it from an in-process Range server that caps each connection (default
//! 60 MB/s, the order of one S3 stream into a function), which is what parallel parts are for.
//! Each way runs three times; the best rate of each is printed.

#[path = "../tests/common/mod.rs"]
mod common;

use aws_sdk_s3::primitives::ByteStream;
use model_store::{ModelStore, StorageMode, StoreConfig};
use std::time::Instant;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_else(|| "s3".into());
    let size_mb: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let part_mib: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let concurrency: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let cap_mb: u64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(60);

    let size = size_mb * 1_000_000;
    let data = common::gguf_payload(size, 99);
    let mut _server = None;
    let (uri, endpoint) = match mode.as_str() {
        "s3" => {
            let ep = std::env::var("BITNET_TEST_S3_ENDPOINT").map_err(
                |_| "BITNET_TEST_S3_ENDPOINT is not set: run `source .ci/services.sh` first",
            )?;
            let client = model_store::s3_client(Some(&ep), &StoreConfig::new("s3://bench/x")).await;
            let _ = client.create_bucket().bucket("bench").send().await;
            let t0 = Instant::now();
            client
                .put_object()
                .bucket("bench")
                .key("bench.gguf")
                .body(ByteStream::from(data))
                .send()
                .await?;
            eprintln!(
                "uploaded {size_mb} MB to moto in {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            ("s3://bench/bench.gguf".to_string(), Some(ep))
        }
        "throttled" => {
            let srv = common::FaultServer::start().await;
            srv.put("/bench.gguf", data, None);
            srv.set_rate_limit(cap_mb * 1_000_000);
            eprintln!("serving {size_mb} MB at most {cap_mb} MB/s per connection");
            let uri = srv.url("/bench.gguf");
            _server = Some(srv);
            (uri, None)
        }
        other => return Err(format!("unknown mode {other:?} (s3 or throttled)").into()),
    };

    let run = |concurrency: usize, part: u64| {
        let (uri, endpoint) = (uri.clone(), endpoint.clone());
        async move {
            let mut cfg = StoreConfig::new(uri);
            cfg.s3_endpoint = endpoint;
            cfg.storage = StorageMode::Memory;
            cfg.concurrency = concurrency;
            cfg.part_size = part;
            let store = ModelStore::new(cfg);
            let t0 = Instant::now();
            let f = store.get().await.expect("download");
            let secs = t0.elapsed().as_secs_f64();
            assert_eq!(f.size as usize, size);
            f.size as f64 / 1e6 / secs
        }
    };
    let (mut single, mut parallel) = (0f64, 0f64);
    for round in 1..=3 {
        let s = run(1, u64::MAX / 4).await;
        let p = run(concurrency, part_mib << 20).await;
        println!(
            "{mode} round {round}: single-stream {s:.1} MB/s, parallel ({concurrency} x {part_mib} MiB) {p:.1} MB/s"
        );
        single = single.max(s);
        parallel = parallel.max(p);
    }
    println!(
        "{mode} best: single-stream {single:.1} MB/s, parallel {parallel:.1} MB/s, speed-up {:.2}x",
        parallel / single
    );
    Ok(())
}
