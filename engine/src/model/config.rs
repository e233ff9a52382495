//! Typed model configuration read from GGUF metadata.

use crate::EngineError;
use crate::gguf::{BITNET_ARCHS, GgufFile, Value};

/// FFN activation applied to the gate projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Activation {
    /// relu(x)², what BitNet b1.58 was trained with.
    Relu2,
    Silu,
}

/// How an embedding model turns its last hidden states into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The final-normed hidden state of the last token (the appended end of text), then L2
    /// normalised: `bitnet-embedding-0.6b` (llama.cpp's pooling type 3).
    Last,
}

/// Architectures read: BitNet b1.58 (generative) and the BitNet embedding model on a Qwen3
/// backbone (`qwen3` with per-projection norms).
pub const EMBEDDING_ARCHS: [&str; 1] = ["qwen3"];

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    pub arch: String,
    pub n_layer: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Dimensions rotated by RoPE (NEOX pairing within the first `n_rot` of each head).
    pub n_rot: usize,
    pub rope_base: f32,
    pub eps: f32,
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub activation: Activation,
    /// `Some` for an embedding model (no output head; one vector per input), `None` for a
    /// generative one.
    pub pooling: Option<Pooling>,
    /// How keys and values are cached ([`super::LoadOptions::kv`]; not in the file).
    pub kv: super::KvPrecision,
}

/// Tensors of one BitNet layer: 7 projections and 4 norms.
pub const TENSORS_PER_LAYER: usize = 11;

impl Config {
    /// A small made-up shape for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self {
            arch: "bitnet-b1.58".into(),
            n_layer: 1,
            dim: 64,
            ffn_dim: 128,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 16,
            n_rot: 16,
            rope_base: 10000.0,
            eps: 1e-5,
            n_ctx: 256,
            n_vocab: 1000,
            activation: Activation::Relu2,
            pooling: None,
            kv: Default::default(),
        }
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Width of the query projection and of the attention output: `n_head × head_dim`
    /// (the model width for BitNet b1.58; twice it for the Qwen3 embedding model).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Floats one output row holds: a row of logits, or an embedding.
    pub fn out_dim(&self) -> usize {
        match self.pooling {
            None => self.n_vocab,
            Some(_) => self.dim,
        }
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self, EngineError> {
        let invalid = |m: String| EngineError::InvalidModel(m);
        let arch = g
            .architecture()
            .ok_or_else(|| invalid("missing key general.architecture".into()))?
            .to_owned();
        let embedding = EMBEDDING_ARCHS.contains(&arch.as_str());
        if !BITNET_ARCHS.contains(&arch.as_str()) && !embedding {
            return Err(invalid(format!(
                "architecture {arch:?} is not supported (expected one of {}, or {} for an \
                 embedding model)",
                BITNET_ARCHS.join(", "),
                EMBEDDING_ARCHS.join(", ")
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let req = |k: &str| -> Result<usize, EngineError> {
            let name = key(k);
            let v = g
                .get(&name)
                .ok_or_else(|| invalid(format!("missing key {name}")))?;
            v.as_u64()
                .filter(|&n| n > 0 && n < 1 << 31)
                .map(|n| n as usize)
                .ok_or_else(|| invalid(format!("key {name} = {v} is not a positive integer")))
        };
        let opt_f32 = |k: &str, default: f32| -> Result<f32, EngineError> {
            match g.get(&key(k)) {
                None => Ok(default),
                Some(v) => v
                    .as_f64()
                    .map(|f| f as f32)
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| {
                        invalid(format!("key {} = {v} is not a positive number", key(k)))
                    }),
            }
        };
        let n_layer = req("block_count")?;
        // Each layer is 11 tensors: a header may not make the loader size anything by more
        // layers than the file holds (`block_count` near 2^31 used to abort on allocation).
        if n_layer.saturating_mul(TENSORS_PER_LAYER) > g.tensors.len() {
            return Err(invalid(format!(
                "key {} = {n_layer} layers, but the file has only {} tensors ({TENSORS_PER_LAYER} per layer)",
                key("block_count"),
                g.tensors.len()
            )));
        }
        let dim = req("embedding_length")?;
        let ffn_dim = req("feed_forward_length")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = match g.get(&key("attention.head_count_kv")) {
            None => n_head,
            Some(_) => req("attention.head_count_kv")?,
        };
        let n_ctx = req("context_length")?;
        // Qwen3 sets the head size apart from the width (128, not 1024 / 16).
        let head_dim = match g.get(&key("attention.key_length")) {
            Some(_) => {
                let kl = req("attention.key_length")?;
                if g.get(&key("attention.value_length")).is_some()
                    && req("attention.value_length")? != kl
                {
                    return Err(invalid(format!(
                        "{} differs from {}: not supported",
                        key("attention.value_length"),
                        key("attention.key_length")
                    )));
                }
                kl
            }
            None if dim % n_head != 0 => {
                return Err(invalid(format!(
                    "embedding_length {dim} is not divisible by head_count {n_head}"
                )));
            }
            None => dim / n_head,
        };
        if n_head % n_head_kv != 0 {
            return Err(invalid(format!(
                "head_count {n_head} is not divisible by head_count_kv {n_head_kv}"
            )));
        }
        let n_rot = match g.get(&key("rope.dimension_count")) {
            None => head_dim,
            Some(_) => req("rope.dimension_count")?,
        };
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(invalid(format!(
                "rope.dimension_count {n_rot} must be even and at most the head dim {head_dim}"
            )));
        }
        // BitNet b1.58 uses 500000 (section 1); a file without the key is a BitNet file too.
        // Qwen3: 1e6 and 1e-6.
        let (base_default, eps_default) = if embedding {
            (1_000_000.0, 1e-6)
        } else {
            (500_000.0, 1e-5)
        };
        let rope_base = opt_f32("rope.freq_base", base_default)?;
        let eps = opt_f32("attention.layer_norm_rms_epsilon", eps_default)?;
        // relu² unless the file says otherwise: every BitNet b1.58 checkpoint uses it, and
        // upstream's `bitnet` architecture stores it as an optional key.
        let activation = match g.get(&key("hidden_activation")).map(|v| v.as_str()) {
            // Qwen3: SiLU-gated.
            None if embedding => Activation::Silu,
            None => Activation::Relu2,
            Some(Some("relu2" | "relu_sqr" | "relu_squared" | "squared_relu")) => Activation::Relu2,
            Some(Some("silu" | "swish")) => Activation::Silu,
            Some(other) => {
                return Err(invalid(format!(
                    "unsupported {} = {:?}",
                    key("hidden_activation"),
                    other.map_or_else(|| "<not a string>".to_owned(), str::to_owned)
                )));
            }
        };
        let n_vocab = g
            .tensor("token_embd.weight")
            .map(|t| t.dims.get(1).copied().unwrap_or(1) as usize)
            .ok_or_else(|| invalid("missing tensor token_embd.weight".into()))?;
        if let Some(Value::Strings(items)) = g.get("tokenizer.ggml.tokens")
            && items.len() > n_vocab
        {
            return Err(invalid(format!(
                "tokenizer has {} tokens but token_embd has {n_vocab} rows",
                items.len()
            )));
        }
        // llama.cpp's pooling types: 1 mean, 2 cls, 3 last, 4 rank.
        let pooling = match (
            embedding,
            g.get(&key("pooling_type")).and_then(Value::as_u64),
        ) {
            (false, _) => None,
            (true, None | Some(3)) => Some(Pooling::Last),
            (true, Some(other)) => {
                return Err(invalid(format!(
                    "{} = {other}: only last-token pooling (3) is supported",
                    key("pooling_type")
                )));
            }
        };
        Ok(Self {
            pooling,
            arch,
            n_layer,
            dim,
            ffn_dim,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            rope_base,
            eps,
            n_ctx,
            n_vocab,
            activation,
            kv: Default::default(),
        })
    }
}
