//! The HTTP API every front door serves: OpenAI-compatible `/v1/chat/completions`,
//! `/v1/completions` and `/v1/models`, plus `/health`, `/ready` and `/metrics`.
//!
//! Build an [`AppState`] once per process (model source + lazily loaded engine), then serve
//! [`router`] from whatever front door the process has: a TCP listener ([`serve`]), AWS Lambda
//! (`functions/lambda`) or the Azure Functions custom handler (`functions/azure`).

pub mod config;
pub mod embeddings;
pub mod engine;
pub mod error;
pub mod generate;
pub mod http;
pub mod logging;
pub mod logprobs;
pub mod metrics;
pub mod openai;
pub mod server;
pub mod state;
pub mod store;

pub use config::{ApiConfig, FrontDoor};
pub use engine::{Engine, Loader, ModelSource, engine_loader};
pub use error::ApiError;
pub use http::{RequestDeadline, RequestId, router};
pub use state::AppState;
/// Re-exported so that front doors log through the same subscriber without their own dependency.
pub use tracing;

use std::sync::Arc;

/// The one place a front door builds its state: checks that running without a key is an
/// explicit choice (see [`ApiConfig::check_auth`]), then the model store from the environment
/// (`BITNET_MODEL` and friends, `model_uri` overriding the URI) and the engine loader from
/// `config`. Starts fetching the model in the background unless `BITNET_PRELOAD=0`. Needs a
/// Tokio runtime; never blocks.
pub fn start(
    front_door: FrontDoor,
    config: ApiConfig,
    model_uri: Option<&str>,
    loopback_only: bool,
) -> Result<AppState, String> {
    config.check_auth(front_door, loopback_only)?;
    if config.api_key.is_none() {
        tracing::warn!(?front_door, "serving without authentication");
    }
    let source = store::StoreSource::from_env(front_door, model_uri);
    let loader = engine_loader(&config);
    let chat = state::ModelSpec {
        id: config.model_id.clone(),
        source: Arc::new(source),
        loader: loader.clone(),
    };
    let embedding = config
        .embedding_model
        .as_deref()
        .map(|uri| state::ModelSpec {
            id: config.embedding_model_id.clone(),
            source: Arc::new(store::StoreSource::for_embedding_model(front_door, uri)),
            loader,
        });
    Ok(AppState::with_models(config, chat, embedding))
}

/// Serves the router on a bound listener until Ctrl-C or SIGTERM, with the configured HTTP
/// limits.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    let limits = state.config().http.clone();
    server::serve_listener(listener, router(state), limits, shutdown_signal()).await
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
