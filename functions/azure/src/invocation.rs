//! The custom handler's non-proxied invocation protocol, translated to and from plain HTTP
//! requests to the API router.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bitnet_api::{AppState, router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// Function names whose invocation payloads this handler accepts (`POST /<name>`):
/// `BITNET_AZURE_FUNCTIONS` (comma-separated), default `api`, the function folder in `app/`.
pub fn function_names_from_env() -> Vec<String> {
    std::env::var("BITNET_AZURE_FUNCTIONS")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vec!["api".to_string()])
}

#[derive(Clone)]
struct Ctx {
    api: Router,
    functions: Vec<String>,
}

/// The API router, with `POST /<FunctionName>` carrying an invocation payload routed through it.
pub fn app(state: AppState, functions: Vec<String>) -> Router {
    let api = router(state);
    let ctx = Ctx {
        api: api.clone(),
        functions,
    };
    Router::new().fallback(dispatch).with_state(ctx)
}

async fn dispatch(State(ctx): State<Ctx>, req: Request) -> Response {
    let name = req.uri().path().trim_start_matches('/');
    let is_invocation =
        req.method() == Method::POST && ctx.functions.iter().any(|f| f.eq_ignore_ascii_case(name));
    if !is_invocation {
        return match ctx.api.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    let invocation_id = req.headers().get("x-azure-functions-invocationid").cloned();
    let body = match axum::body::to_bytes(req.into_body(), 16 << 20).await {
        Ok(b) => b,
        Err(e) => {
            return invocation_error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read invocation: {e}"),
            );
        }
    };
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return invocation_error(
                StatusCode::BAD_REQUEST,
                &format!("invocation payload is not JSON: {e}"),
            );
        }
    };
    let inner = match to_http_request(&payload, invocation_id) {
        Ok(r) => r,
        Err(e) => return invocation_error(StatusCode::BAD_REQUEST, &e),
    };
    let resp = match ctx.api.oneshot(inner).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    axum::Json(to_outputs(resp).await).into_response()
}

fn invocation_error(status: StatusCode, message: &str) -> Response {
    tracing::warn!(message, "bad invocation payload");
    (
        status,
        axum::Json(json!({ "Outputs": {}, "Logs": [message], "ReturnValue": null })),
    )
        .into_response()
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// `Data.req` → an HTTP request. The path comes from the catch-all route parameter
/// (`Params.path`) when present, else from `Url`; the query from `Query`, else from `Url`.
pub fn to_http_request(
    payload: &Value,
    invocation_id: Option<HeaderValue>,
) -> Result<Request, String> {
    let data = payload.get("Data").ok_or("missing Data")?;
    // The binding name is `req` in our function.json; accept any single HTTP input binding.
    let req = data
        .get("req")
        .or_else(|| {
            data.as_object()
                .and_then(|m| m.values().find(|v| v.get("Method").is_some()))
        })
        .ok_or("missing Data.req")?;
    let method = req.get("Method").and_then(Value::as_str).unwrap_or("GET");
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|e| format!("bad Method: {e}"))?;
    let url = req.get("Url").and_then(Value::as_str).unwrap_or("");
    let (url_path, url_query) = split_url(url);
    let path = match req
        .get("Params")
        .and_then(|p| p.get("path"))
        .and_then(Value::as_str)
    {
        Some(p) => format!("/{}", p.trim_start_matches('/')),
        None => url_path.to_string(),
    };
    let query = match req.get("Query").and_then(Value::as_object) {
        Some(q) if !q.is_empty() => {
            let mut pairs = Vec::new();
            for (k, v) in q {
                let vals: Vec<String> = match v {
                    Value::Array(a) => a.iter().filter_map(as_string).collect(),
                    other => as_string(other).into_iter().collect(),
                };
                for v in vals {
                    pairs.push(format!("{}={}", encode(k), encode(&v)));
                }
            }
            pairs.join("&")
        }
        _ => url_query.to_string(),
    };
    let uri = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let mut builder = axum::http::Request::builder().method(method).uri(uri);
    if let Some(h) = req.get("Headers").and_then(Value::as_object) {
        for (k, v) in h {
            let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else {
                continue;
            };
            if name == axum::http::header::CONTENT_LENGTH
                || name == axum::http::header::TRANSFER_ENCODING
            {
                continue;
            }
            let vals: Vec<String> = match v {
                Value::Array(a) => a.iter().filter_map(as_string).collect(),
                other => as_string(other).into_iter().collect(),
            };
            for v in vals {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    builder = builder.header(name.clone(), v);
                }
            }
        }
    }
    if let Some(id) = invocation_id {
        builder = builder.header("x-azure-functions-invocationid", id);
    }
    let body = match req.get("Body") {
        None | Some(Value::Null) => Body::empty(),
        Some(Value::String(s)) => Body::from(s.clone()),
        // The host may hand over a JSON body already parsed.
        Some(other) => Body::from(other.to_string()),
    };
    builder
        .body(body)
        .map_err(|e| format!("bad request in invocation: {e}"))
}

/// The router's answer → `{"Outputs":{"res":{statusCode, headers, body}},"Logs":[],"ReturnValue":null}`.
pub async fn to_outputs(resp: Response) -> Value {
    let (parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => bytes::Bytes::from(format!("error reading response: {e}")),
    };
    let mut headers = BTreeMap::new();
    for (k, v) in &parts.headers {
        if let Ok(v) = v.to_str() {
            headers.insert(k.as_str().to_string(), v.to_string());
        }
    }
    json!({
        "Outputs": {
            "res": {
                "statusCode": parts.status.as_u16(),
                "headers": headers,
                "body": String::from_utf8_lossy(&bytes),
            }
        },
        "Logs": [],
        "ReturnValue": null,
    })
}

fn split_url(url: &str) -> (&str, &str) {
    // "https://host/a/b?x=1" → ("/a/b", "x=1"); a bare path is kept.
    let rest = match url.find("://") {
        Some(i) => {
            let after = &url[i + 3..];
            match after.find(['/', '?']) {
                Some(j) => &after[j..],
                None => "/",
            }
        }
        None => url,
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    (if path.is_empty() { "/" } else { path }, query)
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use bitnet_api::{ApiConfig, store::StoreSource};

    fn state() -> AppState {
        let source = StoreSource::new(bitnet_api::store::StoreConfig::new(
            "/nonexistent/model.gguf",
        ));
        AppState::new(
            ApiConfig::default(),
            Arc::new(source),
            bitnet_api::engine_loader(&ApiConfig::default()),
        )
    }

    async fn post(app: Router, path: &str, body: &str) -> (StatusCode, Value) {
        let req = axum::http::Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("https://x.azurewebsites.net/v1/models?a=1"),
            ("/v1/models", "a=1")
        );
        assert_eq!(split_url("http://localhost:7071"), ("/", ""));
        assert_eq!(split_url("/health"), ("/health", ""));
    }

    #[tokio::test]
    async fn invocation_payload_round_trip() {
        let app = app(state(), vec!["api".into()]);
        let payload = json!({
            "Data": {"req": {
                "Url": "https://bitnet.azurewebsites.net/v1/models?x=1",
                "Method": "GET",
                "Query": {"x": "1"},
                "Headers": {"Accept": ["application/json"], "X-Request-Id": ["inv-1"]},
                "Params": {"path": "v1/models"},
                "Body": ""
            }},
            "Metadata": {"sys": {"MethodName": "api"}}
        });
        let (status, out) = post(app.clone(), "/api", &payload.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        let res = &out["Outputs"]["res"];
        assert_eq!(res["statusCode"], 200);
        assert_eq!(res["headers"]["x-request-id"], "inv-1");
        let body: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["data"][0]["id"], "bitnet-b1.58-2b-4t");
        assert_eq!(out["Logs"], json!([]));
        assert_eq!(out["ReturnValue"], Value::Null);

        // A client error inside keeps its status and OpenAI body.
        let payload = json!({"Data": {"req": {"Url": "http://localhost:7071/v1/chat/completions", "Method": "POST",
            "Headers": {"Content-Type": "application/json"}, "Params": {}, "Body": "{bad"}}, "Metadata": {}});
        let (_, out) = post(app.clone(), "/api", &payload.to_string()).await;
        assert_eq!(out["Outputs"]["res"]["statusCode"], 400);
        let body: Value =
            serde_json::from_str(out["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "invalid_json");

        // Not an invocation payload.
        let (status, out) = post(app.clone(), "/api", "[]").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(out["Logs"][0].as_str().unwrap().contains("Data"));
    }

    #[tokio::test]
    async fn proxied_requests_pass_through() {
        let app = app(state(), vec!["api".into()]);
        let req = axum::http::Request::get("/").body(Body::empty()).unwrap();
        assert_eq!(
            app.clone().oneshot(req).await.unwrap().status(),
            StatusCode::OK
        );
        let req = axum::http::Request::get("/health")
            .header("X-Azure-Functions-InvocationId", "0f6c1a2b-inv")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-request-id"], "0f6c1a2b-inv");
        let (status, body) = post(app, "/v1/chat/completions", "{").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_json");
    }
}
