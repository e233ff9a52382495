//! `/metrics` in the Prometheus text format (0.0.4), as llama-server offers it: requests by
//! route and status, the scheduler's queue, slots, KV memory, tokens and prefix-cache hits,
//! and histograms of time to first token and time between tokens as clients see them, so that
//! an autoscaler (KEDA, a Container Apps custom rule) can scale on load.

use std::sync::Mutex;
use std::time::Duration;

use bitnet_engine::{GenerateOutput, SchedulerStats, StopReason};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The API's metrics, built once per process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    generations: Family<ReasonLabels, Counter>,
    ttft: Histogram,
    inter_token: Histogram,
    engine: std::sync::Arc<EngineCollector>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The scheduler's counters as of the scrape (set just before encoding).
#[derive(Debug, Default)]
struct EngineCollector(Mutex<Option<SchedulerStats>>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bitnet");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status code",
            requests.clone(),
        );
        let generations = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "generations",
            "Generations finished, by reason (stop, length, deadline, cancelled)",
            generations.clone(),
        );
        // 25 ms .. ~100 s.
        let ttft = Histogram::new(exponential_buckets(0.025, 2.0, 13));
        registry.register(
            "time_to_first_token_seconds",
            "From a generation request's arrival to its first token",
            ttft.clone(),
        );
        // 5 ms .. ~10 s.
        let inter_token = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "inter_token_seconds",
            "Between consecutive tokens of one generation",
            inter_token.clone(),
        );
        let engine = std::sync::Arc::new(EngineCollector::default());
        registry.register_collector(Box::new(engine.clone()));
        Self {
            registry,
            requests,
            generations,
            ttft,
            inter_token,
            engine,
        }
    }

    /// One answered request. Unknown paths share one label so that a client cannot grow the
    /// metric without bound.
    pub fn request(&self, path: &str, code: u16) {
        let route = match path {
            "/tokenize" => "tokenize",
            "/detokenize" => "detokenize",
            _ => match path.strip_prefix("/v1").unwrap_or(path) {
                "/chat/completions" => "chat_completions",
                "/completions" => "completions",
                "/embeddings" => "embeddings",
                "/models" => "models",
                p if p.starts_with("/models/") => "models",
                "/health" => "health",
                "/ready" => "ready",
                "/metrics" => "metrics",
                "/" | "" => "root",
                _ => "other",
            },
        };
        self.requests
            .get_or_create(&RequestLabels { route, code })
            .inc();
    }

    pub fn time_to_first_token(&self, d: Duration) {
        self.ttft.observe(d.as_secs_f64());
    }

    pub fn inter_token(&self, d: Duration) {
        self.inter_token.observe(d.as_secs_f64());
    }

    pub fn finished(&self, o: &GenerateOutput) {
        let reason = match o.stop_reason {
            StopReason::Stop => "stop",
            StopReason::Length => "length",
            StopReason::Deadline => "deadline",
            StopReason::Cancelled => "cancelled",
            StopReason::GrammarLimit => "grammar_limit",
        };
        self.generations
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The text of a scrape, with the scheduler's counters when the model is loaded.
    pub fn render(&self, engine: Option<SchedulerStats>) -> String {
        *self.engine.0.lock().unwrap_or_else(|p| p.into_inner()) = engine;
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(s) = *self.0.lock().unwrap_or_else(|p| p.into_inner()) else {
            return Ok(());
        };
        let mut gauge = |name: &str, help: &str, v: i64| -> Result<(), std::fmt::Error> {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge(
            "slots",
            "Sequences that can generate at once (BITNET_PARALLEL)",
            s.slots as i64,
        )?;
        gauge("slots_active", "Sequences generating now", s.active as i64)?;
        gauge(
            "queue_depth",
            "Requests waiting for a slot",
            s.waiting as i64,
        )?;
        gauge(
            "kv_cache_bytes",
            "KV cache held by running sequences",
            s.kv_bytes as i64,
        )?;
        gauge(
            "kv_budget_bytes",
            "KV cache the running sequences may hold together",
            s.kv_budget_bytes.min(i64::MAX as usize) as i64,
        )?;
        gauge(
            "prefix_cache_entries",
            "Sequences kept in the prefix cache",
            s.prefix_entries as i64,
        )?;
        gauge(
            "prefix_cache_bytes",
            "KV cache kept in the prefix cache",
            s.prefix_bytes as i64,
        )?;
        let mut counter = |name: &str, help: &str, v: u64| -> Result<(), std::fmt::Error> {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
        };
        counter(
            "prompt_tokens",
            "Prompt tokens computed",
            s.prompt_tokens_computed,
        )?;
        counter(
            "prompt_tokens_cached",
            "Prompt tokens taken from the prefix cache",
            s.prompt_tokens_cached,
        )?;
        counter("generated_tokens", "Tokens generated", s.generated_tokens)?;
        counter(
            "prefix_cache_hits",
            "Requests that reused a cached prefix",
            s.prefix_hits,
        )?;
        counter(
            "prefix_cache_misses",
            "Requests that found no cached prefix",
            s.prefix_misses,
        )?;
        counter("forward_steps", "Batched forward passes", s.steps)?;
        counter(
            "forward_step_tokens",
            "Tokens carried by the forward passes",
            s.step_rows,
        )?;
        Ok(())
    }
}
