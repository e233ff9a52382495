//! The router: routes, request ids and logs, optional bearer auth, body limits, and the
//! OpenAI-shaped 404 / 405 answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tracing::Instrument;

use crate::error::ApiError;
use crate::generate;
use crate::openai::{self, Endpoint};
use crate::state::{AppState, retry_after_estimate};

/// The request id of the current request (from `x-request-id`, `x-amzn-requestid`,
/// `X-Azure-Functions-InvocationId`, or generated), in the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The latest a generation for this request may run (Lambda puts the invocation's deadline
/// here, less a margin); the configured `BITNET_GENERATION_TIMEOUT_SECS` applies as well.
#[derive(Clone, Copy, Debug)]
pub struct RequestDeadline(pub Instant);

/// Builds the API's router. Every front door serves exactly this.
pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.config().cors_origins);
    let api = Router::new()
        .route("/models", get(list_models))
        .route("/models/{id}", get(get_model))
        .route("/chat/completions", post(chat_completions))
        .route("/completions", post(completions))
        .route("/embeddings", post(embeddings));
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .nest("/v1", api.clone())
        // Clients configured with a base URL that lacks `/v1` still work.
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(tower::util::option_layer(cors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

/// CORS for the configured origins (`BITNET_CORS_ORIGINS`), none by default: then browsers
/// get no CORS headers and a preflight is refused (405), so a page elsewhere cannot call the
/// API with a JSON body.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| match HeaderValue::from_str(o) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        tracing::warn!(origin = %o, "ignoring an unusable CORS origin");
                        None
                    }
                }),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                axum::http::HeaderName::from_static("api-key"),
                axum::http::HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([axum::http::HeaderName::from_static("x-request-id")])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

const REQUEST_ID_HEADERS: [&str; 3] = [
    "x-request-id",
    "x-amzn-requestid",
    "x-azure-functions-invocationid",
];

fn new_request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}{:08x}", h.finish(), n as u32)
}

fn request_id_from(headers: &HeaderMap) -> String {
    REQUEST_ID_HEADERS
        .iter()
        .filter_map(|h| headers.get(*h))
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .find(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(new_request_id)
}

/// Request id, a span carrying it, one log line per request, `x-request-id` on the answer.
async fn request_context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = request_id_from(req.headers());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %path);
    let t0 = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    state.metrics().request(&path, status);
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, ms, "request done");
        } else {
            tracing::info!(status, ms, "request done");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Routes open without a key: the host's probes.
fn auth_exempt(path: &str) -> bool {
    matches!(path, "/" | "/health" | "/ready")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Accepts `Authorization: Bearer KEY` (the OpenAI SDKs) or `api-key: KEY` (Azure-style clients).
pub fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let api_key = headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    [bearer, api_key]
        .into_iter()
        .flatten()
        .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes()))
}

async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config().api_key
        && !auth_exempt(req.uri().path())
        && !authorized(req.headers(), key.expose())
    {
        return ApiError::unauthorized().into_response();
    }
    next.run(req).await
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

async fn root(State(state): State<AppState>) -> Response {
    axum::Json(json!({
        "service": "bitnet",
        "version": env!("CARGO_PKG_VERSION"),
        "model": state.config().model_id,
        "endpoints": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/tokenize", "/detokenize", "/health", "/ready", "/metrics"],
    }))
    .into_response()
}

/// Always 200 while the process lives; the body says where the model is.
async fn health(State(state): State<AppState>) -> Response {
    let mut body = json!({
        "status": "ok",
        "model": state.model_report(),
        "uptime_s": state.uptime().as_secs_f64(),
        "in_flight": state.in_flight(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(e) = state.embedding_report() {
        body["embedding_model"] = json!(e);
    }
    axum::Json(body).into_response()
}

/// 200 once every model can serve, else 503 with `Retry-After`.
async fn ready(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        return axum::Json(json!({ "status": "ready", "model": state.config().model_id }))
            .into_response();
    }
    state.start_loading();
    let report = state.model_report();
    let embedding = state.embedding_report();
    let retry = std::iter::once(&report)
        .chain(embedding.as_ref())
        .filter(|r| !matches!(r.state, crate::state::ModelState::Ready { .. }))
        .map(|r| retry_after_estimate(&r.state))
        .max()
        .unwrap_or(1);
    let mut body = json!({ "status": "not_ready", "model": report });
    if let Some(e) = embedding {
        body["embedding_model"] = json!(e);
    }
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry));
    resp
}

/// Prometheus text: requests, the scheduler's queue and slots, tokens, cache hits, latency
/// histograms. Behind the API key like the API (scrapers send it as a bearer token).
async fn metrics(State(state): State<AppState>) -> Response {
    let stats = state.engine_now().map(|e| e.stats());
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics().render(stats),
    )
        .into_response()
}

fn model_object(id: &str) -> serde_json::Value {
    json!({ "id": id, "object": "model", "created": 0, "owned_by": "bitnet" })
}

async fn list_models(State(state): State<AppState>) -> Response {
    let data: Vec<serde_json::Value> = state
        .model_ids()
        .iter()
        .map(|id| model_object(id))
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state
        .model_ids()
        .into_iter()
        .find(|m| m.eq_ignore_ascii_case(&id))
    {
        Some(m) => Ok(axum::Json(model_object(&m)).into_response()),
        None => Err(ApiError::model_not_found(&id)),
    }
}

/// Reads the body up to the configured limit (413 beyond it) within the body timeout (408).
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes::Bytes, ApiError> {
    let limit = state.config().max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let timeout = state.config().http.body_timeout;
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| ApiError::body_timeout(timeout))?;
    read.map_err(|e| {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if s.is::<http_body_util::LengthLimitError>() {
                return ApiError::too_large(limit);
            }
            src = s.source();
        }
        ApiError::invalid(format!("Could not read the request body: {e}"))
    })
}

/// Generation requests carry JSON: anything else is a 415. This also keeps browsers' simple
/// cross-site requests (`text/plain`, forms) from running a generation.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(ct))
    }
}

async fn completion(
    state: AppState,
    endpoint: Endpoint,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    require_json(&parts.headers)?;
    // Admission before any work: a request that would be refused is refused before its body
    // is read, parsed or tokenized.
    let admission = state.admit()?;
    let id = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(new_request_id);
    let deadline = parts.extensions.get::<RequestDeadline>().map(|d| d.0);
    let bytes = read_body(&state, &parts.headers, body).await?;
    let parsed = openai::parse_request(endpoint, &bytes)?;
    drop(bytes);
    tracing::debug!(stream = parsed.stream, max_tokens = ?parsed.max_tokens, "completion request");
    generate::complete(state, endpoint, parsed, id, admission, deadline).await
}

/// `POST /v1/embeddings`: admitted like a generation (it runs forward passes), then
/// parsed, then embedded.
async fn embeddings(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    require_json(&parts.headers)?;
    let admission = state.admit()?;
    let deadline = parts.extensions.get::<RequestDeadline>().map(|d| d.0);
    let bytes = read_body(&state, &parts.headers, body).await?;
    let parsed = openai::parse_embeddings(&bytes)?;
    drop(bytes);
    crate::embeddings::embeddings(state, parsed, admission, deadline).await
}

/// The body of a request that must be JSON (415 otherwise), within the body limits.
async fn json_body(state: &AppState, req: Request) -> Result<bytes::Bytes, ApiError> {
    let (parts, body) = req.into_parts();
    require_json(&parts.headers)?;
    read_body(state, &parts.headers, body).await
}

/// `POST /tokenize` (llama-server's shape): `{"tokens": [ids]}`, or with `with_pieces`
/// `{"tokens": [{"id", "piece"}]}` where a piece that is not valid UTF-8 on its own is its
/// byte values.
async fn tokenize(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let req = openai::parse_tokenize(&json_body(&state, req).await?)?;
    let engine = state.engine().await?;
    let tokens = tokio::task::spawn_blocking(move || {
        let ids = engine.encode(&req.content, req.add_special);
        if !req.with_pieces {
            return ids
                .into_iter()
                .map(serde_json::Value::from)
                .collect::<Vec<_>>();
        }
        ids.into_iter()
            .map(|id| {
                let bytes = engine.piece(id).unwrap_or_default();
                let piece = match String::from_utf8(bytes) {
                    Ok(text) => serde_json::Value::from(text),
                    Err(e) => serde_json::Value::from(e.into_bytes()),
                };
                json!({ "id": id, "piece": piece })
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizer failed: {e}")))?;
    Ok(axum::Json(json!({ "tokens": tokens })).into_response())
}

/// `POST /detokenize` (llama-server's shape): `{"content": text}`, control tokens written as
/// their text, bytes that are not UTF-8 replaced by U+FFFD.
async fn detokenize(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let ids = openai::parse_detokenize(&json_body(&state, req).await?)?;
    let engine = state.engine().await?;
    let mut text = Vec::new();
    for id in ids {
        let piece = engine.piece(id).ok_or_else(|| {
            ApiError::invalid_param(
                "tokens",
                format!(
                    "Token id {id} is out of range: the vocabulary has {} tokens.",
                    engine.n_vocab()
                ),
            )
        })?;
        text.extend_from_slice(&piece);
    }
    let content = String::from_utf8_lossy(&text).into_owned();
    Ok(axum::Json(json!({ "content": content })).into_response())
}

async fn chat_completions(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    completion(state, Endpoint::Chat, req).await
}

async fn completions(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    completion(state, Endpoint::Completions, req).await
}
