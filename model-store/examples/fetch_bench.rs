//! Parallel vs single-stream download of the same object from the same S3 server.
//!
//!     source .ci/services.sh
//!     cargo run -p model-store --example fetch_bench --profile test -- [SIZE_MB] [PART_MiB] [CONCURRENCY]
//!
//! Uploads a GGUF-looking object of SIZE_MB (default 256) to the server at
//! BITNET_TEST_S3_ENDPOINT (moto), then downloads it into memory three times each way through
//! the model store (sha256 and header checks included) and prints the best rate of each.

use aws_sdk_s3::primitives::ByteStream;
use model_store::{ModelStore, StorageMode, StoreConfig};
use std::time::Instant;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size_mb: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(256);
    let part_mib: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let concurrency: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let ep = std::env::var("BITNET_TEST_S3_ENDPOINT").map_err(|_| "BITNET_TEST_S3_ENDPOINT is not set: run `source .ci/services.sh` first")?;

    let size = size_mb * 1_000_000;
    let mut data = vec![0u8; size];
    data[..4].copy_from_slice(b"GGUF");
    data[4..8].copy_from_slice(&3u32.to_le_bytes());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data[24..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let client = model_store::s3_client(Some(&ep), &StoreConfig::new("s3://bench/x")).await;
    let _ = client.create_bucket().bucket("bench").send().await;
    let t0 = Instant::now();
    client.put_object().bucket("bench").key("bench.gguf").body(ByteStream::from(data)).send().await?;
    eprintln!("uploaded {size_mb} MB in {:.1} s", t0.elapsed().as_secs_f64());

    let run = |concurrency: usize, part: u64| {
        let ep = ep.clone();
        async move {
            let mut cfg = StoreConfig::new("s3://bench/bench.gguf");
            cfg.s3_endpoint = Some(ep);
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
    let mut single = 0f64;
    let mut parallel = 0f64;
    for round in 1..=3 {
        let s = run(1, u64::MAX / 4).await;
        let p = run(concurrency, part_mib << 20).await;
        println!("round {round}: single-stream {s:.1} MB/s, parallel ({concurrency} x {part_mib} MiB) {p:.1} MB/s");
        single = single.max(s);
        parallel = parallel.max(p);
    }
    println!("best: single-stream {single:.1} MB/s, parallel {parallel:.1} MB/s, speed-up {:.2}x", parallel / single);
    Ok(())
}
