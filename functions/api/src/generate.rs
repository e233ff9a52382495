//! One generation request from parsed request to response: tokenise, submit to the engine's
//! scheduler (which validates it, runs it batched with the others, and owns its stops and
//! limits), and answer in one JSON body or as SSE chunks from the one channel of its events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bitnet_engine::{
    EngineError, Event, EventSink, GenerateOutput, GenerateParams, Interrupt, SinkError,
    StopReason, TokenLogprob,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::error::ApiError;
use crate::logprobs::{Legacy, chat_content, text_chars};
use crate::metrics::Metrics;
use crate::openai::{CompletionRequest, Endpoint, PromptInput};
use crate::state::{Admission, AppState, panic_message};

/// Cancels the generation when dropped: the non-streaming handler's future is dropped when
/// the client disconnects, the streaming body when the connection closes; the engine sees
/// the interrupt at its next step (and the closed channel too). Harmless once the
/// generation has ended.
struct CancelOnDrop(Option<Interrupt>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(i) = &self.0 {
            i.cancel();
        }
    }
}

/// How often a stream with nothing to send (a long prompt being read, a queue) sends an SSE
/// comment: proxies keep the connection, and a client that left is noticed by the failed write.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Events a generation may have ready before its client takes them; when full the engine
/// holds the sequence back, and cancels it after `BITNET_STREAM_STALL_SECS`.
const EVENT_BUFFER: usize = 64;

/// The engine's side of a request's one channel; each choice's events carry its index.
struct ChannelSink {
    tx: mpsc::Sender<(usize, Event)>,
    index: usize,
    _place: SharedAdmission,
}

/// A request's place, given back as soon as either side lets go: the response (done, or the
/// client left) or the engine (done, or it cancelled a client that stopped reading while the
/// front door still holds the response, as a Lambda runtime whose caller left can).
#[derive(Clone)]
struct SharedAdmission(Arc<std::sync::Mutex<Option<Admission>>>);

impl Drop for SharedAdmission {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl EventSink for ChannelSink {
    fn try_send(&mut self, event: Event) -> Result<(), SinkError> {
        self.tx.try_send((self.index, event)).map_err(|e| match e {
            mpsc::error::TrySendError::Full((_, ev)) => SinkError::Full(ev),
            mpsc::error::TrySendError::Closed(_) => SinkError::Closed,
        })
    }
    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

pub struct Prepared {
    engine: Arc<dyn Engine>,
    prompt: Vec<u32>,
    params: GenerateParams,
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
    // Without `max_tokens`: the default, as far as the context has room (the engine says
    // when it has none).
    let room = engine.n_ctx().saturating_sub(prompt.len()).max(1);
    let max_tokens = req
        .max_tokens
        .unwrap_or_else(|| state.config().default_max_tokens.min(room));
    Ok(Prepared {
        engine,
        prompt,
        params: GenerateParams {
            draft_max: state.config().draft_max,
            ..req.generate_params(max_tokens)
        },
    })
}

/// An engine's refusal as the client's error, naming the field that holds the prompt.
fn refused(e: EngineError, input: &PromptInput) -> ApiError {
    let prompt_field = match input {
        PromptInput::Chat(_) => "messages",
        _ => "prompt",
    };
    match e {
        EngineError::ContextOverflow { .. }
        | EngineError::EmptyPrompt
        | EngineError::TokenOutOfRange { .. } => ApiError::from(e).with_param(prompt_field),
        EngineError::Stopped => ApiError::unavailable("The server is shutting down.", 5),
        e => e.into(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn finish_reason(output: &GenerateOutput) -> &'static str {
    match output.stop_reason {
        // Cut short by the deadline: like max_tokens, the text is incomplete.
        // Cut short by the deadline or the grammar's limits: like max_tokens, the text is
        // incomplete.
        StopReason::Length | StopReason::Deadline | StopReason::GrammarLimit => "length",
        StopReason::Stop | StopReason::Cancelled => "stop",
    }
}

/// Usage of a request's choices together: the prompt counted once.
pub fn usage(outputs: &[GenerateOutput]) -> Value {
    let first = &outputs[0];
    let completion: usize = outputs.iter().map(|o| o.completion_tokens).sum();
    json!({
        "prompt_tokens": first.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": first.prompt_tokens + completion,
        "prompt_tokens_details": { "cached_tokens": first.cached_prompt_tokens },
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
        "cache_n": o.cached_prompt_tokens,
        "prompt_n": o.prompt_tokens - o.cached_prompt_tokens,
        "prompt_ms": o.prompt_ms,
        "prompt_per_token_ms": if o.prompt_tokens > 0 { o.prompt_ms / o.prompt_tokens as f64 } else { 0.0 },
        "prompt_per_second": per_s(o.prompt_tokens, o.prompt_ms),
        "predicted_n": o.completion_tokens,
        "predicted_ms": o.decode_ms,
        "predicted_per_token_ms": if o.completion_tokens > 0 { o.decode_ms / o.completion_tokens as f64 } else { 0.0 },
        "predicted_per_second": per_s(o.completion_tokens, o.decode_ms),
        "draft_n": o.draft_tokens,
        "draft_n_accepted": o.draft_accepted,
    })
}

/// Identifiers and shapes of one response.
struct Shape {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    engine: Arc<dyn Engine>,
    /// Log-probabilities were asked for.
    logprobs: bool,
    /// Completions with `echo`: the prompt, as text and as ids.
    echo: Option<(String, Vec<u32>)>,
    /// Characters of the prompt's text (where the completion's `text_offset` begins).
    prompt_chars: usize,
}

impl Shape {
    fn new(
        endpoint: Endpoint,
        model: String,
        request_id: &str,
        req: &CompletionRequest,
        prepared: &Prepared,
    ) -> Self {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Completions => "cmpl-",
        };
        let engine = prepared.engine.clone();
        let echo = req.echo.then(|| {
            let text = match &req.input {
                PromptInput::Text(t) => t.clone(),
                _ => {
                    let bytes: Vec<u8> = prepared
                        .prompt
                        .iter()
                        .filter(|&&id| !engine.is_control(id))
                        .flat_map(|&id| engine.piece(id).unwrap_or_default())
                        .collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                }
            };
            (text, prepared.prompt.clone())
        });
        let prompt_chars = if req.logprobs.is_some() && endpoint == Endpoint::Completions {
            text_chars(engine.as_ref(), &prepared.prompt)
        } else {
            0
        };
        Self {
            endpoint,
            id: format!("{prefix}{request_id}"),
            created: unix_now(),
            model,
            engine,
            logprobs: req.logprobs.is_some(),
            echo,
            prompt_chars,
        }
    }

    /// Where a choice's `text_offset` begins: 0 when the prompt is echoed, else after it.
    fn legacy(&self) -> Legacy {
        Legacy::starting_at(if self.echo.is_some() {
            0
        } else {
            self.prompt_chars
        })
    }

    /// A choice's `logprobs` for these generated tokens (`null` when not asked for).
    fn choice_logprobs(&self, lps: &[TokenLogprob], legacy: &mut Legacy) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.endpoint {
            Endpoint::Chat => json!({
                "content": chat_content(self.engine.as_ref(), lps),
                "refusal": null,
            }),
            Endpoint::Completions => {
                let tokens: Vec<(u32, Option<&TokenLogprob>)> =
                    lps.iter().map(|lp| (lp.token_id, Some(lp))).collect();
                legacy.shape(self.engine.as_ref(), &tokens)
            }
        }
    }

    fn full(&self, outputs: &[GenerateOutput]) -> Value {
        let choices: Vec<Value> = outputs
            .iter()
            .enumerate()
            .map(|(index, output)| {
                let reason = finish_reason(output);
                match self.endpoint {
                    Endpoint::Chat => json!({
                        "index": index,
                        "message": { "role": "assistant", "content": output.text, "refusal": null },
                        "logprobs": self.choice_logprobs(&output.logprobs, &mut self.legacy()),
                        "finish_reason": reason,
                    }),
                    Endpoint::Completions => {
                        let mut text = String::new();
                        let mut tokens: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
                        if let Some((prompt, ids)) = &self.echo {
                            text.push_str(prompt);
                            // The first prompt token has no log-probability: nothing
                            // comes before it.
                            tokens.extend(ids.iter().take(1).map(|&id| (id, None)));
                            tokens.extend(
                                output.prompt_logprobs.iter().map(|lp| (lp.token_id, Some(lp))),
                            );
                        }
                        text.push_str(&output.text);
                        tokens.extend(output.logprobs.iter().map(|lp| (lp.token_id, Some(lp))));
                        let logprobs = if self.logprobs {
                            self.legacy().shape(self.engine.as_ref(), &tokens)
                        } else {
                            Value::Null
                        };
                        json!({
                            "index": index, "text": text, "logprobs": logprobs, "finish_reason": reason,
                        })
                    }
                }
            })
            .collect();
        json!({
            "id": self.id,
            "object": match self.endpoint { Endpoint::Chat => "chat.completion", Endpoint::Completions => "text_completion" },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
            "usage": usage(outputs),
            "timings": timings(&outputs[0]),
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

    /// One streamed choice. `logprobs` is the value for the tokens this chunk carries.
    fn delta_choice(
        &self,
        index: usize,
        text: Option<&str>,
        role: bool,
        reason: Option<&str>,
        logprobs: Value,
    ) -> Value {
        match self.endpoint {
            Endpoint::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason })
            }
            Endpoint::Completions => json!({
                "index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": reason,
            }),
        }
    }
}

/// When a generation that starts now must end: the configured limit, or the front door's
/// deadline for this request, whichever comes first.
pub(crate) fn generation_deadline(state: &AppState, request: Option<Instant>) -> Option<Instant> {
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
/// place, taken before its body was read and held while its response is being produced.
pub async fn complete(
    state: AppState,
    endpoint: Endpoint,
    req: CompletionRequest,
    request_id: String,
    admission: Admission,
    request_deadline: Option<Instant>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let deadline = generation_deadline(&state, request_deadline);
    // One chat model is loaded: any name is that model, as llama-server answers (SDK defaults
    // and tools that hard-code a name work); the response carries the real id. Only the name
    // of the embedding model served beside it is refused.
    if let Some(name) = &req.model
        && state.is_embedding_model_name(name)
    {
        return Err(ApiError::invalid_param(
            "model",
            format!("The model '{name}' makes embeddings, not text: use /v1/embeddings."),
        ));
    }
    let prepared = prepare(&state, &req).await?;
    let shape = Shape::new(
        endpoint,
        state.config().model_id.clone(),
        &request_id,
        &req,
        &prepared,
    );
    let interrupt = Interrupt::new().with_deadline(deadline);
    let n = req.n;
    let (tx, rx) = mpsc::channel::<(usize, Event)>(EVENT_BUFFER * n);
    let place = SharedAdmission(Arc::new(std::sync::Mutex::new(Some(admission))));
    let sinks = (0..n)
        .map(|index| {
            Box::new(ChannelSink {
                tx: tx.clone(),
                index,
                _place: place.clone(),
            }) as Box<dyn EventSink>
        })
        .collect();
    drop(tx);
    prepared
        .engine
        .submit(prepared.prompt, prepared.params, interrupt.clone(), sinks)
        .map_err(|e| refused(e, &req.input))?;
    let events = EventStream {
        rx,
        metrics: state.metrics().clone(),
        received,
        last_token: vec![None; n],
        _cancel: CancelOnDrop(Some(interrupt)),
        _place: place,
    };
    if req.stream {
        Ok(stream_response(events, shape, req.include_usage))
    } else {
        full_response(events, shape).await
    }
}

/// A request's events as they arrive, timed for the metrics. Dropping it (the response is
/// done, or the client left) gives the request's place back at once, closes the channel and
/// cancels the generation; the engine lets go of it at its next step.
struct EventStream {
    rx: mpsc::Receiver<(usize, Event)>,
    metrics: Arc<Metrics>,
    received: Instant,
    /// Per choice.
    last_token: Vec<Option<Instant>>,
    _cancel: CancelOnDrop,
    _place: SharedAdmission,
}

/// What a request's generation produced, as the response needs it.
enum Outcome {
    Text(String, Option<TokenLogprob>),
    Done(GenerateOutput),
    Failed(ApiError),
}

impl EventStream {
    /// The next event of any choice, with the choice's index.
    async fn next(&mut self) -> (usize, Outcome) {
        match self.rx.recv().await {
            Some((i, Event::Token { text, logprob, .. })) => {
                let now = Instant::now();
                match self.last_token.get_mut(i).and_then(|t| t.replace(now)) {
                    None => self.metrics.time_to_first_token(now - self.received),
                    Some(prev) => self.metrics.inter_token(now - prev),
                }
                (i, Outcome::Text(text, logprob))
            }
            Some((i, Event::Done(Ok(output)))) => {
                log_done(&output);
                self.metrics.finished(&output);
                (i, Outcome::Done(output))
            }
            Some((i, Event::Done(Err(e)))) => {
                tracing::error!(error = %e, "generation failed");
                (
                    i,
                    Outcome::Failed(ApiError::internal(format!("generation failed: {e}"))),
                )
            }
            // The engine let go without a result: it cancelled a client that took nothing for
            // too long, or it stopped.
            None => (
                0,
                Outcome::Failed(ApiError::internal("generation ended without a result")),
            ),
        }
    }
}

async fn full_response(mut events: EventStream, shape: Shape) -> Result<Response, ApiError> {
    let mut outputs: Vec<Option<GenerateOutput>> = vec![None; events.last_token.len()];
    while outputs.iter().any(Option::is_none) {
        match events.next().await {
            (_, Outcome::Text(..)) => {}
            (i, Outcome::Done(output)) => outputs[i] = Some(output),
            (_, Outcome::Failed(e)) => return Err(e),
        }
    }
    let outputs: Vec<GenerateOutput> = outputs.into_iter().flatten().collect();
    Ok(axum::Json(shape.full(&outputs)).into_response())
}

/// SSE from the one channel: a role chunk (chat) or the echoed prompt (completions), a chunk
/// per piece of text with the log-probabilities of the tokens it completes, the finish chunk
/// with `timings`, the usage chunk when asked for, `[DONE]`; a failure mid-stream is an error
/// object then `[DONE]`. Keep-alive comments while nothing comes (a prompt being read).
fn stream_response(events: EventStream, shape: Shape, include_usage: bool) -> Response {
    let n = events.last_token.len();
    let mut first = VecDeque::new();
    for i in 0..n {
        let opening = match (&shape.endpoint, &shape.echo) {
            (Endpoint::Chat, _) => Some(shape.delta_choice(i, Some(""), true, None, Value::Null)),
            (Endpoint::Completions, Some((prompt, _))) => {
                Some(shape.delta_choice(i, Some(prompt), false, None, Value::Null))
            }
            (Endpoint::Completions, None) => None,
        };
        if let Some(choice) = opening {
            first.push_back(data(&shape.chunk(Some(choice), include_usage)));
        }
    }
    let choices: Vec<StreamChoice> = (0..n)
        .map(|_| StreamChoice {
            output: None,
            logprobs: Vec::new(),
            legacy: shape.legacy(),
        })
        .collect();
    let state = (events, shape, first, choices, false);
    let stream = futures_util::stream::unfold(
        state,
        move |(mut events, shape, mut queue, mut choices, mut ended)| async move {
            loop {
                if let Some(ev) = queue.pop_front() {
                    return Some((
                        Ok::<_, Infallible>(ev),
                        (events, shape, queue, choices, ended),
                    ));
                }
                if ended {
                    return None;
                }
                match events.next().await {
                    (i, Outcome::Text(text, logprob)) => {
                        let c = &mut choices[i];
                        c.logprobs.extend(logprob);
                        // Text held back (a partial character, a possible stop string) goes
                        // out with the chunk that releases it, its tokens' logprobs too.
                        if !text.is_empty() {
                            let lps = std::mem::take(&mut c.logprobs);
                            let logprobs = shape.choice_logprobs(&lps, &mut c.legacy);
                            queue.push_back(data(&shape.chunk(
                                Some(shape.delta_choice(i, Some(&text), false, None, logprobs)),
                                include_usage,
                            )));
                        }
                    }
                    (i, Outcome::Done(output)) => {
                        let text = match shape.endpoint {
                            Endpoint::Chat => None,
                            Endpoint::Completions => Some(""),
                        };
                        let c = &mut choices[i];
                        let lps = std::mem::take(&mut c.logprobs);
                        let logprobs = if lps.is_empty() {
                            Value::Null
                        } else {
                            shape.choice_logprobs(&lps, &mut c.legacy)
                        };
                        let mut last = shape.chunk(
                            Some(shape.delta_choice(
                                i,
                                text,
                                false,
                                Some(finish_reason(&output)),
                                logprobs,
                            )),
                            include_usage,
                        );
                        last["timings"] = timings(&output);
                        queue.push_back(data(&last));
                        c.output = Some(output);
                        if choices.iter().all(|c| c.output.is_some()) {
                            let all: Vec<GenerateOutput> =
                                choices.iter().filter_map(|c| c.output.clone()).collect();
                            if include_usage {
                                let mut u = shape.chunk(None, false);
                                u["usage"] = usage(&all);
                                u["timings"] = timings(&all[0]);
                                queue.push_back(data(&u));
                            }
                            queue.push_back(SseEvent::default().data("[DONE]"));
                            ended = true;
                        }
                    }
                    (_, Outcome::Failed(e)) => {
                        queue.push_back(data(&e.body()));
                        queue.push_back(SseEvent::default().data("[DONE]"));
                        ended = true;
                    }
                }
            }
        },
    );
    let sse =
        Sse::new(stream).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE).text("keep-alive"));
    let mut resp = sse.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// One choice of a stream: its result once done, the log-probabilities of tokens whose text
/// is still held back, where its `text_offset` is.
struct StreamChoice {
    output: Option<GenerateOutput>,
    logprobs: Vec<TokenLogprob>,
    legacy: Legacy,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

fn log_done(o: &GenerateOutput) {
    tracing::info!(
        prompt_tokens = o.prompt_tokens,
        cached_prompt_tokens = o.cached_prompt_tokens,
        completion_tokens = o.completion_tokens,
        prompt_ms = o.prompt_ms,
        decode_ms = o.decode_ms,
        stop_reason = ?o.stop_reason,
        "generation done"
    );
}
