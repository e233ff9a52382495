//! Synthetic BitNet b1.58 models in the layout of Microsoft's official file (section 1 of
//! bitnet-format.md): every key, the Llama 3 tokenizer, an F16 tied embedding, F32 norms
//! that are not all ones, and seven ternary projections per layer with random codes and a
//! per-tensor scale. Codes and scales depend only on (seed, tensor name), so the same seed
//! written as I2_S, TQ2_0, TQ1_0 or F16 holds the same weights.

use std::io::{BufWriter, Write};
use std::path::Path;

use half::f16;

use crate::generate::sampler::Rng;
use crate::gguf::{GgmlType, GgufWriter, Value};
use crate::quant::{i2s, tq1_0, tq2_0};
use crate::tokenizer::{TokenizerParts, token_type};

/// Model shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub n_layer: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ctx: usize,
    /// Per-head size when it is not `dim / n_head` (Qwen3: 128), else 0.
    pub head_dim: usize,
    /// The BitNet embedding model (`qwen3` with per-projection norms, the Qwen2 tokenizer,
    /// no head) instead of BitNet b1.58.
    pub embedding: bool,
}

impl Preset {
    pub fn head_dim(&self) -> usize {
        if self.head_dim > 0 {
            self.head_dim
        } else {
            self.dim / self.n_head
        }
    }
}

pub const PRESETS: [Preset; 5] = [
    Preset {
        name: "tiny",
        n_layer: 2,
        dim: 256,
        ffn_dim: 768,
        n_head: 2,
        n_head_kv: 1,
        n_ctx: 4096,
        head_dim: 0,
        embedding: false,
    },
    Preset {
        name: "small",
        n_layer: 4,
        dim: 512,
        ffn_dim: 1536,
        n_head: 4,
        n_head_kv: 1,
        n_ctx: 4096,
        head_dim: 0,
        embedding: false,
    },
    // The official 2B4T shapes.
    Preset {
        name: "2b4t",
        n_layer: 30,
        dim: 2560,
        ffn_dim: 6912,
        n_head: 20,
        n_head_kv: 5,
        n_ctx: 4096,
        head_dim: 0,
        embedding: false,
    },
    // The embedding model's shapes, small: 4 heads of 128 over a width of 256 (q is twice
    // the width, as in the real model).
    Preset {
        name: "embed-tiny",
        n_layer: 2,
        dim: 256,
        ffn_dim: 768,
        n_head: 4,
        n_head_kv: 2,
        n_ctx: 4096,
        head_dim: 128,
        embedding: true,
    },
    // `bitnet-embedding-0.6b`'s shapes (Qwen3-0.6B backbone).
    Preset {
        name: "embed-0.6b",
        n_layer: 28,
        dim: 1024,
        ffn_dim: 3072,
        n_head: 16,
        n_head_kv: 8,
        n_ctx: 32768,
        head_dim: 128,
        embedding: true,
    },
];

pub fn preset(name: &str) -> Option<Preset> {
    PRESETS.iter().copied().find(|p| p.name == name)
}

/// What to write.
#[derive(Debug, Clone)]
pub struct FixtureSpec {
    pub preset: Preset,
    /// Storage of the seven projections: I2S, Tq2_0, Tq1_0, F16 or F32.
    pub ty: GgmlType,
    pub seed: u64,
    /// `general.architecture`: `bitnet-b1.58` (official) or `bitnet` (upstream llama.cpp).
    pub arch: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("tokenizer.json: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Spec(String),
}

/// The Llama 3 tokenizer (Hugging Face `tokenizer.json`, gzip): shipped in the repository so
/// that fixtures and the tokenizer tests need nothing beside a clone. Only with the
/// `bundled-tokenizer` feature (the container image goes without it).
#[cfg(feature = "bundled-tokenizer")]
const LLAMA3_TOKENIZER_JSON_GZ: &[u8] = include_bytes!("../data/llama3-tokenizer.json.gz");

/// The Llama 3 tokenizer's GGUF arrays, from the copy shipped in the crate.
#[cfg(feature = "bundled-tokenizer")]
pub fn llama3_tokenizer_parts() -> Result<TokenizerParts, FixtureError> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(LLAMA3_TOKENIZER_JSON_GZ)
        .read_to_string(&mut text)
        .map_err(|e| FixtureError::Tokenizer(format!("shipped tokenizer: {e}")))?;
    tokenizer_parts_from_hf_str(&text)
        .map_err(|m| FixtureError::Tokenizer(format!("shipped tokenizer: {m}")))
}

/// llama.cpp's Qwen2 vocabulary-only GGUF (`models/ggml-vocab-qwen2.gguf`, gzip), the
/// tokenizer of Qwen3 and of `bitnet-embedding-0.6b`: shipped for the embedding fixtures and
/// the tokenizer tests. Only with the `bundled-tokenizer` feature.
#[cfg(feature = "bundled-tokenizer")]
const QWEN2_VOCAB_GGUF_GZ: &[u8] = include_bytes!("../data/qwen2-vocab.gguf.gz");

/// The Qwen2 vocabulary file's bytes (a GGUF without tensors).
#[cfg(feature = "bundled-tokenizer")]
pub fn qwen2_vocab_gguf() -> Result<Vec<u8>, FixtureError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(QWEN2_VOCAB_GGUF_GZ)
        .read_to_end(&mut bytes)
        .map_err(|e| FixtureError::Tokenizer(format!("shipped Qwen2 vocabulary: {e}")))?;
    Ok(bytes)
}

/// The Qwen2 tokenizer's GGUF arrays, from the copy shipped in the crate.
#[cfg(feature = "bundled-tokenizer")]
pub fn qwen2_tokenizer_parts() -> Result<TokenizerParts, FixtureError> {
    let g = crate::gguf::GgufFile::from_backing(std::sync::Arc::new(qwen2_vocab_gguf()?))
        .map_err(|e| FixtureError::Tokenizer(format!("shipped Qwen2 vocabulary: {e}")))?;
    TokenizerParts::from_gguf(&g)
        .map_err(|e| FixtureError::Tokenizer(format!("shipped Qwen2 vocabulary: {e}")))
}

/// Reads a Hugging Face `tokenizer.json` (byte-level BPE) into GGUF tokenizer arrays: the
/// vocabulary and added tokens by id, CONTROL for special added tokens, merges as "a b".
pub fn tokenizer_parts_from_hf_json(path: &Path) -> Result<TokenizerParts, FixtureError> {
    let err = |m: String| FixtureError::Tokenizer(format!("{}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    tokenizer_parts_from_hf_str(&text).map_err(err)
}

fn tokenizer_parts_from_hf_str(text: &str) -> Result<TokenizerParts, String> {
    let err = |m: &str| m.to_owned();
    let j: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let vocab = j["model"]["vocab"]
        .as_object()
        .ok_or_else(|| err("no model.vocab"))?;
    let mut entries: Vec<(u64, String, i32)> = vocab
        .iter()
        .map(|(t, id)| {
            (
                id.as_u64().unwrap_or(u64::MAX),
                t.clone(),
                token_type::NORMAL,
            )
        })
        .collect();
    for a in j["added_tokens"].as_array().into_iter().flatten() {
        let id = a["id"]
            .as_u64()
            .ok_or_else(|| err("added token without id"))?;
        let content = a["content"].as_str().unwrap_or_default().to_owned();
        let ty = if a["special"].as_bool() == Some(true) {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
        entries.retain(|e| e.0 != id);
        entries.push((id, content, ty));
    }
    entries.sort_by_key(|e| e.0);
    if entries.iter().enumerate().any(|(i, e)| e.0 != i as u64) {
        return Err(err("token ids are not contiguous from 0"));
    }
    let merges = j["model"]["merges"]
        .as_array()
        .ok_or_else(|| err("no model.merges"))?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(p) => {
                Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| err("malformed merges"))?;
    Ok(TokenizerParts {
        token_types: entries.iter().map(|e| e.2).collect(),
        tokens: entries.iter().map(|e| e.1.as_str()).collect(),
        merges: merges.iter().collect(),
        bos: 128000,
        eos: 128001,
        eot: None,
        add_bos: true,
        pre: Default::default(),
    })
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a of the name mixed with the seed: independent streams per tensor.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Ternary values (-1, 0, 1) of a projection, row-major `rows × k`, and its scale (exactly
/// representable in f16 so that every storage type holds the same weights).
pub fn ternary_weights(seed: u64, name: &str, rows: usize, k: usize) -> (Vec<i8>, f32) {
    let mut rng = Rng::new(name_seed(seed, name));
    let values = (0..rows * k)
        .map(|_| (rng.next_u64() % 3) as i8 - 1)
        .collect();
    // Keeps activations O(1) through the residual stream: ~ 1/sqrt(k * 2/3) with a spread.
    let r = 0.5 + rng.next_f64();
    let scale = f16::from_f64(r / (k as f64 * 2.0 / 3.0).sqrt()).to_f32();
    (values, scale)
}

fn norm_weights(seed: u64, name: &str, n: usize) -> Vec<f32> {
    let mut rng = Rng::new(name_seed(seed, name));
    (0..n).map(|_| (0.5 + rng.next_f64()) as f32).collect()
}

fn embedding_f16(seed: u64, rows: usize, k: usize) -> Vec<u8> {
    let mut rng = Rng::new(name_seed(seed, "token_embd.weight"));
    let mut out = Vec::with_capacity(rows * k * 2);
    for _ in 0..rows * k {
        let v = (rng.next_f64() * 2.0 - 1.0) * 0.5;
        out.extend_from_slice(&f16::from_f64(v).to_le_bytes());
    }
    out
}

/// The BitNet embedding model in the layout of Microsoft's converter
/// (`convert-bitnet-embedding-to-gguf.py`): architecture `qwen3` with `key_length` /
/// `value_length`, the Qwen2 tokenizer with `<|endoftext|>` as EOS, an F16 embedding and no
/// output head, F16 norms (the per-head q/k norms F32), and the seven projections of each
/// layer ternary, each with its own RMSNorm before it (`*_norm_in`).
fn write_embedding_fixture(
    spec: &FixtureSpec,
    tok: &TokenizerParts,
    w: &mut impl Write,
) -> Result<(), FixtureError> {
    let p = spec.preset;
    let ty = spec.ty;
    let arch = "qwen3";
    let n_vocab = tok.tokens.len();
    let hd = p.head_dim();
    let (d, f, kv, qd) = (
        p.dim as u64,
        p.ffn_dim as u64,
        (p.n_head_kv * hd) as u64,
        (p.n_head * hd) as u64,
    );
    let mut g = GgufWriter::new();
    let k = |s: &str| format!("{arch}.{s}");
    g.add("general.architecture", Value::String(arch.into()));
    g.add(
        "general.name",
        Value::String(format!("synthetic-bitnet-{}-seed{}", p.name, spec.seed)),
    );
    g.add(k("context_length"), Value::U32(p.n_ctx as u32));
    g.add(k("embedding_length"), Value::U32(p.dim as u32));
    g.add(k("block_count"), Value::U32(p.n_layer as u32));
    g.add(k("feed_forward_length"), Value::U32(p.ffn_dim as u32));
    g.add(k("attention.head_count"), Value::U32(p.n_head as u32));
    g.add(k("attention.head_count_kv"), Value::U32(p.n_head_kv as u32));
    g.add(k("attention.key_length"), Value::U32(hd as u32));
    g.add(k("attention.value_length"), Value::U32(hd as u32));
    g.add(k("attention.layer_norm_rms_epsilon"), Value::F32(1e-6));
    g.add(k("rope.freq_base"), Value::F32(1_000_000.0));
    g.add(k("pooling_type"), Value::U32(3));
    g.add("general.file_type", Value::U32(file_type(ty)));
    g.add("tokenizer.ggml.pre", Value::String("qwen2".into()));
    add_tokenizer(&mut g, tok, false);
    g.add("general.quantization_version", Value::U32(2));

    let mut plan: Vec<(String, Vec<u64>, GgmlType)> = vec![(
        "token_embd.weight".into(),
        vec![d, n_vocab as u64],
        GgmlType::F16,
    )];
    for i in 0..p.n_layer {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        plan.push((n("attn_norm"), vec![d], GgmlType::F16));
        plan.push((n("attn_q_norm_in"), vec![d], GgmlType::F16));
        plan.push((n("attn_q"), vec![d, qd], ty));
        plan.push((n("attn_k_norm_in"), vec![d], GgmlType::F16));
        plan.push((n("attn_k"), vec![d, kv], ty));
        plan.push((n("attn_v_norm_in"), vec![d], GgmlType::F16));
        plan.push((n("attn_v"), vec![d, kv], ty));
        plan.push((n("attn_q_norm"), vec![hd as u64], GgmlType::F32));
        plan.push((n("attn_k_norm"), vec![hd as u64], GgmlType::F32));
        plan.push((n("attn_output_norm_in"), vec![qd], GgmlType::F16));
        plan.push((n("attn_output"), vec![qd, d], ty));
        plan.push((n("ffn_norm"), vec![d], GgmlType::F16));
        plan.push((n("ffn_gate_norm_in"), vec![d], GgmlType::F16));
        plan.push((n("ffn_gate"), vec![d, f], ty));
        plan.push((n("ffn_up_norm_in"), vec![d], GgmlType::F16));
        plan.push((n("ffn_up"), vec![d, f], ty));
        plan.push((n("ffn_down_norm_in"), vec![f], GgmlType::F16));
        plan.push((n("ffn_down"), vec![f, d], ty));
    }
    plan.push(("output_norm.weight".into(), vec![d], GgmlType::F16));
    write_tensors(g, &plan, spec.seed, n_vocab, p.dim, w)
}

/// The tokenizer keys both architectures write (`tokenizer.ggml.pre` is the caller's).
fn add_tokenizer(g: &mut GgufWriter, tok: &TokenizerParts, add_bos: bool) {
    g.add("tokenizer.ggml.model", Value::String("gpt2".into()));
    g.add("tokenizer.ggml.tokens", Value::Strings(tok.tokens.clone()));
    g.add(
        "tokenizer.ggml.token_type",
        Value::I32s(tok.token_types.clone()),
    );
    g.add("tokenizer.ggml.merges", Value::Strings(tok.merges.clone()));
    g.add("tokenizer.ggml.bos_token_id", Value::U32(tok.bos));
    g.add("tokenizer.ggml.eos_token_id", Value::U32(tok.eos));
    g.add("tokenizer.ggml.padding_token_id", Value::U32(tok.eos));
    g.add("tokenizer.ggml.add_bos_token", Value::Bool(add_bos));
}

/// Declares `plan`'s tensors, writes the header, then every tensor's data: the F16 token
/// embedding, norms (F32 or F16 as planned), ternary projections.
fn write_tensors(
    mut g: GgufWriter,
    plan: &[(String, Vec<u64>, GgmlType)],
    seed: u64,
    n_vocab: usize,
    dim: usize,
    w: &mut impl Write,
) -> Result<(), FixtureError> {
    for (name, dims, t) in plan {
        g.add_tensor(name.clone(), dims, *t);
    }
    let mut w = BufWriter::with_capacity(1 << 20, w);
    g.write_header(&mut w)?;
    for (name, dims, t) in plan {
        let data = if name == "token_embd.weight" {
            embedding_f16(seed, n_vocab, dim)
        } else if dims.len() == 1 {
            let v = norm_weights(seed, name, dims[0] as usize);
            match t {
                GgmlType::F16 => v
                    .iter()
                    .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                    .collect(),
                _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            }
        } else {
            let (kk, rows) = (dims[0] as usize, dims[1] as usize);
            let (values, scale) = ternary_weights(seed, name, rows, kk);
            encode_ternary(*t, &values, kk, scale)
        };
        g.write_tensor(&mut w, &data)?;
    }
    w.flush()?;
    Ok(())
}

/// Ternary values (-1, 0, 1), `k` per row, stored as `ty` with one scale for the whole
/// tensor (every block scale equal for TQ2_0 / TQ1_0).
pub fn encode_ternary(ty: GgmlType, values: &[i8], k: usize, scale: f32) -> Vec<u8> {
    let blocks = values.len() / 256;
    match ty {
        GgmlType::I2S => i2s::pack(values, k, scale),
        GgmlType::Tq2_0 => tq2_0::pack(values, &vec![f16::from_f32(scale); blocks]),
        GgmlType::Tq1_0 => tq1_0::pack(values, &vec![f16::from_f32(scale); blocks]),
        GgmlType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v as f32 * scale).to_le_bytes())
            .collect(),
        GgmlType::F32 => values
            .iter()
            .flat_map(|&v| (v as f32 * scale).to_le_bytes())
            .collect(),
        other => unreachable!("{other} is not a projection type"),
    }
}

/// `general.file_type` for each projection type (llama_ftype; 40 is the BitNet fork's I2_S).
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Tq1_0 => 36,
        GgmlType::Tq2_0 => 37,
        GgmlType::I2S => 40,
        _ => 0,
    }
}

/// Writes a complete synthetic model to `w`. Same spec and tokenizer, same bytes.
pub fn write_fixture(
    spec: &FixtureSpec,
    tok: &TokenizerParts,
    w: &mut impl Write,
) -> Result<(), FixtureError> {
    let p = spec.preset;
    let ty = spec.ty;
    if !matches!(
        ty,
        GgmlType::I2S | GgmlType::Tq2_0 | GgmlType::Tq1_0 | GgmlType::F16 | GgmlType::F32
    ) {
        return Err(FixtureError::Spec(format!(
            "type {ty} cannot hold the projections"
        )));
    }
    if ty == GgmlType::I2S && spec.arch == "bitnet" {
        return Err(FixtureError::Spec(
            "upstream's `bitnet` architecture has no I2_S (type id 36 means something else there)"
                .into(),
        ));
    }
    for d in [p.dim, p.ffn_dim] {
        if d % 256 != 0 {
            return Err(FixtureError::Spec(format!(
                "dimension {d} is not a multiple of 256"
            )));
        }
    }
    if p.embedding {
        return write_embedding_fixture(spec, tok, w);
    }
    let arch = spec.arch.as_str();
    let n_vocab = tok.tokens.len();
    let head_dim = p.head_dim();
    let kv = p.n_head_kv * head_dim;
    let mut g = GgufWriter::new();
    let k = |s: &str| format!("{arch}.{s}");
    g.add("general.architecture", Value::String(arch.into()));
    g.add(
        "general.name",
        Value::String(format!("synthetic-bitnet-{}-seed{}", p.name, spec.seed)),
    );
    g.add(k("vocab_size"), Value::U32(n_vocab as u32));
    g.add(k("context_length"), Value::U32(p.n_ctx as u32));
    g.add(k("embedding_length"), Value::U32(p.dim as u32));
    g.add(k("block_count"), Value::U32(p.n_layer as u32));
    g.add(k("feed_forward_length"), Value::U32(p.ffn_dim as u32));
    g.add(k("rope.dimension_count"), Value::U32(head_dim as u32));
    g.add(k("attention.head_count"), Value::U32(p.n_head as u32));
    g.add(k("attention.head_count_kv"), Value::U32(p.n_head_kv as u32));
    g.add(k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
    g.add(k("rope.freq_base"), Value::F32(500_000.0));
    if arch == "bitnet" {
        g.add(k("hidden_activation"), Value::String("relu2".into()));
    }
    g.add("general.file_type", Value::U32(file_type(ty)));
    add_tokenizer(&mut g, tok, true);
    g.add(
        "tokenizer.chat_template",
        Value::String("{% for message in messages %}Human: {{ message['content'] }}BITNETAssistant: {% endfor %}".into()),
    );
    g.add("general.quantization_version", Value::U32(2));

    // Declaration order follows the official file: embedding, then per layer, then output norm.
    let mut plan: Vec<(String, Vec<u64>, GgmlType)> = vec![(
        "token_embd.weight".into(),
        vec![p.dim as u64, n_vocab as u64],
        GgmlType::F16,
    )];
    for i in 0..p.n_layer {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        let (d, f, kv) = (p.dim as u64, p.ffn_dim as u64, kv as u64);
        plan.push((n("attn_norm"), vec![d], GgmlType::F32));
        plan.push((n("attn_q"), vec![d, d], ty));
        plan.push((n("attn_k"), vec![d, kv], ty));
        plan.push((n("attn_v"), vec![d, kv], ty));
        plan.push((n("attn_output"), vec![d, d], ty));
        plan.push((n("attn_sub_norm"), vec![d], GgmlType::F32));
        plan.push((n("ffn_norm"), vec![d], GgmlType::F32));
        plan.push((n("ffn_gate"), vec![d, f], ty));
        plan.push((n("ffn_up"), vec![d, f], ty));
        plan.push((n("ffn_down"), vec![f, d], ty));
        plan.push((n("ffn_sub_norm"), vec![f], GgmlType::F32));
    }
    plan.push((
        "output_norm.weight".into(),
        vec![p.dim as u64],
        GgmlType::F32,
    ));
    write_tensors(g, &plan, spec.seed, n_vocab, p.dim, w)
}
