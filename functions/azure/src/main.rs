//! Azure Functions custom handler: the binary `handler`.
//!
//! The Functions host starts it with `FUNCTIONS_CUSTOMHANDLER_PORT` and probes `/` until it
//! answers. With `enableProxyingHttpRequest` (see `app/host.json`), HTTP requests arrive as
//! sent (path, headers, body) plus `X-Azure-Functions-InvocationId`, and go straight to the API
//! router. Without proxying, the host POSTs an invocation payload to `/<FunctionName>`
//! (`{"Data":{"req":{...}},"Metadata":{...}}`); [`invocation`] turns that into a request to
//! the same router and its answer into `{"Outputs":{"res":{...}},"Logs":[],"ReturnValue":null}`.

mod invocation;

use std::net::{Ipv4Addr, SocketAddr};

use bitnet_api::{FrontDoor, logging};

#[tokio::main]
async fn main() {
    logging::init();
    let port = match std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT") {
        Ok(p) => match p.trim().parse::<u16>() {
            Ok(p) => p,
            Err(_) => {
                tracing::error!(value = %p, "FUNCTIONS_CUSTOMHANDLER_PORT is not a port number");
                std::process::exit(2);
            }
        },
        Err(_) => 8080,
    };
    let config = bitnet_api::ApiConfig::from_env(FrontDoor::Azure);
    let (model_id, limits) = (config.model_id.clone(), config.http.clone());
    // The handler listens on loopback, but the Functions host exposes it: that is no reason
    // to go without a key.
    let state = match bitnet_api::start(FrontDoor::Azure, config, None, false) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "refusing to start");
            std::process::exit(2);
        }
    };
    let app = invocation::app(state, invocation::function_names_from_env());
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen");
            std::process::exit(1);
        }
    };
    tracing::info!(%addr, model = %model_id, "bitnet azure custom handler listening");
    if let Err(e) =
        bitnet_api::server::serve_listener(listener, app, limits, bitnet_api::shutdown_signal())
            .await
    {
        tracing::error!(error = %e, "server failed");
        std::process::exit(1);
    }
}
