//! Router tests with a fake engine and a fake model source: routing, errors, auth, SSE framing,
//! queueing, cancellation and health before the model is ready.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bitnet_engine::{
    ChatMessage, EngineError, Event, EventSink, GenerateOutput, GenerateParams, Interrupt,
    SchedulerStats, SinkError, StopReason, TokenLogprob,
};
use http_body_util::BodyExt;
use model_store::ModelStatus;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::engine::{BoxFuture, Engine, FetchError, Loader, ModelSource};
use crate::{ApiConfig, AppState, router};

/// Emits `tok0 tok1 ...` (each piece `"tokN "`), one per `delay`, on a thread of its own per
/// request, as the engine's scheduler would; checks requests with the engine's own rules.
struct FakeEngine {
    delay: Duration,
    cancelled: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    last_params: Arc<Mutex<Option<GenerateParams>>>,
}

impl Engine for FakeEngine {
    fn n_ctx(&self) -> usize {
        64
    }
    fn n_vocab(&self) -> usize {
        1000
    }
    fn kv_bytes_per_token(&self) -> usize {
        16
    }
    fn threads(&self) -> usize {
        1
    }
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        let mut v: Vec<u32> = if add_bos { vec![999] } else { vec![] };
        v.extend(text.bytes().map(u32::from));
        v
    }
    fn piece(&self, id: u32) -> Option<Vec<u8>> {
        // The inverse of `encode`: ids below 256 are bytes, 999 is BOS, 998 end of turn.
        match id {
            0..=255 => Some(vec![id as u8]),
            998 => Some(b"<|eot_id|>".to_vec()),
            999 => Some(b"<|begin_of_text|>".to_vec()),
            _ if (id as usize) < self.n_vocab() => Some(Vec::new()),
            _ => None,
        }
    }
    fn is_control(&self, id: u32) -> bool {
        id == 998 || id == 999
    }
    fn encode_chat(&self, messages: &[ChatMessage]) -> Vec<u32> {
        let mut v = vec![999];
        for m in messages {
            v.extend(m.content.bytes().map(u32::from));
            v.push(998);
        }
        v
    }
    fn submit(
        &self,
        prompt: Vec<u32>,
        params: GenerateParams,
        interrupt: Interrupt,
        sinks: Vec<Box<dyn EventSink>>,
    ) -> Result<(), EngineError> {
        bitnet_engine::generate::check_request(&prompt, &params, self.n_vocab(), self.n_ctx())?;
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last_params.lock().unwrap() = Some(params.clone());
        for mut sink in sinks {
            let (delay, cancelled) = (self.delay, self.cancelled.clone());
            let (prompt, params, interrupt) = (prompt.clone(), params.clone(), interrupt.clone());
            std::thread::spawn(move || {
                let mut text = String::new();
                let mut ids = Vec::new();
                let mut lps = Vec::new();
                let mut reason = StopReason::Length;
                'tokens: for i in 0..params.max_tokens {
                    std::thread::sleep(delay);
                    if let Some(r) = interrupt
                        .check()
                        .or(sink.is_closed().then_some(StopReason::Cancelled))
                    {
                        reason = r;
                        if r == StopReason::Cancelled {
                            cancelled.store(true, Ordering::SeqCst);
                        }
                        break;
                    }
                    let piece = format!("tok{i} ");
                    text.push_str(&piece);
                    ids.push(i as u32);
                    // With logprobs asked for: a made-up value per token, the token itself
                    // and the next id as the alternatives.
                    let logprob = params.logprobs.map(|top| TokenLogprob {
                        token_id: i as u32,
                        logprob: -0.5 * (i + 1) as f32,
                        top: [(i as u32, -0.5 * (i + 1) as f32), (i as u32 + 1, -9.0)]
                            [..top.min(2)]
                            .to_vec(),
                    });
                    lps.extend(logprob.clone());
                    let mut ev = Event::Token {
                        text: piece,
                        token_id: i as u32,
                        logprob,
                    };
                    loop {
                        match sink.try_send(ev) {
                            Ok(()) => break,
                            Err(SinkError::Full(back)) => {
                                ev = back;
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            Err(SinkError::Closed) => {
                                reason = StopReason::Cancelled;
                                cancelled.store(true, Ordering::SeqCst);
                                break 'tokens;
                            }
                        }
                    }
                }
                let _ = sink.try_send(Event::Done(Ok(GenerateOutput {
                    text,
                    completion_tokens: ids.len(),
                    token_ids: ids,
                    prompt_tokens: prompt.len(),
                    stop_reason: reason,
                    prompt_ms: 2.0,
                    decode_ms: 10.0,
                    cached_prompt_tokens: 0,
                    logprobs: lps,
                    // Each prompt token after the first scored -1.
                    prompt_logprobs: if params.prompt_logprobs {
                        prompt[1..]
                            .iter()
                            .map(|&t| TokenLogprob {
                                token_id: t,
                                logprob: -1.0,
                                top: Vec::new(),
                            })
                            .collect()
                    } else {
                        Vec::new()
                    },
                    draft_tokens: 0,
                    draft_accepted: 0,
                })));
            });
        }
        Ok(())
    }
    fn embedding_dim(&self) -> Option<usize> {
        None
    }
    fn embedding_input(&self, text: &str) -> Vec<u32> {
        self.encode(text, false)
    }
    fn embed(
        &self,
        _inputs: &[Vec<u32>],
        _interrupt: &Interrupt,
    ) -> Result<Vec<Vec<f32>>, bitnet_engine::model::EmbedError> {
        unreachable!("the fake is a generative model: the API never asks it for embeddings")
    }
    fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            slots: 4,
            generated_tokens: 7,
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy)]
enum SourceMode {
    Ready,
    Pending,
    Fail,
}

struct FakeSource(SourceMode, Arc<AtomicUsize>);

impl ModelSource for FakeSource {
    fn status(&self) -> ModelStatus {
        match self.0 {
            SourceMode::Ready => ModelStatus::Ready {
                path: "(memory)".into(),
                size: 0,
                sha256: None,
                seconds: 0.0,
                source: "fake://model".into(),
            },
            SourceMode::Pending => ModelStatus::Downloading {
                bytes_done: 50,
                bytes_total: 100,
                bytes_per_sec: 10.0,
            },
            SourceMode::Fail => ModelStatus::Failed {
                error: "no such object".into(),
            },
        }
    }
    fn fetch(&self) -> BoxFuture<'_, Result<Arc<memmap2::Mmap>, FetchError>> {
        let mode = self.0;
        self.1.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            match mode {
                SourceMode::Ready => Ok(Arc::new(
                    memmap2::MmapOptions::new()
                        .len(1)
                        .map_anon()
                        .unwrap()
                        .make_read_only()
                        .unwrap(),
                )),
                SourceMode::Pending => std::future::pending().await,
                SourceMode::Fail => Err(FetchError {
                    message: "no such object".to_string(),
                    permanent: false,
                }),
            }
        })
    }
    fn describe(&self) -> String {
        "fake://model".into()
    }
}

struct Harness {
    state: AppState,
    cancelled: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    last_params: Arc<Mutex<Option<GenerateParams>>>,
    fetches: Arc<AtomicUsize>,
}

fn harness_with(mode: SourceMode, delay: Duration, config: ApiConfig) -> Harness {
    let cancelled = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let last_params = Arc::new(Mutex::new(None));
    let (c2, k2, p2) = (cancelled.clone(), calls.clone(), last_params.clone());
    let loader: Loader = Arc::new(move |_map| {
        Ok(Arc::new(FakeEngine {
            delay,
            cancelled: c2.clone(),
            calls: k2.clone(),
            last_params: p2.clone(),
        }) as Arc<dyn Engine>)
    });
    let fetches = Arc::new(AtomicUsize::new(0));
    let state = AppState::new(config, Arc::new(FakeSource(mode, fetches.clone())), loader);
    Harness {
        state,
        cancelled,
        calls,
        last_params,
        fetches,
    }
}

async fn ready_harness(config: ApiConfig) -> Harness {
    let h = harness_with(SourceMode::Ready, Duration::ZERO, config);
    wait_ready(&h.state).await;
    h
}

async fn wait_ready(state: &AppState) {
    for _ in 0..200 {
        if state.is_ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("fake model never became ready");
}

async fn call(
    state: &AppState,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    // The OpenAI SDKs' content type, unless the test sets its own.
    if body.is_some()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(
            body.map(|s| Body::from(s.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn assert_openai_error(
    status: StatusCode,
    body: &str,
    want_status: u16,
    want_param: Option<&str>,
    want_code: Option<&str>,
) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    let v = json_of(body);
    let e = &v["error"];
    assert!(e["message"].is_string(), "{body}");
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    if let Some(p) = want_param {
        assert_eq!(e["param"], p, "{body}");
    }
    if let Some(c) = want_code {
        assert_eq!(e["code"], c, "{body}");
    }
}

const CHAT: &str =
    r#"{"model":"bitnet-b1.58-2b-4t","messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#;

#[tokio::test]
async fn health_and_ready_while_downloading() {
    let h = harness_with(SourceMode::Pending, Duration::ZERO, ApiConfig::default());
    let (s, _, body) = call(&h.state, "GET", "/health", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&body);
    assert_eq!(v["model"]["state"], "downloading");
    assert_eq!(v["model"]["bytes_total"], 100);
    let (s, headers, _) = call(&h.state, "GET", "/ready", None, &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "5");
    let (s, headers, body) = call(&h.state, "POST", "/v1/chat/completions", Some(CHAT), &[]).await;
    assert_openai_error(s, &body, 503, None, Some("model_not_ready"));
    assert!(headers.contains_key("retry-after"));
    // Routes that need no model answer anyway.
    let (s, _, body) = call(&h.state, "GET", "/v1/models", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&body)["data"][0]["id"], "bitnet-b1.58-2b-4t");
    let (s, _, _) = call(&h.state, "GET", "/", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn bounded_wait_for_model() {
    let config = ApiConfig {
        wait_for_model: Duration::from_millis(50),
        ..ApiConfig::default()
    };
    let h = harness_with(SourceMode::Pending, Duration::ZERO, config);
    let t0 = std::time::Instant::now();
    let (s, _, body) = call(&h.state, "POST", "/v1/chat/completions", Some(CHAT), &[]).await;
    assert_openai_error(s, &body, 503, None, Some("model_not_ready"));
    assert!(t0.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn failed_source_reports_failed() {
    let h = harness_with(SourceMode::Fail, Duration::ZERO, ApiConfig::default());
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (s, _, body) = call(&h.state, "GET", "/health", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&body);
    assert_eq!(v["model"]["state"], "failed", "{body}");
    assert_eq!(v["model"]["error"], "no such object");
    let (s, _, body) = call(
        &h.state,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"x"}"#),
        &[],
    )
    .await;
    assert_openai_error(s, &body, 503, None, Some("model_unavailable"));
}

#[tokio::test]
async fn chat_completion_shape() {
    let h = ready_harness(ApiConfig::default()).await;
    let (s, headers, body) = call(
        &h.state,
        "POST",
        "/v1/chat/completions",
        Some(CHAT),
        &[("x-request-id", "abc123")],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(headers["x-request-id"], "abc123");
    let v = json_of(&body);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["id"], "chatcmpl-abc123");
    assert_eq!(v["model"], "bitnet-b1.58-2b-4t");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], 7);
    assert_eq!(v["timings"]["predicted_n"], 3);
    assert_eq!(v["timings"]["predicted_per_second"], 300.0);
    assert_eq!(v["timings"]["prompt_per_second"], 2000.0);
    // Also without the /v1 prefix, and with the Lambda request id.
    let (s, headers, _) = call(
        &h.state,
        "POST",
        "/chat/completions",
        Some(CHAT),
        &[("x-amzn-requestid", "lambda-1")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(headers["x-request-id"], "lambda-1");
}

#[tokio::test]
async fn stop_strings_go_to_the_engine() {
    // The engine matches stops (tested there); the API passes them on and maps its reason.
    let h = ready_harness(ApiConfig::default()).await;
    let (s, _, body) = call(
        &h.state,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"x","max_tokens":10,"stop":["k2"]}"#),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v = json_of(&body);
    assert_eq!(v["object"], "text_completion");
    let params = h.last_params.lock().unwrap().clone().unwrap();
    assert_eq!(params.stop_strings, ["k2"]);
    assert_eq!(params.max_tokens, 10);
    assert_eq!(
        params.stop_ids, None,
        "the model's own end-of-generation ids"
    );
}

fn sse_events(body: &str) -> Vec<String> {
    assert!(body.ends_with("data: [DONE]\n\n"), "{body:?}");
    body.split("\n\n")
        .filter(|s| !s.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad SSE event {e:?}"))
                .to_string()
        })
        .collect()
}

/// The JSON chunks of an SSE body's events (all but the final `[DONE]`).
fn sse_chunks(events: &[String]) -> Vec<Value> {
    events[..events.len() - 1]
        .iter()
        .map(|e| json_of(e))
        .collect()
}

#[tokio::test]
async fn chat_stream_framing_with_usage() {
    let h = ready_harness(ApiConfig::default()).await;
    let req = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}"#;
    let (s, headers, body) = call(&h.state, "POST", "/v1/chat/completions", Some(req), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = sse_chunks(&events);
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let mut text = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(
            c.get("usage").is_some(),
            "include_usage puts usage: null on every chunk"
        );
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    assert_eq!(text, "tok0 tok1 tok2 ");
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], "length");
    assert_eq!(fin["choices"][0]["delta"], json!({}));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn completion_stream_without_usage() {
    let h = ready_harness(ApiConfig::default()).await;
    let req = r#"{"prompt":"x","max_tokens":3,"stream":true}"#;
    let (s, _, body) = call(&h.state, "POST", "/v1/completions", Some(req), &[]).await;
    assert_eq!(s, StatusCode::OK);
    let events = sse_events(&body);
    let chunks = sse_chunks(&events);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 ");
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none() && c["object"] == "text_completion")
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test]
async fn logprobs_in_both_shapes_streamed_or_not() {
    let h = ready_harness(ApiConfig::default()).await;
    // Chat: content[] items with bytes and top_logprobs.
    let body = r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":3,"logprobs":true,"top_logprobs":2}"#;
    let (s, _, b) = call(&h.state, "POST", "/v1/chat/completions", Some(body), &[]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json_of(&b);
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    assert_eq!(
        content[1],
        json!({"token": "\u{1}", "logprob": -1.0, "bytes": [1],
               "top_logprobs": [{"token": "\u{1}", "logprob": -1.0, "bytes": [1]},
                                {"token": "\u{2}", "logprob": -9.0, "bytes": [2]}]})
    );
    // Streamed: the same items, spread over the chunks.
    let body = r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":3,"logprobs":true,"stream":true}"#;
    let (_, _, b) = call(&h.state, "POST", "/v1/chat/completions", Some(body), &[]).await;
    let streamed: Vec<Value> = sse_chunks(&sse_events(&b))
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(streamed.len(), 3, "{b}");
    assert_eq!(streamed[2]["logprob"], -1.5);
    assert_eq!(streamed[2]["top_logprobs"], json!([]));
    // Without logprobs: null.
    let body = r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1}"#;
    let (_, _, b) = call(&h.state, "POST", "/v1/chat/completions", Some(body), &[]).await;
    assert_eq!(json_of(&b)["choices"][0]["logprobs"], Value::Null);

    // Completions: the legacy object; text_offset starts after the prompt "ab" (BOS is no
    // text).
    let body = r#"{"prompt":"ab","max_tokens":2,"logprobs":1}"#;
    let (_, _, b) = call(&h.state, "POST", "/v1/completions", Some(body), &[]).await;
    let lp = &json_of(&b)["choices"][0]["logprobs"];
    assert_eq!(
        *lp,
        json!({"tokens": ["\u{0}", "\u{1}"], "token_logprobs": [-0.5, -1.0],
               "top_logprobs": [{"\u{0}": -0.5}, {"\u{1}": -1.0}], "text_offset": [2, 3]})
    );
    // Echo with nothing generated: the prompt's own log-probabilities, the first null.
    let body = r#"{"prompt":"ab","max_tokens":0,"echo":true,"logprobs":0}"#;
    let (s, _, b) = call(&h.state, "POST", "/v1/completions", Some(body), &[]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json_of(&b);
    assert_eq!(v["choices"][0]["text"], "ab");
    assert_eq!(
        v["choices"][0]["logprobs"],
        json!({"tokens": ["<|begin_of_text|>", "a", "b"], "token_logprobs": [null, -1.0, -1.0],
               "top_logprobs": [null, {}, {}], "text_offset": [0, 0, 1]})
    );
    assert_eq!(v["usage"]["completion_tokens"], 0);
    // Streamed completions with echo (no logprobs): the prompt comes first.
    let body = r#"{"prompt":"ab","max_tokens":1,"echo":true,"stream":true}"#;
    let (_, _, b) = call(&h.state, "POST", "/v1/completions", Some(body), &[]).await;
    let chunks = sse_chunks(&sse_events(&b));
    assert_eq!(chunks[0]["choices"][0]["text"], "ab", "{b}");
    assert_eq!(chunks[1]["choices"][0]["text"], "tok0 ");
}

#[tokio::test]
async fn any_model_name_is_the_one_loaded() {
    let h = ready_harness(ApiConfig::default()).await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":2}"#,
        ),
        (
            "/v1/completions",
            r#"{"model":"text-davinci-003","prompt":"x","max_tokens":2}"#,
        ),
    ] {
        let (s, _, b) = call(&h.state, "POST", path, Some(body), &[]).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            v["model"],
            ApiConfig::default().model_id,
            "the real id, not the asked one"
        );
    }
    // Retrieving a model by a name the server does not have is still a 404.
    let (s, _, b) = call(&h.state, "GET", "/v1/models/gpt-4o-mini", None, &[]).await;
    assert_openai_error(s, &b, 404, Some("model"), Some("model_not_found"));
}

#[tokio::test]
async fn tokenize_and_detokenize_as_llama_server() {
    let h = ready_harness(ApiConfig::default()).await;
    let post = |path: &'static str, body: &'static str| {
        let st = h.state.clone();
        async move {
            let (s, _, b) = call(&st, "POST", path, Some(body), &[]).await;
            (s, b)
        }
    };
    let (s, b) = post("/tokenize", r#"{"content":"Hi"}"#).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, r#"{"tokens":[72,105]}"#));
    let (s, b) = post("/tokenize", r#"{"content":"Hi","add_special":true}"#).await;
    assert_eq!(
        (s, b.as_str()),
        (StatusCode::OK, r#"{"tokens":[999,72,105]}"#)
    );
    // Pieces: text when the token's bytes are UTF-8 on their own, else the byte values.
    let (s, b) = post("/tokenize", r#"{"content":"é","with_pieces":true}"#).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        v["tokens"],
        serde_json::json!([{"id": 195, "piece": [195]}, {"id": 169, "piece": [169]}])
    );
    let (_, b) = post(
        "/tokenize",
        r#"{"content":"a","with_pieces":true,"add_special":true}"#,
    )
    .await;
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        v["tokens"],
        serde_json::json!([{"id": 999, "piece": "<|begin_of_text|>"}, {"id": 97, "piece": "a"}])
    );
    let (s, b) = post("/detokenize", r#"{"tokens":[999,72,105,998]}"#).await;
    assert_eq!(
        (s, b.as_str()),
        (
            StatusCode::OK,
            r#"{"content":"<|begin_of_text|>Hi<|eot_id|>"}"#
        )
    );
    let (s, b) = post("/detokenize", r#"{"tokens":[]}"#).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, r#"{"content":""}"#));

    // Bad input: 400 naming the parameter, before any tokenizing.
    for (path, body, param) in [
        ("/tokenize", r#"{}"#, "content"),
        ("/tokenize", r#"{"content":5}"#, "content"),
        (
            "/tokenize",
            r#"{"content":"x","add_special":"yes"}"#,
            "add_special",
        ),
        (
            "/tokenize",
            r#"{"content":"x","parse_special":true}"#,
            "parse_special",
        ),
        ("/detokenize", r#"{}"#, "tokens"),
        ("/detokenize", r#"{"tokens":"1 2"}"#, "tokens"),
        ("/detokenize", r#"{"tokens":[1,-2]}"#, "tokens"),
        ("/detokenize", r#"{"tokens":[1.5]}"#, "tokens"),
        ("/detokenize", r#"{"tokens":[4294967296]}"#, "tokens"),
        ("/detokenize", r#"{"tokens":[1000]}"#, "tokens"),
    ] {
        let (s, b) = post(path, body).await;
        assert_openai_error(s, &b, 400, Some(param), None);
    }
    let (s, b) = post("/detokenize", r#"{"tokens":[5, 1000]}"#).await;
    assert!(b.contains("1000 is out of range"), "{s} {b}");
    let (s, b) = post("/tokenize", "[1]").await;
    assert_openai_error(s, &b, 400, None, None);
    let (s, _, _) = call(
        &h.state,
        "POST",
        "/detokenize",
        Some(r#"{"tokens":[72]}"#),
        &[("content-type", "text/plain")],
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn token_endpoints_need_the_key() {
    let h = ready_harness(ApiConfig {
        api_key: crate::config::ApiKey::new("k"),
        ..ApiConfig::default()
    })
    .await;
    let (s, _, _) = call(
        &h.state,
        "POST",
        "/tokenize",
        Some(r#"{"content":"x"}"#),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, b) = call(
        &h.state,
        "POST",
        "/detokenize",
        Some(r#"{"tokens":[72]}"#),
        &[("authorization", "Bearer k")],
    )
    .await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, r#"{"content":"H"}"#));
}

#[tokio::test]
async fn client_errors() {
    let config = ApiConfig {
        max_body_bytes: 1000,
        ..ApiConfig::default()
    };
    let h = ready_harness(config).await;
    let post = |path: &'static str, body: String| {
        let st = h.state.clone();
        async move { call(&st, "POST", path, Some(&body), &[]).await }
    };
    let (s, _, b) = post("/v1/chat/completions", "{oops".into()).await;
    assert_openai_error(s, &b, 400, None, Some("invalid_json"));
    let (s, _, b) = post("/v1/chat/completions", r#"{"messages":[]}"#.into()).await;
    assert_openai_error(s, &b, 400, Some("messages"), None);
    let (s, _, b) = post(
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#.into(),
    )
    .await;
    assert_openai_error(s, &b, 400, Some("temperature"), None);
    let (s, _, b) = post(
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"x"}],"n":9}"#.into(),
    )
    .await;
    assert_openai_error(s, &b, 400, Some("n"), None);
    let (s, _, b) = post(
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"hello"}],"max_tokens":60}"#.into(),
    )
    .await;
    assert_openai_error(
        s,
        &b,
        400,
        Some("messages"),
        Some("context_length_exceeded"),
    );
    let long = "y".repeat(70);
    let (s, _, b) = post("/v1/completions", format!(r#"{{"prompt":"{long}"}}"#)).await;
    assert_openai_error(s, &b, 400, Some("prompt"), Some("context_length_exceeded"));
    let (s, _, b) = post("/v1/completions", r#"{"prompt":[5000]}"#.into()).await;
    assert_openai_error(s, &b, 400, Some("prompt"), None);
    let big = format!(r#"{{"prompt":"{}"}}"#, "z".repeat(2000));
    let (s, _, b) = post("/v1/completions", big).await;
    assert_openai_error(s, &b, 413, None, Some("request_too_large"));
    // A body without Content-Length (chunked) is limited too.
    let stream = futures_util::stream::iter(
        (0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 100]))),
    );
    let req = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap();
    let resp = router(h.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _, b) = call(&h.state, "GET", "/v2/nothing", None, &[]).await;
    assert_openai_error(s, &b, 404, None, Some("unknown_url"));
    let (s, _, b) = call(&h.state, "GET", "/v1/chat/completions", None, &[]).await;
    assert_openai_error(s, &b, 405, None, None);
    let (s, _, b) = call(&h.state, "GET", "/v1/models/other", None, &[]).await;
    assert_openai_error(s, &b, 404, Some("model"), Some("model_not_found"));
    assert_eq!(
        h.calls.load(Ordering::SeqCst),
        0,
        "no bad request reached the engine"
    );
}

#[tokio::test]
async fn bearer_auth() {
    let config = ApiConfig {
        api_key: crate::config::ApiKey::new("sekrit"),
        ..ApiConfig::default()
    };
    let h = ready_harness(config).await;
    let (s, _, b) = call(&h.state, "POST", "/v1/chat/completions", Some(CHAT), &[]).await;
    assert_openai_error(s, &b, 401, None, Some("invalid_api_key"));
    let (s, _, b) = call(
        &h.state,
        "GET",
        "/v1/models",
        None,
        &[("authorization", "Bearer wrong")],
    )
    .await;
    assert_openai_error(s, &b, 401, None, Some("invalid_api_key"));
    let (s, _, _) = call(
        &h.state,
        "POST",
        "/v1/chat/completions",
        Some(CHAT),
        &[("authorization", "Bearer sekrit")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call(
        &h.state,
        "GET",
        "/v1/models",
        None,
        &[("api-key", "sekrit")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for path in ["/", "/health", "/ready"] {
        let (s, _, _) = call(&h.state, "GET", path, None, &[]).await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
    // Unknown routes do not reveal themselves without the key.
    let (s, _, _) = call(&h.state, "GET", "/v2/x", None, &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_is_429() {
    let config = ApiConfig {
        parallel: 1,
        max_queue: 1,
        ..ApiConfig::default()
    };
    let h = harness_with(SourceMode::Ready, Duration::from_millis(20), config);
    wait_ready(&h.state).await;
    let slow = r#"{"prompt":"x","max_tokens":10}"#;
    let a = tokio::spawn({
        let s = h.state.clone();
        async move { call(&s, "POST", "/v1/completions", Some(slow), &[]).await }
    });
    let b = tokio::spawn({
        let s = h.state.clone();
        async move { call(&s, "POST", "/v1/completions", Some(slow), &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (s, headers, body) = call(&h.state, "POST", "/v1/completions", Some(slow), &[]).await;
    assert_openai_error(s, &body, 429, None, Some("rate_limit_exceeded"));
    assert!(headers.contains_key("retry-after"));
    assert_eq!(a.await.unwrap().0, StatusCode::OK);
    assert_eq!(b.await.unwrap().0, StatusCode::OK);
    assert_eq!(h.state.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_disconnect_stops_generation() {
    let h = harness_with(
        SourceMode::Ready,
        Duration::from_millis(5),
        ApiConfig::default(),
    );
    wait_ready(&h.state).await;
    let req = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"prompt":"x","max_tokens":50,"stream":true}"#,
        ))
        .unwrap();
    let resp = router(h.state.clone()).oneshot(req).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().unwrap().starts_with(b"data: "));
    drop(body);
    for _ in 0..200 {
        if h.cancelled.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        h.cancelled.load(Ordering::SeqCst),
        "generation did not stop after the client left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_request_stops_generation() {
    let h = harness_with(
        SourceMode::Ready,
        Duration::from_millis(5),
        ApiConfig::default(),
    );
    wait_ready(&h.state).await;
    let fut = call(
        &h.state,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"x","max_tokens":60}"#),
        &[],
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(40), fut)
            .await
            .is_err()
    );
    for _ in 0..200 {
        if h.cancelled.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        h.cancelled.load(Ordering::SeqCst),
        "generation did not stop after the request was dropped"
    );
}

#[tokio::test]
async fn generation_requests_must_be_json() {
    let h = ready_harness(ApiConfig::default()).await;
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (s, _, b) = call(
            &h.state,
            "POST",
            "/v1/chat/completions",
            Some(CHAT),
            &[("content-type", ct)],
        )
        .await;
        assert_openai_error(s, &b, 415, None, Some("unsupported_media_type"));
    }
    let req = Request::post("/v1/completions")
        .body(Body::from(r#"{"prompt":"x","max_tokens":2}"#))
        .unwrap();
    let resp = router(h.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (s, _, _) = call(
        &h.state,
        "POST",
        "/v1/chat/completions",
        Some(CHAT),
        &[("content-type", "Application/JSON; charset=utf-8")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        h.calls.load(Ordering::SeqCst),
        1,
        "only the JSON request ran"
    );
}

#[tokio::test]
async fn cors_is_off_by_default_and_answers_preflights_when_configured() {
    let preflight = |state: AppState| async move {
        let req = Request::builder()
            .method("OPTIONS")
            .uri("/v1/chat/completions")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .body(Body::empty())
            .unwrap();
        router(state).oneshot(req).await.unwrap()
    };
    let off = ready_harness(ApiConfig {
        api_key: crate::config::ApiKey::new("k"),
        ..ApiConfig::default()
    })
    .await;
    let resp = preflight(off.state.clone()).await;
    assert!(!resp.status().is_success(), "{}", resp.status());
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    let on = ready_harness(ApiConfig {
        api_key: crate::config::ApiKey::new("k"),
        cors_origins: vec!["https://app.example".into()],
        ..ApiConfig::default()
    })
    .await;
    let resp = preflight(on.state.clone()).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = resp.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    // The actual request still needs the key.
    let (s, _, _) = call(
        &on.state,
        "POST",
        "/v1/chat/completions",
        Some(CHAT),
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn parameters_that_cannot_be_computed_are_400s_naming_them() {
    let h = ready_harness(ApiConfig::default()).await;
    let cases = [
        (r#""repeat_penalty":0"#, "repeat_penalty"),
        (r#""repeat_penalty":-1"#, "repeat_penalty"),
        (r#""temperature":3"#, "temperature"),
        (r#""top_p":1.5"#, "top_p"),
        (r#""presence_penalty":-2.5"#, "presence_penalty"),
        (r#""stop":["a","b","c","d","e"]"#, "stop"),
    ];
    for (extra, param) in cases {
        let body = format!(r#"{{"prompt":"x","max_tokens":2,{extra}}}"#);
        let (s, _, b) = call(&h.state, "POST", "/v1/completions", Some(&body), &[]).await;
        assert_openai_error(s, &b, 400, Some(param), None);
    }
    let long_stop = format!(
        r#"{{"prompt":"x","max_tokens":2,"stop":"{}"}}"#,
        "s".repeat(300)
    );
    let (s, _, b) = call(&h.state, "POST", "/v1/completions", Some(&long_stop), &[]).await;
    assert_openai_error(s, &b, 400, Some("stop"), None);
    assert_eq!(h.calls.load(Ordering::SeqCst), 0);
    // A temperature too small to divide by is served (greedy), not refused.
    let tiny = r#"{"prompt":"x","max_tokens":2,"temperature":1e-39}"#;
    let (s, _, b) = call(&h.state, "POST", "/v1/completions", Some(tiny), &[]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_before_reading_the_body() {
    let config = ApiConfig {
        parallel: 1,
        max_queue: 0,
        ..ApiConfig::default()
    };
    let h = harness_with(SourceMode::Ready, Duration::from_millis(20), config);
    wait_ready(&h.state).await;
    let running = tokio::spawn({
        let s = h.state.clone();
        async move {
            call(
                &s,
                "POST",
                "/v1/completions",
                Some(r#"{"prompt":"x","max_tokens":10}"#),
                &[],
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    // A body that never arrives: only a refusal that does not read it can answer.
    let never = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let req = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from_stream(never))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(2), router(h.state.clone()).oneshot(req))
        .await
        .expect("answered without the body")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(running.await.unwrap().0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_past_the_body_timeout_is_408() {
    let mut config = ApiConfig::default();
    config.http.body_timeout = Duration::from_millis(100);
    let h = ready_harness(config).await;
    let slow = futures_util::stream::unfold(0, |i| async move {
        tokio::time::sleep(Duration::from_millis(60)).await;
        (i < 50).then(|| {
            (
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b" ")),
                i + 1,
            )
        })
    });
    let req = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from_stream(slow))
        .unwrap();
    let resp = router(h.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(h.state.in_flight(), 0, "the queue place is given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generation_deadline_finishes_the_response_cut_short() {
    let config = ApiConfig {
        generation_timeout: Some(Duration::from_millis(150)),
        ..ApiConfig::default()
    };
    let h = harness_with(SourceMode::Ready, Duration::from_millis(20), config);
    wait_ready(&h.state).await;
    let (s, _, b) = call(
        &h.state,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"x","max_tokens":50}"#),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json_of(&b);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // Fewer than the 50 asked for (a loaded machine may leave time for none at all).
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(n < 20, "{n} tokens in 150 ms at 20 ms each");
    let (s, _, b) = call(
        &h.state,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"x","max_tokens":50,"stream":true}"#),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let events = sse_events(&b);
    let last: Value = json_of(&events[events.len() - 2]);
    assert_eq!(last["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn several_choices_come_back_indexed_with_usage_summed() {
    let h = ready_harness(ApiConfig::default()).await;
    let req = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"n":3}"#;
    let (s, _, body) = call(&h.state, "POST", "/v1/chat/completions", Some(req), &[]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v = json_of(&body);
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["content"], "tok0 tok1 ");
    }
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens"], 6);
    // Streaming: every choice's chunks carry its index; one usage chunk, one [DONE].
    let req = r#"{"prompt":"x","max_tokens":2,"n":2,"stream":true,"stream_options":{"include_usage":true}}"#;
    let (s, _, body) = call(&h.state, "POST", "/v1/completions", Some(req), &[]).await;
    assert_eq!(s, StatusCode::OK);
    let events = sse_events(&body);
    let chunks = sse_chunks(&events);
    for i in 0..2 {
        let text: String = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, "tok0 tok1 ", "choice {i}");
        let finished = chunks
            .iter()
            .filter(|c| {
                c["choices"][0]["index"] == i && c["choices"][0]["finish_reason"] == "length"
            })
            .count();
        assert_eq!(finished, 1, "choice {i}");
    }
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1);
}

#[tokio::test]
async fn metrics_report_requests_the_scheduler_and_latencies() {
    let h = ready_harness(ApiConfig::default()).await;
    let (s, _, _) = call(&h.state, "POST", "/v1/chat/completions", Some(CHAT), &[]).await;
    assert_eq!(s, StatusCode::OK);
    let _ = call(&h.state, "GET", "/nowhere/a", None, &[]).await;
    let _ = call(&h.state, "GET", "/nowhere/b", None, &[]).await;
    let (s, headers, body) = call(&h.state, "GET", "/metrics", None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    for line in [
        "bitnet_http_requests_total{route=\"chat_completions\",code=\"200\"} 1",
        // Unknown paths share one label.
        "bitnet_http_requests_total{route=\"other\",code=\"404\"} 2",
        "bitnet_generations_total{reason=\"length\"} 1",
        "bitnet_time_to_first_token_seconds_count 1",
        // Three tokens: two gaps.
        "bitnet_inter_token_seconds_count 2",
        "bitnet_slots 4",
        "bitnet_generated_tokens_total 7",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
    }
    // Behind the key like the API.
    let keyed = ready_harness(ApiConfig {
        api_key: crate::config::ApiKey::new("k"),
        ..ApiConfig::default()
    })
    .await;
    let (s, _, _) = call(&keyed.state, "GET", "/metrics", None, &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = call(
        &keyed.state,
        "GET",
        "/metrics",
        None,
        &[("authorization", "Bearer k")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn a_failed_load_backs_off_instead_of_retrying_on_every_probe() {
    let h = harness_with(SourceMode::Fail, Duration::ZERO, ApiConfig::default());
    for _ in 0..200 {
        if h.fetches.load(Ordering::SeqCst) == 1 && !h.state.is_ready() {
            let (_, _, b) = call(&h.state, "GET", "/health", None, &[]).await;
            if json_of(&b)["model"]["state"] == "failed" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..5 {
        let (s, headers, b) = call(&h.state, "GET", "/ready", None, &[]).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        let v = json_of(&b);
        assert_eq!(v["model"]["state"], "failed", "{b}");
        assert_eq!(v["model"]["attempts"], 1);
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((5..=10).contains(&retry), "{retry}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        h.fetches.load(Ordering::SeqCst),
        1,
        "probes restarted the download"
    );
}
