//! Configuration of a model store, from code or from the environment.

use std::path::PathBuf;
use std::time::Duration;

/// The model served when `BITNET_MODEL` is not set.
pub const DEFAULT_MODEL_URI: &str = "hf://microsoft/BitNet-b1.58-2B-4T-gguf/ggml-model-i2_s.gguf";
/// The cache directory used when `BITNET_CACHE_DIR` is not set.
pub const DEFAULT_CACHE_DIR: &str = "/tmp/bitnet-models";
/// Default size of one ranged GET.
pub const DEFAULT_PART_SIZE: u64 = 16 * 1024 * 1024;
/// Default number of ranged GETs in flight.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Space kept free beyond the model's size, on disk or in memory.
pub const DEFAULT_HEADROOM: u64 = 64 * 1024 * 1024;
/// Longest a model's download may take (`BITNET_DOWNLOAD_TIMEOUT`): 30 minutes, i.e. a
/// 1.2 GB model must average at least 0.7 MB/s. Also the longest wait for another process's
/// download of the same cache entry.
pub const DEFAULT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Where downloaded bytes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageMode {
    /// A file in the cache directory (Lambda `/tmp`, a container's disk): survives a process
    /// restart in the same sandbox.
    Disk,
    /// An anonymous memory mapping (Azure Flex Consumption has only 0.8 GB of temporary disk):
    /// lives as long as the process.
    Memory,
    /// Disk when the cache directory has room for the model plus headroom, else memory when
    /// the memory limit allows, else an error.
    #[default]
    Auto,
}

impl std::str::FromStr for StorageMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disk" => Ok(StorageMode::Disk),
            "memory" | "mem" => Ok(StorageMode::Memory),
            "auto" | "" => Ok(StorageMode::Auto),
            other => Err(format!(
                "unknown storage mode {other:?} (expected disk, memory or auto)"
            )),
        }
    }
}

impl std::fmt::Display for StorageMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageMode::Disk => "disk",
            StorageMode::Memory => "memory",
            StorageMode::Auto => "auto",
        })
    }
}

/// When a downloaded model is made durable on disk. A cached copy becomes a cache hit for
/// later starts only through its sidecar, which is written after the fsync (where there is
/// one): a crash before it leaves an entry that the next start downloads again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheFsync {
    /// Never (`0`, `off`): the disk goes with the instance (Lambda's `/tmp`, a Functions
    /// instance's temporary disk, a container's writable layer). Saves a second per GB of
    /// writeback on the first token.
    Off,
    /// fsync, then serve (`1`, `on`): `bitnet fetch`, which exits once the model is cached.
    BeforeServing,
    /// Serve at once and fsync on a background thread, the sidecar last (`background`):
    /// `bitnet serve`, whose cache may be a persistent volume.
    InBackground,
}

impl std::str::FromStr for CacheFsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0" | "off" | "false" | "no" => Ok(Self::Off),
            "1" | "on" | "true" | "yes" => Ok(Self::BeforeServing),
            "background" => Ok(Self::InBackground),
            other => Err(format!("{other:?} is not 0, 1 or background")),
        }
    }
}

/// Everything a [`crate::ModelStore`] needs to know.
///
/// `Debug` shows no secret: the URI is redacted (its query, where a SAS or a signed URL's
/// signature lives, and user-info are dropped) and the connection string and token are shown
/// as `<redacted>`.
#[derive(Clone)]
pub struct StoreConfig {
    /// `s3://bucket/key`, `az://account/container/blob`, `https://…`, `hf://org/repo/file`,
    /// `file:///path` or a plain path.
    pub uri: String,
    /// Expected sha256 (hex). Overrides object metadata and `<name>.sha256` sidecars.
    pub sha256: Option<String>,
    /// Where verified files and their sidecar JSON are kept.
    pub cache_dir: PathBuf,
    /// Disk, memory, or decide from free space.
    pub storage: StorageMode,
    /// Bytes per ranged GET.
    pub part_size: u64,
    /// Ranged GETs in flight at once.
    pub concurrency: usize,
    /// Space to keep free beyond the model's size (disk or memory).
    pub headroom: u64,
    /// Upper bound on the disk space the cache may use (`BITNET_CACHE_MAX_BYTES`); the real
    /// free space is used when it is smaller.
    pub max_disk_bytes: Option<u64>,
    /// Upper bound on the memory a memory-held model may use (`BITNET_MODEL_MAX_MEMORY`); the
    /// cgroup limit / MemAvailable is used when it is smaller.
    pub max_memory_bytes: Option<u64>,
    /// Attempts per part for transient errors (first try included).
    pub part_attempts: u32,
    /// First back-off delay; doubled per retry, with jitter, capped at 5 s.
    pub retry_base_delay: Duration,
    /// No byte for this long on a connection counts as a transient error (the part is
    /// retried); also the limit for a response's headers, after the connect timeout
    /// (`BITNET_DOWNLOAD_IDLE_TIMEOUT`).
    pub read_timeout: Duration,
    /// Longest the download of the model may take, from the HEAD to the last byte, retries
    /// and the second attempt after a failed verification included; also the longest wait for
    /// another process that holds the cache entry's lock (`BITNET_DOWNLOAD_TIMEOUT`). A slow
    /// drip that never trips `read_timeout` ends here.
    pub download_timeout: Duration,
    /// Connect timeout for HTTP clients.
    pub connect_timeout: Duration,
    /// When a downloaded file is made durable (`BITNET_CACHE_FSYNC`); see [`CacheFsync`].
    pub fsync: CacheFsync,
    /// HEAD the source on a warm start and re-download when its ETag or size changed
    /// (`BITNET_MODEL_REVALIDATE=1`). Off by default: a warm start makes no request.
    pub revalidate: bool,
    /// Endpoint for S3-compatible servers; `None` lets the AWS config chain decide
    /// (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, profile). Path-style addressing is used
    /// whenever an endpoint is set.
    pub s3_endpoint: Option<String>,
    /// Azure Storage connection string (`AZURE_STORAGE_CONNECTION_STRING`).
    pub azure_connection_string: Option<String>,
    /// Hugging Face token (`HF_TOKEN`), sent only to huggingface.co.
    pub hf_token: Option<String>,
}

impl StoreConfig {
    /// Defaults for everything but the URI. Environment variables for credentials
    /// (`AZURE_STORAGE_CONNECTION_STRING`, `HF_TOKEN`) are picked up here too; the AWS chain
    /// reads its own.
    pub fn new(uri: impl Into<String>) -> Self {
        StoreConfig {
            uri: uri.into(),
            sha256: None,
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            storage: StorageMode::Auto,
            part_size: DEFAULT_PART_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            headroom: DEFAULT_HEADROOM,
            max_disk_bytes: None,
            max_memory_bytes: None,
            part_attempts: 5,
            retry_base_delay: Duration::from_millis(200),
            read_timeout: Duration::from_secs(30),
            download_timeout: DEFAULT_DOWNLOAD_TIMEOUT,
            connect_timeout: Duration::from_secs(10),
            fsync: CacheFsync::BeforeServing,
            revalidate: false,
            s3_endpoint: None,
            azure_connection_string: env_nonempty("AZURE_STORAGE_CONNECTION_STRING"),
            hf_token: env_nonempty("HF_TOKEN"),
        }
    }

    /// Reads `BITNET_MODEL` (default [`DEFAULT_MODEL_URI`]), `BITNET_MODEL_SHA256`,
    /// `BITNET_CACHE_DIR`, `BITNET_MODEL_STORAGE`, `BITNET_DOWNLOAD_PART_SIZE`,
    /// `BITNET_DOWNLOAD_CONCURRENCY`, `BITNET_CACHE_MAX_BYTES`, `BITNET_MODEL_MAX_MEMORY`,
    /// `BITNET_MODEL_REVALIDATE`, `BITNET_CACHE_FSYNC`, `BITNET_DOWNLOAD_TIMEOUT` and
    /// `BITNET_DOWNLOAD_IDLE_TIMEOUT` (durations: `90`, `90s`, `500ms`, `30m`, `1h`; zero is
    /// refused). Unparsable values fall back to the default with a warning.
    pub fn from_env() -> Self {
        Self::from_env_with_fsync_default(CacheFsync::BeforeServing)
    }

    /// [`from_env`](Self::from_env) with the default of `BITNET_CACHE_FSYNC` given by the
    /// caller (a front door chooses it for its platform's disk).
    pub fn from_env_with_fsync_default(fsync: CacheFsync) -> Self {
        let mut cfg = StoreConfig::new(
            env_nonempty("BITNET_MODEL").unwrap_or_else(|| DEFAULT_MODEL_URI.into()),
        );
        cfg.sha256 = env_nonempty("BITNET_MODEL_SHA256");
        if let Some(dir) = env_nonempty("BITNET_CACHE_DIR") {
            cfg.cache_dir = PathBuf::from(dir);
        }
        if let Some(v) = env_nonempty("BITNET_MODEL_STORAGE") {
            match v.parse() {
                Ok(mode) => cfg.storage = mode,
                Err(e) => tracing::warn!(value = %v, "BITNET_MODEL_STORAGE: {e}; using auto"),
            }
        }
        if let Some(n) = env_parse::<u64>("BITNET_DOWNLOAD_PART_SIZE", parse_bytes) {
            cfg.part_size = n.max(1);
        }
        if let Some(n) = env_parse::<usize>("BITNET_DOWNLOAD_CONCURRENCY", |s| s.parse().ok()) {
            cfg.concurrency = n.max(1);
        }
        cfg.max_disk_bytes = env_parse("BITNET_CACHE_MAX_BYTES", parse_bytes);
        cfg.max_memory_bytes = env_parse("BITNET_MODEL_MAX_MEMORY", parse_bytes);
        cfg.revalidate = matches!(
            env_nonempty("BITNET_MODEL_REVALIDATE").as_deref(),
            Some("1" | "true" | "yes")
        );
        cfg.fsync = match env_nonempty("BITNET_CACHE_FSYNC") {
            None => fsync,
            Some(v) => v.parse().unwrap_or_else(|e| {
                tracing::warn!(value = %v, "BITNET_CACHE_FSYNC: {e}; using {fsync:?}");
                fsync
            }),
        };
        if let Some(d) = env_parse("BITNET_DOWNLOAD_TIMEOUT", parse_duration) {
            cfg.download_timeout = d;
        }
        if let Some(d) = env_parse("BITNET_DOWNLOAD_IDLE_TIMEOUT", parse_duration) {
            cfg.read_timeout = d;
        }
        cfg
    }
}

/// Shown instead of a secret.
struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field is listed (destructured) so that a new one cannot be forgotten here.
        let StoreConfig {
            uri,
            sha256,
            cache_dir,
            storage,
            part_size,
            concurrency,
            headroom,
            max_disk_bytes,
            max_memory_bytes,
            part_attempts,
            retry_base_delay,
            read_timeout,
            download_timeout,
            connect_timeout,
            fsync,
            revalidate,
            s3_endpoint,
            azure_connection_string,
            hf_token,
        } = self;
        f.debug_struct("StoreConfig")
            .field("uri", &crate::uri::redact(uri))
            .field("sha256", sha256)
            .field("cache_dir", cache_dir)
            .field("storage", storage)
            .field("part_size", part_size)
            .field("concurrency", concurrency)
            .field("headroom", headroom)
            .field("max_disk_bytes", max_disk_bytes)
            .field("max_memory_bytes", max_memory_bytes)
            .field("part_attempts", part_attempts)
            .field("retry_base_delay", retry_base_delay)
            .field("read_timeout", read_timeout)
            .field("download_timeout", download_timeout)
            .field("connect_timeout", connect_timeout)
            .field("fsync", fsync)
            .field("revalidate", revalidate)
            .field(
                "s3_endpoint",
                &s3_endpoint.as_deref().map(crate::uri::redact),
            )
            .field(
                "azure_connection_string",
                &azure_connection_string.as_ref().map(|_| Redacted),
            )
            .field("hf_token", &hf_token.as_ref().map(|_| Redacted))
            .finish()
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_parse<T>(name: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    let v = env_nonempty(name)?;
    let parsed = parse(v.trim());
    if parsed.is_none() {
        tracing::warn!(value = %v, "{name}: cannot parse; using the default");
    }
    parsed
}

/// Parses a byte count: `16777216`, `16MiB`, `16M`, `1GiB`, `512k`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parses a positive duration: `90` (seconds), `90s`, `500ms`, `30m`, `1h`.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => Duration::from_millis(n),
        "" | "s" | "sec" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_fsync_values() {
        for (v, want) in [
            ("0", CacheFsync::Off),
            ("off", CacheFsync::Off),
            ("1", CacheFsync::BeforeServing),
            ("ON", CacheFsync::BeforeServing),
            (" background ", CacheFsync::InBackground),
        ] {
            assert_eq!(v.parse::<CacheFsync>(), Ok(want), "{v}");
        }
        assert!(
            "sometimes"
                .parse::<CacheFsync>()
                .unwrap_err()
                .contains("sometimes")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), None, "zero would fail every download");
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5d"), None);
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut cfg = StoreConfig::new(
            "https://acct.blob.core.windows.net/c/m.gguf?sv=2022&sig=SAS-SIGNATURE-SECRET",
        );
        cfg.azure_connection_string = Some(
            "AccountName=acct;AccountKey=ACCOUNT-KEY-SECRET;SharedAccessSignature=sig=CONN-SAS-SECRET"
                .into(),
        );
        cfg.hf_token = Some("hf_TOKEN-SECRET".into());
        cfg.s3_endpoint = Some("http://user:ENDPOINT-PASSWORD-SECRET@127.0.0.1:9000".into());
        for shown in [format!("{cfg:?}"), format!("{cfg:#?}")] {
            assert!(!shown.contains("SECRET"), "a secret leaks: {shown}");
            assert!(
                shown.contains("https://acct.blob.core.windows.net/c/m.gguf"),
                "{shown}"
            );
            assert_eq!(shown.matches("<redacted>").count(), 2, "{shown}");
            assert!(shown.contains("http://127.0.0.1:9000"), "{shown}");
            // Not secret, still useful.
            assert!(shown.contains("download_timeout"), "{shown}");
        }
        let shown = format!("{cfg:?}");
        assert!(shown.contains("hf_token: Some(<redacted>)"), "{shown}");
        assert!(
            shown.contains("azure_connection_string: Some(<redacted>)"),
            "{shown}"
        );
        cfg.hf_token = None;
        assert!(format!("{cfg:?}").contains("hf_token: None"));
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("16MiB"), Some(16 << 20));
        assert_eq!(parse_bytes("512k"), Some(512 << 10));
        assert_eq!(parse_bytes("1234"), Some(1234));
        assert_eq!(parse_bytes("1x"), None);
    }

    #[test]
    fn storage_modes() {
        assert_eq!("DISK".parse::<StorageMode>().unwrap(), StorageMode::Disk);
        assert_eq!(
            "memory".parse::<StorageMode>().unwrap(),
            StorageMode::Memory
        );
        assert!("tape".parse::<StorageMode>().is_err());
    }
}
