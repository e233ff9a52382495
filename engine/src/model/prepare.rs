//! Prepared files: a copy of a GGUF whose token embedding and output head are stored
//! quantized (Q4_0, Q6_K or Q8_0), so that the smaller, faster head costs nothing at load. A tied
//! model (no `output.weight`, as BitNet b1.58 2B4T) keeps one tensor, `token_embd.weight`,
//! which the embedding lookup and the head both read; an untied model has both quantized.
//! Every other key and tensor is copied unchanged. The result is a standard GGUF (ggml's
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
}

/// Q8_0 by default: next-token distributions as close to the F16 head's as Q6_K's (and much
/// closer than Q4_0's), faster than both with several sequences in a batch (measured; see
/// `docs/deploy.md`).
impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            head: GgmlType::Q8_0,
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
    /// Tensors replaced, by name: their new bytes.
    replaced: Vec<(String, Vec<u8>)>,
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
            replaced.push((name.to_string(), bytes));
        }
        if replaced.is_empty() {
            return Err(invalid("no token_embd.weight".into()));
        }

        let mut writer = GgufWriter::new();
        for (key, value) in &src.metadata {
            writer.add(key.clone(), value.clone());
        }
        for t in &src.tensors {
            let new_ty = if replaced.iter().any(|(n, _)| *n == t.name) {
                ty
            } else {
                t.ty
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
    /// embedding and head quantized.
    pub fn write(mut self, out: &mut impl Write) -> Result<(), EngineError> {
        let io = |source: std::io::Error| EngineError::Io {
            path: "the prepared model".into(),
            source,
        };
        out.write_all(&self.header).map_err(io)?;
        self.writer.header_written();
        for t in &self.src.tensors {
            let data = match self.replaced.iter().find(|(n, _)| *n == t.name) {
                Some((_, bytes)) => &bytes[..],
                None => self.src.tensor_data(t),
            };
            self.writer.write_tensor(out, data).map_err(io)?;
        }
        Ok(())
    }
}
