//! GGUF metadata values.

use std::fmt;

/// Metadata value type ids of the GGUF format.
pub mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// An array of strings held in one buffer (a tokenizer's 128k tokens and 280k merges would
/// otherwise cost one allocation each at every start-up).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StringArray {
    buf: String,
    /// End offset of each string in `buf`.
    ends: Vec<usize>,
}

impl StringArray {
    pub fn with_capacity(count: usize, bytes: usize) -> Self {
        Self {
            buf: String::with_capacity(bytes),
            ends: Vec::with_capacity(count),
        }
    }

    /// Strings already concatenated in `buf`, string i ending at `ends[i]`; `None` unless the
    /// ends are non-decreasing, within `buf` and on character boundaries (so every string is
    /// itself valid UTF-8).
    pub fn from_parts(buf: String, ends: Vec<usize>) -> Option<Self> {
        let mut prev = 0;
        for &e in &ends {
            if e < prev || !buf.is_char_boundary(e) {
                return None;
            }
            prev = e;
        }
        Some(Self { buf, ends })
    }

    pub fn push(&mut self, s: &str) {
        self.buf.push_str(s);
        self.ends.push(self.buf.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.buf[start..end])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i).unwrap_or_default())
    }

    /// Total bytes of all strings.
    pub fn total_bytes(&self) -> usize {
        self.buf.len()
    }
}

impl<S: AsRef<str>> FromIterator<S> for StringArray {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut a = StringArray::default();
        for s in iter {
            a.push(s.as_ref());
        }
        a
    }
}

/// One metadata value. Arrays keep their declared element type so that a writer can
/// reproduce them (an empty array still has one); arrays of strings are [`Value::Strings`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    /// An array whose element type is STRING.
    Strings(StringArray),
    /// An array whose element type is INT32, in compact form: a tokenizer's 128k token types
    /// as `Value`s were 7 MB to allocate, fault in and free on every cold start.
    I32s(Vec<i32>),
    Array {
        elem_type: u32,
        items: Vec<Value>,
    },
}

impl Value {
    pub fn type_id(&self) -> u32 {
        use type_id::*;
        match self {
            Value::U8(_) => U8,
            Value::I8(_) => I8,
            Value::U16(_) => U16,
            Value::I16(_) => I16,
            Value::U32(_) => U32,
            Value::I32(_) => I32,
            Value::U64(_) => U64,
            Value::I64(_) => I64,
            Value::F32(_) => F32,
            Value::F64(_) => F64,
            Value::Bool(_) => BOOL,
            Value::String(_) => STRING,
            Value::Array { .. } | Value::Strings(_) | Value::I32s(_) => ARRAY,
        }
    }

    /// Any integer type that fits a u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array { items, .. } => Some(items),
            _ => None,
        }
    }

    pub fn as_i32s(&self) -> Option<&[i32]> {
        match self {
            Value::I32s(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_strings(&self) -> Option<&StringArray> {
        match self {
            Value::Strings(a) => Some(a),
            _ => None,
        }
    }

    pub fn string_array<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Self {
        Value::Strings(items.into_iter().collect())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Strings(a) => write_list(f, a.len(), a.iter().map(|v| format!("{v:?}"))),
            Value::I32s(a) => write_list(f, a.len(), a.iter()),
            Value::Array { items, .. } => write_list(f, items.len(), items.iter()),
        }
    }
}

/// `[a, b, c, d, ... (n items)]`: the first four of `len` items.
fn write_list<T: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    len: usize,
    items: impl Iterator<Item = T>,
) -> fmt::Result {
    write!(f, "[")?;
    for (i, v) in items.take(4).enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        write!(f, "{v}")?;
    }
    if len > 4 {
        write!(f, ", ... ({len} items)")?;
    }
    write!(f, "]")
}
