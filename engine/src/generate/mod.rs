//! Text generation: sampling, stop conditions and streaming of UTF-8-safe pieces.

pub mod sampler;

pub use sampler::SamplingParams;

/// At most this many stop strings per request (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// A stop string may be at most this many bytes: matching holds back and rescans up to this
/// much text per token.
pub const MAX_STOP_STRING_BYTES: usize = 256;

/// Everything that controls one generation request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerateParams {
    /// Upper bound on generated tokens (the stop token, when hit, is not counted or emitted).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when one of these ids is sampled. `None`: the model's own
    /// end-of-generation ids (the file's `eos_token_id` and `eot_token_id`); `Some(vec![])`
    /// never stops on an id.
    pub stop_ids: Option<Vec<u32>>,
    /// Generation ends when the text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
}

impl GenerateParams {
    /// Every check of a request's parameters that does not depend on the prompt: the one place
    /// that decides what the engine accepts (the API maps the error to a 400 naming `param`).
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.max_tokens == 0 {
            return Err(EngineError::invalid_param(
                "max_tokens",
                "must be at least 1",
            ));
        }
        if self.stop_strings.len() > MAX_STOP_STRINGS {
            return Err(EngineError::invalid_param(
                "stop",
                format!("at most {MAX_STOP_STRINGS} stop sequences are allowed"),
            ));
        }
        if let Some(s) = self
            .stop_strings
            .iter()
            .find(|s| s.len() > MAX_STOP_STRING_BYTES)
        {
            return Err(EngineError::invalid_param(
                "stop",
                format!(
                    "a stop sequence may be at most {MAX_STOP_STRING_BYTES} bytes; one has {}",
                    s.len()
                ),
            ));
        }
        self.sampling.validate()
    }
}

/// Ends a generation early from outside the generating thread: a flag another thread sets
/// (the client left) and a deadline (the front door's time limit). Checked before every
/// token and between the layers of a prompt's forward pass. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    cancelled: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Interrupt {
    /// Never fires unless [`Interrupt::cancel`] is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also fires at `deadline` (`None`: no deadline).
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Why to stop now, if at all.
    pub fn check(&self) -> Option<StopReason> {
        if self.cancelled.load(Ordering::Relaxed) {
            Some(StopReason::Cancelled)
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(StopReason::Deadline)
        } else {
            None
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `max_tokens` reached.
    Length,
    /// A stop id or stop string was produced.
    Stop,
    /// The streaming callback asked to stop, or the [`Interrupt`] was cancelled (e.g. the
    /// client disconnected).
    Cancelled,
    /// The [`Interrupt`]'s deadline passed (the output is cut short, like `Length`).
    Deadline,
}

/// A piece of streamed output: the text that became complete with this token (possibly empty
/// while a multi-byte character is still partial, or held back while it may begin a stop
/// string) and the token id. When generation ends without a stop, a last piece may flush
/// held-back text; it repeats the last token id (count tokens from [`GenerateOutput`]).
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub token_id: u32,
}

/// The result of one generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateOutput {
    pub text: String,
    /// Generated ids (stop id excluded).
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub stop_reason: StopReason,
    /// Wall time of the prompt pass (prefill), milliseconds.
    pub prompt_ms: f64,
    /// Wall time of all decode steps, milliseconds.
    pub decode_ms: f64,
}

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::tokenizer::StreamDecoder;
use crate::{EngineError, Model};
use sampler::Sampler;

/// Holds back text that could still turn into a stop string, and cuts at the first match.
struct StopMatcher<'a> {
    stops: &'a [String],
    /// Text produced but not yet emitted.
    held: String,
}

impl StopMatcher<'_> {
    /// Adds text; returns (text safe to emit, whether a stop string matched).
    fn push(&mut self, s: &str) -> (String, bool) {
        self.held.push_str(s);
        if let Some(cut) = self
            .stops
            .iter()
            .filter(|x| !x.is_empty())
            .filter_map(|x| self.held.find(x.as_str()))
            .min()
        {
            let out = self.held[..cut].to_owned();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for st in self.stops {
            for (i, _) in st.char_indices().skip(1) {
                if self.held.ends_with(&st[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let emit_to = self.held.len() - keep;
        let out = self.held[..emit_to].to_owned();
        self.held.drain(..emit_to);
        (out, false)
    }
}

pub(crate) fn generate(
    model: &Model,
    prompt: &[u32],
    params: &GenerateParams,
    interrupt: &Interrupt,
    on_piece: &mut dyn FnMut(Piece<'_>) -> ControlFlow<()>,
) -> Result<GenerateOutput, EngineError> {
    params.validate()?;
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let n_ctx = model.n_ctx();
    if prompt.len() + params.max_tokens > n_ctx {
        return Err(EngineError::ContextOverflow {
            prompt: prompt.len(),
            max_tokens: params.max_tokens,
            n_ctx,
        });
    }
    let model_stops = model.end_of_generation_ids();
    let stop_ids = params.stop_ids.as_deref().unwrap_or(&model_stops);
    let mut session = model.new_session(prompt.len() + params.max_tokens);
    let mut logits = vec![0f32; model.n_vocab()];
    let t0 = Instant::now();
    let mut output = GenerateOutput {
        text: String::new(),
        token_ids: Vec::new(),
        prompt_tokens: prompt.len(),
        completion_tokens: 0,
        stop_reason: StopReason::Length,
        prompt_ms: 0.0,
        decode_ms: 0.0,
    };
    match model.forward_interruptible(&mut session, prompt, &mut logits, interrupt) {
        Ok(()) => {}
        Err(EngineError::Interrupted(reason)) => {
            output.stop_reason = reason;
            output.prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
            return Ok(output);
        }
        Err(e) => return Err(e),
    }
    output.prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

    let tok = model.tokenizer();
    let mut sampler = Sampler::new(params.sampling.clone());
    let mut history = prompt.to_vec();
    let mut decoder = StreamDecoder::new();
    let mut stops = StopMatcher {
        stops: &params.stop_strings,
        held: String::new(),
    };
    let mut text = String::new();
    let mut ids = Vec::new();
    let mut stop_reason = StopReason::Length;
    let t1 = Instant::now();
    while ids.len() < params.max_tokens {
        let id = sampler.sample(&mut logits, &history);
        if stop_ids.contains(&id) {
            stop_reason = StopReason::Stop;
            break;
        }
        ids.push(id);
        history.push(id);
        let (piece, hit) = stops.push(&decoder.push(tok, id));
        text.push_str(&piece);
        if on_piece(Piece {
            text: &piece,
            token_id: id,
        })
        .is_break()
        {
            stop_reason = StopReason::Cancelled;
            break;
        }
        if hit {
            stop_reason = StopReason::Stop;
            break;
        }
        if ids.len() == params.max_tokens {
            break;
        }
        if let Some(reason) = interrupt.check() {
            stop_reason = reason;
            break;
        }
        model.forward_into(&mut session, &[id], &mut logits)?;
    }
    if stop_reason != StopReason::Stop {
        // Flush held-back text (a partial stop string that never completed, a cut character).
        let tail = decoder.finish();
        let (mut rest, _) = stops.push(&tail);
        rest.push_str(&stops.held);
        if !rest.is_empty() {
            text.push_str(&rest);
            let last = ids.last().copied().unwrap_or(0);
            let _ = on_piece(Piece {
                text: &rest,
                token_id: last,
            });
        }
    }
    output.text = text;
    output.completion_tokens = ids.len();
    output.token_ids = ids;
    output.stop_reason = stop_reason;
    output.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    #[test]
    fn holds_back_possible_prefixes_and_cuts_at_the_first_stop() {
        let stops = vec!["END".to_owned(), "xyz".to_owned()];
        let mut m = StopMatcher {
            stops: &stops,
            held: String::new(),
        };
        assert_eq!(m.push("hello E"), ("hello ".to_owned(), false));
        assert_eq!(m.push("N"), (String::new(), false));
        assert_eq!(m.push("Dless"), (String::new(), true));
        let mut m = StopMatcher {
            stops: &stops,
            held: String::new(),
        };
        assert_eq!(m.push("ab EN"), ("ab ".to_owned(), false));
        assert_eq!(m.push("x"), ("EN".to_owned(), false));
        assert_eq!(m.held, "x");
    }
}
