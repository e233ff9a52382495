//! One generation request from parsed request to response: tokenise, check the context, take
//! the engine, run it on a blocking thread, and answer in one JSON body or as SSE chunks.

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bitnet_engine::{GenerateOutput, GenerateParams, Interrupt, StopReason};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::error::ApiError;
use crate::openai::{CompletionRequest, Endpoint, PromptInput};
use crate::state::{Admission, AppState, panic_message, payload_message};

/// Streamed output passes through this buffer so that text which may be the start of a stop
/// sequence is held back until it is known not to be one.
#[derive(Debug, Default)]
pub struct StopBuffer {
    stops: Vec<String>,
    pending: String,
    /// Everything released so far.
    pub emitted: String,
    pub hit: bool,
}

impl StopBuffer {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            ..Self::default()
        }
    }

    /// Adds text; returns what can be released now. After a stop sequence is found, `hit` is set
    /// and the text before it is the last release.
    pub fn push(&mut self, text: &str) -> String {
        if self.hit {
            return String::new();
        }
        self.pending.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            self.hit = true;
            let out = self.pending[..pos].to_string();
            self.pending.clear();
            self.emitted.push_str(&out);
            return out;
        }
        // Hold back the longest suffix of `pending` that is a prefix of some stop sequence.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let tail = &self.pending[i..];
                if tail.len() <= keep {
                    break;
                }
                if s.starts_with(tail) {
                    keep = tail.len();
                    break;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        self.emitted.push_str(&out);
        out
    }

    /// The full text once generation has ended, and the part of it not yet released.
    /// `engine_text` is the engine's own final text (it may have cut a stop sequence itself).
    pub fn finish(&mut self, engine_text: &str) -> (String, String) {
        if self.hit {
            return (self.emitted.clone(), String::new());
        }
        let full = if engine_text.starts_with(&self.emitted) {
            engine_text.to_string()
        } else {
            format!("{}{}", self.emitted, self.pending)
        };
        let rest = full[self.emitted.len()..].to_string();
        self.pending.clear();
        self.emitted = full.clone();
        (full, rest)
    }
}

/// Cancels the generation when dropped before [`CancelOnDrop::disarm`]: the non-streaming
/// handler's future is dropped when the client disconnects, the streaming forwarder's task
/// ends when the response body is dropped; the engine sees the interrupt at the next layer
/// or token.
struct CancelOnDrop(Option<Interrupt>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(i) = &self.0 {
            i.cancel();
        }
    }
}

/// How often a stream with nothing to send (a long prompt being read) sends an SSE comment:
/// proxies keep the connection, and a client that left is noticed by the failed write.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// What the blocking generation task reports.
enum Event {
    Delta(String),
    /// `text` is the whole completion; `rest` its part not yet sent as a delta.
    Done {
        output: GenerateOutput,
        text: String,
        rest: String,
        hit_stop: bool,
    },
    Failed(ApiError),
}

pub struct Prepared {
    engine: Arc<dyn Engine>,
    prompt: Vec<u32>,
    params: GenerateParams,
}

/// Sends to the client's channel, waiting at most `stall` for room: a client that has read
/// nothing for that long is treated as gone. Runs on the generation thread.
struct TimedSender {
    tx: mpsc::Sender<Event>,
    stall: Duration,
    runtime: tokio::runtime::Handle,
}

impl TimedSender {
    /// False when the client is gone or stalled.
    fn send(&self, ev: Event) -> bool {
        match self.tx.try_send(ev) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(ev)) => {
                let sent = self
                    .runtime
                    .block_on(tokio::time::timeout(self.stall, self.tx.send(ev)));
                match sent {
                    Ok(Ok(())) => true,
                    Ok(Err(_)) => false,
                    Err(_) => {
                        tracing::warn!(
                            stall_s = self.stall.as_secs_f64(),
                            "client stopped reading the stream; cancelling its generation"
                        );
                        false
                    }
                }
            }
        }
    }
}

/// Tokenises and checks the request against the model; errors are the client's (400).
pub async fn prepare(state: &AppState, req: &CompletionRequest) -> Result<Prepared, ApiError> {
    let engine = state.engine().await?;
    let input = req.input.clone();
    let eng = engine.clone();
    let prompt = tokio::task::spawn_blocking(move || match input {
        PromptInput::Chat(messages) => eng.encode_chat(&messages),
        PromptInput::Text(text) => eng.encode(&text, true),
        PromptInput::Tokens(ids) => ids,
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizer failed: {}", panic_message(e))))?;
    if prompt.is_empty() {
        return Err(ApiError::invalid_param(
            "prompt",
            "The prompt is empty: at least one token is needed.",
        ));
    }
    let n_vocab = engine.n_vocab();
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= n_vocab) {
        return Err(ApiError::invalid_param(
            "prompt",
            format!("Token id {id} is outside the vocabulary of {n_vocab}."),
        ));
    }
    let n_ctx = engine.n_ctx();
    let overflow = |max_tokens: usize| {
        let e = ApiError::context_length_exceeded(prompt.len(), max_tokens, n_ctx);
        match req.input {
            PromptInput::Chat(_) => e.with_param("messages"),
            _ => e.with_param("prompt"),
        }
    };
    let max_tokens = match req.max_tokens {
        Some(m) => {
            if prompt.len().saturating_add(m) > n_ctx {
                return Err(overflow(m));
            }
            m
        }
        None => {
            if prompt.len() >= n_ctx {
                return Err(overflow(1));
            }
            state.config().default_max_tokens.min(n_ctx - prompt.len())
        }
    };
    // Validated when the request was parsed (`openai::parse_request`), and again by the engine.
    let params = req.generate_params(max_tokens);
    Ok(Prepared {
        engine,
        prompt,
        params,
    })
}

/// Runs on a blocking thread: generation with streaming into `tx` (a failed or stalled send
/// means the client is gone) and the interrupt checked between layers and at every token.
fn run_blocking(
    p: Prepared,
    stops: Vec<String>,
    tx: Option<&TimedSender>,
    interrupt: &Interrupt,
) -> Event {
    let mut buf = StopBuffer::new(stops);
    let mut client_gone = false;
    let result = p
        .engine
        .generate(&p.prompt, &p.params, interrupt, &mut |piece| {
            let out = buf.push(piece.text);
            if let Some(tx) = tx
                && !out.is_empty()
                && !tx.send(Event::Delta(out))
            {
                client_gone = true;
                return ControlFlow::Break(());
            }
            if buf.hit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
    match result {
        Ok(mut output) => {
            let (text, rest) = buf.finish(&output.text);
            if client_gone {
                output.stop_reason = StopReason::Cancelled;
            }
            match output.stop_reason {
                StopReason::Cancelled => tracing::info!(
                    completion_tokens = output.completion_tokens,
                    prompt_ms = output.prompt_ms,
                    "client gone; generation stopped"
                ),
                StopReason::Deadline => tracing::warn!(
                    completion_tokens = output.completion_tokens,
                    prompt_ms = output.prompt_ms,
                    "generation deadline reached; response cut short"
                ),
                _ => {}
            }
            Event::Done {
                output,
                text,
                rest,
                hit_stop: buf.hit,
            }
        }
        Err(e) => Event::Failed(e.into()),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn finish_reason(output: &GenerateOutput, hit_stop: bool) -> &'static str {
    if hit_stop {
        return "stop";
    }
    match output.stop_reason {
        // Cut short by the deadline: like max_tokens, the text is incomplete.
        StopReason::Length | StopReason::Deadline => "length",
        StopReason::Stop | StopReason::Cancelled => "stop",
    }
}

pub fn usage(o: &GenerateOutput) -> Value {
    json!({
        "prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.completion_tokens,
        "total_tokens": o.prompt_tokens + o.completion_tokens,
    })
}

/// llama-server's `timings` object.
pub fn timings(o: &GenerateOutput) -> Value {
    let per_s = |n: usize, ms: f64| {
        if ms > 0.0 {
            n as f64 * 1000.0 / ms
        } else {
            0.0
        }
    };
    json!({
        "prompt_n": o.prompt_tokens,
        "prompt_ms": o.prompt_ms,
        "prompt_per_token_ms": if o.prompt_tokens > 0 { o.prompt_ms / o.prompt_tokens as f64 } else { 0.0 },
        "prompt_per_second": per_s(o.prompt_tokens, o.prompt_ms),
        "predicted_n": o.completion_tokens,
        "predicted_ms": o.decode_ms,
        "predicted_per_token_ms": if o.completion_tokens > 0 { o.decode_ms / o.completion_tokens as f64 } else { 0.0 },
        "predicted_per_second": per_s(o.completion_tokens, o.decode_ms),
    })
}

/// Identifiers and shapes of one response.
struct Shape {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
}

impl Shape {
    fn new(endpoint: Endpoint, model: String, request_id: &str) -> Self {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Completions => "cmpl-",
        };
        Self {
            endpoint,
            id: format!("{prefix}{request_id}"),
            created: unix_now(),
            model,
        }
    }

    fn full(&self, text: &str, output: &GenerateOutput, hit_stop: bool) -> Value {
        let reason = finish_reason(output, hit_stop);
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": { "role": "assistant", "content": text, "refusal": null },
                "logprobs": null,
                "finish_reason": reason,
            }),
            Endpoint::Completions => json!({
                "index": 0, "text": text, "logprobs": null, "finish_reason": reason,
            }),
        };
        json!({
            "id": self.id,
            "object": match self.endpoint { Endpoint::Chat => "chat.completion", Endpoint::Completions => "text_completion" },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [choice],
            "usage": usage(output),
            "timings": timings(output),
        })
    }

    /// One streaming chunk. `delta` is the text (None for the role-only first chat chunk).
    fn chunk(&self, choice: Option<Value>, include_usage: bool) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": match self.endpoint { Endpoint::Chat => "chat.completion.chunk", Endpoint::Completions => "text_completion" },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choice.map(|c| vec![c]).unwrap_or_default(),
        });
        if include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn delta_choice(&self, text: Option<&str>, role: bool, reason: Option<&str>) -> Value {
        match self.endpoint {
            Endpoint::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": reason })
            }
            Endpoint::Completions => json!({
                "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": reason,
            }),
        }
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// When a generation that starts now must end: the configured limit, or the front door's
/// deadline for this request, whichever comes first.
fn generation_deadline(state: &AppState, request: Option<Instant>) -> Option<Instant> {
    let configured = state
        .config()
        .generation_timeout
        .map(|t| Instant::now() + t);
    match (configured, request) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Serves one completion request (both endpoints, both modes). `admission` is the request's
/// place in the queue, taken before its body was read.
pub async fn complete(
    state: AppState,
    endpoint: Endpoint,
    req: CompletionRequest,
    request_id: String,
    admission: Admission,
    request_deadline: Option<Instant>,
) -> Result<Response, ApiError> {
    let deadline = generation_deadline(&state, request_deadline);
    if let Some(m) = &req.model
        && !m.is_empty()
        && !m.eq_ignore_ascii_case(&state.config().model_id)
    {
        return Err(ApiError::model_not_found(m));
    }
    let prepared = prepare(&state, &req).await?;
    let permit = admission.until_engine_free().await?;
    let shape = Shape::new(endpoint, state.config().model_id.clone(), &request_id);
    let stops = req.stop.clone();
    let interrupt = Interrupt::new().with_deadline(deadline);

    if !req.stream {
        let guard = CancelOnDrop(Some(interrupt.clone()));
        let span = tracing::Span::current();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _span = span.entered();
            run_blocking(prepared, stops, None, &interrupt)
        });
        let event = task
            .await
            .map_err(|e| ApiError::internal(format!("generation failed: {}", panic_message(e))))?;
        guard.disarm();
        return match event {
            Event::Done {
                output,
                text,
                hit_stop,
                ..
            } => {
                log_done(&output);
                Ok(axum::Json(shape.full(&text, &output, hit_stop)).into_response())
            }
            Event::Failed(e) => Err(e),
            Event::Delta(_) => Err(ApiError::internal("unexpected generation event")),
        };
    }

    // Streaming: a small bounded channel between the generation thread and the response body.
    let (tx, mut rx) = mpsc::channel::<Event>(8);
    let sender = TimedSender {
        tx,
        stall: state.config().stream_stall,
        runtime: tokio::runtime::Handle::current(),
    };
    let span = tracing::Span::current();
    let gen_span = span.clone();
    let gen_interrupt = interrupt.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _span = gen_span.entered();
        let event = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_blocking(prepared, stops, Some(&sender), &gen_interrupt)
        }))
        .unwrap_or_else(|p| {
            let msg = payload_message(p.as_ref());
            Event::Failed(ApiError::internal(format!("generation failed: {msg}")))
        });
        sender.send(event);
    });

    let include_usage = req.include_usage;
    let (btx, brx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            // Each send fails once the response body is dropped (the client left): stop then,
            // which cancels the generation (between layers of a long prompt too) and drops
            // `rx`, so the generation thread's next send fails as well.
            let _cancel = CancelOnDrop(Some(interrupt));
            macro_rules! emit {
                ($b:expr) => {
                    if btx.send($b).await.is_err() {
                        return;
                    }
                };
            }
            if shape.endpoint == Endpoint::Chat {
                emit!(sse(&shape.chunk(
                    Some(shape.delta_choice(Some(""), true, None)),
                    include_usage
                )));
            }
            loop {
                let ev = tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => ev,
                        None => return,
                    },
                    // The server dropped the body (the client closed the connection): stop
                    // now, a long prompt being read included.
                    _ = btx.closed() => return,
                    _ = tokio::time::sleep(SSE_KEEP_ALIVE) => {
                        emit!(Bytes::from_static(b": keep-alive\n\n"));
                        continue;
                    }
                };
                match ev {
                    Event::Delta(text) => {
                        emit!(sse(&shape.chunk(
                            Some(shape.delta_choice(Some(&text), false, None)),
                            include_usage
                        )));
                    }
                    Event::Done {
                        output,
                        rest,
                        hit_stop,
                        ..
                    } => {
                        log_done(&output);
                        if !rest.is_empty() {
                            emit!(sse(&shape.chunk(
                                Some(shape.delta_choice(Some(&rest), false, None)),
                                include_usage
                            )));
                        }
                        let reason = finish_reason(&output, hit_stop);
                        let text = match shape.endpoint {
                            Endpoint::Chat => None,
                            Endpoint::Completions => Some(""),
                        };
                        let mut last = shape.chunk(
                            Some(shape.delta_choice(text, false, Some(reason))),
                            include_usage,
                        );
                        last["timings"] = timings(&output);
                        emit!(sse(&last));
                        if include_usage {
                            let mut u = shape.chunk(None, false);
                            u["usage"] = usage(&output);
                            u["timings"] = timings(&output);
                            emit!(sse(&u));
                        }
                        emit!(Bytes::from_static(SSE_DONE));
                        return;
                    }
                    Event::Failed(e) => {
                        tracing::error!(error = %e, "generation failed mid-stream");
                        emit!(sse(&e.body()));
                        emit!(Bytes::from_static(SSE_DONE));
                        return;
                    }
                }
            }
        },
        span,
    ));
    let stream = futures_util::stream::unfold(brx, |mut brx| async move {
        brx.recv().await.map(|b| (Ok::<_, Infallible>(b), brx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

fn log_done(o: &GenerateOutput) {
    tracing::info!(
        prompt_tokens = o.prompt_tokens,
        completion_tokens = o.completion_tokens,
        prompt_ms = o.prompt_ms,
        decode_ms = o.decode_ms,
        stop_reason = ?o.stop_reason,
        "generation done"
    );
}
