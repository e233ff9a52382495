//! Prepared files: a copy of a GGUF whose output head is stored as Q8_0 (`output.weight`),
//! so that the faster head costs nothing at load (converting at load takes a few hundred
//! milliseconds on 2B4T). Every other key and tensor is copied unchanged; the token embedding
//! stays F16.

use std::io::Write;

use crate::EngineError;
use crate::gguf::{GgmlType, GgufFile, GgufWriter};
use crate::quant::DenseMatrix;
use crate::quant::q8_0;

/// Writes `src` to `out` with `output.weight` as Q8_0 (quantized from the stored head, or from
/// the tied token embedding when the file has none). Quantizes on the installed
/// kernel pool ([`crate::kernels::Kernels::install`]), serially without one.
pub fn write_with_q8_0_head(src: &GgufFile, out: &mut impl Write) -> Result<(), EngineError> {
    PreparedModel::new(src)?.write(out)
}

/// A prepared copy of a model, quantized and laid out but not yet written: its
/// [`file_size`](Self::file_size) is known before the first byte goes out (`bitnet prepare`
/// shows a progress bar over it).
pub struct PreparedModel<'a> {
    src: &'a GgufFile,
    writer: GgufWriter,
    header: Vec<u8>,
    q8_head: Vec<u8>,
}

impl<'a> PreparedModel<'a> {
    /// Quantizes the head (the slow part: on the installed kernel pool) and lays out the file.
    pub fn new(src: &'a GgufFile) -> Result<Self, EngineError> {
        let invalid = |m: String| EngineError::InvalidModel(m);
        let head_info = src
            .tensor("output.weight")
            .or_else(|| src.tensor("token_embd.weight"))
            .ok_or_else(|| invalid("no output.weight or token_embd.weight".into()))?;
        let (k, rows) = match head_info.dims[..] {
            [k, rows] => (k as usize, rows as usize),
            _ => return Err(invalid(format!("{} is not a matrix", head_info.name))),
        };
        if !k.is_multiple_of(q8_0::BLOCK) {
            return Err(invalid(format!(
                "head rows of {k} are not a multiple of 32"
            )));
        }
        let head = DenseMatrix {
            ty: head_info.ty,
            rows,
            k,
            data: src.tensor_data(head_info),
        };
        let q8_head = match head.ty {
            GgmlType::Q8_0 => head.data.to_vec(),
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => q8_0::quantize_matrix(&head),
            other => return Err(invalid(format!("head type {other} cannot be converted"))),
        };

        let mut writer = GgufWriter::new();
        for (key, value) in &src.metadata {
            writer.add(key.clone(), value.clone());
        }
        for t in src.tensors.iter().filter(|t| t.name != "output.weight") {
            writer.add_tensor(t.name.clone(), &t.dims, t.ty);
        }
        writer.add_tensor("output.weight", &[k as u64, rows as u64], GgmlType::Q8_0);
        let header = writer.header_bytes();
        Ok(Self {
            src,
            writer,
            header,
            q8_head,
        })
    }

    /// Bytes [`write`](Self::write) will write.
    pub fn file_size(&self) -> u64 {
        self.header.len() as u64 + self.writer.data_bytes()
    }

    /// Writes the prepared file: every key and tensor of the source, the head as Q8_0 last.
    pub fn write(mut self, out: &mut impl Write) -> Result<(), EngineError> {
        let io = |source: std::io::Error| EngineError::Io {
            path: "the prepared model".into(),
            source,
        };
        out.write_all(&self.header).map_err(io)?;
        self.writer.header_written();
        for t in self
            .src
            .tensors
            .iter()
            .filter(|t| t.name != "output.weight")
        {
            self.writer
                .write_tensor(out, self.src.tensor_data(t))
                .map_err(io)?;
        }
        self.writer.write_tensor(out, &self.q8_head).map_err(io)
    }
}
