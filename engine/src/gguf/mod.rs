//! GGUF (versions 2 and 3): a bounds-checked reader over a memory mapping and a writer.
//!
//! The reader never trusts a count, size or offset: each one is checked with checked
//! arithmetic against the bytes that remain before anything is allocated or read, and every
//! failure names the field and its byte offset. Tensor data is exposed as borrowed slices of
//! the mapping, never copied.

mod types;
mod value;
pub mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub use types::GgmlType;
pub use value::{StringArray, Value, type_id};
pub use writer::GgufWriter;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Nested metadata arrays deeper than this are rejected (stack safety).
const MAX_ARRAY_DEPTH: u32 = 8;
/// GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;

/// Architecture names under which type id 36 means I2_S.
pub const BITNET_ARCHS: [&str; 3] = ["bitnet-b1.58", "bitnet-25", "bitnet"];

/// Architectures whose files come from Microsoft's BitNet tools, where type id 36 is I2_S:
/// the BitNet ones and the BitNet embedding model's `qwen3` (upstream ggml left 36 unused).
pub const I2S_ARCHS: [&str; 4] = ["bitnet-b1.58", "bitnet-25", "bitnet", "qwen3"];

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported GGUF version {0} (only 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    #[error("truncated file: {field} at byte {offset} needs {needed} bytes, {available} remain")]
    Truncated {
        field: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("invalid {field} at byte {offset}: {reason}")]
    Invalid {
        field: String,
        offset: u64,
        reason: String,
    },
    #[error("tensor {tensor:?} has unknown ggml type id {type_id}")]
    UnknownType { tensor: String, type_id: u32 },
    #[error("tensor {tensor:?}: {reason}")]
    BadTensor { tensor: String, reason: String },
}

/// Where a tensor lives and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ne0 first: ne0 is the contiguous (input) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elems(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// Any byte container that can back a GGUF file (a memory mapping, or a Vec in tests).
pub type Backing = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A parsed GGUF file over its bytes.
pub struct GgufFile {
    bytes: Backing,
    pub version: u32,
    pub alignment: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    /// Absolute offset where the data section starts.
    pub data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps a file read-only and parses it.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only and private to this process; the model files this
        // engine maps are not modified while served (the model store publishes files by
        // rename, never by rewriting in place). A truncation by another process would raise
        // SIGBUS, the documented hazard of every mmap-based loader.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_backing(Arc::new(map))
    }

    /// Parses GGUF bytes held by `bytes` (e.g. `Arc<Mmap>` or `Arc<Vec<u8>>`).
    pub fn from_backing(bytes: Backing) -> Result<Self, GgufError> {
        let header = parse_header((*bytes).as_ref())?;
        Ok(Self {
            bytes,
            version: header.version,
            alignment: header.alignment,
            index: header
                .metadata
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect(),
            metadata: header.metadata,
            tensor_index: header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: header.tensors,
            data_offset: header.data_offset,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        (*self.bytes).as_ref()
    }

    pub fn backing(&self) -> &Backing {
        &self.bytes
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes, borrowed from the mapping (bounds were checked at parse time).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes()[info.offset as usize..(info.offset + info.size) as usize]
    }
}

/// The parsed header, independent of the backing storage.
#[derive(Debug)]
pub struct Header {
    pub version: u32,
    pub alignment: u64,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub data_offset: u64,
}

/// Little-endian cursor that reports the field and offset of every failure.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                field: field(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn string(&mut self, field: &dyn Fn() -> String) -> Result<String, GgufError> {
        let at = self.pos as u64;
        let len = self.u64(&|| format!("{} (string length)", field()))?;
        let bytes = self.take(len, field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(GgufError::Invalid {
                field: field(),
                offset: at,
                reason: format!("string is not UTF-8 ({e})"),
            }),
        }
    }

    /// An array of `count` strings in compact form: the bytes gathered into one buffer and
    /// validated as UTF-8 in one pass (a tokenizer's 408k strings, one check each, were a
    /// third of the parse), then each end checked to fall on a character boundary.
    fn strings(&mut self, count: u64, field: &dyn Fn() -> String) -> Result<Value, GgufError> {
        let first = self.pos;
        let mut bytes = Vec::with_capacity((count as usize).saturating_mul(16).min(self.buf.len()));
        let mut ends = Vec::with_capacity(count as usize);
        for i in 0..count {
            let f = || format!("{}[{i}]", field());
            let len = self.u64(&|| format!("{} (string length)", f()))?;
            bytes.extend_from_slice(self.take(len, &f)?);
            ends.push(bytes.len());
        }
        // SIMD validation (a byte-level vocabulary is mostly multi-byte characters, where the
        // standard library's check runs at about 1 GB/s).
        let joined = simdutf8::basic::from_utf8(&bytes)
            .is_ok()
            // SAFETY: `bytes` was just validated as UTF-8.
            .then(|| unsafe { String::from_utf8_unchecked(bytes) })
            .and_then(|buf| StringArray::from_parts(buf, ends));
        if let Some(a) = joined {
            return Ok(Value::Strings(a));
        }
        // Some string is not UTF-8: walk them again to name it.
        self.pos = first;
        for i in 0..count {
            let f = || format!("{}[{i}]", field());
            let at = self.pos as u64;
            let len = self.u64(&|| format!("{} (string length)", f()))?;
            let bytes = self.take(len, &f)?;
            if let Err(e) = std::str::from_utf8(bytes) {
                return Err(self.invalid(f(), at, format!("string is not UTF-8 ({e})")));
            }
        }
        // Unreachable: strings that are each UTF-8 concatenate to UTF-8 at char boundaries.
        Err(self.invalid(field(), first as u64, "string array is not UTF-8"))
    }

    fn invalid(&self, field: String, offset: u64, reason: impl Into<String>) -> GgufError {
        GgufError::Invalid {
            field,
            offset,
            reason: reason.into(),
        }
    }

    fn value(
        &mut self,
        ty: u32,
        field: &dyn Fn() -> String,
        depth: u32,
    ) -> Result<Value, GgufError> {
        use type_id::*;
        Ok(match ty {
            U8 => Value::U8(self.array::<1>(field)?[0]),
            I8 => Value::I8(self.array::<1>(field)?[0] as i8),
            U16 => Value::U16(u16::from_le_bytes(self.array(field)?)),
            I16 => Value::I16(i16::from_le_bytes(self.array(field)?)),
            U32 => Value::U32(self.u32(field)?),
            I32 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            U64 => Value::U64(self.u64(field)?),
            I64 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            F32 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            F64 => Value::F64(f64::from_le_bytes(self.array(field)?)),
            BOOL => {
                let at = self.pos as u64;
                match self.array::<1>(field)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(self.invalid(field(), at, format!("bool byte is {b}"))),
                }
            }
            STRING => Value::String(self.string(field)?),
            ARRAY => {
                let at = self.pos as u64;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(field(), at, "arrays nested too deeply"));
                }
                let elem_type = self.u32(&|| format!("{} (array element type)", field()))?;
                let count_at = self.pos as u64;
                let count = self.u64(&|| format!("{} (array length)", field()))?;
                let min_elem = match elem_type {
                    U8 | I8 | BOOL => 1,
                    U16 | I16 => 2,
                    U32 | I32 | F32 => 4,
                    U64 | I64 | F64 | STRING => 8,
                    ARRAY => 12,
                    other => {
                        return Err(self.invalid(
                            field(),
                            at,
                            format!("unknown array element type {other}"),
                        ));
                    }
                };
                // Cap the allocation by what the remaining bytes could possibly hold.
                if count
                    .checked_mul(min_elem)
                    .is_none_or(|n| n > self.remaining())
                {
                    return Err(GgufError::Truncated {
                        field: format!("{} (array of {count})", field()),
                        offset: count_at,
                        needed: count.saturating_mul(min_elem),
                        available: self.remaining(),
                    });
                }
                if elem_type == STRING {
                    return self.strings(count, field);
                }
                if elem_type == I32 {
                    // In bounds: `count * 4 <= remaining` was checked above.
                    let bytes = self.take(count * 4, field)?;
                    return Ok(Value::I32s(
                        bytes
                            .chunks_exact(4)
                            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect(),
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for i in 0..count {
                    items.push(self.value(
                        elem_type,
                        &|| format!("{}[{i}]", field()),
                        depth + 1,
                    )?);
                }
                Value::Array { elem_type, items }
            }
            other => {
                let at = self.pos as u64;
                return Err(self.invalid(field(), at, format!("unknown value type {other}")));
            }
        })
    }
}

/// Parses the header, metadata and tensor infos of a GGUF file held in `buf`, and checks
/// every tensor's extent against the length of `buf`.
pub fn parse_header(buf: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.take(4, &|| "magic".into())?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic {
            found: magic.to_vec(),
        });
    }
    let version = c.u32(&|| "version".into())?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let tensor_count_at = c.pos as u64;
    let tensor_count = c.u64(&|| "tensor_count".into())?;
    let kv_count_at = c.pos as u64;
    let kv_count = c.u64(&|| "metadata_kv_count".into())?;
    // A key/value pair needs at least 8 (key length) + 4 (type) + 1 bytes.
    if kv_count.checked_mul(13).is_none_or(|n| n > c.remaining()) {
        return Err(c.invalid(
            "metadata_kv_count".into(),
            kv_count_at,
            format!(
                "{kv_count} pairs cannot fit in the {} bytes left",
                c.remaining()
            ),
        ));
    }
    let mut metadata = Vec::with_capacity(kv_count as usize);
    for i in 0..kv_count {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let ty = c.u32(&|| format!("type of metadata {key:?}"))?;
        let value = c.value(ty, &|| format!("metadata {key:?}"), 0)?;
        metadata.push((key, value));
    }
    let arch = metadata
        .iter()
        .find(|(k, _)| k == "general.architecture")
        .and_then(|(_, v)| v.as_str().map(str::to_owned));
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(c.invalid(
                    "general.alignment".into(),
                    0,
                    format!("{v} is not a power of two up to 1 MiB"),
                ));
            }
        },
    };

    // A tensor info needs at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
    if tensor_count
        .checked_mul(24)
        .is_none_or(|n| n > c.remaining())
    {
        return Err(c.invalid(
            "tensor_count".into(),
            tensor_count_at,
            format!(
                "{tensor_count} tensors cannot fit in the {} bytes left",
                c.remaining()
            ),
        ));
    }
    let mut raw = Vec::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        let name = c.string(&|| format!("name of tensor #{i}"))?;
        let nd_at = c.pos as u64;
        let n_dims = c.u32(&|| format!("n_dims of tensor {name:?}"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.invalid(
                format!("n_dims of tensor {name:?}"),
                nd_at,
                format!("{n_dims} is not in 1..={MAX_DIMS}"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dim {d} of tensor {name:?}"))?);
        }
        let type_id = c.u32(&|| format!("type of tensor {name:?}"))?;
        let off_at = c.pos as u64;
        let offset = c.u64(&|| format!("offset of tensor {name:?}"))?;
        raw.push((name, dims, type_id, offset, off_at));
    }
    let file_len = buf.len() as u64;
    // A file without tensors (llama.cpp's vocabulary-only files) may end right after its
    // metadata, without the padding.
    let data_offset = match (c.pos as u64).next_multiple_of(alignment) {
        o if raw.is_empty() => o.min(file_len),
        o => o,
    };
    if data_offset > file_len {
        return Err(GgufError::Truncated {
            field: "padding before the data section".into(),
            offset: c.pos as u64,
            needed: data_offset - c.pos as u64,
            available: c.remaining(),
        });
    }

    let is_bitnet = arch.as_deref().is_some_and(|a| I2S_ARCHS.contains(&a));
    let mut tensors = Vec::with_capacity(raw.len());
    let mut seen = std::collections::HashSet::new();
    for (name, dims, type_id, rel_offset, off_at) in raw {
        let bad = |reason: String| GgufError::BadTensor {
            tensor: name.clone(),
            reason,
        };
        if !seen.insert(name.clone()) {
            return Err(bad("duplicate tensor name".into()));
        }
        let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownType {
            tensor: name.clone(),
            type_id,
        })?;
        if ty == GgmlType::I2S && !is_bitnet {
            return Err(bad(format!(
                "type id 36 is I2_S only in BitNet architectures ({}), this file says {:?}",
                I2S_ARCHS.join(", "),
                arch.as_deref().unwrap_or("nothing")
            )));
        }
        let n_elems = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("element count of {dims:?} overflows")))?;
        let size = ty.tensor_bytes(dims[0], n_elems).ok_or_else(|| {
            bad(format!(
                "dims {dims:?} do not fit type {ty} (first dim must be a multiple of {})",
                ty.block_elems()
            ))
        })?;
        if rel_offset % alignment != 0 {
            return Err(c.invalid(
                format!("offset of tensor {name:?}"),
                off_at,
                format!("{rel_offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        let offset = data_offset
            .checked_add(rel_offset)
            .filter(|o| o.checked_add(size).is_some_and(|end| end <= file_len))
            .ok_or_else(|| GgufError::Truncated {
                field: format!("data of tensor {name:?}"),
                offset: data_offset.saturating_add(rel_offset),
                needed: size,
                available: file_len.saturating_sub(data_offset.saturating_add(rel_offset)),
            })?;
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            size,
        });
    }
    Ok(Header {
        version,
        alignment,
        metadata,
        tensors,
        data_offset,
    })
}
