//! GGUF v3 writer. Tensor data is streamed: the header is written from the declared tensor
//! shapes, then the caller supplies each tensor's bytes in declaration order.

use std::io::{self, Write};

use super::{DEFAULT_ALIGNMENT, GgmlType, MAGIC, Value};

#[derive(Debug, Clone)]
struct TensorDecl {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    size: u64,
}

/// Builds a GGUF file: add metadata and tensor declarations, `write_header`, then
/// `write_tensor` once per declared tensor, in order.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorDecl>,
    next_tensor: usize,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Declares a tensor; returns its byte size (what `write_tensor` will expect).
    pub fn add_tensor(&mut self, name: impl Into<String>, dims: &[u64], ty: GgmlType) -> u64 {
        let n: u64 = dims.iter().product();
        let size = ty
            .tensor_bytes(dims[0], n)
            .unwrap_or_else(|| panic!("dims {dims:?} do not fit {ty}"));
        self.tensors.push(TensorDecl {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            size,
        });
        size
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    pub fn write_header(&mut self, w: &mut impl Write) -> io::Result<()> {
        let buf = self.header_bytes();
        self.header_written();
        w.write_all(&buf)
    }

    /// The header [`write_header`](Self::write_header) writes, padded to the alignment.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&3u32.to_le_bytes());
        buf.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut buf, k);
            buf.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut buf, v);
        }
        let align = self.alignment();
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut buf, &t.name);
            buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                buf.extend_from_slice(&d.to_le_bytes());
            }
            buf.extend_from_slice(&t.ty.id().to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.size).next_multiple_of(align);
        }
        let padded = (buf.len() as u64).next_multiple_of(align) as usize;
        buf.resize(padded, 0);
        buf
    }

    /// The header was written by the caller (from [`header_bytes`](Self::header_bytes)):
    /// tensors follow, from the first.
    pub fn header_written(&mut self) {
        self.next_tensor = 0;
    }

    /// Bytes after the header: every declared tensor, padded to the alignment but the last.
    pub fn data_bytes(&self) -> u64 {
        let align = self.alignment();
        let n = self.tensors.len();
        self.tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if i + 1 < n {
                    t.size.next_multiple_of(align)
                } else {
                    t.size
                }
            })
            .sum()
    }

    /// Writes the next declared tensor's bytes and the padding after it.
    pub fn write_tensor(&mut self, w: &mut impl Write, data: &[u8]) -> io::Result<()> {
        let t = self
            .tensors
            .get(self.next_tensor)
            .ok_or_else(|| io::Error::other("more tensors written than declared"))?;
        if data.len() as u64 != t.size {
            return Err(io::Error::other(format!(
                "tensor {} is {} bytes, {} given",
                t.name,
                t.size,
                data.len()
            )));
        }
        w.write_all(data)?;
        let pad = t.size.next_multiple_of(self.alignment()) - t.size;
        if self.next_tensor + 1 < self.tensors.len() {
            w.write_all(&vec![0u8; pad as usize])?;
        }
        self.next_tensor += 1;
        Ok(())
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.push(*x as u8),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(u8::from(*x)),
        Value::String(s) => put_str(buf, s),
        Value::Strings(a) => {
            buf.extend_from_slice(&super::type_id::STRING.to_le_bytes());
            buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for s in a.iter() {
                put_str(buf, s);
            }
        }
        Value::I32s(a) => {
            buf.extend_from_slice(&super::type_id::I32.to_le_bytes());
            buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
        Value::Array { elem_type, items } => {
            buf.extend_from_slice(&elem_type.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                debug_assert_eq!(it.type_id(), *elem_type, "array items must share one type");
                put_value(buf, it);
            }
        }
    }
}
