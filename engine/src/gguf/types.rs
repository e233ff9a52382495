//! ggml tensor types that this engine reads and their storage sizes.

use std::fmt;

/// Tensor element types. Ids are ggml's; 36 means I2_S only in BitNet's llama.cpp fork
/// (upstream reused 36 for a removed type), so the reader accepts it only for BitNet
/// architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q8_0,
    Q6K,
    Bf16,
    Tq1_0,
    Tq2_0,
    I2S,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            8 => Self::Q8_0,
            14 => Self::Q6K,
            30 => Self::Bf16,
            34 => Self::Tq1_0,
            35 => Self::Tq2_0,
            36 => Self::I2S,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 8,
            Self::Q6K => 14,
            Self::Bf16 => 30,
            Self::Tq1_0 => 34,
            Self::Tq2_0 => 35,
            Self::I2S => 36,
        }
    }

    /// Elements per block (the first dimension must be a multiple of it).
    pub fn block_elems(self) -> u64 {
        match self {
            Self::F32 | Self::F16 | Self::Bf16 => 1,
            Self::Q4_0 | Self::Q8_0 => 32,
            Self::Q6K | Self::Tq1_0 | Self::Tq2_0 => 256,
            // I2_S packs 128-weight groups of 32 bytes per row.
            Self::I2S => 128,
        }
    }

    /// Storage size of a tensor with `n_elems` elements whose first dimension is `ne0`,
    /// or `None` on overflow or a first dimension that is not a whole number of blocks.
    pub fn tensor_bytes(self, ne0: u64, n_elems: u64) -> Option<u64> {
        if !ne0.is_multiple_of(self.block_elems()) {
            return None;
        }
        let blocks = n_elems / self.block_elems();
        match self {
            Self::F32 => n_elems.checked_mul(4),
            Self::F16 | Self::Bf16 => n_elems.checked_mul(2),
            Self::Q4_0 => blocks.checked_mul(18),
            Self::Q8_0 => blocks.checked_mul(34),
            Self::Q6K => blocks.checked_mul(210),
            Self::Tq1_0 => blocks.checked_mul(54),
            Self::Tq2_0 => blocks.checked_mul(66),
            // Codes, then one f32 scale and 28 bytes of padding.
            Self::I2S => (n_elems / 4).checked_add(32),
        }
    }

    pub fn is_ternary(self) -> bool {
        matches!(self, Self::Tq1_0 | Self::Tq2_0 | Self::I2S)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q8_0 => "Q8_0",
            Self::Q6K => "Q6_K",
            Self::Bf16 => "BF16",
            Self::Tq1_0 => "TQ1_0",
            Self::Tq2_0 => "TQ2_0",
            Self::I2S => "I2_S",
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
