//! Configuration of the API: every environment variable the front doors read, in one table,
//! read once at start. `docs/security.md` lists the limits and timeouts among them.

use std::time::Duration;

/// Which front door runs the API: it picks the defaults that fit the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontDoor {
    /// `bitnet serve` (and the container image).
    Serve,
    /// The AWS Lambda adapter: one request per sandbox, the invocation's own deadline.
    Lambda,
    /// The Azure Functions custom handler: the host cuts HTTP requests at 230 s.
    Azure,
}

impl FrontDoor {
    /// When a downloaded model is fsync'd, unless `BITNET_CACHE_FSYNC` says otherwise:
    /// `bitnet serve` serves at once and fsyncs in the background (its cache may be a
    /// persistent volume; an fsync before serving cost 0.55 s of the first token on 2B4T);
    /// Lambda and Azure Functions never (their disk goes with the instance).
    pub fn cache_fsync(self) -> model_store::CacheFsync {
        match self {
            FrontDoor::Serve => model_store::CacheFsync::InBackground,
            FrontDoor::Lambda | FrontDoor::Azure => model_store::CacheFsync::Off,
        }
    }
}

/// An API key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Option<Self> {
        let key = key.into().trim().to_owned();
        (!key.is_empty()).then_some(Self(key))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Limits of the HTTP server (`bitnet serve`, the Azure handler): bounded time and sockets
/// per client, before authentication too.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLimits {
    /// A request's headers must arrive within this (`BITNET_HEADER_TIMEOUT_SECS`, 10).
    pub header_timeout: Duration,
    /// A request's body must arrive within this once its headers have
    /// (`BITNET_BODY_TIMEOUT_SECS`, 30): 408 otherwise.
    pub body_timeout: Duration,
    /// A connection with no request in flight is closed after this
    /// (`BITNET_IDLE_TIMEOUT_SECS`, 30).
    pub idle_timeout: Duration,
    /// Open connections at most (`BITNET_MAX_CONNECTIONS`, 256; never more than the
    /// process's file descriptor limit allows). At the cap a new connection closes the
    /// connection idle the longest, or is closed itself when every one is busy.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_connections: 256,
        }
    }
}

/// Settings that every front door (local server, Lambda, Azure) shares.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Model id shown by `/v1/models` and accepted in `model` (`BITNET_MODEL_ID`).
    pub model_id: String,
    /// An embedding model to serve beside the chat model (`BITNET_EMBEDDING_MODEL`: a path or
    /// URI, fetched by the model store like `BITNET_MODEL`; `BITNET_EMBEDDING_MODEL_SHA256`
    /// pins it). `/v1/embeddings` goes to it, chat and completions to the chat model.
    pub embedding_model: Option<String>,
    /// Its id in `/v1/models` and responses (`BITNET_EMBEDDING_MODEL_ID`, default
    /// `bitnet-embedding-0.6b`).
    pub embedding_model_id: String,
    /// How long a generation request waits for the model to become ready before answering 503
    /// (`BITNET_WAIT_FOR_MODEL_SECS`; 0 = answer 503 at once; Lambda: 900).
    pub wait_for_model: Duration,
    /// Largest request body accepted (`BITNET_MAX_BODY_BYTES`, default 1 MiB).
    pub max_body_bytes: usize,
    /// Requests that may wait while one generation runs (`BITNET_MAX_QUEUE`, default 4;
    /// Lambda: 1).
    pub max_queue: usize,
    /// Key required on every route but `/`, `/health` and `/ready` (`API_KEY`).
    pub api_key: Option<ApiKey>,
    /// Serve without a key although the front door would refuse to
    /// (`BITNET_ALLOW_NO_AUTH=1`; `bitnet serve --no-auth`).
    pub allow_no_auth: bool,
    /// Kernel threads (`bitnet serve --threads`); `None`: the engine's default,
    /// `BITNET_THREADS` or every available core.
    pub threads: Option<usize>,
    /// Output head precision (`BITNET_HEAD`: `file`, the default, or `q8_0` / `q4_0`:
    /// converted at load, faster decoding; a file from `bitnet prepare` has it without the
    /// conversion).
    pub head: bitnet_engine::HeadPrecision,
    /// KV cache precision (`BITNET_KV`: `f16`, the default, half the cache memory per
    /// sequence and half its reads at long contexts, each key and value rounded to f16; or
    /// `f32`).
    pub kv: bitnet_engine::KvPrecision,
    /// `max_tokens` when the request gives none (`BITNET_DEFAULT_MAX_TOKENS`, default 512),
    /// clamped to what fits in the context.
    pub default_max_tokens: usize,
    /// Speculative decoding by prompt lookup: draft tokens per step for a sequence decoding
    /// alone (`BITNET_DRAFT_MAX`, default 8; 0 turns it off). Output is unchanged.
    pub draft_max: usize,
    /// Start fetching and loading the model as soon as the state is built
    /// (`BITNET_PRELOAD`, default on); otherwise on the first generation request.
    pub preload: bool,
    /// Longest sequence served, prompt and completion (`BITNET_CTX_SIZE`, default 4096, the
    /// context of BitNet b1.58 2B4T): caps a file's declared context and so each
    /// sequence's KV cache.
    pub max_context: usize,
    /// A streaming client that reads nothing for this long is treated as gone: its
    /// generation is cancelled and its slot freed (`BITNET_STREAM_STALL_SECS`, 5).
    pub stream_stall: Duration,
    /// Longest a generation may run before it is stopped and its response finished
    /// (`BITNET_GENERATION_TIMEOUT_SECS`; 0 = none; default 600 for `bitnet serve`, 225 for
    /// Azure (the host cuts at 230 s), on Lambda the invocation's deadline less 2 s).
    pub generation_timeout: Option<Duration>,
    /// Origins allowed by CORS (`BITNET_CORS_ORIGINS`: comma-separated, or `*`; default
    /// none: no CORS headers, preflights are refused).
    pub cors_origins: Vec<String>,
    /// After a failed model fetch or load the next attempt waits 10 s, doubling per failure
    /// up to this (`BITNET_LOAD_RETRY_MAX_SECS`, 600). A file that failed verification waits
    /// the whole cap at once.
    pub load_retry_max: Duration,
    /// Sequences generating at once, batched into one forward pass per token
    /// (`BITNET_PARALLEL`; default 4, Lambda 1: one request per sandbox). More requests wait
    /// (up to `max_queue`).
    pub parallel: usize,
    /// Prompt tokens read per step while other sequences generate: the most a long prompt
    /// adds to their time between tokens (`BITNET_PREFILL_CHUNK`, default 32).
    pub prefill_chunk: usize,
    /// KV cache of the running sequences together, in MiB (`BITNET_KV_BUDGET_MB`); a
    /// request that does not fit waits. Default: three quarters of the memory left once the
    /// model is loaded (cgroup-aware), less the prefix cache.
    pub kv_budget_mb: Option<usize>,
    /// Finished sequences' KV kept for requests that start the same way, in MiB
    /// (`BITNET_PREFIX_CACHE_MB`; 0 turns it off). Default: a quarter of the KV budget.
    pub prefix_cache_mb: Option<usize>,
    pub http: HttpLimits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            model_id: "bitnet-b1.58-2b-4t".to_string(),
            embedding_model: None,
            embedding_model_id: "bitnet-embedding-0.6b".to_string(),
            wait_for_model: Duration::ZERO,
            max_body_bytes: 1 << 20,
            max_queue: 4,
            api_key: None,
            allow_no_auth: false,
            threads: None,
            head: bitnet_engine::HeadPrecision::File,
            kv: bitnet_engine::KvPrecision::F16,
            default_max_tokens: 512,
            draft_max: bitnet_engine::generate::DEFAULT_DRAFT_MAX,
            preload: true,
            max_context: 4096,
            stream_stall: Duration::from_secs(5),
            generation_timeout: Some(Duration::from_secs(600)),
            cors_origins: Vec::new(),
            load_retry_max: Duration::from_secs(600),
            parallel: 4,
            prefill_chunk: 32,
            kv_budget_mb: None,
            prefix_cache_mb: None,
            http: HttpLimits::default(),
        }
    }
}

impl ApiConfig {
    /// The defaults of one front door, before the environment.
    pub fn defaults_for(front_door: FrontDoor) -> Self {
        let d = Self::default();
        match front_door {
            FrontDoor::Serve => d,
            FrontDoor::Lambda => Self {
                // The Lambda timeout is the real bound on waiting for the model.
                wait_for_model: Duration::from_secs(900),
                // Lambda hands an instance one invocation at a time, but a streamed
                // invocation whose caller left can still be winding down when the next
                // arrives: one queue place lets that next one wait instead of failing.
                max_queue: 1,
                // Each invocation carries its own deadline (see `RequestDeadline`).
                generation_timeout: None,
                // One request per sandbox: nothing to batch with.
                parallel: 1,
                ..d
            },
            FrontDoor::Azure => Self {
                generation_timeout: Some(Duration::from_secs(225)),
                ..d
            },
        }
    }

    /// How the engine loads the model.
    pub fn load_options(&self) -> bitnet_engine::LoadOptions {
        bitnet_engine::LoadOptions {
            threads: self.threads,
            head: self.head,
            max_context: Some(self.max_context),
            validate_weights: true,
            kv: self.kv,
        }
    }

    /// A front door's defaults overridden by the environment: unset variables keep the
    /// defaults, unparsable ones too (and are logged).
    pub fn from_env(front_door: FrontDoor) -> Self {
        Self::from_lookup(front_door, |name| std::env::var(name).ok())
    }

    /// [`ApiConfig::from_env`] over any variable lookup (tests).
    pub fn from_lookup(front_door: FrontDoor, var: impl Fn(&str) -> Option<String>) -> Self {
        let d = Self::defaults_for(front_door);
        let env = Env(&var);
        let secs = |name: &str| -> Option<Duration> {
            env.parse::<f64>(name)
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
                .map(Duration::from_secs_f64)
        };
        let positive_secs = |name: &str, default: Duration| -> Duration {
            secs(name).filter(|d| !d.is_zero()).unwrap_or(default)
        };
        Self {
            model_id: env.string("BITNET_MODEL_ID").unwrap_or(d.model_id),
            embedding_model: env.string("BITNET_EMBEDDING_MODEL"),
            embedding_model_id: env
                .string("BITNET_EMBEDDING_MODEL_ID")
                .unwrap_or(d.embedding_model_id),
            wait_for_model: secs("BITNET_WAIT_FOR_MODEL_SECS").unwrap_or(d.wait_for_model),
            max_body_bytes: env
                .parse::<usize>("BITNET_MAX_BODY_BYTES")
                .filter(|&n| n > 0)
                .unwrap_or(d.max_body_bytes),
            max_queue: env.parse("BITNET_MAX_QUEUE").unwrap_or(d.max_queue),
            api_key: env.string("API_KEY").and_then(ApiKey::new),
            allow_no_auth: env.flag("BITNET_ALLOW_NO_AUTH").unwrap_or(d.allow_no_auth),
            threads: None,
            head: env.parse("BITNET_HEAD").unwrap_or(d.head),
            kv: env.parse("BITNET_KV").unwrap_or(d.kv),
            default_max_tokens: env
                .parse::<usize>("BITNET_DEFAULT_MAX_TOKENS")
                .filter(|&t| t > 0)
                .unwrap_or(d.default_max_tokens),
            draft_max: env
                .parse::<usize>("BITNET_DRAFT_MAX")
                .map(|n| n.min(bitnet_engine::generate::MAX_DRAFT))
                .unwrap_or(d.draft_max),
            preload: env.flag("BITNET_PRELOAD").unwrap_or(d.preload),
            max_context: env
                .parse::<usize>("BITNET_CTX_SIZE")
                .filter(|&n| n > 0)
                .unwrap_or(d.max_context),
            stream_stall: positive_secs("BITNET_STREAM_STALL_SECS", d.stream_stall),
            generation_timeout: match secs("BITNET_GENERATION_TIMEOUT_SECS") {
                Some(t) if t.is_zero() => None,
                Some(t) => Some(t),
                None => d.generation_timeout,
            },
            cors_origins: env
                .string("BITNET_CORS_ORIGINS")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or(d.cors_origins),
            load_retry_max: positive_secs("BITNET_LOAD_RETRY_MAX_SECS", d.load_retry_max),
            parallel: env
                .parse::<usize>("BITNET_PARALLEL")
                .filter(|&n| (1..=MAX_PARALLEL).contains(&n))
                .unwrap_or(d.parallel),
            prefill_chunk: env
                .parse::<usize>("BITNET_PREFILL_CHUNK")
                .filter(|&n| n > 0)
                .unwrap_or(d.prefill_chunk),
            kv_budget_mb: env
                .parse::<usize>("BITNET_KV_BUDGET_MB")
                .filter(|&n| n > 0)
                .or(d.kv_budget_mb),
            prefix_cache_mb: env.parse("BITNET_PREFIX_CACHE_MB").or(d.prefix_cache_mb),
            http: HttpLimits {
                header_timeout: positive_secs("BITNET_HEADER_TIMEOUT_SECS", d.http.header_timeout),
                body_timeout: positive_secs("BITNET_BODY_TIMEOUT_SECS", d.http.body_timeout),
                idle_timeout: positive_secs("BITNET_IDLE_TIMEOUT_SECS", d.http.idle_timeout),
                max_connections: env
                    .parse::<usize>("BITNET_MAX_CONNECTIONS")
                    .filter(|&n| n > 0)
                    .unwrap_or(d.http.max_connections),
            },
        }
    }

    /// No key is an explicit choice: without `API_KEY` a front door refuses to start unless
    /// `BITNET_ALLOW_NO_AUTH=1` (`--no-auth`) says that something in front does the checking.
    /// `bitnet serve` on a loopback address is the one exception (only this machine can
    /// reach it; browsers are kept out by the JSON content type and CORS).
    pub fn check_auth(&self, front_door: FrontDoor, loopback_only: bool) -> Result<(), String> {
        if self.api_key.is_some() || self.allow_no_auth {
            return Ok(());
        }
        if front_door == FrontDoor::Serve && loopback_only {
            return Ok(());
        }
        Err(format!(
            "refusing to start without an API key: set API_KEY{}, or set BITNET_ALLOW_NO_AUTH=1 \
             if the network in front of this {front_door:?} front door does the checking",
            if front_door == FrontDoor::Serve {
                " (or --api-key-file)"
            } else {
                ""
            }
        ))
    }
}

/// Most sequences one process batches (`BITNET_PARALLEL` above this is ignored).
pub const MAX_PARALLEL: usize = 64;

impl ApiConfig {
    /// The scheduler's settings once the model is loaded: budgets from the configuration, or
    /// from `memory_available` (bytes this process may still use, cgroup-aware; `None` when
    /// unknown) less what the model itself keeps resident (`model_bytes`).
    pub fn scheduler_config(
        &self,
        memory_available: Option<u64>,
        model_bytes: u64,
    ) -> bitnet_engine::SchedulerConfig {
        const MIB: usize = 1 << 20;
        let derived = memory_available
            .map(|m| (m.saturating_sub(model_bytes) / 4 * 3) as usize)
            .unwrap_or(4096 * MIB);
        let prefix = self
            .prefix_cache_mb
            .map(|mb| mb.saturating_mul(MIB))
            .unwrap_or(derived / 4);
        let kv = self
            .kv_budget_mb
            .map(|mb| mb.saturating_mul(MIB))
            .unwrap_or(derived.saturating_sub(prefix));
        bitnet_engine::SchedulerConfig {
            parallel: self.parallel,
            prefill_chunk: self.prefill_chunk,
            kv_budget_bytes: kv,
            prefix_cache_bytes: prefix,
            stall: self.stream_stall,
        }
    }
}

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn string(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    fn parse<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        let raw = self.string(name)?;
        match raw.trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(variable = name, value = %raw, "ignoring unparsable setting");
                None
            }
        }
    }

    fn flag(&self, name: &str) -> Option<bool> {
        let raw = self.string(name)?;
        match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" => Some(false),
            _ => {
                tracing::warn!(variable = name, value = %raw, "ignoring unparsable flag");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(front_door: FrontDoor, vars: &[(&str, &str)]) -> ApiConfig {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ApiConfig::from_lookup(front_door, |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let c = from(FrontDoor::Serve, &[("API_KEY", "sk-very-secret")]);
        assert_eq!(c.api_key.as_ref().unwrap().expose(), "sk-very-secret");
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn front_doors_have_their_defaults_and_the_environment_wins() {
        let lambda = from(FrontDoor::Lambda, &[]);
        assert_eq!(lambda.max_queue, 1);
        assert_eq!(lambda.generation_timeout, None);
        assert_eq!(lambda.wait_for_model, Duration::from_secs(900));
        let azure = from(FrontDoor::Azure, &[]);
        assert_eq!(azure.generation_timeout, Some(Duration::from_secs(225)));
        let tuned = from(
            FrontDoor::Azure,
            &[
                ("BITNET_GENERATION_TIMEOUT_SECS", "0"),
                ("BITNET_MAX_QUEUE", "9"),
                (
                    "BITNET_CORS_ORIGINS",
                    "https://a.example, https://b.example",
                ),
                ("BITNET_MAX_CONNECTIONS", "not a number"),
            ],
        );
        assert_eq!(tuned.generation_timeout, None);
        assert_eq!(tuned.max_queue, 9);
        assert_eq!(
            tuned.cors_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(tuned.http.max_connections, 256);
        assert_eq!(tuned.load_options().max_context, Some(4096));
    }

    #[test]
    fn batching_settings_and_memory_budgets() {
        assert_eq!(from(FrontDoor::Lambda, &[]).parallel, 1);
        assert_eq!(from(FrontDoor::Serve, &[]).parallel, 4);
        let c = from(
            FrontDoor::Azure,
            &[("BITNET_PARALLEL", "8"), ("BITNET_PREFILL_CHUNK", "16")],
        );
        assert_eq!((c.parallel, c.prefill_chunk), (8, 16));
        // Out of range: the default.
        assert_eq!(
            from(FrontDoor::Serve, &[("BITNET_PARALLEL", "0")]).parallel,
            4
        );
        assert_eq!(
            from(FrontDoor::Serve, &[("BITNET_PARALLEL", "100000")]).parallel,
            4
        );
        // From memory: 4 GiB available, a 1 GiB model: 2.25 GiB, a quarter for prefixes.
        let gib = 1u64 << 30;
        let s = from(FrontDoor::Azure, &[]).scheduler_config(Some(4 * gib), gib);
        assert_eq!(s.prefix_cache_bytes as u64, 9 * gib / 16);
        assert_eq!(s.kv_budget_bytes as u64, 27 * gib / 16);
        assert_eq!(s.stall, Duration::from_secs(5));
        // Explicit budgets win; 0 turns the prefix cache off.
        let s = from(
            FrontDoor::Serve,
            &[
                ("BITNET_KV_BUDGET_MB", "512"),
                ("BITNET_PREFIX_CACHE_MB", "0"),
            ],
        )
        .scheduler_config(Some(4 * gib), gib);
        assert_eq!((s.kv_budget_bytes, s.prefix_cache_bytes), (512 << 20, 0));
    }

    #[test]
    fn no_key_is_an_explicit_opt_in_on_every_front_door() {
        for door in [FrontDoor::Serve, FrontDoor::Lambda, FrontDoor::Azure] {
            let none = from(door, &[]);
            assert!(none.check_auth(door, false).is_err(), "{door:?}");
            assert!(
                from(door, &[("API_KEY", "k")])
                    .check_auth(door, false)
                    .is_ok()
            );
            assert!(
                from(door, &[("BITNET_ALLOW_NO_AUTH", "1")])
                    .check_auth(door, false)
                    .is_ok()
            );
            // A blank key is no key.
            assert!(
                from(door, &[("API_KEY", "  ")])
                    .check_auth(door, false)
                    .is_err()
            );
        }
        // Only `bitnet serve` on loopback may go without.
        assert!(
            from(FrontDoor::Serve, &[])
                .check_auth(FrontDoor::Serve, true)
                .is_ok()
        );
        assert!(
            from(FrontDoor::Azure, &[])
                .check_auth(FrontDoor::Azure, true)
                .is_err()
        );
    }
}
