//! Models: a typed configuration, the BitNet weights and forward pass, and [`Model`], the
//! loaded-model handle the API uses.

pub mod bitnet;
pub mod config;
pub mod prepare;

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

pub use bitnet::{BatchEntry, BitNet, KvCache, LogitRows, Session, StepBuffers};
pub use config::{Activation, Config, Pooling};

use crate::generate::{GenerateOutput, GenerateParams, Interrupt, Piece};
use crate::gguf::{Backing, GgufFile};
use crate::kernels::Kernels;
use crate::{EngineError, Tokenizer};

/// Most positions the KV caches of inputs embedded together hold (the 0.6B model keeps
/// 229 KB per position in f32: ~235 MB).
const EMBED_GROUP_TOKENS: usize = 1024;
/// Most tokens one forward pass of [`Model::embed`] reads.
const EMBED_STEP_TOKENS: usize = 512;

/// An embedding request refused or failed: which input (when one is at fault) and why.
#[derive(Debug, thiserror::Error)]
#[error("{}{error}", index.map(|i| format!("input {i}: ")).unwrap_or_default())]
pub struct EmbedError {
    pub index: Option<usize>,
    pub error: EngineError,
}

/// Options for loading a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Worker threads for the kernels; `None`: `BITNET_THREADS`, else every available core.
    pub threads: Option<usize>,
    /// Precision of the output head.
    pub head: HeadPrecision,
    /// Longest sequence (prompt + generated) served: the file's context length, capped by
    /// this. A sequence's KV cache is sized from it ([`Model::kv_bytes_per_token`]), so a file
    /// that declares an absurd context cannot make a request allocate without bound.
    pub max_context: Option<usize>,
    /// Check every weight at load (reserved I2_S codes, non-finite scales) rather than at
    /// its first use, so that a loaded model is one that can run (servers turn this on).
    pub validate_weights: bool,
    /// How keys and values are cached (a text model's; an embedding model's are f32).
    pub kv: KvPrecision,
}

/// How a sequence's keys and values are cached. Attention reads the whole cache for every
/// token, so at long contexts it is a read as large as the weights (2B4T: 77 KB per token
/// in f16, 0.31 GB at 4,096 tokens; twice that in f32).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvPrecision {
    /// f32 (opt-in): attention sees exactly the values the projections computed.
    F32,
    /// f16 (the default, as llama.cpp's): half the memory and the reads; each key and value
    /// is rounded to the nearest f16 when written, then attention runs on those values
    /// widened to f32 (exactly). Faster than f32 at every depth measured since the key-block
    /// attention kernels (2B4T prepared file, 2 threads: pp4096 106.9 against 99.4 tok/s).
    #[default]
    F16,
}

impl KvPrecision {
    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }
}

impl std::str::FromStr for KvPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            other => Err(format!("unknown KV cache precision {other:?} (f32 or f16)")),
        }
    }
}

/// The output head is the largest read per decoded token (0.66 GB of F16 on 2B4T).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HeadPrecision {
    /// As stored in the file (F16 for BitNet b1.58; a prepared file's Q4_0 or Q8_0).
    #[default]
    File,
    /// Quantized to Q8_0 at load (opt-in): about half the bytes per token, at the cost of
    /// a conversion at start-up. A file written by `bitnet prepare --head q8_0` has the
    /// same head without the conversion, under [`HeadPrecision::File`].
    Q8_0,
    /// Quantized to Q6_K at load (opt-in): about 41 % of the F16 head's bytes.
    Q6K,
    /// Quantized to Q4_0 at load (opt-in): about 28 % of the F16 head's bytes.
    Q4_0,
}

impl HeadPrecision {
    /// The type the head is converted to at load, if any.
    pub fn convert_to(self) -> Option<crate::gguf::GgmlType> {
        match self {
            Self::File => None,
            Self::Q8_0 => Some(crate::gguf::GgmlType::Q8_0),
            Self::Q6K => Some(crate::gguf::GgmlType::Q6K),
            Self::Q4_0 => Some(crate::gguf::GgmlType::Q4_0),
        }
    }
}

impl std::str::FromStr for HeadPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f16" | "file" => Ok(Self::File),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q6_k" | "q6" => Ok(Self::Q6K),
            "q4_0" | "q4" => Ok(Self::Q4_0),
            other => Err(format!(
                "unknown head precision {other:?} (file, q8_0, q6_k or q4_0)"
            )),
        }
    }
}

/// A loaded model: weights stay in the memory mapping. `Send + Sync`; generation takes `&self`.
pub struct Model {
    pub(crate) gguf: GgufFile,
    pub(crate) net: BitNet,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) kernels: Kernels,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.net.config)
            .finish()
    }
}

impl Model {
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model, EngineError> {
        let gguf = GgufFile::open(path)?;
        Self::from_gguf(gguf, opts)
    }

    pub fn from_mmap(map: Arc<memmap2::Mmap>, opts: &LoadOptions) -> Result<Model, EngineError> {
        Self::from_backing(map, opts)
    }

    pub fn from_backing(bytes: Backing, opts: &LoadOptions) -> Result<Model, EngineError> {
        Self::from_gguf(GgufFile::from_backing(bytes)?, opts)
    }

    pub fn from_gguf(gguf: GgufFile, opts: &LoadOptions) -> Result<Model, EngineError> {
        let mut net = BitNet::from_gguf(&gguf)?;
        if let Some(cap) = opts.max_context {
            net.config.n_ctx = net.config.n_ctx.min(cap.max(1));
        }
        // An embedding model's caches live only for one call, so they save no memory held
        // between requests: f32, whatever the option (an f16 cache moved the parity
        // fixtures' vectors by up to 0.004).
        net.config.kv = if net.config.pooling.is_some() {
            KvPrecision::F32
        } else {
            opts.kv
        };
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let kernels = Kernels::new(opts.threads);
        if opts.validate_weights {
            net.validate_weights(gguf.bytes(), &kernels)?;
        }
        // An embedding model has no head to quantize.
        if let Some(ty) = opts.head.convert_to()
            && net.config.pooling.is_none()
        {
            let head = net.output_matrix(gguf.bytes());
            if head.ty != ty {
                let io = |source| EngineError::Io {
                    path: format!("anonymous memory for the {ty} head"),
                    source,
                };
                // Anonymous memory with transparent huge pages where the kernel allows them:
                // writing 350 MB through 4 KiB page faults costs more than the conversion.
                let len = crate::quant::head::matrix_bytes(ty, &head);
                let mut map = memmap2::MmapMut::map_anon(len.max(1)).map_err(io)?;
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                kernels.install(|| {
                    crate::quant::head::quantize_matrix_into(ty, &head, &mut map[..len])
                });
                net.set_output(ty, map.make_read_only().map_err(io)?);
            }
        }
        Ok(Self {
            gguf,
            net,
            tokenizer,
            kernels,
        })
    }

    pub fn config(&self) -> &Config {
        &self.net.config
    }

    /// Context length in tokens: `<arch>.context_length`, capped by
    /// [`LoadOptions::max_context`].
    pub fn n_ctx(&self) -> usize {
        self.net.config.n_ctx
    }

    /// KV cache bytes per token of a sequence (keys and values of every layer).
    pub fn kv_bytes_per_token(&self) -> usize {
        let c = &self.net.config;
        2 * c.n_layer * c.kv_dim() * c.kv.bytes()
    }

    /// Ids that end a generation unless the request says otherwise: the file's
    /// end-of-sequence and end-of-turn tokens (`tokenizer.ggml.eos_token_id`,
    /// `eot_token_id`, or `<|eot_id|>` in a Llama 3 vocabulary).
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        let t = &self.tokenizer;
        let mut ids = vec![t.eos];
        if t.eot != t.eos {
            ids.push(t.eot);
        }
        ids
    }

    pub fn n_vocab(&self) -> usize {
        self.net.config.n_vocab
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }

    pub fn threads(&self) -> usize {
        self.kernels.threads()
    }

    /// The instruction set the kernels use.
    pub fn isa(&self) -> crate::kernels::Isa {
        self.kernels.isa
    }

    /// The output head's type as loaded: the file's, or the one [`LoadOptions::head`]
    /// converted it to. `None` for an embedding model, which has no head.
    pub fn head_type(&self) -> Option<crate::gguf::GgmlType> {
        (!self.is_embedding()).then(|| self.net.head_type())
    }

    /// A fresh KV cache for up to `capacity` tokens.
    pub fn new_session(&self, capacity: usize) -> Session {
        Session::new(&self.net.config, capacity.min(self.n_ctx()))
    }

    /// Whether the engine takes this request: [`crate::generate::check_request`] with this
    /// model's vocabulary and context.
    pub fn check_request(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
    ) -> Result<(), EngineError> {
        if self.is_embedding() {
            return Err(EngineError::invalid_param(
                "model",
                "this is an embedding model: it makes embeddings, not text",
            ));
        }
        crate::generate::check_request(prompt, params, self.n_vocab(), self.n_ctx())
    }

    /// Whether this is an embedding model ([`Model::embed`]) rather than a generative one.
    pub fn is_embedding(&self) -> bool {
        self.net.config.pooling.is_some()
    }

    /// Length of the vectors [`Model::embed`] returns (`None`: not an embedding model).
    pub fn embedding_dim(&self) -> Option<usize> {
        self.is_embedding().then_some(self.net.config.dim)
    }

    /// The ids an embedding of `text` is made from: the text's tokens (with BOS if the
    /// vocabulary wants one) and the end-of-text token, whose state is pooled.
    pub fn embedding_input(&self, text: &str) -> Vec<u32> {
        let t = &self.tokenizer;
        let mut ids = t.encode(text, t.add_bos);
        ids.push(t.eos);
        ids
    }

    /// Embeddings of several inputs (ids as [`Model::embedding_input`] makes them, or a
    /// caller's own), L2-normalised, in order. Inputs are read together, a bounded number
    /// of tokens per forward pass (their KV caches live only for the call). An input that is
    /// empty, out of the vocabulary or longer than the context is refused with its index.
    pub fn embed(
        &self,
        inputs: &[Vec<u32>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if !self.is_embedding() {
            return Err(EmbedError {
                index: None,
                error: EngineError::invalid_param(
                    "model",
                    "this model generates text; it has no embeddings",
                ),
            });
        }
        let (n_vocab, n_ctx, dim) = (self.n_vocab(), self.n_ctx(), self.net.config.dim);
        for (i, ids) in inputs.iter().enumerate() {
            let error = if ids.is_empty() {
                Some(EngineError::EmptyPrompt)
            } else if let Some(&id) = ids.iter().find(|&&t| t as usize >= n_vocab) {
                Some(EngineError::TokenOutOfRange { id, n_vocab })
            } else if ids.len() > n_ctx {
                Some(EngineError::ContextOverflow {
                    prompt: ids.len(),
                    max_tokens: 0,
                    n_ctx,
                })
            } else {
                None
            };
            if let Some(error) = error {
                return Err(EmbedError {
                    index: Some(i),
                    error,
                });
            }
        }
        let fail = |error| EmbedError { index: None, error };
        let mut out = vec![Vec::new(); inputs.len()];
        let mut buffers = StepBuffers::default();
        // Inputs in arrival order, a group at a time: a group's caches together hold at
        // most EMBED_GROUP_TOKENS positions (one long input is a group of its own, read in
        // chunks).
        let mut next = 0;
        while next < inputs.len() {
            let mut group = vec![next];
            let mut tokens = inputs[next].len();
            next += 1;
            while next < inputs.len() && tokens + inputs[next].len() <= EMBED_GROUP_TOKENS {
                tokens += inputs[next].len();
                group.push(next);
                next += 1;
            }
            let mut caches: Vec<KvCache> = group
                .iter()
                .map(|&i| self.new_cache(inputs[i].len()))
                .collect();
            while caches
                .iter()
                .zip(&group)
                .any(|(c, &i)| c.len() < inputs[i].len())
            {
                let mut budget = EMBED_STEP_TOKENS;
                let mut batch = Vec::new();
                let mut done = Vec::new();
                for (c, &i) in caches.iter_mut().zip(&group) {
                    let at = c.len();
                    let ids = &inputs[i];
                    if at == ids.len() || budget == 0 {
                        continue;
                    }
                    let end = (at + budget).min(ids.len());
                    budget -= end - at;
                    let last = end == ids.len();
                    if last {
                        done.push(i);
                    }
                    batch.push(BatchEntry {
                        cache: c,
                        tokens: &ids[at..end],
                        logits: LogitRows::last_if(last),
                    });
                }
                let mut rows = vec![0f32; done.len() * dim];
                self.forward_batch(&mut batch, &mut buffers, &mut rows, interrupt)
                    .map_err(fail)?;
                for (i, row) in done.into_iter().zip(rows.chunks_exact(dim)) {
                    out[i] = row.to_vec();
                }
            }
        }
        Ok(out)
    }

    /// Bytes of the cache [`Model::new_cache`] makes for `capacity` tokens: its positions
    /// rounded up to whole key blocks of attention's layout.
    pub fn kv_cache_bytes(&self, capacity: usize) -> usize {
        KvCache::bytes_for(&self.net.config, capacity.min(self.n_ctx()))
    }

    /// An empty KV cache for up to `capacity` tokens (at most the context length).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(&self.net.config, capacity.min(self.n_ctx()))
    }

    /// One forward step for several sequences ([`BitNet::forward_batch`]): each entry's
    /// tokens must be non-empty, in the vocabulary and fit its cache; `logits` holds
    /// `n_vocab` values for each row the entries ask for ([`LogitRows`]).
    pub fn forward_batch(
        &self,
        batch: &mut [BatchEntry<'_>],
        buffers: &mut StepBuffers,
        logits: &mut [f32],
        interrupt: &Interrupt,
    ) -> Result<(), EngineError> {
        let n_vocab = self.n_vocab();
        for e in batch.iter() {
            if e.tokens.is_empty() {
                return Err(EngineError::EmptyPrompt);
            }
            if let Some(&id) = e.tokens.iter().find(|&&t| t as usize >= n_vocab) {
                return Err(EngineError::TokenOutOfRange { id, n_vocab });
            }
            if e.cache.len() + e.tokens.len() > e.cache.capacity() {
                return Err(EngineError::ContextOverflow {
                    prompt: e.cache.len() + e.tokens.len(),
                    max_tokens: 0,
                    n_ctx: e.cache.capacity(),
                });
            }
        }
        let wanted: usize = batch.iter().map(|e| e.logits.count(e.tokens.len())).sum();
        let width = self.net.config.out_dim();
        if logits.len() != wanted * width {
            return Err(EngineError::invalid_param(
                "logits",
                format!("{} values for {wanted} rows of {width}", logits.len()),
            ));
        }
        let file = self.gguf.bytes();
        self.kernels.install(|| {
            self.net
                .forward_batch(file, &self.kernels, batch, buffers, logits, interrupt)
        })
    }

    /// Checks that `tokens` are non-empty, in the vocabulary, and fit the session.
    pub fn check_tokens(&self, session: &Session, tokens: &[u32]) -> Result<(), EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let n_vocab = self.n_vocab();
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(EngineError::TokenOutOfRange { id, n_vocab });
        }
        if session.pos() + tokens.len() > session.capacity() {
            return Err(EngineError::ContextOverflow {
                prompt: session.pos() + tokens.len(),
                max_tokens: 0,
                n_ctx: session.capacity(),
            });
        }
        Ok(())
    }

    /// Feeds `tokens` and returns the logits of the last one (an embedding model: its
    /// embedding, as if `tokens` were the whole input).
    pub fn forward(&self, session: &mut Session, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let mut logits = vec![0f32; self.net.config.out_dim()];
        self.forward_into(session, tokens, &mut logits)?;
        Ok(logits)
    }

    pub fn forward_into(
        &self,
        session: &mut Session,
        tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<(), EngineError> {
        self.forward_interruptible(session, tokens, logits, &Interrupt::new())
    }

    /// [`Model::forward_into`] that stops between layers when `interrupt` fires
    /// (`EngineError::Interrupted`; the session must then be reset).
    pub fn forward_interruptible(
        &self,
        session: &mut Session,
        tokens: &[u32],
        logits: &mut [f32],
        interrupt: &Interrupt,
    ) -> Result<(), EngineError> {
        self.check_tokens(session, tokens)?;
        let file = self.gguf.bytes();
        self.kernels.install(|| {
            self.net
                .forward_into(file, &self.kernels, session, tokens, logits, interrupt)
        })
    }

    /// Runs the prompt, then samples until a stop condition. `on_piece` sees every generated
    /// token; returning `ControlFlow::Break(())` stops generation (`StopReason::Cancelled`).
    /// `interrupt` ends it from outside, during the prompt too (`Cancelled` or `Deadline`,
    /// with the text so far).
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        interrupt: &Interrupt,
        on_piece: &mut dyn FnMut(Piece<'_>) -> ControlFlow<()>,
    ) -> Result<GenerateOutput, EngineError> {
        crate::generate::generate(self, prompt, params, interrupt, on_piece)
    }
}
