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
    /// Every generated token must keep the text inside this grammar; generation may end (on
    /// a stop id) only where the grammar is complete, and ends when nothing can follow.
    pub grammar: Option<Arc<Grammar>>,
    /// Report each generated token's log-probability and this many most likely
    /// alternatives (at most [`MAX_TOP_LOGPROBS`]); `None`: no log-probabilities.
    pub logprobs: Option<usize>,
    /// Also report the log-probability of every prompt token after the first (what
    /// evaluation harnesses score), with `logprobs` alternatives each. `max_tokens` may then
    /// be 0: the prompt is scored and nothing generated.
    pub prompt_logprobs: bool,
    /// Speculative decoding by prompt lookup: up to this many draft tokens per step, taken
    /// from where the last tokens appeared before in the prompt or the output, checked in the
    /// same forward pass. Output is unchanged (each token is still sampled from its own
    /// logits, in order; a draft only saves the passes of tokens it guessed). 0: off.
    pub draft_max: usize,
}

/// Most draft tokens per step [`GenerateParams::draft_max`] may ask for.
pub const MAX_DRAFT: usize = 16;
/// The front doors' default [`GenerateParams::draft_max`].
pub const DEFAULT_DRAFT_MAX: usize = 8;

/// Most alternatives per token [`GenerateParams::logprobs`] may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl GenerateParams {
    /// Every check of a request's parameters that does not depend on the prompt: the one place
    /// that decides what the engine accepts (the API maps the error to a 400 naming `param`).
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.max_tokens == 0 && !self.prompt_logprobs {
            return Err(EngineError::invalid_param(
                "max_tokens",
                "must be at least 1",
            ));
        }
        if self.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(EngineError::invalid_param(
                "top_logprobs",
                format!("must be between 0 and {MAX_TOP_LOGPROBS}"),
            ));
        }
        if self.draft_max > MAX_DRAFT {
            return Err(EngineError::invalid_param(
                "draft_max",
                format!("must be at most {MAX_DRAFT}"),
            ));
        }
        if self.prompt_logprobs && self.logprobs.is_none() {
            return Err(EngineError::invalid_param(
                "logprobs",
                "prompt log-probabilities need logprobs",
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
    /// The grammar could not be followed further within its work limits (a grammar too
    /// ambiguous): the output is cut short, a prefix of a match.
    GrammarLimit,
}

/// A piece of streamed output: the text that became complete with this token (possibly empty
/// while a multi-byte character is still partial, or held back while it may begin a stop
/// string) and the token id. When generation ends without a stop, a last piece may flush
/// held-back text; it repeats the last token id (count tokens from [`GenerateOutput`]).
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub token_id: u32,
    /// The token's log-probability, when asked for (absent on a flushing piece).
    pub logprob: Option<&'a TokenLogprob>,
}

/// A token's log-probability under the model (the log-softmax of its raw logits, before
/// penalties, temperature, filters or a grammar) and the most likely alternatives there.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// `token_id`'s log-probability in `logits` and the `top` most likely tokens.
    pub fn from_logits(logits: &[f32], token_id: u32, top: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let lse = max as f64 + sum.ln();
        let lp = |l: f32| (l as f64 - lse) as f32;
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        if top > 0 {
            for (i, &l) in logits.iter().enumerate() {
                if best.len() == top && l <= best[top - 1].1 {
                    continue;
                }
                let at = best.partition_point(|&(_, b)| b >= l);
                best.insert(at, (i as u32, l));
                best.truncate(top);
            }
        }
        Self {
            token_id,
            logprob: lp(logits[token_id as usize]),
            top: best.into_iter().map(|(i, l)| (i, lp(l))).collect(),
        }
    }
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
    /// Per generated token (stop id excluded), when `logprobs` was asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// Per prompt token after the first, when `prompt_logprobs` was asked for.
    pub prompt_logprobs: Vec<TokenLogprob>,
    /// Draft tokens fed by speculative decoding, and how many of them were accepted.
    pub draft_tokens: usize,
    pub draft_accepted: usize,
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
            logprobs: Vec::new(),
            prompt_logprobs: Vec::new(),
            draft_tokens: 0,
            draft_accepted: 0,
        }
    }
}

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::grammar::{Grammar, Matcher};
use crate::model::{KvCache, LogitRows};
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
    pub logprob: Option<TokenLogprob>,
}

/// Prompt tokens a sequence scoring its prompt feeds per step: each needs a row of logits
/// (n_vocab floats), 8 MB for 16 rows of a 128k vocabulary.
const SCORED_PROMPT_CHUNK: usize = 16;

/// Prompt lookup for speculative decoding: the longest of these suffix lengths of the
/// history that occurred before gives the draft (what followed it). Two tokens at least: a
/// single token recurs too often to predict much.
const DRAFT_NGRAM: [usize; 3] = [4, 3, 2];
/// After a draft of which nothing was accepted, drafting pauses for 1, 2, 4, ... up to this
/// many steps and the next draft is half as long (a rejected draft costs its rows' compute:
/// measured on 2B4T at 2 threads, `bitnet bench --batch 1,2,5,9`, a step of 2 rows takes 1.6x
/// one of 1, of 5 rows 2.8x, of 9 rows 3.7x). Drafts that keep failing cost at most ~5 % over
/// 128 tokens (4 + 2 + 1 + 1 draft tokens rejected, then one token every 33 steps: 1.8 %).
const DRAFT_MAX_PAUSE: usize = 32;
/// A first draft's most tokens: doubled while drafts are accepted whole.
const DRAFT_FIRST_LEN: usize = 4;

/// Speculative decoding's state in a sequence.
#[derive(Debug, Clone, Default)]
struct Drafting {
    /// This step's input: the last sampled token, then the draft.
    input: Vec<u32>,
    /// Steps to skip before drafting again, and the next pause after a rejection.
    pause: usize,
    next_pause: usize,
    /// Most draft tokens the next draft may have: halved after a draft of which nothing was
    /// accepted, doubled (up to `draft_max`) after one accepted whole. 0: not set yet.
    len: usize,
    drafted: usize,
    accepted: usize,
}

/// Where the tokens after the last `n` of `history` appeared before (most recent match
/// first), for `n` in [`DRAFT_NGRAM`]: up to `max` of the tokens that followed.
fn lookup_draft(history: &[u32], max: usize, out: &mut Vec<u32>) {
    out.clear();
    if max == 0 {
        return;
    }
    for n in DRAFT_NGRAM {
        if history.len() <= n {
            continue;
        }
        let suffix = &history[history.len() - n..];
        // Candidates end before the suffix itself; the most recent one wins.
        for start in (0..history.len() - n).rev() {
            if &history[start..start + n] == suffix {
                let from = start + n;
                let to = (from + max).min(history.len());
                out.extend_from_slice(&history[from..to]);
                return;
            }
        }
    }
}

/// What a grammar needs while sampling: where the text is in it, and scratch.
#[derive(Debug, Clone)]
struct Constraint {
    matcher: Matcher,
    /// The logits before sampling, to sample again under the full mask.
    raw: Vec<f32>,
    allowed: Vec<bool>,
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
    constraint: Option<Constraint>,
    logprobs: Vec<TokenLogprob>,
    prompt_logprobs: Vec<TokenLogprob>,
    drafting: Drafting,
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
            constraint: params.grammar.as_ref().map(|g| Constraint {
                matcher: Matcher::new(g.clone()),
                raw: Vec::new(),
                allowed: Vec::new(),
            }),
            logprobs: Vec::new(),
            prompt_logprobs: Vec::new(),
            drafting: Drafting::default(),
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
            constraint: self.constraint.clone(),
            logprobs: Vec::new(),
            prompt_logprobs: self.prompt_logprobs.clone(),
            drafting: Drafting::default(),
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
    /// then the last sampled token, followed by up to `budget - 1` draft tokens when
    /// speculative decoding is on ([`GenerateParams::draft_max`]) and the history has a match.
    pub(crate) fn next_input(&mut self, budget: usize) -> &[u32] {
        let at = self.cache.len();
        if at + 1 == self.history.len() && self.params.draft_max > 0 && budget > 1 {
            let d = &mut self.drafting;
            d.input.clear();
            d.input.push(self.history[at]);
            if d.pause > 0 {
                d.pause -= 1;
            } else {
                // Room: the cache, and max_tokens (the token after an accepted draft counts).
                if d.len == 0 {
                    d.len = DRAFT_FIRST_LEN.min(self.params.draft_max);
                }
                let room = (self.cache.capacity() - at - 1)
                    .min(self.params.max_tokens.saturating_sub(self.generated + 1))
                    .min(d.len)
                    .min(budget - 1);
                let mut draft = std::mem::take(&mut d.input);
                let mut found = Vec::new();
                lookup_draft(&self.history, room, &mut found);
                draft.extend_from_slice(&found);
                d.input = draft;
            }
            return &self.drafting.input;
        }
        let budget = if self.params.prompt_logprobs {
            budget.min(SCORED_PROMPT_CHUNK)
        } else {
            budget
        };
        let end = at.saturating_add(budget.max(1)).min(self.history.len());
        &self.history[at..end]
    }

    /// Which logits feeding `fed` tokens from [`Sequence::next_input`] needs: the last
    /// row's to sample from, and every row's while a scored prompt is read.
    pub(crate) fn logit_rows(&self, fed: usize) -> LogitRows {
        if (self.params.prompt_logprobs && self.cache.len() < self.prompt.len())
            || self.cache.len() + fed > self.history.len()
        {
            // A scored prompt, or a draft: every row.
            LogitRows::All
        } else if self.cache.len() + fed == self.history.len() {
            LogitRows::Last
        } else {
            LogitRows::None
        }
    }

    /// Whether this sequence takes prompt keys and values from the prefix cache (a scored
    /// prompt needs every position's logits, so it reads the whole prompt itself).
    pub(crate) fn reuses_prefix(params: &GenerateParams) -> bool {
        !params.prompt_logprobs
    }

    /// Takes the logits of a step that fed tokens at positions `start..`, as
    /// [`Sequence::logit_rows`] asked for them: scores the prompt tokens they cover, and
    /// returns the row to sample from ([`Sequence::on_logits`]) when the step reached the end
    /// of the history.
    pub(crate) fn take_rows<'l>(
        &mut self,
        start: usize,
        rows: LogitRows,
        logits: &'l mut [f32],
        n_vocab: usize,
    ) -> Option<&'l mut [f32]> {
        if rows == LogitRows::All && start < self.prompt.len() {
            self.on_prompt_logits(start, logits, n_vocab);
        }
        if rows == LogitRows::None || self.cache.len() < self.history.len() {
            return None;
        }
        let last = logits.len() - n_vocab;
        Some(&mut logits[last..])
    }

    /// Whether the last step fed a draft ([`Sequence::on_draft_rows`] takes its logits).
    pub(crate) fn fed_draft(&self) -> bool {
        self.cache.len() > self.history.len()
    }

    /// Takes the logits of a step that fed the last sampled token and a draft (one row per
    /// token fed): samples from the rows in order, as one step at a time would, as long as
    /// each sample equals the draft token its row was fed, then rewinds the cache past what
    /// was not accepted. Emits every sampled token; the sampling, stops and limits are
    /// [`Sequence::on_logits`]'s, so the output is what decoding without a draft gives.
    pub(crate) fn on_draft_rows(
        &mut self,
        tok: &Tokenizer,
        rows: &mut [f32],
        n_vocab: usize,
    ) -> Vec<Emitted> {
        let draft: Vec<u32> = self.drafting.input[1..].to_vec();
        let base = self.history.len(); // the cache's valid length once the step is taken
        let mut out = Vec::new();
        let mut accepted = 0;
        for (r, row) in rows.chunks_exact_mut(n_vocab).enumerate() {
            let e = self.on_logits(tok, row);
            let hit = e
                .as_ref()
                .is_some_and(|e| draft.get(r) == Some(&e.token_id));
            out.extend(e);
            if !hit || self.is_finished() {
                accepted += usize::from(hit);
                break;
            }
            accepted += 1;
        }
        let d = &mut self.drafting;
        d.drafted += draft.len();
        d.accepted += accepted;
        if accepted == 0 {
            d.pause = d.next_pause.max(1);
            d.next_pause = (d.pause * 2).min(DRAFT_MAX_PAUSE);
            d.len = (d.len / 2).max(1);
        } else {
            d.next_pause = 0;
            if accepted == draft.len() {
                d.len = (d.len * 2).min(self.params.draft_max);
            }
        }
        self.cache.truncate(base + accepted);
        out
    }

    /// Takes the logits of a scored prompt's chunk: `rows` holds one row per token fed at
    /// positions `start..`, each scoring the prompt token after it. The row after the
    /// prompt's last token is not among them: it goes to [`Sequence::on_logits`].
    fn on_prompt_logits(&mut self, start: usize, rows: &[f32], n_vocab: usize) {
        let top = self.params.logprobs.unwrap_or(0);
        for (k, row) in rows.chunks_exact(n_vocab).enumerate() {
            if let Some(&next) = self.prompt.get(start + k + 1) {
                self.prompt_logprobs
                    .push(TokenLogprob::from_logits(row, next, top));
            }
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.stop_reason.is_some()
    }

    /// Takes the logits of the last token fed: samples, applies the stop rules. Returns the
    /// token's text; afterwards [`Sequence::is_finished`] tells whether it was the last.
    pub(crate) fn on_logits(&mut self, tok: &Tokenizer, logits: &mut [f32]) -> Option<Emitted> {
        debug_assert!(!self.is_finished() && self.cache.len() == self.history.len());
        self.first_logits.get_or_insert_with(Instant::now);
        if self.params.max_tokens == 0 {
            // A scored prompt and nothing to generate.
            self.stop_reason = Some(StopReason::Length);
            return None;
        }
        let raw = match (&mut self.constraint, self.params.logprobs) {
            (Some(c), _) => {
                c.raw.clear();
                c.raw.extend_from_slice(logits);
                None
            }
            (None, Some(_)) => Some(logits.to_vec()),
            (None, None) => None,
        };
        let id = match &mut self.constraint {
            None => self.sampler.sample(logits, &self.history),
            Some(c) => {
                match c.sample(
                    tok,
                    &mut self.sampler,
                    logits,
                    &self.history,
                    &self.stop_ids,
                ) {
                    Some(id) => id,
                    None => {
                        // No token is allowed: the grammar is complete and nothing may
                        // follow (without a stop id to end on), or its limits were reached.
                        self.stop_reason =
                            Some(if c.matcher.is_exhausted() || !c.matcher.is_complete() {
                                StopReason::GrammarLimit
                            } else {
                                StopReason::Stop
                            });
                        return None;
                    }
                }
            }
        };
        if self.stop_ids.contains(&id) {
            self.stop_reason = Some(StopReason::Stop);
            return None;
        }
        let logprob = self.params.logprobs.map(|top| {
            let raw = raw
                .as_deref()
                .or(self.constraint.as_ref().map(|c| &c.raw[..]))
                .expect("raw logits kept when log-probabilities are asked for");
            TokenLogprob::from_logits(raw, id, top)
        });
        if let Some(lp) = &logprob {
            self.logprobs.push(lp.clone());
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
        Some(Emitted {
            text,
            token_id: id,
            logprob,
        })
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
            logprob: None,
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
            logprobs: std::mem::take(&mut self.logprobs),
            prompt_logprobs: std::mem::take(&mut self.prompt_logprobs),
            draft_tokens: self.drafting.drafted,
            draft_accepted: self.drafting.accepted,
        }
    }
}

impl Constraint {
    /// Samples a token the grammar allows: first from the logits as they are (most tokens
    /// pass, and one token is cheap to check), and only when that one is refused from the
    /// logits with every refused token masked (one walk of the vocabulary's trie). Sampling
    /// with the mask is drawing from the same filtered distribution restricted to what the
    /// grammar allows. A stop id is allowed only where the grammar is complete. `None`: no
    /// token is allowed. The chosen token has been read into the grammar.
    fn sample(
        &mut self,
        tok: &Tokenizer,
        sampler: &mut Sampler,
        logits: &mut [f32],
        history: &[u32],
        stop_ids: &[u32],
    ) -> Option<u32> {
        let id = sampler.sample(logits, history);
        if self.take(tok, id, stop_ids) {
            return Some(id);
        }
        self.allowed.clear();
        self.allowed.resize(logits.len(), false);
        self.matcher
            .allowed_tokens(tok.token_trie(), &mut self.allowed);
        if self.matcher.is_complete() {
            for &s in stop_ids {
                if let Some(a) = self.allowed.get_mut(s as usize) {
                    *a = true;
                }
            }
        }
        if !self.allowed.contains(&true) {
            return None;
        }
        logits.copy_from_slice(&self.raw);
        for (l, &ok) in logits.iter_mut().zip(&self.allowed) {
            if !ok {
                *l = f32::NEG_INFINITY;
            }
        }
        let mut id = sampler.sample(logits, history);
        if !self.allowed[id as usize] {
            // Rounding in the draw's running sum can step past the last allowed candidate.
            id = sampler::argmax(logits);
        }
        let taken = self.take(tok, id, stop_ids);
        debug_assert!(taken, "a token of the mask is allowed");
        taken.then_some(id)
    }

    /// Reads `id` into the grammar if it allows it there.
    fn take(&mut self, tok: &Tokenizer, id: u32, stop_ids: &[u32]) -> bool {
        if stop_ids.contains(&id) {
            return self.matcher.is_complete();
        }
        let bytes = tok.token_bytes(id);
        !bytes.is_empty() && self.matcher.advance(bytes)
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
    let n_vocab = model.n_vocab();
    let mut logits = Vec::new();
    let tok = model.tokenizer();
    while !seq.check_interrupt() {
        // Alone: a draft may ride along with every decode step.
        let input = seq.next_input(usize::MAX).to_vec();
        let (start, rows) = (seq.cache.len(), seq.logit_rows(input.len()));
        logits.resize(rows.count(input.len()) * n_vocab, 0.0);
        match model.forward_batch(
            &mut [crate::model::BatchEntry {
                cache: &mut seq.cache,
                tokens: &input,
                logits: rows,
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
        let emitted = if seq.fed_draft() {
            seq.on_draft_rows(tok, &mut logits, n_vocab)
        } else {
            seq.take_rows(start, rows, &mut logits, n_vocab)
                .and_then(|row| seq.on_logits(tok, row))
                .into_iter()
                .collect()
        };
        for e in emitted {
            let piece = Piece {
                text: &e.text,
                token_id: e.token_id,
                logprob: e.logprob.as_ref(),
            };
            if on_piece(piece).is_break() {
                seq.stop(StopReason::Cancelled);
                break;
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
            logprob: None,
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
