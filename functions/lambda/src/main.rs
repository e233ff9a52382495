//! AWS Lambda adapter: the binary `bootstrap` for the `provided.al2023` runtime.
//!
//! The API router is served through `lambda_http` in one of two modes
//! (`BITNET_LAMBDA_MODE`):
//!
//! - `stream` (default): `run_with_streaming_response`, for a function URL with
//!   `InvokeMode = RESPONSE_STREAM`; SSE chunks leave token by token.
//! - `buffered`: `run`, for API Gateway (REST or HTTP API), ALB, or a function URL in `BUFFERED`
//!   mode; the whole response (an SSE body too) is returned at the end.
//!
//! The model store starts pulling the model during INIT in the background; INIT never waits
//! for it. The first generation request waits for the model (`BITNET_WAIT_FOR_MODEL_SECS`,
//! default 900 here: the Lambda timeout is the real bound), while `/health` and `/ready`
//! answer at once.

use std::time::Duration;

use bitnet_api::{AppState, engine_loader, logging, router, store::StoreSource};
use lambda_http::{Request, RequestExt};
use tower::ServiceBuilder;

/// Adds the Lambda request id as `x-request-id` so that logs and responses carry it.
fn with_request_id(mut req: Request) -> Request {
    if !req.headers().contains_key("x-request-id")
        && let Some(ctx) = req.lambda_context_ref()
        && let Ok(v) = ctx.request_id.parse()
    {
        req.headers_mut().insert("x-request-id", v);
    }
    req
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Stream,
    Buffered,
}

fn mode_from_env() -> Mode {
    match std::env::var("BITNET_LAMBDA_MODE")
        .as_deref()
        .map(str::trim)
    {
        Ok("buffered") | Ok("BUFFERED") => Mode::Buffered,
        Ok("stream") | Ok("STREAM") | Ok("RESPONSE_STREAM") | Ok("") | Err(_) => Mode::Stream,
        Ok(other) => {
            tracing::warn!(value = other, "unknown BITNET_LAMBDA_MODE; using stream");
            Mode::Stream
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    logging::init();
    let mut config = bitnet_api::ApiConfig::from_env();
    if std::env::var_os("BITNET_WAIT_FOR_MODEL_SECS").is_none() {
        config.wait_for_model = Duration::from_secs(900);
    }
    // Lambda hands an instance one invocation at a time, but a streamed invocation whose caller
    // left can still be winding its generation down when the next arrives: one queue place
    // lets that next request wait for the engine instead of failing with 429.
    if std::env::var_os("BITNET_MAX_QUEUE").is_none() {
        config.max_queue = 1;
    }
    let source = StoreSource::from_env().map_err(|e| format!("model store configuration: {e}"))?;
    let state = AppState::new(
        config.clone(),
        std::sync::Arc::new(source),
        engine_loader(config.load_options()),
    );
    let mode = mode_from_env();
    tracing::info!(?mode, model = %config.model_id, "bitnet lambda adapter started; model fetch runs in the background");
    let app = ServiceBuilder::new()
        .map_request(with_request_id)
        .service(router(state));
    // The runtime loop returns only on a transport error with the Runtime API (e.g. a response
    // post cut off because the caller went away). Exiting would make Lambda start a fresh
    // sandbox and download and load the model again, so resume polling with the model kept;
    // give up when the API keeps failing (it is gone, e.g. during shutdown).
    let mut recent_failures = 0u32;
    loop {
        let started = std::time::Instant::now();
        let result = match mode {
            Mode::Stream => lambda_http::run_with_streaming_response(app.clone()).await,
            Mode::Buffered => lambda_http::run(app.clone()).await,
        };
        let error = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        recent_failures = if started.elapsed() < Duration::from_secs(10) {
            recent_failures + 1
        } else {
            1
        };
        if recent_failures >= 5 {
            tracing::error!(error = %error, "Lambda Runtime API keeps failing; exiting");
            return Err(error);
        }
        tracing::warn!(error = %error, "Lambda runtime loop stopped; resuming with the loaded model");
        tokio::time::sleep(Duration::from_millis(50 * u64::from(recent_failures))).await;
    }
}

#[cfg(test)]
mod tests {
    //! The sample events in `events/` must be ones `lambda_http` understands.
    use lambda_http::request::from_str;

    #[test]
    fn sample_events_parse() {
        for (name, raw, method, path) in [
            (
                "function URL",
                include_str!("../../../events/function-url-chat.json"),
                "POST",
                "/v1/chat/completions",
            ),
            (
                "function URL stream",
                include_str!("../../../events/function-url-chat-stream.json"),
                "POST",
                "/v1/chat/completions",
            ),
            (
                "function URL health",
                include_str!("../../../events/function-url-health.json"),
                "GET",
                "/health",
            ),
            (
                "API Gateway v2",
                include_str!("../../../events/apigw-v2-chat.json"),
                "POST",
                "/v1/chat/completions",
            ),
            (
                "API Gateway v2 health",
                include_str!("../../../events/apigw-v2-health.json"),
                "GET",
                "/health",
            ),
            (
                "ALB",
                include_str!("../../../events/alb-completions.json"),
                "POST",
                "/v1/completions",
            ),
            (
                "ALB health",
                include_str!("../../../events/alb-health.json"),
                "GET",
                "/health",
            ),
            (
                "API Gateway REST",
                include_str!("../../../events/apigw-rest-models.json"),
                "GET",
                "/v1/models",
            ),
        ] {
            let req = from_str(raw).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(req.method().as_str(), method, "{name}");
            assert!(req.uri().path().ends_with(path), "{name}: {}", req.uri());
        }
    }
}
