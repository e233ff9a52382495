//! Configuration of the API, read from the environment once at start.

use std::time::Duration;

/// Settings that every front door (local server, Lambda, Azure) shares.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Model id shown by `/v1/models` and accepted in `model` (`BITNET_MODEL_ID`).
    pub model_id: String,
    /// How long a generation request waits for the model to become ready before answering 503
    /// (`BITNET_WAIT_FOR_MODEL_SECS`; 0 = answer 503 at once).
    pub wait_for_model: Duration,
    /// Largest request body accepted (`BITNET_MAX_BODY_BYTES`, default 1 MiB).
    pub max_body_bytes: usize,
    /// Requests that may wait while one generation runs (`BITNET_MAX_QUEUE`, default 4).
    pub max_queue: usize,
    /// Bearer token required on every route but `/`, `/health` and `/ready` (`API_KEY`).
    pub api_key: Option<String>,
    /// Kernel threads (`BITNET_THREADS`; default: all available).
    pub threads: Option<usize>,
    /// Output head precision (`BITNET_HEAD`: `file`, the default, or `q8_0`: converted at
    /// load, faster decoding; a file from `bitnet prepare` has it without the conversion).
    pub head: bitnet_engine::HeadPrecision,
    /// `max_tokens` when the request gives none (`BITNET_DEFAULT_MAX_TOKENS`, default 512),
    /// clamped to what fits in the context.
    pub default_max_tokens: usize,
    /// Start fetching and loading the model as soon as the state is built
    /// (`BITNET_PRELOAD`, default on); otherwise on the first generation request.
    pub preload: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            model_id: "bitnet-b1.58-2b-4t".to_string(),
            wait_for_model: Duration::ZERO,
            max_body_bytes: 1 << 20,
            max_queue: 4,
            api_key: None,
            threads: None,
            head: bitnet_engine::HeadPrecision::File,
            default_max_tokens: 512,
            preload: true,
        }
    }
}

impl ApiConfig {
    /// How the engine loads the model.
    pub fn load_options(&self) -> bitnet_engine::LoadOptions {
        bitnet_engine::LoadOptions {
            threads: self.threads,
            head: self.head,
        }
    }

    /// Reads the variables above; unset or unparsable ones keep their defaults (an unparsable
    /// one is logged).
    pub fn from_env() -> Self {
        let d = Self::default();
        Self {
            model_id: env_string("BITNET_MODEL_ID").unwrap_or(d.model_id),
            wait_for_model: env_parse::<f64>("BITNET_WAIT_FOR_MODEL_SECS")
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .unwrap_or(d.wait_for_model),
            max_body_bytes: env_parse("BITNET_MAX_BODY_BYTES").unwrap_or(d.max_body_bytes),
            max_queue: env_parse("BITNET_MAX_QUEUE").unwrap_or(d.max_queue),
            api_key: env_string("API_KEY"),
            threads: env_parse::<usize>("BITNET_THREADS").filter(|&t| t > 0),
            head: env_parse("BITNET_HEAD").unwrap_or(d.head),
            default_max_tokens: env_parse::<usize>("BITNET_DEFAULT_MAX_TOKENS")
                .filter(|&t| t > 0)
                .unwrap_or(d.default_max_tokens),
            preload: env_parse::<String>("BITNET_PRELOAD")
                .map(|v| !matches!(v.as_str(), "0" | "false" | "no" | "off"))
                .unwrap_or(d.preload),
        }
    }
}

fn env_string(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    let raw = env_string(name)?;
    match raw.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::warn!(variable = name, value = %raw, "ignoring unparsable setting");
            None
        }
    }
}
