//! BitNet b1.58 (Microsoft's 2B4T and the same architecture under `bitnet-25` / upstream
//! `bitnet`): a Llama-shaped decoder whose seven projections per layer are ternary.
//!
//! What is unusual, from section 4 of `shared/docs/bitnet-format.md`:
//! - every projection is a BitLinear: the input row is quantized to int8 per token
//!   (absmax), the dot with the ternary codes is exact in integers, then `(D / s) * scale`;
//! - extra RMSNorms (sub-norms) before the attention output and FFN down projections;
//! - relu²(gate) · up in the FFN instead of SiLU;
//! - NEOX RoPE pairing (x[i], x[i + n_rot/2]);
//! - an F16 output head tied to the token embedding; no biases, no embedding scaling.
//!
//! Weights stay in the memory mapping; only F16/F32 projections holding ternary values
//! (test files) are repacked to I2_S in memory at load.

use std::sync::OnceLock;

use super::config::{Activation, Config};
use crate::EngineError;
use crate::generate::Interrupt;
use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::kernels::{HeadSpan, KEY_BLOCK, Kernels, KvRows};
use half::f16;

use super::KvPrecision;
use crate::quant::{DenseMatrix, QuantizedActs, TernaryMatrix, TernaryScale, i2s};

/// Where a tensor's bytes are.
#[derive(Debug)]
enum Storage {
    Mapped {
        offset: usize,
        len: usize,
    },
    Owned(Vec<u8>),
    /// Memory of its own (anonymous mapping), e.g. a converted output head (shared with the
    /// token embedding when the two are tied).
    Map(std::sync::Arc<memmap2::Mmap>),
}

impl Storage {
    fn bytes<'a>(&'a self, file: &'a [u8]) -> &'a [u8] {
        match self {
            Storage::Mapped { offset, len } => &file[*offset..*offset + *len],
            Storage::Owned(v) => v,
            Storage::Map(m) => &m[..],
        }
    }
}

#[derive(Debug)]
pub(crate) struct TernaryWeight {
    name: String,
    pub(crate) ty: GgmlType,
    pub(crate) rows: usize,
    pub(crate) k: usize,
    storage: Storage,
    /// Worked out from the whole tensor on first use, not at load: reading every block's
    /// scale (and checking I2_S codes) touches every page, which the first forward pass does
    /// anyway, while start-up must stay a few milliseconds.
    checked: OnceLock<Result<TernaryScale, String>>,
}

impl TernaryWeight {
    pub(crate) fn matrix<'a>(&'a self, file: &'a [u8]) -> Result<TernaryMatrix<'a>, EngineError> {
        let data = self.storage.bytes(file);
        let scale = self
            .checked
            .get_or_init(|| check_ternary(&self.name, self.ty, self.rows, self.k, data))
            .clone()
            .map_err(invalid)?;
        Ok(TernaryMatrix {
            ty: self.ty,
            rows: self.rows,
            k: self.k,
            data,
            scale,
        })
    }
}

/// Full validation of a ternary tensor: no reserved I2_S code, a finite scale.
fn check_ternary(
    name: &str,
    ty: GgmlType,
    rows: usize,
    k: usize,
    data: &[u8],
) -> Result<TernaryScale, String> {
    if ty == GgmlType::I2S && i2s::has_invalid_code(&data[..rows * k / 4]) {
        return Err(format!("{name}: I2_S data holds the reserved code 3"));
    }
    if TernaryMatrix::has_non_finite_block_scale(ty, data) {
        return Err(format!("{name}: a block scale is not finite"));
    }
    let scale = TernaryMatrix::detect_scale(ty, rows, k, data);
    if let TernaryScale::Uniform(s) = scale
        && !s.is_finite()
    {
        return Err(format!("{name}: scale {s} is not finite"));
    }
    Ok(scale)
}

#[derive(Debug)]
pub(crate) struct DenseWeight {
    ty: GgmlType,
    rows: usize,
    k: usize,
    storage: Storage,
}

impl DenseWeight {
    pub(crate) fn matrix<'a>(&'a self, file: &'a [u8]) -> DenseMatrix<'a> {
        DenseMatrix {
            ty: self.ty,
            rows: self.rows,
            k: self.k,
            data: self.storage.bytes(file),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Layer {
    attn_norm: Vec<f32>,
    pub(crate) wq: TernaryWeight,
    pub(crate) wk: TernaryWeight,
    pub(crate) wv: TernaryWeight,
    pub(crate) wo: TernaryWeight,
    /// Before the attention output projection: BitNet's `attn_sub_norm`, the embedding
    /// model's `attn_output_norm_in`.
    attn_sub_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    pub(crate) w_gate: TernaryWeight,
    pub(crate) w_up: TernaryWeight,
    pub(crate) w_down: TernaryWeight,
    /// Before the FFN down projection: `ffn_sub_norm` / `ffn_down_norm_in`.
    ffn_sub_norm: Vec<f32>,
    /// The embedding model's own RMSNorms before q, k, v, gate and up, and per-head q/k
    /// norms (`None` for BitNet b1.58, whose q, k, v share one normed input, as do gate and
    /// up).
    proj_norms: Option<ProjNorms>,
}

/// The norms a BitNet-embedding (Qwen3) layer has beyond BitNet b1.58's.
#[derive(Debug)]
struct ProjNorms {
    q_in: Vec<f32>,
    k_in: Vec<f32>,
    v_in: Vec<f32>,
    gate_in: Vec<f32>,
    up_in: Vec<f32>,
    /// RMSNorm over each head's `head_dim` values of q and of k, before RoPE.
    q_head: Vec<f32>,
    k_head: Vec<f32>,
}

/// The weights of a BitNet model, borrowed from (or, for test formats, copied out of) a file.
#[derive(Debug)]
pub struct BitNet {
    pub config: Config,
    pub(crate) layers: Vec<Layer>,
    tok_embd: DenseWeight,
    output: DenseWeight,
    /// No `output.weight`: the head is the token embedding.
    tied: bool,
    output_norm: Vec<f32>,
}

fn invalid(m: String) -> EngineError {
    EngineError::InvalidModel(m)
}

fn tensor<'a>(g: &'a GgufFile, name: &str, dims: &[usize]) -> Result<&'a TensorInfo, EngineError> {
    let t = g
        .tensor(name)
        .ok_or_else(|| invalid(format!("missing tensor {name}")))?;
    let got: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    if got != dims {
        return Err(invalid(format!(
            "tensor {name} has shape {got:?}, expected {dims:?}"
        )));
    }
    Ok(t)
}

fn norm(g: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, EngineError> {
    let t = tensor(g, name, &[n])?;
    let m = DenseMatrix {
        ty: t.ty,
        rows: 1,
        k: n,
        data: g.tensor_data(t),
    };
    if !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16) {
        return Err(invalid(format!(
            "norm {name} has type {}, expected F32",
            t.ty
        )));
    }
    let mut v = vec![0f32; n];
    m.row_f32(0, &mut v);
    Ok(v)
}

fn dense(g: &GgufFile, name: &str, k: usize, rows: usize) -> Result<DenseWeight, EngineError> {
    let t = tensor(g, name, &[k, rows])?;
    if !matches!(
        t.ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::Bf16
            | GgmlType::Q8_0
            | GgmlType::Q6K
            | GgmlType::Q4_0
    ) {
        return Err(invalid(format!(
            "tensor {name} has unsupported type {}",
            t.ty
        )));
    }
    Ok(DenseWeight {
        ty: t.ty,
        rows,
        k,
        storage: Storage::Mapped {
            offset: t.offset as usize,
            len: t.size as usize,
        },
    })
}

fn ternary(g: &GgufFile, name: &str, k: usize, rows: usize) -> Result<TernaryWeight, EngineError> {
    let t = tensor(g, name, &[k, rows])?;
    match t.ty {
        GgmlType::I2S | GgmlType::Tq2_0 | GgmlType::Tq1_0 => {
            if t.ty == GgmlType::I2S && !k.is_multiple_of(i2s::BLOCK) {
                return Err(invalid(format!(
                    "{name}: I2_S rows need a multiple of 128 weights"
                )));
            }
            Ok(TernaryWeight {
                name: name.to_owned(),
                checked: OnceLock::new(),
                ty: t.ty,
                rows,
                k,
                storage: Storage::Mapped {
                    offset: t.offset as usize,
                    len: t.size as usize,
                },
            })
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => {
            repack_float_ternary(name, t.ty, g.tensor_data(t), k, rows)
        }
        other => Err(invalid(format!(
            "tensor {name} has type {other}, expected a ternary type"
        ))),
    }
}

/// Float projections must hold `{-scale, 0, +scale}`; they are repacked to I2_S so that the
/// same integer kernels run (test models written with `--type f16`).
fn repack_float_ternary(
    name: &str,
    ty: GgmlType,
    data: &[u8],
    k: usize,
    rows: usize,
) -> Result<TernaryWeight, EngineError> {
    if !k.is_multiple_of(i2s::BLOCK) {
        return Err(invalid(format!(
            "{name}: rows need a multiple of 128 weights"
        )));
    }
    let m = DenseMatrix { ty, rows, k, data };
    let mut row = vec![0f32; k];
    let mut values = vec![0i8; rows * k];
    let mut scale = 0f32;
    for r in 0..rows {
        m.row_f32(r, &mut row);
        for (i, &w) in row.iter().enumerate() {
            if w == 0.0 {
                continue;
            }
            if scale == 0.0 {
                scale = w.abs();
            }
            if w.abs() != scale {
                return Err(invalid(format!(
                    "{name}: {ty} weights are not ternary (found {w} and scale {scale})"
                )));
            }
            values[r * k + i] = if w > 0.0 { 1 } else { -1 };
        }
    }
    Ok(TernaryWeight {
        name: name.to_owned(),
        ty: GgmlType::I2S,
        rows,
        k,
        storage: Storage::Owned(i2s::pack(&values, k, scale)),
        checked: OnceLock::from(Ok(TernaryScale::Uniform(scale))),
    })
}

impl BitNet {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, EngineError> {
        let c = Config::from_gguf(g)?;
        let (d, f, kv, qd, hd) = (c.dim, c.ffn_dim, c.kv_dim(), c.q_dim(), c.head_dim);
        let embedding = c.pooling.is_some();
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            // The embedding model names the two sub-norms after the projection they feed.
            let (attn_sub, ffn_sub) = if embedding {
                ("attn_output_norm_in", "ffn_down_norm_in")
            } else {
                ("attn_sub_norm", "ffn_sub_norm")
            };
            let proj_norms = if embedding {
                Some(ProjNorms {
                    q_in: norm(g, &n("attn_q_norm_in"), d)?,
                    k_in: norm(g, &n("attn_k_norm_in"), d)?,
                    v_in: norm(g, &n("attn_v_norm_in"), d)?,
                    gate_in: norm(g, &n("ffn_gate_norm_in"), d)?,
                    up_in: norm(g, &n("ffn_up_norm_in"), d)?,
                    q_head: norm(g, &n("attn_q_norm"), hd)?,
                    k_head: norm(g, &n("attn_k_norm"), hd)?,
                })
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: norm(g, &n("attn_norm"), d)?,
                wq: ternary(g, &n("attn_q"), d, qd)?,
                wk: ternary(g, &n("attn_k"), d, kv)?,
                wv: ternary(g, &n("attn_v"), d, kv)?,
                wo: ternary(g, &n("attn_output"), qd, d)?,
                attn_sub_norm: norm(g, &n(attn_sub), qd)?,
                ffn_norm: norm(g, &n("ffn_norm"), d)?,
                w_gate: ternary(g, &n("ffn_gate"), d, f)?,
                w_up: ternary(g, &n("ffn_up"), d, f)?,
                w_down: ternary(g, &n("ffn_down"), f, d)?,
                ffn_sub_norm: norm(g, &n(ffn_sub), f)?,
                proj_norms,
            });
        }
        let tok_embd = dense(g, "token_embd.weight", d, c.n_vocab)?;
        let tied = g.tensor("output.weight").is_none();
        // An embedding model has no head: its output is the normed hidden state. The tied
        // embedding stands in for the head field, never read.
        let output = match g.tensor("output.weight") {
            Some(_) if !embedding => dense(g, "output.weight", d, c.n_vocab)?,
            _ => dense(g, "token_embd.weight", d, c.n_vocab)?,
        };
        Ok(Self {
            output_norm: norm(g, "output_norm.weight", d)?,
            config: c,
            layers,
            tok_embd,
            output,
            tied,
        })
    }

    /// Checks every ternary weight now (reserved I2_S codes, non-finite scales) instead of at
    /// its first use: a model that loads is a model that can run. Touches every page of the
    /// projections, which the first forward pass does anyway. The results are kept, so the
    /// forward pass does not check again.
    pub(crate) fn validate_weights(&self, file: &[u8], kern: &Kernels) -> Result<(), EngineError> {
        let weights: Vec<&TernaryWeight> = self
            .layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
            .collect();
        let first_error = std::sync::Mutex::new(None);
        kern.install(|| {
            crate::kernels::pool::for_each(weights.len(), &|i| {
                if let Err(e) = weights[i].matrix(file) {
                    first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                }
            })
        });
        match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The output head's type as loaded (the file's, or what it was converted to).
    pub(crate) fn head_type(&self) -> GgmlType {
        self.output.ty
    }

    pub(crate) fn output_matrix<'a>(&'a self, file: &'a [u8]) -> DenseMatrix<'a> {
        self.output.matrix(file)
    }

    /// Replaces the output head with `data` (a converted copy) of type `ty`; a tied token
    /// embedding (no `output.weight` in the file) reads the same copy, as in a prepared file.
    pub(crate) fn set_output(&mut self, ty: GgmlType, data: memmap2::Mmap) {
        let data = std::sync::Arc::new(data);
        if self.tied {
            self.tok_embd = DenseWeight {
                ty,
                rows: self.tok_embd.rows,
                k: self.tok_embd.k,
                storage: Storage::Map(data.clone()),
            };
        }
        self.output = DenseWeight {
            ty,
            rows: self.output.rows,
            k: self.output.k,
            storage: Storage::Map(data),
        };
    }
}

/// Where a cached element lies in one layer: head-major, each KV head's positions
/// contiguous, so attention streams one head's keys and values. Position-major rows, `kv_dim`
/// apart, defeated the hardware prefetcher and the TLB: one decode step's attention after
/// 2,048 tokens took 31-32 ms instead of 14-22 (f16, one thread, `attention_speed`). Within a
/// head, values are rows (`[position][head_dim]`) and keys are in attention's blocks of
/// [`KEY_BLOCK`] positions ([`crate::kernels::key_index`]), the layout its kernels read.
#[derive(Debug, Clone, Copy, PartialEq)]
struct HeadMajor {
    heads: usize,
    head_dim: usize,
    /// Positions stored per head: a multiple of [`KEY_BLOCK`] (whole key blocks).
    capacity: usize,
}

/// Which side of the cache an element belongs to (they are laid out differently).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Keys,
    Values,
}

impl HeadMajor {
    /// Room for `positions` per head, rounded up to whole key blocks.
    fn new(heads: usize, head_dim: usize, positions: usize) -> Self {
        Self {
            heads,
            head_dim,
            capacity: positions.next_multiple_of(KEY_BLOCK),
        }
    }

    /// The first element of head `head` (of its keys and of its values alike).
    fn head(&self, head: usize) -> usize {
        head * self.capacity * self.head_dim
    }

    /// Where element `d` of position `pos` of head `head` lies on side `side`.
    fn index(&self, side: Side, head: usize, pos: usize, d: usize) -> usize {
        self.head(head)
            + match side {
                Side::Values => pos * self.head_dim + d,
                Side::Keys => crate::kernels::key_index(self.head_dim, pos, d),
            }
    }

    /// Elements of a head's first `n` positions on either side: whole key blocks.
    fn head_prefix_len(&self, n: usize) -> usize {
        n.next_multiple_of(KEY_BLOCK) * self.head_dim
    }

    fn len(&self) -> usize {
        self.heads * self.capacity * self.head_dim
    }
}

/// One side (keys or values) of a cache, every layer, as stored.
#[derive(Debug, Clone)]
enum KvLayers {
    F32(Vec<Vec<f32>>),
    F16(Vec<Vec<f16>>),
}

/// `src` (rows of `heads * head_dim` values, position-major) written from position `pos`.
fn write_rows<T>(
    dst: &mut [T],
    lay: HeadMajor,
    side: Side,
    pos: usize,
    src: &[f32],
    cast: impl Fn(f32) -> T,
) {
    let hd = lay.head_dim;
    for (t, row) in src.chunks_exact(lay.heads * hd).enumerate() {
        for (h, vals) in row.chunks_exact(hd).enumerate() {
            for (d, &x) in vals.iter().enumerate() {
                dst[lay.index(side, h, pos + t, d)] = cast(x);
            }
        }
    }
}

/// Each head's first `n` positions copied from `src` (laid out by `from`) to `dst` (`to`):
/// the whole key blocks that hold them, on either side.
fn copy_heads<T: Copy>(dst: &mut [T], to: HeadMajor, src: &[T], from: HeadMajor, n: usize) {
    let len = to.head_prefix_len(n);
    for h in 0..to.heads {
        let (d, s) = (to.head(h), from.head(h));
        dst[d..d + len].copy_from_slice(&src[s..s + len]);
    }
}

/// Keeps each head's first `n` positions (whole key blocks), packed to a capacity of `n`
/// rounded up to a block.
fn shrink_heads<T: Copy>(l: &mut Vec<T>, lay: HeadMajor, n: usize) {
    let len = lay.head_prefix_len(n);
    for h in 0..lay.heads {
        l.copy_within(lay.head(h)..lay.head(h) + len, h * len);
    }
    l.truncate(lay.heads * len);
    l.shrink_to_fit();
}

impl KvLayers {
    fn new(precision: KvPrecision, layers: usize, lay: HeadMajor) -> Self {
        let len = lay.len();
        match precision {
            KvPrecision::F32 => Self::F32((0..layers).map(|_| vec![0f32; len]).collect()),
            KvPrecision::F16 => Self::F16((0..layers).map(|_| vec![f16::ZERO; len]).collect()),
        }
    }

    fn rows(&self, layer: usize) -> KvRows<'_> {
        match self {
            Self::F32(l) => KvRows::F32(&l[layer]),
            Self::F16(l) => KvRows::F16(&l[layer]),
        }
    }

    /// Writes `src` (whole positions) at position `pos` of `layer` (f16: each value rounded
    /// to nearest), laid out as `side`.
    fn write(&mut self, layer: usize, lay: HeadMajor, side: Side, pos: usize, src: &[f32]) {
        match self {
            Self::F32(l) => write_rows(&mut l[layer], lay, side, pos, src, |x| x),
            Self::F16(l) => write_rows(&mut l[layer], lay, side, pos, src, f16::from_f32),
        }
    }

    /// The first `n` positions of every layer copied from `other` (of the same precision).
    fn copy_prefix(&mut self, to: HeadMajor, other: &Self, from: HeadMajor, n: usize) {
        match (self, other) {
            (Self::F32(d), Self::F32(s)) => d
                .iter_mut()
                .zip(s)
                .for_each(|(d, s)| copy_heads(d, to, s, from, n)),
            (Self::F16(d), Self::F16(s)) => d
                .iter_mut()
                .zip(s)
                .for_each(|(d, s)| copy_heads(d, to, s, from, n)),
            _ => panic!("KV caches of different precisions"),
        }
    }

    fn shrink(&mut self, lay: HeadMajor, n: usize) {
        match self {
            Self::F32(l) => l.iter_mut().for_each(|l| shrink_heads(l, lay, n)),
            Self::F16(l) => l.iter_mut().for_each(|l| shrink_heads(l, lay, n)),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::F32(l) => l.iter().map(|v| v.len() * 4).sum(),
            Self::F16(l) => l.iter().map(|v| v.len() * 2).sum(),
        }
    }

    #[cfg(test)]
    fn n_layers(&self) -> usize {
        match self {
            Self::F32(l) => l.len(),
            Self::F16(l) => l.len(),
        }
    }

    /// The first `n` positions of `layer` (laid out as `side`), position-major, widened to
    /// f32 (tests).
    #[cfg(test)]
    fn values(&self, layer: usize, lay: HeadMajor, side: Side, n: usize) -> Vec<f32> {
        let widened: Vec<f32> = match self {
            Self::F32(l) => l[layer].clone(),
            Self::F16(l) => l[layer].iter().map(|h| h.to_f32()).collect(),
        };
        (0..n)
            .flat_map(|p| (0..lay.heads).map(move |h| (h, p)))
            .flat_map(|(h, p)| (0..lay.head_dim).map(move |d| (h, p, d)))
            .map(|(h, p, d)| widened[lay.index(side, h, p, d)])
            .collect()
    }
}

/// Keys and values of one sequence, per layer `capacity × kv_dim` values each, f32 or f16
/// ([`Config::kv`]), head-major. Sized once; a forward pass appends at `pos`.
#[derive(Debug, Clone)]
pub struct KvCache {
    k: KvLayers,
    v: KvLayers,
    /// Tokens already in the cache.
    pos: usize,
    /// Tokens it may hold (its storage, `lay.capacity`, rounds this up to whole key blocks).
    capacity: usize,
    lay: HeadMajor,
}

impl KvCache {
    pub fn new(c: &Config, capacity: usize) -> Self {
        let lay = HeadMajor::new(c.n_head_kv, c.head_dim, capacity);
        Self {
            k: KvLayers::new(c.kv, c.n_layer, lay),
            v: KvLayers::new(c.kv, c.n_layer, lay),
            pos: 0,
            capacity,
            lay,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes [`KvCache::new`] allocates for `capacity` tokens: keys and values of every
    /// layer, whole key blocks.
    pub fn bytes_for(c: &Config, capacity: usize) -> usize {
        let lay = HeadMajor::new(c.n_head_kv, c.head_dim, capacity);
        2 * c.n_layer * lay.len() * c.kv.bytes()
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Bytes this cache holds (its whole capacity).
    pub fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }

    /// Forgets every position from `len` on (a cut after an interrupted pass, a prefix kept).
    pub fn truncate(&mut self, len: usize) {
        self.pos = self.pos.min(len);
    }

    /// Starts this cache with the first `n` positions of `other` (a shared prefix: the same
    /// tokens at the same positions give the same keys and values).
    pub fn copy_prefix(&mut self, other: &KvCache, n: usize) {
        assert!(
            n <= other.pos && n <= self.capacity(),
            "prefix out of range"
        );
        self.k.copy_prefix(self.lay, &other.k, other.lay, n);
        self.v.copy_prefix(self.lay, &other.v, other.lay, n);
        self.pos = n;
    }
}

impl KvCache {
    /// Gives back the memory past its length (an entry kept in the prefix cache).
    pub(crate) fn shrink_to_len(&mut self) {
        self.k.shrink(self.lay, self.pos);
        self.v.shrink(self.lay, self.pos);
        self.lay = HeadMajor::new(self.lay.heads, self.lay.head_dim, self.pos);
        self.capacity = self.pos;
    }

    /// Layer `layer`'s keys and values for attention, with their layout.
    fn attention_rows(&self, layer: usize) -> CachedHeads<'_> {
        CachedHeads {
            k: self.k.rows(layer),
            v: self.v.rows(layer),
            lay: self.lay,
        }
    }

    /// Test data: position p of every layer holds `tokens[p]` and the layer index.
    #[cfg(test)]
    pub(crate) fn fill_for_tests(&mut self, tokens: &[u32]) {
        let kv = self.lay.heads * self.lay.head_dim;
        for li in 0..self.k.n_layers() {
            for (p, &t) in tokens.iter().enumerate() {
                let key: Vec<f32> = (0..kv)
                    .map(|i| t as f32 + li as f32 * 0.5 + i as f32)
                    .collect();
                self.k.write(li, self.lay, Side::Keys, p, &key);
                self.v
                    .write(li, self.lay, Side::Values, p, &vec![-(t as f32); kv]);
            }
        }
        self.pos = tokens.len();
    }

    /// Whether the first `n` positions of every layer are equal in both.
    #[cfg(test)]
    pub(crate) fn same_positions(&self, other: &KvCache, n: usize) -> bool {
        (0..self.k.n_layers()).all(|li| {
            self.k.values(li, self.lay, Side::Keys, n)
                == other.k.values(li, other.lay, Side::Keys, n)
                && self.v.values(li, self.lay, Side::Values, n)
                    == other.v.values(li, other.lay, Side::Values, n)
        })
    }
}

/// One layer of one sequence's cache, as attention reads it.
#[derive(Clone, Copy)]
struct CachedHeads<'a> {
    k: KvRows<'a>,
    v: KvRows<'a>,
    lay: HeadMajor,
}

impl CachedHeads<'_> {
    /// KV head `head`'s positions `0..keys`.
    fn span(&self, head: usize, keys: usize) -> HeadSpan {
        HeadSpan {
            offset: self.lay.head(head),
            keys,
        }
    }
}

/// A KV cache with the buffers of its forward passes: one sequence run on its own.
#[derive(Debug)]
pub struct Session {
    pub cache: KvCache,
    buffers: StepBuffers,
}

/// Activations of one forward step, reused from step to step (no allocation per token once
/// they have grown to the largest step).
#[derive(Debug, Default)]
pub struct StepBuffers {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    acts: QuantizedActs,
    rope: Vec<(f32, f32)>,
    last: Vec<f32>,
    /// A projection's own normed input (the embedding model).
    normed: Vec<f32>,
    /// The attention output, normed before the output projection.
    att_normed: Vec<f32>,
    /// Per row: (sequence in the batch, position).
    rows: Vec<(usize, usize)>,
}

impl Session {
    pub fn new(c: &Config, capacity: usize) -> Self {
        Self {
            cache: KvCache::new(c, capacity),
            buffers: StepBuffers::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Tokens already in the cache.
    pub fn pos(&self) -> usize {
        self.cache.pos
    }

    pub fn reset(&mut self) {
        self.cache.pos = 0;
    }
}

/// One sequence's part of a batched forward step: its cache and the tokens to append.
#[derive(Debug)]
pub struct BatchEntry<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    /// Which of this sequence's positions need logits (a prompt's last chunk or a decode
    /// step: the last; a prompt being scored: all), written in entry order.
    pub logits: LogitRows,
}

/// Which positions of a batch entry get a row of logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    None,
    Last,
    All,
}

impl LogitRows {
    /// `Last` when `wanted`, else `None`.
    pub fn last_if(wanted: bool) -> Self {
        if wanted { Self::Last } else { Self::None }
    }

    /// Rows of logits for an entry of `tokens` tokens.
    pub fn count(self, tokens: usize) -> usize {
        match self {
            Self::None => 0,
            Self::Last => 1,
            Self::All => tokens,
        }
    }
}

/// ggml's RMSNorm: f32 squares summed in f64, the mean rounded to f32, then
/// `(x * (1 / sqrt(mean + eps))) * w` in f32.
fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (ss / x.len() as f64) as f32;
    let r = 1.0 / (mean + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * r * wi;
    }
}

fn rmsnorm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        rmsnorm(xr, w, eps, or);
    }
}

/// cos/sin of the RoPE angles of one position, as llama.cpp forms them: theta starts at
/// `pos` and is multiplied in f32 by `base^(-2/n_rot)` for each successive pair.
fn rope_table(pos: usize, n_rot: usize, base: f32, cs: &mut [(f32, f32)]) {
    let theta_scale = (base as f64).powf(-2.0 / n_rot as f64) as f32;
    let mut theta = pos as f32;
    for c in cs.iter_mut().take(n_rot / 2) {
        let (s, co) = (theta as f64).sin_cos();
        *c = (co as f32, s as f32);
        theta *= theta_scale;
    }
}

/// NEOX RoPE on one head: pair (x[i], x[i + n_rot/2]) rotated by angle i of the table.
fn rope_head(x: &mut [f32], cs: &[(f32, f32)]) {
    let half = cs.len();
    for (i, &(cos, sin)) in cs.iter().enumerate() {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos - b * sin;
        x[i + half] = a * sin + b * cos;
    }
}

impl BitNet {
    /// Runs `tokens` (at positions `session.pos()..`) through the model and returns the
    /// logits of the last one. `tokens` must be non-empty, in vocabulary, and fit.
    /// `interrupt` is checked before each layer: when it fires the session is left unusable
    /// (reset it) and `EngineError::Interrupted` returned.
    pub fn forward_into(
        &self,
        file: &[u8],
        kern: &Kernels,
        s: &mut Session,
        tokens: &[u32],
        logits: &mut [f32],
        interrupt: &Interrupt,
    ) -> Result<(), EngineError> {
        let mut batch = [BatchEntry {
            cache: &mut s.cache,
            tokens,
            logits: LogitRows::Last,
        }];
        self.forward_batch(file, kern, &mut batch, &mut s.buffers, logits, interrupt)
    }

    /// One forward step for several sequences at once: every entry's tokens go through each
    /// BitLinear together (one read of the weights for the whole batch), attention runs per
    /// sequence against its own cache. `logits` receives `n_vocab` values per entry that
    /// asks for them, in entry order. A row's result does not depend on the other rows: the
    /// integer dots are exact and every float step is per row, so a sequence gives the same
    /// logits alone, in any batch and in any chunking of its prompt.
    ///
    /// Every entry needs at least one token and room for them in its cache. When
    /// `interrupt` fires (checked before each layer) the caches hold partial positions past
    /// their length, which the next pass overwrites, and `EngineError::Interrupted` is
    /// returned.
    pub fn forward_batch(
        &self,
        file: &[u8],
        kern: &Kernels,
        batch: &mut [BatchEntry<'_>],
        sc: &mut StepBuffers,
        logits: &mut [f32],
        interrupt: &Interrupt,
    ) -> Result<(), EngineError> {
        let c = &self.config;
        let (d, kv, hd, f, qd) = (c.dim, c.kv_dim(), c.head_dim, c.ffn_dim, c.q_dim());
        assert!(
            batch
                .iter()
                .all(|e| !e.tokens.is_empty() && e.cache.pos + e.tokens.len() <= e.cache.capacity()),
            "tokens must fit their caches"
        );
        let wanted: usize = batch.iter().map(|e| e.logits.count(e.tokens.len())).sum();
        assert_eq!(
            logits.len(),
            wanted * c.out_dim(),
            "one output row per row wanted"
        );
        sc.rows.clear();
        for (i, e) in batch.iter().enumerate() {
            sc.rows
                .extend((0..e.tokens.len()).map(|t| (i, e.cache.pos + t)));
        }
        let n = sc.rows.len();
        sc.x.resize(n * d, 0.0);
        sc.h.resize(n * d, 0.0);
        sc.q.resize(n * qd, 0.0);
        sc.k.resize(n * kv, 0.0);
        sc.v.resize(n * kv, 0.0);
        sc.att.resize(n * qd, 0.0);
        sc.normed.resize(n * d, 0.0);
        sc.o.resize(n * d, 0.0);
        sc.gate.resize(n * f, 0.0);
        sc.up.resize(n * f, 0.0);

        let half = c.n_rot / 2;
        sc.rope.resize(n * half, (0.0, 0.0));
        for (r, &(_, pos)) in sc.rows.iter().enumerate() {
            rope_table(
                pos,
                c.n_rot,
                c.rope_base,
                &mut sc.rope[r * half..(r + 1) * half],
            );
        }
        let embd = self.tok_embd.matrix(file);
        for (r, &tok) in batch.iter().flat_map(|e| e.tokens).enumerate() {
            embd.row_f32(tok as usize, &mut sc.x[r * d..(r + 1) * d]);
        }
        for (li, l) in self.layers.iter().enumerate() {
            if let Some(reason) = interrupt.check() {
                return Err(EngineError::Interrupted(reason));
            }
            // Attention block.
            rmsnorm_rows(&sc.x, &l.attn_norm, c.eps, &mut sc.h);
            match &l.proj_norms {
                None => {
                    let (wq, wk, wv) = (l.wq.matrix(file)?, l.wk.matrix(file)?, l.wv.matrix(file)?);
                    sc.acts
                        .quantize_for(&sc.h, d, kern.act_orders(&[&wq, &wk, &wv], n));
                    kern.bitlinear(&wq, &sc.acts, &mut sc.q);
                    kern.bitlinear(&wk, &sc.acts, &mut sc.k);
                    kern.bitlinear(&wv, &sc.acts, &mut sc.v);
                }
                Some(pn) => {
                    // Each projection normalises the block's input with its own weights.
                    for (w, norm_in, out) in [
                        (&l.wq, &pn.q_in, &mut sc.q),
                        (&l.wk, &pn.k_in, &mut sc.k),
                        (&l.wv, &pn.v_in, &mut sc.v),
                    ] {
                        let w = w.matrix(file)?;
                        rmsnorm_rows(&sc.h, norm_in, c.eps, &mut sc.normed);
                        sc.acts
                            .quantize_for(&sc.normed, d, kern.act_orders(&[&w], n));
                        kern.bitlinear(&w, &sc.acts, out);
                    }
                    for (v, w, heads) in [
                        (&mut sc.q, &pn.q_head, c.n_head),
                        (&mut sc.k, &pn.k_head, c.n_head_kv),
                    ] {
                        for head in v[..n * heads * hd].chunks_exact_mut(hd) {
                            let x = head.to_vec();
                            rmsnorm(&x, w, c.eps, head);
                        }
                    }
                }
            }
            for r in 0..n {
                let cs = &sc.rope[r * half..(r + 1) * half];
                for h in 0..c.n_head {
                    rope_head(&mut sc.q[r * qd + h * hd..r * qd + (h + 1) * hd], cs);
                }
                for h in 0..c.n_head_kv {
                    rope_head(&mut sc.k[r * kv + h * hd..r * kv + (h + 1) * hd], cs);
                }
            }
            let mut r0 = 0;
            for e in batch.iter_mut() {
                let (p, m) = (e.cache.pos, e.tokens.len());
                let lay = e.cache.lay;
                (e.cache.k).write(li, lay, Side::Keys, p, &sc.k[r0 * kv..(r0 + m) * kv]);
                (e.cache.v).write(li, lay, Side::Values, p, &sc.v[r0 * kv..(r0 + m) * kv]);
                r0 += m;
            }
            let caches: Vec<CachedHeads<'_>> =
                batch.iter().map(|e| e.cache.attention_rows(li)).collect();
            attention(kern, c, &sc.q, &caches, &sc.rows, &mut sc.att);
            sc.att_normed.resize(n * qd, 0.0);
            rmsnorm_rows(&sc.att, &l.attn_sub_norm, c.eps, &mut sc.att_normed);
            let wo = l.wo.matrix(file)?;
            sc.acts
                .quantize_for(&sc.att_normed, qd, kern.act_orders(&[&wo], n));
            kern.bitlinear(&wo, &sc.acts, &mut sc.o);
            sc.x.iter_mut().zip(&sc.o).for_each(|(x, o)| *x += o);

            // Feed-forward block.
            rmsnorm_rows(&sc.x, &l.ffn_norm, c.eps, &mut sc.h);
            match &l.proj_norms {
                None => {
                    let (gate, up) = (l.w_gate.matrix(file)?, l.w_up.matrix(file)?);
                    sc.acts
                        .quantize_for(&sc.h, d, kern.act_orders(&[&gate, &up], n));
                    kern.bitlinear(&gate, &sc.acts, &mut sc.gate);
                    kern.bitlinear(&up, &sc.acts, &mut sc.up);
                }
                Some(pn) => {
                    for (w, norm_in, out) in [
                        (&l.w_gate, &pn.gate_in, &mut sc.gate),
                        (&l.w_up, &pn.up_in, &mut sc.up),
                    ] {
                        let w = w.matrix(file)?;
                        rmsnorm_rows(&sc.h, norm_in, c.eps, &mut sc.normed);
                        sc.acts
                            .quantize_for(&sc.normed, d, kern.act_orders(&[&w], n));
                        kern.bitlinear(&w, &sc.acts, out);
                    }
                }
            }
            match c.activation {
                Activation::Relu2 => sc.gate.iter_mut().zip(&sc.up).for_each(|(g, u)| {
                    let r = g.max(0.0);
                    *g = r * r * u;
                }),
                Activation::Silu => sc.gate.iter_mut().zip(&sc.up).for_each(|(g, u)| {
                    *g = *g / (1.0 + (-*g).exp()) * u;
                }),
            }
            sc.up.copy_from_slice(&sc.gate);
            rmsnorm_rows(&sc.up, &l.ffn_sub_norm, c.eps, &mut sc.gate);
            let down = l.w_down.matrix(file)?;
            sc.acts
                .quantize_for(&sc.gate, f, kern.act_orders(&[&down], n));
            kern.bitlinear(&down, &sc.acts, &mut sc.o);
            sc.x.iter_mut().zip(&sc.o).for_each(|(x, o)| *x += o);
        }

        // Only the positions that want logits (usually each entry's last): one pass over
        // the head for all of them.
        sc.last.resize(wanted * d, 0.0);
        let mut r_end = 0;
        let mut j = 0;
        for e in batch.iter_mut() {
            r_end += e.tokens.len();
            e.cache.pos += e.tokens.len();
            let rows = e.logits.count(e.tokens.len());
            for r in r_end - rows..r_end {
                rmsnorm(
                    &sc.x[r * d..(r + 1) * d],
                    &self.output_norm,
                    c.eps,
                    &mut sc.last[j * d..(j + 1) * d],
                );
                j += 1;
            }
        }
        if wanted > 0 {
            match c.pooling {
                None => kern.matmul_dense(&self.output.matrix(file), &sc.last, logits),
                // An embedding: the normed hidden state, L2-normalised.
                Some(super::config::Pooling::Last) => {
                    for (out, h) in logits.chunks_exact_mut(d).zip(sc.last.chunks_exact(d)) {
                        let norm = h
                            .iter()
                            .map(|&v| (v as f64) * (v as f64))
                            .sum::<f64>()
                            .sqrt();
                        let inv = if norm > 0.0 { (1.0 / norm) as f32 } else { 0.0 };
                        out.iter_mut().zip(h).for_each(|(o, &v)| *o = v * inv);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Causal multi-head attention with grouped KV heads, per row of the batch: row r is
/// sequence `rows[r].0`'s query at position `rows[r].1`, attending to that sequence's keys
/// `0..=pos` in `caches`. In f32, in an order fixed by `kernels::attend` (the same on every
/// CPU, and a row's result does not depend on the other rows).
fn attention(
    kern: &Kernels,
    c: &Config,
    q: &[f32],
    caches: &[CachedHeads<'_>],
    rows: &[(usize, usize)],
    att: &mut [f32],
) {
    let (d, hd) = (c.q_dim(), c.head_dim);
    let group = c.n_head / c.n_head_kv;
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    // One work item per (row, KV head): the `group` query heads that share it are
    // consecutive, so each cached key and value row is read once for all of them.
    let work = |(r, kvh): (usize, usize), out: &mut [f32]| {
        let (seq, pos) = rows[r];
        let qs = &q[r * d + kvh * group * hd..r * d + (kvh + 1) * group * hd];
        let queries = crate::kernels::Queries {
            qs,
            groups: group,
            scale,
        };
        let cache = &caches[seq];
        // Causal: keys 0..=pos.
        let rows = cache.span(kvh, pos + 1);
        crate::kernels::attend(kern.isa, queries, (cache.k, cache.v), rows, out);
    };
    // Each (row, KV head) writes its group's `group * head_dim` slice of `att`.
    let n = rows.len();
    kern.install(|| {
        crate::kernels::pool::for_each_chunk_mut(&mut att[..n * d], group * hd, &|i, out| {
            work((i / c.n_head_kv, i % c.n_head_kv), out)
        })
    });
}
