//! `bitnet serve`: the OpenAI-compatible HTTP API on a local port (also the container's
//! entry point). The model comes through the model store (`--model` / `BITNET_MODEL`: a path,
//! `file://`, `s3://`, `az://`, `https://` or `hf://` URI); the server answers `/health` and
//! `/ready` at once and generation requests once the model is loaded.
//!
//! Binding a non-loopback address needs an API key (`API_KEY` or `--api-key-file`; never a
//! command-line value, which `ps` would show) unless `--no-auth` or `BITNET_ALLOW_NO_AUTH=1`
//! says that the network in front is trusted. Every other setting comes from the
//! environment through `bitnet_api::ApiConfig` (one table, `docs/security.md` lists its limits).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use anyhow::Context;

/// Arguments of `bitnet serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model URI or path [env: BITNET_MODEL; default: the official BitNet b1.58 2B4T I2_S file
    /// on Hugging Face, through the model store's cache]
    #[arg(long, value_name = "URI")]
    pub model: Option<String>,
    /// An embedding model served beside it for /v1/embeddings (a path or URI, through the
    /// model store) [env: BITNET_EMBEDDING_MODEL; id: BITNET_EMBEDDING_MODEL_ID]
    #[arg(long, value_name = "URI")]
    pub embedding_model: Option<String>,
    /// Address to bind [env: BITNET_HOST]
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind [env: PORT]
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Kernel threads [default: $BITNET_THREADS, else all cores]
    #[arg(long)]
    pub threads: Option<usize>,
    /// File whose content (trimmed) is the bearer token required on every route but /,
    /// /health and /ready [or env: API_KEY]. There is no flag for the key itself: the
    /// command line is visible to every user of the machine.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<std::path::PathBuf>,
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
    use bitnet_api::config::{ApiKey, FrontDoor};
    bitnet_api::logging::init();
    let addr = bind_addr(&args)?;
    let mut config = bitnet_api::ApiConfig::from_env(FrontDoor::Serve);
    if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --api-key-file {}", path.display()))?;
        config.api_key = Some(
            ApiKey::new(text)
                .with_context(|| format!("--api-key-file {} is empty", path.display()))?,
        );
    }
    if let Some(t) = args.threads {
        config.threads = Some(t);
    }
    if let Some(id) = args.model_id.clone() {
        config.model_id = id;
    }
    if let Some(uri) = args.embedding_model.clone() {
        config.embedding_model = Some(uri);
    }
    if args.no_auth {
        config.allow_no_auth = true;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The engine computes on its own threads; the runtime only moves bytes.
        .worker_threads(2)
        .thread_name("bitnet-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let model_id = config.model_id.clone();
    let key_required = config.api_key.is_some();
    runtime.block_on(async move {
        let state = bitnet_api::start(
            FrontDoor::Serve,
            config,
            args.model.as_deref(),
            addr.ip().is_loopback(),
        )
        .map_err(|e| anyhow::anyhow!("{e} (bitnet serve on {addr})"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr().unwrap_or(addr);
        let waiting = state.clone();
        tokio::spawn(async move {
            let engine = waiting.ready().await;
            println!(
                "{}",
                ready_line(bound, &model_id, engine.threads(), key_required)
            );
        });
        bitnet_api::serve(listener, state)
            .await
            .with_context(|| format!("serving on {bound}"))
    })
}

/// The one line `bitnet serve` prints on stdout once the model is loaded (logs go to stderr).
fn ready_line(addr: SocketAddr, model_id: &str, threads: usize, key_required: bool) -> String {
    let auth = if key_required {
        "API key required (Authorization: Bearer ...)"
    } else {
        "no API key"
    };
    format!("bitnet serve: ready at http://{addr}/v1 (model {model_id}, {threads} threads, {auth})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_names_url_model_threads_and_auth() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            ready_line(addr, "m", 2, false),
            "bitnet serve: ready at http://127.0.0.1:8080/v1 (model m, 2 threads, no API key)"
        );
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert!(ready_line(v6, "m", 1, true).contains("http://[::1]:9/v1"));
        assert!(ready_line(v6, "m", 1, true).contains("API key required"));
    }
}
