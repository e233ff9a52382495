//! Text generation: sampling, stop conditions and streaming of UTF-8-safe pieces.

pub mod prefix;
pub mod sampler;
pub mod scheduler;

pub use sampler::SamplingParams;
pub use scheduler::{Event, EventSink, Scheduler, SchedulerConfig, SchedulerStats, SinkError};

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
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_prompt_tokens: usize,
}

impl GenerateOutput {
    /// The result of a request that ended before its first step.
    pub(crate) fn not_started(prompt_tokens: usize, stop_reason: StopReason) -> Self {
        Self {
            text: String::new(),
            token_ids: Vec::new(),
            prompt_tokens,
            completion_tokens: 0,
            stop_reason,
            prompt_ms: 0.0,
            decode_ms: 0.0,
            cached_prompt_tokens: 0,
        }
    }
}

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::model::KvCache;
use crate::tokenizer::StreamDecoder;
use crate::{EngineError, Model, Tokenizer};
use sampler::Sampler;

/// Holds back text that could still turn into a stop string, and cuts at the first match:
/// the one place stop strings are matched.
struct StopMatcher {
    stops: Vec<String>,
    /// Text produced but not yet emitted.
    held: String,
}

impl StopMatcher {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            held: String::new(),
        }
    }

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
        for st in &self.stops {
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

/// Checks a request against a model: the parameters ([`GenerateParams::validate`]), then the
/// prompt (non-empty, in the vocabulary, room for `max_tokens` in the context). The one
/// place that decides whether the engine takes a request.
/// `n_vocab` and `n_ctx` are the model's ([`Model::check_request`]).
pub fn check_request(
    prompt: &[u32],
    params: &GenerateParams,
    n_vocab: usize,
    n_ctx: usize,
) -> Result<(), EngineError> {
    params.validate()?;
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if let Some(&id) = prompt.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(EngineError::TokenOutOfRange { id, n_vocab });
    }
    if prompt.len().saturating_add(params.max_tokens) > n_ctx {
        return Err(EngineError::ContextOverflow {
            prompt: prompt.len(),
            max_tokens: params.max_tokens,
            n_ctx,
        });
    }
    Ok(())
}

/// What one token did to a sequence.
#[derive(Debug)]
pub(crate) struct Emitted {
    /// Text that became final with this token (possibly empty).
    pub text: String,
    pub token_id: u32,
}

/// One generation from its prompt to its end, fed by whoever runs the forward passes (one
/// sequence alone in [`generate`], a batch in the scheduler): sampling, stop ids, stop
/// strings, `max_tokens` and the interrupt are decided here and nowhere else.
pub(crate) struct Sequence {
    prompt: Vec<u32>,
    params: GenerateParams,
    stop_ids: Vec<u32>,
    pub(crate) cache: KvCache,
    sampler: Sampler,
    /// Prompt and generated ids (the penalties' history, and what the cache holds).
    history: Vec<u32>,
    decoder: StreamDecoder,
    stops: StopMatcher,
    text: String,
    generated: usize,
    pub(crate) interrupt: Interrupt,
    started: Instant,
    first_logits: Option<Instant>,
    /// Prompt tokens found in the prefix cache.
    pub(crate) reused: usize,
    stop_reason: Option<StopReason>,
}

impl Sequence {
    /// A sequence for a request that passed [`check_request`], with an empty cache of
    /// `prompt + max_tokens` positions (or `cache`, already holding a prefix of the prompt).
    pub(crate) fn new(
        model: &Model,
        prompt: Vec<u32>,
        params: GenerateParams,
        interrupt: Interrupt,
        cache: Option<KvCache>,
    ) -> Self {
        let stop_ids = params
            .stop_ids
            .clone()
            .unwrap_or_else(|| model.end_of_generation_ids());
        let cache = cache.unwrap_or_else(|| model.new_cache(prompt.len() + params.max_tokens));
        Self {
            reused: cache.len(),
            stop_ids,
            cache,
            sampler: Sampler::new(params.sampling.clone()),
            history: prompt.clone(),
            decoder: StreamDecoder::new(),
            stops: StopMatcher::new(params.stop_strings.clone()),
            text: String::new(),
            generated: 0,
            interrupt,
            started: Instant::now(),
            first_logits: None,
            stop_reason: None,
            prompt,
            params,
        }
    }

    /// Choice `index` (> 0) of a request for several: a copy of this sequence, its prompt
    /// already read, that samples on its own. A request's seed gives choice i the seed
    /// `seed + i`, so that choices differ and each is reproducible.
    pub(crate) fn fork(&self, index: usize) -> Self {
        debug_assert!(self.generated == 0 && self.cache.len() == self.history.len());
        let mut sampling = self.params.sampling.clone();
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(index as u64));
        Self {
            prompt: self.prompt.clone(),
            params: self.params.clone(),
            stop_ids: self.stop_ids.clone(),
            cache: self.cache.clone(),
            sampler: Sampler::new(sampling),
            history: self.history.clone(),
            decoder: StreamDecoder::new(),
            stops: StopMatcher::new(self.params.stop_strings.clone()),
            text: String::new(),
            generated: 0,
            interrupt: self.interrupt.clone(),
            started: self.started,
            first_logits: self.first_logits,
            reused: self.reused,
            stop_reason: None,
        }
    }

    /// Cache positions a sequence of this request needs.
    pub(crate) fn capacity_for(prompt: usize, params: &GenerateParams) -> usize {
        prompt + params.max_tokens
    }

    /// The ids whose keys and values the cache holds, in order.
    pub(crate) fn cached_tokens(&self) -> &[u32] {
        &self.history[..self.cache.len()]
    }

    /// Prompt tokens not yet in the cache.
    pub(crate) fn prompt_left(&self) -> usize {
        self.prompt.len().saturating_sub(self.cache.len())
    }

    /// The next tokens to feed: up to `budget` prompt tokens while the prompt is being read,
    /// then the last sampled token.
    pub(crate) fn next_input(&self, budget: usize) -> &[u32] {
        let at = self.cache.len();
        let end = at.saturating_add(budget.max(1)).min(self.history.len());
        &self.history[at..end]
    }

    /// Whether feeding `fed` tokens from [`Sequence::next_input`] yields logits to sample.
    pub(crate) fn wants_logits(&self, fed: usize) -> bool {
        self.cache.len() + fed == self.history.len()
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.stop_reason.is_some()
    }

    /// Takes the logits of the last token fed: samples, applies the stop rules. Returns the
    /// token's text; afterwards [`Sequence::is_finished`] tells whether it was the last.
    pub(crate) fn on_logits(&mut self, tok: &Tokenizer, logits: &mut [f32]) -> Option<Emitted> {
        debug_assert!(!self.is_finished() && self.cache.len() == self.history.len());
        self.first_logits.get_or_insert_with(Instant::now);
        let id = self.sampler.sample(logits, &self.history);
        if self.stop_ids.contains(&id) {
            self.stop_reason = Some(StopReason::Stop);
            return None;
        }
        self.generated += 1;
        self.history.push(id);
        let (text, hit) = self.stops.push(&self.decoder.push(tok, id));
        self.text.push_str(&text);
        if hit {
            self.stop_reason = Some(StopReason::Stop);
        } else if self.generated == self.params.max_tokens {
            self.stop_reason = Some(StopReason::Length);
        }
        Some(Emitted { text, token_id: id })
    }

    /// Ends the sequence now if its interrupt fired.
    pub(crate) fn check_interrupt(&mut self) -> bool {
        if self.stop_reason.is_none()
            && let Some(reason) = self.interrupt.check()
        {
            self.stop_reason = Some(reason);
        }
        self.stop_reason.is_some()
    }

    /// Ends the sequence (a client gone, a failure elsewhere in the batch).
    pub(crate) fn stop(&mut self, reason: StopReason) {
        self.stop_reason.get_or_insert(reason);
    }

    /// Held-back text to release now that the sequence has ended without a stop string: a
    /// partial stop string that never completed, a cut character.
    pub(crate) fn flush(&mut self) -> Option<Emitted> {
        if self.stop_reason == Some(StopReason::Stop) {
            return None;
        }
        let tail = self.decoder.finish();
        let (mut rest, _) = self.stops.push(&tail);
        rest.push_str(&std::mem::take(&mut self.stops.held));
        self.text.push_str(&rest);
        let token_id = self.history.last().copied().unwrap_or(0);
        (!rest.is_empty()).then_some(Emitted {
            text: rest,
            token_id,
        })
    }

    /// The result, once finished. The cache stays with the caller (the prefix cache).
    pub(crate) fn output(&mut self) -> GenerateOutput {
        let now = Instant::now();
        let first = self.first_logits.unwrap_or(now);
        GenerateOutput {
            text: std::mem::take(&mut self.text),
            token_ids: self.history[self.prompt.len()..].to_vec(),
            prompt_tokens: self.prompt.len(),
            completion_tokens: self.generated,
            stop_reason: self.stop_reason.unwrap_or(StopReason::Cancelled),
            prompt_ms: (first - self.started).as_secs_f64() * 1e3,
            decode_ms: (now - first).as_secs_f64() * 1e3,
            cached_prompt_tokens: self.reused,
        }
    }
}

/// One generation on this thread, alone: the prompt in one pass, then a token per pass.
pub(crate) fn generate(
    model: &Model,
    prompt: &[u32],
    params: &GenerateParams,
    interrupt: &Interrupt,
    on_piece: &mut dyn FnMut(Piece<'_>) -> ControlFlow<()>,
) -> Result<GenerateOutput, EngineError> {
    model.check_request(prompt, params)?;
    let mut seq = Sequence::new(
        model,
        prompt.to_vec(),
        params.clone(),
        interrupt.clone(),
        None,
    );
    let mut buffers = crate::model::StepBuffers::default();
    let mut logits = vec![0f32; model.n_vocab()];
    let tok = model.tokenizer();
    while !seq.check_interrupt() {
        let input = seq.next_input(usize::MAX).to_vec();
        match model.forward_batch(
            &mut [crate::model::BatchEntry {
                cache: &mut seq.cache,
                tokens: &input,
                logits: true,
            }],
            &mut buffers,
            &mut logits,
            interrupt,
        ) {
            Ok(()) => {}
            Err(EngineError::Interrupted(reason)) => {
                seq.stop(reason);
                break;
            }
            Err(e) => return Err(e),
        }
        if let Some(e) = seq.on_logits(tok, &mut logits) {
            let piece = Piece {
                text: &e.text,
                token_id: e.token_id,
            };
            if on_piece(piece).is_break() {
                seq.stop(StopReason::Cancelled);
            }
        }
        if seq.is_finished() {
            break;
        }
    }
    if let Some(e) = seq.flush() {
        let _ = on_piece(Piece {
            text: &e.text,
            token_id: e.token_id,
        });
    }
    Ok(seq.output())
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    #[test]
    fn holds_back_possible_prefixes_and_cuts_at_the_first_stop() {
        let stops = vec!["END".to_owned(), "xyz".to_owned()];
        let mut m = StopMatcher::new(stops.clone());
        assert_eq!(m.push("hello E"), ("hello ".to_owned(), false));
        assert_eq!(m.push("N"), (String::new(), false));
        assert_eq!(m.push("Dless"), (String::new(), true));
        let mut m = StopMatcher::new(stops.clone());
        assert_eq!(m.push("ab EN"), ("ab ".to_owned(), false));
        assert_eq!(m.push("x"), ("EN".to_owned(), false));
        assert_eq!(m.held, "x");
    }
}
