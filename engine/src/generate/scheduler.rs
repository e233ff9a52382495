//! Continuous batching: one engine thread serves every running generation. Each step carries
//! the next token of every decoding sequence and a bounded chunk of the prompts being read
//! through one forward pass ([`crate::model::BitNet::forward_batch`]), so the weights are read
//! once per step whatever the number of sequences, and a long prompt arriving delays running
//! streams by at most one chunk per token. Finished sequences leave their keys and values in
//! the prefix cache for the requests that start the same way.
//!
//! Output does not depend on the batch: a sequence gives the same tokens alone, in any batch,
//! with any chunking of its prompt and from the prefix cache (see `forward_batch`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::prefix::PrefixCache;
use super::{
    Emitted, GenerateOutput, GenerateParams, Interrupt, Sequence, StopReason, TokenLogprob,
};
use crate::model::{BatchEntry, LogitRows, StepBuffers};
use crate::{EngineError, Model};

/// How the scheduler shares the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Sequences generating at once (slots); more requests wait in order.
    pub parallel: usize,
    /// Most prompt tokens read per step while other sequences decode, across all sequences
    /// reading a prompt; the scheduler lowers it while such steps take over twice a
    /// decode-only step, so that a long prompt arriving does not stall the running streams.
    pub prefill_chunk: usize,
    /// Bytes of KV cache the running sequences may hold together; a request that does not fit
    /// waits (one sequence always runs, whatever its size).
    pub kv_budget_bytes: usize,
    /// Bytes of finished sequences' KV kept for reuse (0 turns the prefix cache off).
    pub prefix_cache_bytes: usize,
    /// A sequence whose client has taken nothing for this long is cancelled (its events wait
    /// meanwhile and it is left out of the steps, so a slow client never slows the others).
    pub stall: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            parallel: 1,
            prefill_chunk: 64,
            kv_budget_bytes: usize::MAX,
            prefix_cache_bytes: 0,
            stall: Duration::from_secs(5),
        }
    }
}

/// What a generation reports, in order: every generated token's text (possibly empty while a
/// character or a possible stop string is incomplete; a last one may release held-back text
/// and repeats the last id), then exactly one `Done`.
#[derive(Debug)]
pub enum Event {
    Token {
        text: String,
        token_id: u32,
        /// When log-probabilities were asked for (absent on a flushing piece).
        logprob: Option<TokenLogprob>,
    },
    Done(Result<GenerateOutput, EngineError>),
}

/// Why an event could not be delivered.
#[derive(Debug)]
pub enum SinkError {
    /// No room now: the event comes back and is offered again at the next step.
    Full(Event),
    /// Nobody is listening: the generation is cancelled.
    Closed,
}

/// Where a generation's events go (a bounded channel to an HTTP response, a collector).
/// Never blocks: the engine thread serves everyone.
pub trait EventSink: Send + 'static {
    /// A full sink hands the event back to be offered again (moved, not boxed: this runs
    /// once per token).
    #[allow(clippy::result_large_err)]
    fn try_send(&mut self, event: Event) -> Result<(), SinkError>;
    /// The receiver is gone (checked every step, a prompt being read included).
    fn is_closed(&self) -> bool;
}

/// A sink over a bounded `std::sync::mpsc` channel (tests, the CLI).
impl EventSink for mpsc::SyncSender<Event> {
    fn try_send(&mut self, event: Event) -> Result<(), SinkError> {
        mpsc::SyncSender::try_send(self, event).map_err(|e| match e {
            mpsc::TrySendError::Full(ev) => SinkError::Full(ev),
            mpsc::TrySendError::Disconnected(_) => SinkError::Closed,
        })
    }
    fn is_closed(&self) -> bool {
        false
    }
}

/// Counters and gauges of the scheduler, read at any time (`/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub slots: usize,
    /// Sequences generating.
    pub active: usize,
    /// Requests submitted and not yet generating.
    pub waiting: usize,
    /// KV cache bytes held by running sequences, and their budget.
    pub kv_bytes: usize,
    pub kv_budget_bytes: usize,
    pub prefix_entries: usize,
    pub prefix_bytes: usize,
    /// Requests that found / did not find a prefix in the cache.
    pub prefix_hits: u64,
    pub prefix_misses: u64,
    /// Prompt tokens taken from the prefix cache, and computed.
    pub prompt_tokens_cached: u64,
    pub prompt_tokens_computed: u64,
    pub generated_tokens: u64,
    /// Forward steps and the tokens (rows) they carried.
    pub steps: u64,
    pub step_rows: u64,
}

#[derive(Default)]
struct Counters {
    active: AtomicUsize,
    waiting: AtomicUsize,
    kv_bytes: AtomicUsize,
    prefix_entries: AtomicUsize,
    prefix_bytes: AtomicUsize,
    prefix_hits: AtomicU64,
    prefix_misses: AtomicU64,
    prompt_tokens_cached: AtomicU64,
    prompt_tokens_computed: AtomicU64,
    generated_tokens: AtomicU64,
    steps: AtomicU64,
    step_rows: AtomicU64,
}

struct Job {
    prompt: Vec<u32>,
    params: GenerateParams,
    interrupt: Interrupt,
    sink: Box<dyn EventSink>,
    /// Where the request's other choices go (`n` > 1): they share its prompt pass.
    choices: Vec<Box<dyn EventSink>>,
    /// The submitter's span (the HTTP request's), for the engine's logs about it.
    span: tracing::Span,
}

impl Job {
    /// Ends a request that never ran: every choice's sink gets `result`.
    fn end(&mut self, result: &dyn Fn() -> Result<GenerateOutput, EngineError>) {
        for sink in self
            .choices
            .iter_mut()
            .chain(std::iter::once(&mut self.sink))
        {
            let _ = sink.try_send(Event::Done(result()));
        }
    }
}

/// The engine thread's handle. Dropping it cancels what runs and ends the thread.
pub struct Scheduler {
    model: Arc<Model>,
    config: SchedulerConfig,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    counters: Arc<Counters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .finish()
    }
}

impl Scheduler {
    /// Starts the engine thread.
    pub fn new(model: Arc<Model>, mut config: SchedulerConfig) -> Self {
        config.parallel = config.parallel.max(1);
        config.prefill_chunk = config.prefill_chunk.max(1);
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            model: model.clone(),
            config: config.clone(),
            counters: counters.clone(),
            prefix: PrefixCache::new(config.prefix_cache_bytes),
            waiting: VecDeque::new(),
            running: Vec::new(),
            draining: Vec::new(),
            buffers: StepBuffers::default(),
            logits: Vec::new(),
            pacer: Pacer::new(config.prefill_chunk),
        };
        let thread = std::thread::Builder::new()
            .name("bitnet-engine".into())
            .spawn(move || worker.run(rx))
            .expect("spawn the engine thread");
        Self {
            model,
            config,
            jobs: Mutex::new(Some(tx)),
            counters,
            thread: Some(thread),
        }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Checks the request ([`Model::check_request`]) and queues it; its events go to `sink`.
    /// An error here means nothing was queued and `sink` sees nothing.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: GenerateParams,
        interrupt: Interrupt,
        sink: Box<dyn EventSink>,
    ) -> Result<(), EngineError> {
        self.submit_choices(prompt, params, interrupt, vec![sink])
    }

    /// [`Scheduler::submit`] for several choices of one request (OpenAI's `n`): the prompt is
    /// read once, then each choice samples on its own (choice i of a seeded request with seed
    /// `seed + i`) into `sinks[i]`. The choices take a slot each.
    pub fn submit_choices(
        &self,
        prompt: Vec<u32>,
        params: GenerateParams,
        interrupt: Interrupt,
        mut sinks: Vec<Box<dyn EventSink>>,
    ) -> Result<(), EngineError> {
        self.model.check_request(&prompt, &params)?;
        if sinks.is_empty() {
            return Err(EngineError::invalid_param("n", "must be at least 1"));
        }
        let sink = sinks.remove(0);
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let tx = jobs.as_ref().ok_or(EngineError::Stopped)?;
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        tx.send(Job {
            prompt,
            params,
            interrupt,
            sink,
            choices: sinks,
            span: tracing::Span::current(),
        })
        .map_err(|_| {
            self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
            EngineError::Stopped
        })
    }

    /// Runs one request to its end on the engine thread, blocking this one; `on_token` sees
    /// every token's text as it comes.
    pub fn generate_blocking(
        &self,
        prompt: Vec<u32>,
        params: GenerateParams,
        interrupt: Interrupt,
        on_token: &mut dyn FnMut(&str, u32),
    ) -> Result<GenerateOutput, EngineError> {
        let (tx, rx) = mpsc::sync_channel(64);
        self.submit(prompt, params, interrupt, Box::new(tx))?;
        loop {
            match rx.recv() {
                Ok(Event::Token { text, token_id, .. }) => on_token(&text, token_id),
                Ok(Event::Done(result)) => return result,
                Err(_) => return Err(EngineError::Stopped),
            }
        }
    }

    pub fn stats(&self) -> SchedulerStats {
        let c = &self.counters;
        SchedulerStats {
            slots: self.config.parallel,
            active: c.active.load(Ordering::Relaxed),
            waiting: c.waiting.load(Ordering::Relaxed),
            kv_bytes: c.kv_bytes.load(Ordering::Relaxed),
            kv_budget_bytes: self.config.kv_budget_bytes,
            prefix_entries: c.prefix_entries.load(Ordering::Relaxed),
            prefix_bytes: c.prefix_bytes.load(Ordering::Relaxed),
            prefix_hits: c.prefix_hits.load(Ordering::Relaxed),
            prefix_misses: c.prefix_misses.load(Ordering::Relaxed),
            prompt_tokens_cached: c.prompt_tokens_cached.load(Ordering::Relaxed),
            prompt_tokens_computed: c.prompt_tokens_computed.load(Ordering::Relaxed),
            generated_tokens: c.generated_tokens.load(Ordering::Relaxed),
            steps: c.steps.load(Ordering::Relaxed),
            step_rows: c.step_rows.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has cancelled what runs.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running sequence and where its events go.
struct Running {
    seq: Sequence,
    sink: Box<dyn EventSink>,
    /// The request's other choices, forked from this sequence once its prompt is read.
    choices: Vec<Box<dyn EventSink>>,
    span: tracing::Span,
    /// Events the sink had no room for, in order.
    pending: VecDeque<Event>,
    /// Since when the sink has been full.
    stalled_since: Option<Instant>,
}

impl Running {
    /// Offers the pending events; false when the client is gone.
    fn flush(&mut self) -> bool {
        while let Some(ev) = self.pending.pop_front() {
            match self.sink.try_send(ev) {
                Ok(()) => {}
                Err(SinkError::Full(ev)) => {
                    self.pending.push_front(ev);
                    self.stalled_since.get_or_insert_with(Instant::now);
                    return true;
                }
                Err(SinkError::Closed) => return false,
            }
        }
        self.stalled_since = None;
        !self.sink.is_closed()
    }

    fn emit(&mut self, e: Emitted) {
        self.pending.push_back(Event::Token {
            text: e.text,
            token_id: e.token_id,
            logprob: e.logprob,
        });
    }
}

struct Worker {
    model: Arc<Model>,
    config: SchedulerConfig,
    counters: Arc<Counters>,
    prefix: PrefixCache,
    waiting: VecDeque<Job>,
    running: Vec<Running>,
    /// Ended sequences whose last events wait for their client.
    draining: Vec<Running>,
    buffers: StepBuffers,
    logits: Vec<f32>,
    pacer: Pacer,
}

/// Sizes the prompt chunk mixed into steps that carry decoding sequences, so that such a step
/// takes at most [`Pacer::TARGET`] times a decode-only step: a chunk's cost grows with its
/// position (attention over the prompt read so far), so a fixed size that is harmless at the
/// start of a long prompt stalls the running streams at its end (measured on 2B4T, 2 threads,
/// 4 streams: 32-token chunks made the streams' p99 time between tokens 6.9x their median).
#[derive(Debug)]
struct Pacer {
    /// Prompt tokens per mixed step now, within `MIN..=max`.
    chunk: usize,
    max: usize,
    /// Moving average of decode-only steps, seconds.
    decode_step: Option<f64>,
}

impl Pacer {
    const TARGET: f64 = 2.5;
    const MIN: usize = 4;

    fn new(max: usize) -> Self {
        Self {
            chunk: max.clamp(Self::MIN, max.max(Self::MIN)),
            max: max.max(Self::MIN),
            decode_step: None,
        }
    }

    fn observe(&mut self, took: Duration, decoding: bool, prefill: bool) {
        let t = took.as_secs_f64();
        match (decoding, prefill) {
            (true, false) => {
                self.decode_step = Some(self.decode_step.map_or(t, |d| 0.8 * d + 0.2 * t));
            }
            (true, true) => {
                let Some(d) = self.decode_step else { return };
                if t > Self::TARGET * d {
                    self.chunk = (self.chunk * 2 / 3).max(Self::MIN);
                } else if t < 0.75 * Self::TARGET * d {
                    self.chunk = (self.chunk + self.chunk.div_ceil(4)).min(self.max);
                }
            }
            _ => {}
        }
    }
}

/// Prompt tokens per step when no sequence is decoding (nobody's time between tokens to
/// protect): large passes, and a lone sequence is still interrupted between layers.
const LONE_PREFILL_TOKENS: usize = 512;

/// How long the thread naps when every running sequence waits for its client.
const STALLED_NAP: Duration = Duration::from_millis(2);

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            // Take new requests: wait for one when there is nothing to do.
            if self.running.is_empty() && self.waiting.is_empty() && self.draining.is_empty() {
                match rx.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.shut_down();
                        return;
                    }
                }
            }
            self.admit();
            self.retire_finished();
            if !self.step() {
                // Every running sequence waits for its client.
                match rx.recv_timeout(STALLED_NAP) {
                    Ok(job) => self.waiting.push_back(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        self.shut_down();
                        return;
                    }
                }
            }
        }
    }

    fn kv_in_use(&self) -> usize {
        self.running.iter().map(|r| r.seq.cache.bytes()).sum()
    }

    /// Starts waiting requests while there are free slots and KV budget, in arrival order.
    /// Requests whose client left or whose interrupt fired while waiting end first, wherever
    /// they are in the queue (the front door gives their place back at once, so the queue
    /// must not keep them).
    fn admit(&mut self) {
        let (before, counters) = (self.waiting.len(), &self.counters);
        self.waiting.retain_mut(|job| {
            if !job.sink.is_closed() && job.interrupt.check().is_none() {
                return true;
            }
            let reason = job.interrupt.check().unwrap_or(StopReason::Cancelled);
            let prompt_tokens = job.prompt.len();
            job.end(&|| Ok(GenerateOutput::not_started(prompt_tokens, reason)));
            false
        });
        counters
            .waiting
            .fetch_sub(before - self.waiting.len(), Ordering::Relaxed);
        let mut in_use = self.kv_in_use();
        while self.running.len() < self.config.parallel {
            let Some(job) = self.waiting.front() else {
                break;
            };
            let capacity = Sequence::capacity_for(job.prompt.len(), &job.params);
            let n = 1 + job.choices.len();
            let need = n * self.model.kv_cache_bytes(capacity);
            let slots_left = self.config.parallel - self.running.len();
            if !self.running.is_empty()
                && (n > slots_left || in_use + need > self.config.kv_budget_bytes)
            {
                break;
            }
            let job = self.waiting.pop_front().expect("front exists");
            self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
            let mut cache = self.model.new_cache(capacity);
            let reused = if Sequence::reuses_prefix(&job.params) {
                self.prefix.fill(&job.prompt, &mut cache)
            } else {
                0
            };
            let c = &self.counters;
            if reused > 0 {
                c.prefix_hits.fetch_add(1, Ordering::Relaxed);
            } else if self.config.prefix_cache_bytes > 0 {
                c.prefix_misses.fetch_add(1, Ordering::Relaxed);
            }
            c.prompt_tokens_cached
                .fetch_add(reused as u64, Ordering::Relaxed);
            c.prompt_tokens_computed
                .fetch_add((job.prompt.len() - reused) as u64, Ordering::Relaxed);
            in_use += n * cache.bytes();
            let seq = Sequence::new(
                &self.model,
                job.prompt,
                job.params,
                job.interrupt,
                Some(cache),
            );
            self.running.push(Running {
                seq,
                sink: job.sink,
                choices: job.choices,
                span: job.span,
                pending: VecDeque::new(),
                stalled_since: None,
            });
        }
        self.publish();
    }

    /// Delivers what waits, applies interrupts, stalls and departures, and ends the sequences
    /// that are done: their result is sent and their cache offered to the prefix cache.
    fn retire_finished(&mut self) {
        let stall = self.config.stall;
        let mut i = 0;
        while i < self.running.len() {
            let r = &mut self.running[i];
            if !r.flush() {
                r.seq.stop(StopReason::Cancelled);
            } else if r.stalled_since.is_some_and(|t| t.elapsed() >= stall) {
                r.span.in_scope(|| {
                    tracing::warn!(
                        stall_s = stall.as_secs_f64(),
                        "client stopped reading the stream; cancelling its generation"
                    )
                });
                r.seq.stop(StopReason::Cancelled);
                r.pending.clear();
            }
            r.seq.check_interrupt();
            if !r.seq.is_finished() {
                i += 1;
                continue;
            }
            // Finished: release held-back text and the result. A client that is slow to
            // take them gets them as soon as there is room (the sink is bounded, the events
            // few); the slot is free now.
            let mut r = self.running.remove(i);
            if let Some(e) = r.seq.flush() {
                r.emit(e);
            }
            let output = r.seq.output();
            r.span.in_scope(|| match output.stop_reason {
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
                StopReason::GrammarLimit => tracing::warn!(
                    completion_tokens = output.completion_tokens,
                    "grammar too ambiguous to follow within its limits; response cut short"
                ),
                _ => {}
            });
            // Choices never forked (the prompt pass was cut short) end the same way.
            for mut sink in std::mem::take(&mut r.choices) {
                let _ = sink.try_send(Event::Done(Ok(output.clone())));
            }
            r.pending.push_back(Event::Done(Ok(output)));
            let tokens = r.seq.cached_tokens().to_vec();
            let cache = std::mem::replace(&mut r.seq.cache, self.model.new_cache(0));
            self.prefix.insert(&tokens, cache);
            self.draining.push(r);
        }
        // The counters first: a client that has its result sees them up to date.
        self.publish();
        // Finished sequences whose last events wait for room: no slot, no cache.
        self.draining.retain_mut(|r| {
            r.flush()
                && !r.pending.is_empty()
                && r.stalled_since.is_none_or(|t| t.elapsed() < stall)
        });
    }

    /// One forward step over every sequence that can move; false when none can.
    fn step(&mut self) -> bool {
        // The chunk limit protects the other sequences' time between tokens; a sequence alone
        // reads its prompt in large passes (the prefill GEMM is most efficient there).
        let decoding = self
            .running
            .iter()
            .any(|r| r.pending.is_empty() && r.seq.prompt_left() == 0);
        let mut budget = if self.running.len() > 1 {
            self.pacer.chunk
        } else {
            self.config.prefill_chunk.max(LONE_PREFILL_TOKENS)
        };
        // Which sequences take part and how many tokens each feeds: every decoding one, then
        // the prompts being read, shortest first (a new chat turn is not kept waiting behind
        // a long document).
        let mut plan: Vec<(usize, usize)> = Vec::with_capacity(self.running.len());
        let mut reading: Vec<(usize, usize)> = Vec::new();
        // A sequence decoding alone may feed a draft with its token (speculative decoding:
        // the step reads the weights once either way); in a shared step the rows are others'.
        let decoders = self
            .running
            .iter()
            .filter(|r| r.pending.is_empty() && r.seq.prompt_left() == 0)
            .count();
        let decode_rows = if decoders == 1 && self.running.len() == 1 {
            1 + crate::generate::MAX_DRAFT
        } else {
            1
        };
        for (i, r) in self.running.iter().enumerate() {
            if !r.pending.is_empty() {
                continue; // waiting for its client
            }
            match r.seq.prompt_left() {
                0 => plan.push((i, decode_rows)),
                left => reading.push((left, i)),
            }
        }
        reading.sort_unstable();
        for (left, i) in reading {
            if budget == 0 {
                break;
            }
            let take = left.min(budget);
            budget -= take;
            plan.push((i, take));
        }
        if plan.is_empty() {
            return false;
        }
        let model = self.model.clone();
        let n_vocab = model.n_vocab();
        let inputs: Vec<Vec<u32>> = plan
            .iter()
            .map(|&(i, n)| self.running[i].seq.next_input(n).to_vec())
            .collect();
        let wants: Vec<(usize, LogitRows)> = plan
            .iter()
            .zip(&inputs)
            .map(|(&(i, _), input)| {
                let seq = &self.running[i].seq;
                (seq.cache.len(), seq.logit_rows(input.len()))
            })
            .collect();
        let rows: usize = inputs.iter().map(Vec::len).sum();
        let logit_rows: usize = wants
            .iter()
            .zip(&inputs)
            .map(|(&(_, w), input)| w.count(input.len()))
            .sum();
        self.logits.resize(logit_rows * n_vocab, 0.0);
        let prefill_rows: usize = plan
            .iter()
            .filter(|&&(i, _)| self.running[i].seq.prompt_left() > 0)
            .map(|&(_, n)| n)
            .sum();
        let started = Instant::now();
        // A sequence alone in its step is interrupted between layers (a long prompt's pass is
        // then cut at once, as without batching); in a shared step each is checked between
        // steps.
        let interrupt = match plan.as_slice() {
            [(i, _)] => self.running[*i].seq.interrupt.clone(),
            _ => Interrupt::new(),
        };
        let result = {
            let mut caches: Vec<Option<&mut crate::model::KvCache>> = self
                .running
                .iter_mut()
                .map(|r| Some(&mut r.seq.cache))
                .collect();
            let mut batch: Vec<BatchEntry<'_>> = plan
                .iter()
                .zip(&inputs)
                .zip(&wants)
                .map(|((&(i, _), input), &(_, logits))| BatchEntry {
                    cache: caches[i].take().expect("each sequence once"),
                    tokens: input,
                    logits,
                })
                .collect();
            let buffers = &mut self.buffers;
            let logits = &mut self.logits;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                model.forward_batch(&mut batch, buffers, logits, &interrupt)
            }))
            .unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(EngineError::InvalidModel(format!(
                    "forward pass panicked: {msg}"
                )))
            })
        };
        self.pacer
            .observe(started.elapsed(), decoding, prefill_rows > 0);
        let c = &self.counters;
        c.steps.fetch_add(1, Ordering::Relaxed);
        c.step_rows.fetch_add(rows as u64, Ordering::Relaxed);
        if let Err(EngineError::Interrupted(reason)) = result {
            // Only a lone sequence's own interrupt reaches the forward pass.
            self.running[plan[0].0].seq.stop(reason);
            return true;
        }
        if let Err(e) = result {
            // The whole step failed: every sequence in it ends with the error.
            tracing::error!(error = %e, "forward pass failed");
            let message = e.to_string();
            let mut failed: Vec<usize> = plan.iter().map(|&(i, _)| i).collect();
            failed.sort_unstable_by(|a, b| b.cmp(a));
            for i in failed {
                let mut r = self.running.remove(i);
                for mut sink in std::mem::take(&mut r.choices) {
                    let _ =
                        sink.try_send(Event::Done(Err(EngineError::InvalidModel(message.clone()))));
                }
                r.pending
                    .push_back(Event::Done(Err(EngineError::InvalidModel(message.clone()))));
                self.draining.push(r);
            }
            self.publish();
            return true;
        }
        let tok = model.tokenizer();
        let mut forks = Vec::new();
        let mut j = 0;
        for ((&(i, _), &(start, wanted)), input) in plan.iter().zip(&wants).zip(&inputs) {
            let n_rows = wanted.count(input.len());
            if n_rows == 0 {
                continue;
            }
            let rows = &mut self.logits[j * n_vocab..(j + n_rows) * n_vocab];
            j += n_rows;
            if self.running[i].seq.fed_draft() {
                let r = &mut self.running[i];
                for e in r.seq.on_draft_rows(tok, rows, n_vocab) {
                    c.generated_tokens.fetch_add(1, Ordering::Relaxed);
                    r.emit(e);
                }
                continue;
            }
            let Some(logits) = self.running[i].seq.take_rows(start, wanted, rows, n_vocab) else {
                continue; // a scored prompt's chunk short of its end
            };
            // The prompt is read: the request's other choices start from here, each with the
            // same logits to sample from.
            let choices = std::mem::take(&mut self.running[i].choices);
            for (k, sink) in choices.into_iter().enumerate() {
                let parent = &self.running[i];
                let mut fork = Running {
                    seq: parent.seq.fork(k + 1),
                    sink,
                    choices: Vec::new(),
                    span: parent.span.clone(),
                    pending: VecDeque::new(),
                    stalled_since: None,
                };
                let mut own = logits.to_vec();
                if let Some(e) = fork.seq.on_logits(tok, &mut own) {
                    c.generated_tokens.fetch_add(1, Ordering::Relaxed);
                    fork.emit(e);
                }
                forks.push(fork);
            }
            let r = &mut self.running[i];
            if let Some(e) = r.seq.on_logits(tok, logits) {
                c.generated_tokens.fetch_add(1, Ordering::Relaxed);
                r.emit(e);
            }
        }
        self.running.append(&mut forks);
        true
    }

    fn publish(&self) {
        let c = &self.counters;
        c.active.store(self.running.len(), Ordering::Relaxed);
        c.kv_bytes.store(self.kv_in_use(), Ordering::Relaxed);
        c.prefix_entries.store(self.prefix.len(), Ordering::Relaxed);
        c.prefix_bytes.store(self.prefix.bytes(), Ordering::Relaxed);
    }

    /// The process is stopping: everything running or waiting ends as cancelled.
    fn shut_down(&mut self) {
        for r in &mut self.running {
            r.seq.stop(StopReason::Cancelled);
        }
        self.retire_finished();
        for mut job in self.waiting.drain(..) {
            job.end(&|| Err(EngineError::Stopped));
        }
        self.counters.waiting.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_shrinks_the_chunk_while_mixed_steps_are_slow_and_grows_it_back() {
        let ms = Duration::from_millis;
        let mut p = Pacer::new(32);
        assert_eq!(p.chunk, 32);
        // No decode-only step seen yet: nothing to compare with.
        p.observe(ms(500), true, true);
        assert_eq!(p.chunk, 32);
        p.observe(ms(100), true, false);
        // Mixed steps over 2.5 decode steps: smaller chunks, never below the minimum.
        p.observe(ms(300), true, true);
        assert_eq!(p.chunk, 21);
        for _ in 0..20 {
            p.observe(ms(300), true, true);
        }
        assert_eq!(p.chunk, Pacer::MIN);
        // Within the target but not well under it: unchanged.
        p.observe(ms(220), true, true);
        assert_eq!(p.chunk, Pacer::MIN);
        // Fast again: back up to the configured most.
        for _ in 0..30 {
            p.observe(ms(120), true, true);
        }
        assert_eq!(p.chunk, 32);
        // Steps without decoding sequences say nothing about their time between tokens.
        p.observe(ms(5000), false, true);
        assert_eq!(p.chunk, 32);
    }
}
