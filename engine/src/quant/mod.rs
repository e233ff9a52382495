//! Quantized tensor types and the kernels over them.
//!
//! One module per type holds its layout, a packer (for the fixture writer), a decoder and the
//! plain scalar dot product that is the specification. [`TernaryMatrix::bitlinear`] is the
//! BitLinear matmul every projection goes through; [`DenseMatrix`] serves the F16/F32
//! embedding and output head.

pub mod act;
pub mod head;
pub mod i2s;
pub mod q4_0;
pub mod q6_k;
pub mod q8_0;
pub mod tq1_0;
pub mod tq2_0;

use half::f16;

use crate::gguf::GgmlType;
pub use act::QuantizedActs;

/// Per-block exact integer dots `sum (t - 1) * q` of a row of 256-weight blocks, whatever
/// their byte layout (`decode` turns one block into trits 0..2).
fn dot_blocks_scalar(
    row: &[u8],
    q: &[i8],
    block_bytes: usize,
    decode: fn(&[u8], &mut [u8]),
    mut f: impl FnMut(usize, i32),
) {
    let mut t = [0u8; 256];
    for (b, blk) in row.chunks_exact(block_bytes).enumerate() {
        decode(blk, &mut t);
        let qb = &q[b * 256..(b + 1) * 256];
        let d: i32 = t
            .iter()
            .zip(qb)
            .map(|(&t, &q)| (t as i32 - 1) * q as i32)
            .sum();
        f(b, d);
    }
}

/// How a ternary tensor's weights are scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TernaryScale {
    /// One scale for the whole tensor (I2_S always; TQ tensors whose non-zero blocks all
    /// carry the same `d`): `y = (D / s) * scale` with D the exact whole-row integer dot.
    Uniform(f32),
    /// TQ blocks with differing `d`: `y = (sum_b D_b * d_b) / s`, summed in block order.
    PerBlock,
}

/// A ternary weight matrix of `rows` outputs × `k` inputs, in one of the file's layouts.
#[derive(Debug, Clone, Copy)]
pub struct TernaryMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub k: usize,
    pub data: &'a [u8],
    pub scale: TernaryScale,
}

impl<'a> TernaryMatrix<'a> {
    /// Bytes of one row in this layout.
    pub fn row_bytes(&self) -> usize {
        match self.ty {
            GgmlType::I2S => i2s::row_bytes(self.k),
            GgmlType::Tq2_0 => self.k / tq2_0::BLOCK * tq2_0::BLOCK_BYTES,
            GgmlType::Tq1_0 => self.k / tq1_0::BLOCK * tq1_0::BLOCK_BYTES,
            other => unreachable!("{other} is not ternary"),
        }
    }

    pub fn row(&self, m: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[m * rb..(m + 1) * rb]
    }

    /// Whether any block of a TQ tensor has an infinite or NaN scale (I2_S has one scale,
    /// which [`TernaryMatrix::detect_scale`] returns).
    pub fn has_non_finite_block_scale(ty: GgmlType, data: &[u8]) -> bool {
        let (block_bytes, scale_at) = match ty {
            GgmlType::Tq2_0 => (tq2_0::BLOCK_BYTES, 64),
            GgmlType::Tq1_0 => (tq1_0::BLOCK_BYTES, 52),
            _ => return false,
        };
        // f16 with every exponent bit set is an infinity or a NaN.
        data.chunks_exact(block_bytes)
            .any(|blk| blk[scale_at + 1] & 0x7c == 0x7c)
    }

    /// Works out the scale of a tensor from its bytes; `None` when a TQ tensor has no
    /// non-zero scale at all (then every weight is zero and `Uniform(0.0)` is used).
    pub fn detect_scale(ty: GgmlType, rows: usize, k: usize, data: &[u8]) -> TernaryScale {
        let (block_bytes, scale_at) = match ty {
            GgmlType::I2S => return TernaryScale::Uniform(i2s::scale(data, rows, k)),
            GgmlType::Tq2_0 => (tq2_0::BLOCK_BYTES, 64),
            GgmlType::Tq1_0 => (tq1_0::BLOCK_BYTES, 52),
            other => unreachable!("{other} is not ternary"),
        };
        let mut uniform: Option<u16> = None;
        for blk in data.chunks_exact(block_bytes) {
            let bits = u16::from_le_bytes([blk[scale_at], blk[scale_at + 1]]);
            // Blocks of all-zero weights are quantized with d = 0 (or -0): they do not count.
            if bits & 0x7fff == 0 {
                continue;
            }
            match uniform {
                None => uniform = Some(bits),
                Some(u) if u == bits => {}
                Some(_) => return TernaryScale::PerBlock,
            }
        }
        TernaryScale::Uniform(uniform.map_or(0.0, |b| f16::from_bits(b).to_f32()))
    }

    /// Reference BitLinear of one row against one quantized token: the specification every
    /// fast kernel reproduces bit for bit.
    pub fn row_dot_scalar(&self, m: usize, q: &[i8], s: f32) -> f32 {
        let row = self.row(m);
        match (self.ty, self.scale) {
            (GgmlType::I2S, TernaryScale::Uniform(w)) => (i2s::dot_scalar(row, q) as f32 / s) * w,
            (GgmlType::Tq2_0 | GgmlType::Tq1_0, TernaryScale::Uniform(w)) => {
                let mut d = 0i32;
                self.tq_blocks(row, q, |_, db| d += db);
                (d as f32 / s) * w
            }
            (GgmlType::Tq2_0 | GgmlType::Tq1_0, TernaryScale::PerBlock) => {
                let (bb, at) = self.tq_scale_pos();
                let mut acc = 0f32;
                self.tq_blocks(row, q, |b, db| {
                    let d = f16::from_le_bytes([row[b * bb + at], row[b * bb + at + 1]]);
                    acc += db as f32 * d.to_f32();
                });
                acc / s
            }
            (ty, scale) => unreachable!("{ty} with {scale:?}"),
        }
    }

    fn tq_scale_pos(&self) -> (usize, usize) {
        if self.ty == GgmlType::Tq2_0 {
            (tq2_0::BLOCK_BYTES, 64)
        } else {
            (tq1_0::BLOCK_BYTES, 52)
        }
    }

    fn tq_blocks(&self, row: &[u8], q: &[i8], f: impl FnMut(usize, i32)) {
        if self.ty == GgmlType::Tq2_0 {
            tq2_0::dot_blocks_scalar(row, q, f)
        } else {
            tq1_0::dot_blocks_scalar(row, q, f)
        }
    }

    /// Decodes row `m` to ternary values (-1, 0, 1) (used by tests and the fixture check).
    pub fn decode_row(&self, m: usize, out: &mut [i8]) {
        let row = self.row(m);
        let mut codes = vec![0u8; self.k];
        match self.ty {
            GgmlType::I2S => i2s::decode_row_codes(row, &mut codes),
            GgmlType::Tq2_0 => {
                for (b, blk) in row.chunks_exact(tq2_0::BLOCK_BYTES).enumerate() {
                    tq2_0::decode_block(blk, &mut codes[b * 256..(b + 1) * 256]);
                }
            }
            GgmlType::Tq1_0 => {
                for (b, blk) in row.chunks_exact(tq1_0::BLOCK_BYTES).enumerate() {
                    tq1_0::decode_block(blk, &mut codes[b * 256..(b + 1) * 256]);
                }
            }
            other => unreachable!("{other} is not ternary"),
        }
        for (o, c) in out.iter_mut().zip(codes) {
            *o = c as i8 - 1;
        }
    }
}

/// A dense (float) matrix of `rows` × `k`: the embedding table and the output head.
#[derive(Debug, Clone, Copy)]
pub struct DenseMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub k: usize,
    pub data: &'a [u8],
}

impl DenseMatrix<'_> {
    /// Row `r` converted to f32.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let k = self.k;
        match self.ty {
            GgmlType::F32 => {
                for (o, c) in out
                    .iter_mut()
                    .zip(self.data[r * k * 4..(r + 1) * k * 4].chunks_exact(4))
                {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            GgmlType::F16 => {
                for (o, c) in out
                    .iter_mut()
                    .zip(self.data[r * k * 2..(r + 1) * k * 2].chunks_exact(2))
                {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            GgmlType::Bf16 => {
                for (o, c) in out
                    .iter_mut()
                    .zip(self.data[r * k * 2..(r + 1) * k * 2].chunks_exact(2))
                {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            GgmlType::Q4_0 => {
                let rb = k / q4_0::BLOCK * q4_0::BLOCK_BYTES;
                q4_0::dequantize_row(&self.data[r * rb..(r + 1) * rb], &mut out[..k]);
            }
            GgmlType::Q6K => {
                let rb = k / q6_k::BLOCK * q6_k::BLOCK_BYTES;
                q6_k::dequantize_row(&self.data[r * rb..(r + 1) * rb], &mut out[..k]);
            }
            GgmlType::Q8_0 => {
                let rb = k / 32 * 34;
                for (b, blk) in self.data[r * rb..(r + 1) * rb].chunks_exact(34).enumerate() {
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    for j in 0..32 {
                        out[b * 32 + j] = blk[2 + j] as i8 as f32 * d;
                    }
                }
            }
            other => unreachable!("{other} is not dense"),
        }
    }

    /// Reference `out[r] = row_r · x` for rows `range`, summed in f32 in index order.
    pub fn matvec_scalar(&self, x: &[f32], rows: std::ops::Range<usize>, out: &mut [f32]) {
        let mut buf = vec![0f32; self.k];
        for (o, r) in out.iter_mut().zip(rows) {
            self.row_f32(r, &mut buf);
            *o = buf.iter().zip(x).map(|(a, b)| a * b).sum();
        }
    }
}
