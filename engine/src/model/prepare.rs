//! Prepared files: a copy of a GGUF whose token embedding and output head are stored
//! quantized (Q4_0, Q6_K or Q8_0), so that the smaller, faster head costs nothing at load. A tied
//! model (no `output.weight`, as BitNet b1.58 2B4T) keeps one tensor, `token_embd.weight`,
//! which the embedding lookup and the head both read; an untied model has both quantized.
//! Optionally the ternary projections are repacked as TQ1_0 (1.69 bits per weight instead of
//! I2_S's 2): the same ternary values, every block scaled by the tensor's scale rounded to
//! f16. Every other key and tensor is copied unchanged. The result is a standard GGUF (ggml's
//! types and names) that other readers load too.

use std::io::Write;

use crate::EngineError;
use crate::gguf::{GgmlType, GgufFile, GgufWriter};
use crate::quant::{DenseMatrix, head};

/// What `bitnet prepare` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOptions {
    /// Type of the token embedding and output head: Q4_0, Q6_K or Q8_0.
    pub head: GgmlType,
    /// Type of the ternary projections: `None` keeps the source's; `Some(TQ1_0)` repacks them.
    pub ternary: Option<GgmlType>,
}

/// Q8_0 by default: next-token distributions as close to the F16 head's as Q6_K's (and much
/// closer than Q4_0's), faster than both with several sequences in a batch (measured; see
/// `docs/deploy.md`).
impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            head: GgmlType::Q8_0,
            ternary: None,
        }
    }
}

/// A prepared copy of a model, quantized and laid out but not yet written: its
/// [`file_size`](Self::file_size) is known before the first byte goes out (`bitnet prepare`
/// shows a progress bar over it).
pub struct PreparedModel<'a> {
    src: &'a GgufFile,
    writer: GgufWriter,
    header: Vec<u8>,
    /// Tensors replaced, by name: their new type and bytes.
    replaced: Vec<(String, GgmlType, Vec<u8>)>,
}

impl<'a> PreparedModel<'a> {
    /// Quantizes the embedding and head (the slow part: on the installed kernel pool) and
    /// lays out the file.
    pub fn new(src: &'a GgufFile, opts: &PrepareOptions) -> Result<Self, EngineError> {
        let invalid = |m: String| EngineError::InvalidModel(m);
        let ty = opts.head;
        if !head::is_quantized_head(ty) {
            return Err(invalid(format!(
                "a prepared head is Q4_0, Q6_K or Q8_0, not {ty}"
            )));
        }
        if super::config::Config::from_gguf(src)?.pooling.is_some() {
            return Err(invalid(
                "an embedding model has no output head to prepare".into(),
            ));
        }
        let mut replaced = Vec::new();
        for name in ["token_embd.weight", "output.weight"] {
            let Some(info) = src.tensor(name) else {
                continue;
            };
            let (k, rows) = match info.dims[..] {
                [k, rows] => (k as usize, rows as usize),
                _ => return Err(invalid(format!("{name} is not a matrix"))),
            };
            let (block, _) = head::block_shape(ty);
            if !k.is_multiple_of(block) {
                return Err(invalid(format!(
                    "{name}: rows of {k} values are not a multiple of {ty}'s {block}"
                )));
            }
            let m = DenseMatrix {
                ty: info.ty,
                rows,
                k,
                data: src.tensor_data(info),
            };
            let bytes = match m.ty {
                t if t == ty => m.data.to_vec(),
                GgmlType::F32
                | GgmlType::F16
                | GgmlType::Bf16
                | GgmlType::Q8_0
                | GgmlType::Q4_0 => {
                    let mut out = vec![0u8; head::matrix_bytes(ty, &m)];
                    head::quantize_matrix_into(ty, &m, &mut out);
                    out
                }
                other => return Err(invalid(format!("{name}: type {other} cannot be converted"))),
            };
            replaced.push((name.to_string(), ty, bytes));
        }
        if replaced.is_empty() {
            return Err(invalid("no token_embd.weight".into()));
        }
        match opts.ternary {
            None => {}
            Some(GgmlType::Tq1_0) => {
                for t in src.tensors.iter().filter(|t| t.ty.is_ternary()) {
                    let (k, rows) = match t.dims[..] {
                        [k, rows] => (k as usize, rows as usize),
                        _ => return Err(invalid(format!("{} is not a matrix", t.name))),
                    };
                    let bytes = repack_tq1_0(&t.name, t.ty, rows, k, src.tensor_data(t))?;
                    replaced.push((t.name.clone(), GgmlType::Tq1_0, bytes));
                }
            }
            Some(other) => {
                return Err(invalid(format!(
                    "ternary weights can be repacked as TQ1_0, not {other}"
                )));
            }
        }

        let mut writer = GgufWriter::new();
        for (key, value) in &src.metadata {
            writer.add(key.clone(), value.clone());
        }
        for t in &src.tensors {
            let new_ty = match replaced.iter().find(|(n, ..)| *n == t.name) {
                Some(&(_, ty, _)) => ty,
                None => t.ty,
            };
            writer.add_tensor(t.name.clone(), &t.dims, new_ty);
        }
        let header = writer.header_bytes();
        Ok(Self {
            src,
            writer,
            header,
            replaced,
        })
    }

    /// Bytes [`write`](Self::write) will write.
    pub fn file_size(&self) -> u64 {
        self.header.len() as u64 + self.writer.data_bytes()
    }

    /// Writes the prepared file: every key and tensor of the source in its order, the
    /// embedding and head quantized (and the ternary weights repacked when asked).
    pub fn write(mut self, out: &mut impl Write) -> Result<(), EngineError> {
        let io = |source: std::io::Error| EngineError::Io {
            path: "the prepared model".into(),
            source,
        };
        out.write_all(&self.header).map_err(io)?;
        self.writer.header_written();
        for t in &self.src.tensors {
            let data = match self.replaced.iter().find(|(n, ..)| *n == t.name) {
                Some((.., bytes)) => &bytes[..],
                None => self.src.tensor_data(t),
            };
            self.writer.write_tensor(out, data).map_err(io)?;
        }
        Ok(())
    }
}

/// One ternary tensor (I2_S, TQ2_0 or TQ1_0) as TQ1_0 with the same values. TQ blocks keep
/// their scales; I2_S's single f32 scale becomes every block's f16 `d` (a rounding of at most
/// 2^-11 relative; exact when the scale is an f16 value, as in the synthetic models), so the
/// loaded tensor has one uniform scale, as the I2_S one had.
fn repack_tq1_0(
    name: &str,
    ty: GgmlType,
    rows: usize,
    k: usize,
    data: &[u8],
) -> Result<Vec<u8>, EngineError> {
    use crate::quant::{TernaryMatrix, TernaryScale, tq1_0};
    use half::f16;
    let invalid = |m: String| EngineError::InvalidModel(m);
    if !k.is_multiple_of(tq1_0::BLOCK) {
        return Err(invalid(format!(
            "{name}: rows of {k} weights are not a multiple of TQ1_0's {}",
            tq1_0::BLOCK
        )));
    }
    if TernaryMatrix::has_non_finite_block_scale(ty, data) {
        return Err(invalid(format!("{name}: a block scale is infinite or NaN")));
    }
    let m = TernaryMatrix {
        ty,
        rows,
        k,
        data,
        scale: TernaryMatrix::detect_scale(ty, rows, k, data),
    };
    let blocks_per_row = k / tq1_0::BLOCK;
    let block_scales: Vec<f16> = match (ty, m.scale) {
        (GgmlType::I2S, TernaryScale::Uniform(s)) => {
            let d = f16::from_f32(s);
            let rel = ((d.to_f32() - s) / s).abs();
            if !d.is_finite() || (s != 0.0 && rel > 1.0 / 2048.0) {
                return Err(invalid(format!(
                    "{name}: its scale {s:e} has no close f16 value for TQ1_0's block scales"
                )));
            }
            vec![d; blocks_per_row]
        }
        // TQ2_0 and TQ1_0: the blocks' own scales, read per row below.
        _ => Vec::new(),
    };
    let mut out = Vec::with_capacity(rows * blocks_per_row * tq1_0::BLOCK_BYTES);
    let mut values = vec![0i8; k];
    let mut row_scales = block_scales.clone();
    for r in 0..rows {
        m.decode_row(r, &mut values);
        if values.iter().any(|&v| !(-1..=1).contains(&v)) {
            return Err(invalid(format!(
                "{name}: row {r} has a code that is not ternary"
            )));
        }
        if block_scales.is_empty() {
            // TQ blocks end with their f16 scale.
            let row = m.row(r);
            let bb = row.len() / blocks_per_row;
            row_scales = row
                .chunks_exact(bb)
                .map(|b| f16::from_le_bytes([b[bb - 2], b[bb - 1]]))
                .collect();
        }
        out.extend_from_slice(&tq1_0::pack(&values, &row_scales));
    }
    Ok(out)
}
