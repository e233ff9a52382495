//! `bitnet serve`: the OpenAI-compatible HTTP API on a local port (also the container's
//! entry point). The model comes through the model store (`--model` / `BITNET_MODEL`: a path,
//! `file://`, `s3://`, `az://`, `https://` or `hf://` URI); the server answers `/health` and
//! `/ready` at once and generation requests once the model is loaded.
//!
//! Binding a non-loopback address needs an API key (`--api-key` / `API_KEY`) unless
//! `--no-auth` or `BITNET_ALLOW_NO_AUTH=1` says that the network in front is trusted.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use anyhow::{Context, bail};

/// Arguments of `bitnet serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model URI or path [env: BITNET_MODEL; default: the official BitNet b1.58 2B4T I2_S file
    /// on Hugging Face, through the model store's cache]
    #[arg(long, value_name = "URI")]
    pub model: Option<String>,
    /// Address to bind [env: BITNET_HOST]
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind [env: PORT]
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Kernel threads [env: BITNET_THREADS; default: all cores]
    #[arg(long)]
    pub threads: Option<usize>,
    /// Bearer token required on every route but /, /health and /ready [env: API_KEY]
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Allow a non-loopback bind without an API key [env: BITNET_ALLOW_NO_AUTH=1]
    #[arg(long)]
    pub no_auth: bool,
    /// Model id shown by /v1/models and accepted in requests [env: BITNET_MODEL_ID;
    /// default: bitnet-b1.58-2b-4t]
    #[arg(long, value_name = "ID")]
    pub model_id: Option<String>,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_flag(name: &str) -> bool {
    env_nonempty(name).is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
}

/// The address to bind. Flags that still have their default value give way to `BITNET_HOST`
/// and `PORT` (container platforms set `PORT`).
fn bind_addr(args: &ServeArgs) -> anyhow::Result<SocketAddr> {
    let host = match env_nonempty("BITNET_HOST") {
        Some(h) if args.host == "127.0.0.1" => h,
        _ => args.host.clone(),
    };
    let port = match env_nonempty("PORT") {
        Some(p) if args.port == 8080 => p
            .trim()
            .parse()
            .with_context(|| format!("PORT={p} is not a port number"))?,
        _ => args.port,
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host.as_str(), port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve --host {host}"))?
        .next()
        .with_context(|| format!("--host {host} resolves to no address"))
}

/// Runs the server until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    bitnet_api::logging::init();
    let addr = bind_addr(&args)?;
    let mut config = bitnet_api::ApiConfig::from_env();
    if let Some(key) = args.api_key.clone().filter(|k| !k.is_empty()) {
        config.api_key = Some(key);
    }
    if let Some(t) = args.threads {
        config.threads = Some(t);
    }
    if let Some(id) = args.model_id.clone() {
        config.model_id = id;
    }
    if config.api_key.is_none()
        && !addr.ip().is_loopback()
        && !(args.no_auth || env_flag("BITNET_ALLOW_NO_AUTH"))
    {
        bail!(
            "refusing to serve on {addr} without an API key: set --api-key or API_KEY, or pass \
             --no-auth (BITNET_ALLOW_NO_AUTH=1) if the network in front of it does the checking"
        );
    }
    if config.api_key.is_none() && !addr.ip().is_loopback() {
        bitnet_api::tracing::warn!(%addr, "serving without authentication on a non-loopback address");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The engine computes on its own threads; the runtime only moves bytes.
        .worker_threads(2)
        .thread_name("bitnet-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let source = bitnet_api::store::StoreSource::from_env_with_uri(args.model.as_deref())
            .map_err(|e| anyhow::anyhow!("model store configuration: {e}"))?;
        let state = bitnet_api::AppState::new(
            config.clone(),
            Arc::new(source),
            bitnet_api::engine_loader(config.load_options()),
        );
        bitnet_api::serve(addr, state)
            .await
            .with_context(|| format!("serving on {addr}"))
    })
}
