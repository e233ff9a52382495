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
//! The model store starts pulling the model at once, and INIT waits for it up to
//! `BITNET_INIT_WAIT_SECS` (default 8; Lambda cuts INIT at 10 s), or until it fails. INIT time is billed either
//! way, and a sandbox is frozen between invocations: a download left running after INIT
//! moves only while an invocation runs, so a cold start that ended INIT early and then
//! answered a health check would sit frozen with half a model. What is not done by then
//! continues in the first invocation: a generation request waits for the model
//! (`BITNET_WAIT_FOR_MODEL_SECS`, default 900 here: the Lambda timeout is the real bound),
//! while `/health` and `/ready` answer at once. A generation ends 2 s before the invocation's deadline, with its response
//! finished. Without `API_KEY` the function refuses to start unless
//! `BITNET_ALLOW_NO_AUTH=1` (API Gateway or IAM auth in front).

use std::time::Duration;

use bitnet_api::{FrontDoor, RequestDeadline, logging, router};
use lambda_http::{Request, RequestExt};
use tower::ServiceBuilder;

/// A generation stops this long before the invocation's deadline, leaving time to finish the
/// response.
const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// Adds the Lambda request id as `x-request-id` so that logs and responses carry it, and the
/// invocation's deadline as the request's generation deadline.
fn with_invocation_context(mut req: Request) -> Request {
    let Some(ctx) = req.lambda_context_ref() else {
        return req;
    };
    let request_id = ctx.request_id.parse().ok();
    let deadline = instant_of_epoch_ms(ctx.deadline)
        .map(|d| RequestDeadline(d.checked_sub(DEADLINE_MARGIN).unwrap_or(d)));
    if !req.headers().contains_key("x-request-id")
        && let Some(v) = request_id
    {
        req.headers_mut().insert("x-request-id", v);
    }
    if let Some(d) = deadline {
        req.extensions_mut().insert(d);
    }
    req
}

/// An `Instant` for the invocation's deadline, given in milliseconds since the Unix epoch
/// (a time just past is now). A value far in the past is no wall-clock time (cargo lambda's
/// emulator sends the timeout itself, 600000): no deadline then.
fn instant_of_epoch_ms(ms: u64) -> Option<std::time::Instant> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    if ms < now_ms.saturating_sub(60_000) {
        tracing::debug!(
            deadline_ms = ms,
            "ignoring an invocation deadline that is not a wall-clock time"
        );
        return None;
    }
    std::time::Instant::now().checked_add(Duration::from_millis(ms.saturating_sub(now_ms)))
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

/// How long INIT waits for the model (`BITNET_INIT_WAIT_SECS`, default 8, at most 9.5: Lambda
/// cuts INIT at 10 s and would then restart it inside the first invocation).
fn init_wait_from_env() -> Duration {
    const MAX: f64 = 9.5;
    let secs = match std::env::var("BITNET_INIT_WAIT_SECS") {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => s.min(MAX),
            _ => {
                tracing::warn!(value = %v, "BITNET_INIT_WAIT_SECS is not a number of seconds; using 8");
                8.0
            }
        },
        Err(_) => 8.0,
    };
    Duration::from_secs_f64(secs)
}

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    logging::init();
    let config = bitnet_api::ApiConfig::from_env(FrontDoor::Lambda);
    let model_id = config.model_id.clone();
    let state = bitnet_api::start(FrontDoor::Lambda, config, None, false).inspect_err(|e| {
        tracing::error!(error = %e, "refusing to start");
    })?;
    let mode = mode_from_env();
    let init_wait = init_wait_from_env();
    tracing::info!(?mode, model = %model_id, init_wait_s = init_wait.as_secs_f64(), "bitnet lambda adapter started; fetching the model");
    // With BITNET_PRELOAD=0 nothing loads before the first request: nothing to wait for.
    if state.config().preload {
        let t0 = std::time::Instant::now();
        // Until the attempt settles: a failure ends INIT at once (nothing retries before a
        // request asks again), instead of billing the rest of the budget for nothing.
        match tokio::time::timeout(init_wait, state.settled()).await {
            Ok(Ok(_)) => tracing::info!(
                ms = t0.elapsed().as_millis() as u64,
                "model ready within INIT"
            ),
            Ok(Err(error)) => tracing::error!(
                ms = t0.elapsed().as_millis() as u64,
                %error,
                "model failed within INIT; invocations answer 503 and retry after the back-off"
            ),
            Err(_) => tracing::warn!(
                waited_s = init_wait.as_secs_f64(),
                "model not ready within INIT; the first invocation waits for the rest"
            ),
        }
    }
    let app = ServiceBuilder::new()
        .map_request(with_invocation_context)
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
    fn the_invocation_deadline_becomes_an_instant() {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let d = super::instant_of_epoch_ms(now_ms + 30_000).unwrap();
        let left = d.saturating_duration_since(std::time::Instant::now());
        assert!(left > super::Duration::from_secs(28) && left <= super::Duration::from_secs(30));
        let past = super::instant_of_epoch_ms(now_ms - 5_000).unwrap();
        assert!(past <= std::time::Instant::now());
        assert!(super::instant_of_epoch_ms(600_000).is_none());
    }

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
