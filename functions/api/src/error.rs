//! Errors in OpenAI's JSON shape, mapped to HTTP statuses in one place.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bitnet_engine::EngineError;

/// An error the API returns to a client: `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (503, 429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// 400 for a request the client got wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 naming the parameter at fault.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(message).with_param(param)
    }

    /// 400 for a parameter or value this server does not implement.
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(message)
            .with_param(param)
            .with_code("unsupported_parameter")
    }

    pub fn malformed_json(detail: impl std::fmt::Display) -> Self {
        Self::invalid(format!(
            "We could not parse the JSON body of your request ({detail}). The body must be a JSON object."
        ))
        .with_code("invalid_json")
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unknown request URL: {path}."),
        )
        .with_code("unknown_url")
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("Method {method} is not allowed for {path}."),
        )
        .with_code("method_not_allowed")
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Missing or incorrect API key. Send it as `Authorization: Bearer <key>`.",
        )
        .with_code("invalid_api_key")
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body exceeds the limit of {limit} bytes."),
        )
        .with_code("request_too_large")
    }

    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "The request body did not arrive within {} s.",
                limit.as_secs_f64()
            ),
        )
        .with_code("request_timeout")
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        let shown = if content_type.is_empty() {
            "none".to_owned()
        } else {
            format!("'{}'", content_type.chars().take(100).collect::<String>())
        };
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            format!(
                "The request body must be JSON with Content-Type: application/json; got {shown}."
            ),
        )
        .with_code("unsupported_media_type")
    }

    pub fn queue_full(running: usize, waiting: usize) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "The server is busy: {running} generations are running and {waiting} are waiting. Retry shortly."
            ),
        )
        .with_code("rate_limit_exceeded");
        e.retry_after = Some(1);
        e
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        );
        e.retry_after = Some(retry_after);
        e
    }

    pub fn not_ready(state: &str, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            format!("The model is not ready yet (state: {state}). Retry after {retry_after} s."),
        )
        .with_code("model_not_ready");
        e.retry_after = Some(retry_after);
        e
    }

    pub fn model_failed(message: &str, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            format!("The model could not be loaded: {message}"),
        )
        .with_code("model_unavailable");
        e.retry_after = Some(retry_after);
        e
    }

    pub fn context_length_exceeded(prompt: usize, max_tokens: usize, n_ctx: usize) -> Self {
        Self::invalid(format!(
            "This model's maximum context length is {n_ctx} tokens. However, you requested {} tokens ({prompt} in the prompt, {max_tokens} for the completion). Please reduce the prompt or max_tokens.",
            prompt + max_tokens
        ))
        .with_param("messages")
        .with_code("context_length_exceeded")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON body, also used for an error event inside an SSE stream.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::ContextOverflow {
                prompt,
                max_tokens,
                n_ctx,
            } => ApiError::context_length_exceeded(prompt, max_tokens, n_ctx),
            EngineError::EmptyPrompt => ApiError::invalid_param(
                "prompt",
                "The prompt is empty: at least one token is needed.",
            ),
            e @ EngineError::TokenOutOfRange { .. } => {
                ApiError::invalid_param("prompt", e.to_string())
            }
            EngineError::InvalidParam { param, message } => {
                ApiError::invalid_param(param, format!("Invalid '{param}': {message}."))
            }
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
