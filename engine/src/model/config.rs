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
        }
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self, EngineError> {
        let invalid = |m: String| EngineError::InvalidModel(m);
        let arch = g
            .architecture()
            .ok_or_else(|| invalid("missing key general.architecture".into()))?
            .to_owned();
        if !BITNET_ARCHS.contains(&arch.as_str()) {
            return Err(invalid(format!(
                "architecture {arch:?} is not supported (expected one of {})",
                BITNET_ARCHS.join(", ")
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
        if dim % n_head != 0 {
            return Err(invalid(format!(
                "embedding_length {dim} is not divisible by head_count {n_head}"
            )));
        }
        if n_head % n_head_kv != 0 {
            return Err(invalid(format!(
                "head_count {n_head} is not divisible by head_count_kv {n_head_kv}"
            )));
        }
        let head_dim = dim / n_head;
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
        let rope_base = opt_f32("rope.freq_base", 500_000.0)?;
        let eps = opt_f32("attention.layer_norm_rms_epsilon", 1e-5)?;
        // relu² unless the file says otherwise: every BitNet b1.58 checkpoint uses it, and
        // upstream's `bitnet` architecture stores it as an optional key.
        let activation = match g.get(&key("hidden_activation")).map(|v| v.as_str()) {
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
        Ok(Self {
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
        })
    }
}
