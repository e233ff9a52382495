//! `bitnet fetch URI`: download a model into the cache (verified, as the functions do) and
//! print its local path as the last line of stdout; a progress bar on a terminal. With `--bench`, also time a single-stream
//! download of the same object into memory and print both rates.

use anyhow::{Context as _, bail};
use clap::Args;
use model_store::{ModelStatus, ModelStore, StorageMode, StoreConfig};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct FetchArgs {
    /// Model URI: s3://bucket/key, az://account/container/blob, https://…, hf://org/repo/file,
    /// file:///path or a path.
    pub uri: String,
    /// Expected sha256 (hex); overrides object metadata and `.sha256` sidecars. From the
    /// environment as the servers take it, so that a fetch ahead of a server (a Kubernetes init
    /// container) verifies what the server will.
    #[arg(long, value_name = "HEX", env = "BITNET_MODEL_SHA256")]
    pub sha256: Option<String>,
    /// Cache directory.
    #[arg(long, value_name = "DIR", env = "BITNET_CACHE_DIR", default_value = model_store::DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,
    /// Where the bytes go: disk, memory or auto.
    #[arg(long, value_name = "MODE", env = "BITNET_MODEL_STORAGE", default_value = "auto", value_parser = parse_storage)]
    pub storage: StorageMode,
    /// Bytes per ranged GET (e.g. 16MiB).
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub part_size: u64,
    /// Ranged GETs in flight.
    #[arg(long, value_name = "N", default_value_t = model_store::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Endpoint of an S3-compatible server (otherwise AWS_ENDPOINT_URL(_S3) or AWS itself).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Time the parallel download against a single-stream download of the same object (both
    /// into memory, nothing cached) and print the rates.
    #[arg(long)]
    pub bench: bool,
}

fn parse_storage(s: &str) -> Result<StorageMode, String> {
    s.parse()
}

fn parse_size(s: &str) -> Result<u64, String> {
    model_store::parse_bytes(s)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("not a byte count: {s:?}"))
}

impl FetchArgs {
    fn config(&self) -> StoreConfig {
        let mut cfg = StoreConfig::new(self.uri.clone());
        cfg.sha256 = self.sha256.clone();
        cfg.cache_dir = self.cache_dir.clone();
        cfg.storage = self.storage;
        cfg.part_size = self.part_size;
        cfg.concurrency = self.concurrency.max(1);
        cfg.s3_endpoint = self.s3_endpoint.clone();
        cfg
    }
}

/// Runs the subcommand. Errors come back as one line (the caller prints them and exits 1).
pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        if args.bench {
            return bench(&args).await;
        }
        let store = ModelStore::new(args.config());
        let t0 = Instant::now();
        let file = crate::progress::fetch(&store)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "{} bytes in {secs:.3} s ({:.1} MB/s), sha256 {}",
            file.size,
            file.size as f64 / 1e6 / secs.max(1e-9),
            file.sha256.as_deref().unwrap_or("(not computed)")
        );
        match &file.path {
            Some(p) => println!("{}", p.display()),
            None => bail!(
                "the model is held in memory (--storage memory or no disk space), so it has no path"
            ),
        }
        Ok(())
    })
}

async fn bench(args: &FetchArgs) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for (label, concurrency, part) in [
        ("single-stream", 1usize, u64::MAX / 2),
        ("parallel", args.concurrency.max(1), args.part_size),
    ] {
        let mut cfg = args.config();
        cfg.storage = StorageMode::Memory;
        cfg.concurrency = concurrency;
        cfg.part_size = part;
        let store = ModelStore::new(cfg);
        let t0 = Instant::now();
        let file = store
            .get()
            .await
            .map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
        let secs = t0.elapsed().as_secs_f64();
        let mbps = file.size as f64 / 1e6 / secs;
        println!(
            "{label}: {} bytes in {secs:.3} s = {mbps:.1} MB/s (concurrency {concurrency})",
            file.size
        );
        if let ModelStatus::Ready { sha256, .. } = store.status() {
            eprintln!("{label}: sha256 {}", sha256.unwrap_or_default());
        }
        results.push(mbps);
    }
    println!("speed-up: {:.2}x", results[1] / results[0]);
    Ok(())
}

/// A model by URI through the model store (`BITNET_MODEL` and the other store variables when
/// `uri` is `None`), its download on a progress bar, then loaded. Returns the model and its
/// source (without secrets).
pub fn load_model(
    rt: &tokio::runtime::Runtime,
    uri: Option<&str>,
    opts: &bitnet_engine::LoadOptions,
) -> anyhow::Result<(bitnet_engine::Model, String)> {
    let mut cfg = StoreConfig::from_env();
    if let Some(u) = uri {
        cfg.uri = u.to_string();
    }
    let store = ModelStore::new(cfg);
    let file = rt
        .block_on(crate::progress::fetch(&store))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let spinner = crate::progress::spinner("loading the model");
    let model = bitnet_engine::Model::from_mmap(file.map.clone(), opts)
        .with_context(|| format!("loading {}", file.source))?;
    spinner.finish_and_clear();
    Ok((model, file.source.clone()))
}
