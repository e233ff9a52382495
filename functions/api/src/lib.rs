//! The HTTP API every front door serves: OpenAI-compatible `/v1/chat/completions`,
//! `/v1/completions` and `/v1/models`, plus `/health` and `/ready`.
//!
//! Build an [`AppState`] once per process (model source + lazily loaded engine), then serve
//! [`router`] from whatever front door the process has: a TCP listener ([`serve`]), AWS Lambda
//! (`functions/lambda`) or the Azure Functions custom handler (`functions/azure`).

pub mod config;
pub mod engine;
pub mod error;
pub mod generate;
pub mod http;
pub mod logging;
pub mod openai;
pub mod state;
pub mod store;

pub use config::ApiConfig;
pub use engine::{Engine, Loader, ModelSource, engine_loader};
pub use error::ApiError;
pub use http::{RequestId, router};
pub use state::AppState;
/// Re-exported so that front doors log through the same subscriber without their own dependency.
pub use tracing;

use std::net::SocketAddr;
use std::sync::Arc;

/// The state every binary builds: config from the environment, the model store from the
/// environment (`BITNET_MODEL` and friends, see `model_store::StoreConfig::from_env`), and the
/// real engine loader. Starts fetching the model in the background unless `BITNET_PRELOAD=0`.
/// Needs a Tokio runtime; never blocks.
pub fn state_from_env() -> Result<AppState, String> {
    let config = ApiConfig::from_env();
    let source = store::StoreSource::from_env()?;
    Ok(AppState::new(
        config.clone(),
        Arc::new(source),
        engine_loader(config.load_options()),
    ))
}

/// Serves the router on `addr` until Ctrl-C or SIGTERM.
pub async fn serve(addr: SocketAddr, state: AppState) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(no_delay(listener), router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

/// Turns off Nagle's algorithm on every accepted connection: SSE sends one small write per
/// token, and on a kept-alive connection Nagle holds each behind the client's delayed ACK
/// (~40 ms per token).
pub fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests;
